"""Render hepscan's sbatch templates and submit them: ``hepscan slurm submit`` / ``status``.

Launch (on a login node, or anywhere ``sbatch`` reaches a cluster)::

    hepscan slurm submit configs/unfold_zll.yaml --nodes 2 --gpus-per-node 4 \\
        --cpus-per-node 32 --time 04:00:00 --partition gpu --account myproj
    hepscan slurm submit configs/preprocess_zll.yaml --kind preprocess --out data/zll \\
        --nodes 2 --cpus-per-node 16 --time 00:30:00
    hepscan slurm submit CONFIG ... --dry-run        # print the job script only
    hepscan slurm status 1234

Python::

    from slurm.submit import JobSpec, render_script, submit, status
    result = submit(JobSpec(config="configs/unfold_zll.yaml", nodes=2, cpus_per_node=8,
                            time="01:00:00"))
    print(result.job_id, result.log_path, status(result.job_id).state)

Every ``#SBATCH`` line comes from an option: nothing site-specific is in the templates.  The job's
files live in one run directory on the shared filesystem (``--run-dir``, default
``./hepscan-slurm/<job-name>-<timestamp>``): the rendered script, ``logs/``, ``ray/`` (auth
token, 0600, removed at the end), ``dask/`` and, unless ``--scan-dir`` says otherwise, ``scan/``
(the scan directory, whose ``mlflow.db`` is the MLflow store unless ``--tracking-uri`` names
another).  Before ``sbatch`` runs, the partition is checked with ``scontrol`` so an
unknown partition or an allocation the partition can never hold fails now, not as a job that
pends forever.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import click

from models.errors import ConfigError, HepscanError

HERE = Path(__file__).resolve().parent
TEMPLATES = {"scan": HERE / "scan.sbatch", "preprocess": HERE / "preprocess.sbatch"}
LIB = HERE / "lib.sh"
_PLACEHOLDER = re.compile(r"@@([A-Z_]+)@@")


@dataclass
class JobSpec:
    """What one ``hepscan slurm submit`` asks for.  Paths may be relative to the cwd."""

    config: str | Path
    cpus_per_node: int
    time: str
    kind: Literal["scan", "preprocess"] = "scan"
    nodes: int = 1
    gpus_per_node: int = 0
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    job_name: str | None = None
    run_dir: str | Path | None = None
    scan_dir: str | Path | None = None
    out: str | Path | None = None
    # None: min(300, a fifth of --time)
    signal_seconds: int | None = None
    requeue: bool = True
    tracking_uri: str | None = None
    # an `mlflow server` in the job as a live viewer of the scan's store
    mlflow_server: bool = False
    # its bind address; None: 127.0.0.1 on one node, the head node's address on several
    mlflow_host: str | None = None
    python: str = field(default_factory=lambda: sys.executable)
    node_tmp: str = "/tmp"
    port_base: int = 0
    interface: str | None = None
    dask_workers_per_node: int = 0
    join_timeout: int = 180
    head_reserved_cpus: int = 0
    command: str | None = None
    driver_args: tuple[str, ...] = ()
    sbatch_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in TEMPLATES:
            raise ConfigError(f"--kind: unknown job kind {self.kind!r} (scan or preprocess)")
        if self.nodes < 1:
            raise ConfigError(f"--nodes must be >= 1 (got {self.nodes})")
        if self.cpus_per_node < 1:
            raise ConfigError(f"--cpus-per-node must be >= 1 (got {self.cpus_per_node})")
        if self.gpus_per_node < 0:
            raise ConfigError(f"--gpus-per-node must be >= 0 (got {self.gpus_per_node})")
        limit = time_to_seconds(self.time)
        if limit <= 0:
            raise ConfigError(f"--time must be positive (got {self.time!r})")
        if self.signal_seconds is not None and not 0 <= self.signal_seconds < limit:
            raise ConfigError(
                f"--signal-seconds {self.signal_seconds} must be >= 0 and shorter than "
                f"--time {self.time} ({limit} s)"
            )
        if self.mlflow_server and self.tracking_uri and self.tracking_uri.startswith("http"):
            raise ConfigError(
                f"--mlflow-server: --tracking-uri {self.tracking_uri} is already a server; "
                "give a database URI (sqlite:///..., postgresql://...) or drop --mlflow-server"
            )
        if self.kind == "preprocess" and self.out is None and self.command is None:
            raise ConfigError("--out is required for --kind preprocess")

    @property
    def name(self) -> str:
        return self.job_name or f"hepscan-{self.kind}-{Path(self.config).stem}"

    @property
    def signal_lead(self) -> int:
        """Seconds before the time limit at which the batch script gets USR1 (0: never)."""
        if self.signal_seconds is not None:
            return self.signal_seconds
        return min(300, time_to_seconds(self.time) // 5)

    @property
    def uses_mlflow_server(self) -> bool:
        return self.kind == "scan" and self.mlflow_server


@dataclass
class SubmitResult:
    job_id: str | None
    script: str
    script_path: Path | None
    run_dir: Path
    log_path: Path
    scan_dir: Path | None
    tracking: str


@dataclass
class JobStatus:
    job_id: str
    state: str
    exit_code: str | None
    nodes: str | None
    reason: str | None
    restarts: int
    log_path: str | None
    fields: dict[str, str]


def time_to_seconds(value: str) -> int:
    """SLURM time (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH:MM:SS``, ``D-HH:MM``) in seconds."""
    text = value.strip()
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return 10**12
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        if not d.isdigit():
            raise ConfigError(f"--time: cannot read {value!r} (use HH:MM:SS or D-HH:MM:SS)")
        days = int(d)
        parts = text.split(":")
        if not 1 <= len(parts) <= 3:
            raise ConfigError(f"--time: cannot read {value!r} (use HH:MM:SS or D-HH:MM:SS)")
        parts += ["0"] * (3 - len(parts))
    else:
        parts = text.split(":")
        if len(parts) == 1:
            parts = ["0", parts[0], "0"]
        elif len(parts) == 2:
            parts = ["0", *parts]
        elif len(parts) != 3:
            raise ConfigError(f"--time: cannot read {value!r} (use HH:MM:SS or D-HH:MM:SS)")
    if not all(p.isdigit() for p in parts):
        raise ConfigError(f"--time: cannot read {value!r} (use HH:MM:SS or D-HH:MM:SS)")
    h, m, s = (int(p) for p in parts)
    return ((days * 24 + h) * 60 + m) * 60 + s


def _project_pythonpath() -> str:
    """The source checkout to put on PYTHONPATH when hepscan is not installed in the venv."""
    root = HERE.parent
    if (root / "scan" / "cli.py").is_file() and "site-packages" not in root.parts:
        return str(root)
    return ""


def _default_run_dir(spec: JobSpec) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path.cwd() / "hepscan-slurm" / f"{spec.name}-{stamp}"


def _resolved(spec: JobSpec) -> tuple[Path, Path, Path | None, Path | None]:
    config = Path(spec.config).expanduser().absolute()
    run_dir = Path(spec.run_dir).expanduser().absolute() if spec.run_dir else _default_run_dir(spec)
    scan_dir = None
    if spec.kind == "scan":
        scan_dir = (
            Path(spec.scan_dir).expanduser().absolute() if spec.scan_dir else run_dir / "scan"
        )
    out = Path(spec.out).expanduser().absolute() if spec.out else None
    return config, run_dir, scan_dir, out


def _sbatch_lines(spec: JobSpec, run_dir: Path) -> list[str]:
    lines = [
        f"--job-name={spec.name}",
        f"--nodes={spec.nodes}",
        "--ntasks-per-node=1",
        f"--cpus-per-task={spec.cpus_per_node}",
        f"--time={spec.time}",
        f"--output={run_dir}/logs/%x-%j.out",
        # a requeued job appends to the same log instead of truncating it
        "--open-mode=append",
    ]
    if spec.gpus_per_node:
        lines.append(f"--gpus-per-node={spec.gpus_per_node}")
    if spec.partition:
        lines.append(f"--partition={spec.partition}")
    if spec.account:
        lines.append(f"--account={spec.account}")
    if spec.qos:
        lines.append(f"--qos={spec.qos}")
    if spec.signal_lead:
        lines.append(f"--signal=B:USR1@{spec.signal_lead}")
    if spec.kind == "scan":
        lines.append("--requeue" if spec.requeue else "--no-requeue")
    lines.extend(spec.sbatch_args)
    return [f"#SBATCH {line}" for line in lines]


def _q(value: object) -> str:
    return shlex.quote(str(value))


def render_script(spec: JobSpec, run_dir: Path | None = None) -> str:
    """The job script for ``spec``: the template with every ``@@NAME@@`` filled in."""
    config, default_run_dir, scan_dir, out = _resolved(spec)
    run_dir = run_dir or default_run_dir
    python = Path(spec.python).absolute()
    values: dict[str, str] = {
        "SBATCH_LINES": "\n".join(_sbatch_lines(spec, run_dir)),
        "RUN_DIR": _q(run_dir),
        "CONFIG": _q(config),
        "SCAN_DIR": _q(scan_dir or ""),
        "OUT": _q(out or ""),
        "VENV_BIN": _q(python.parent),
        "PYTHON": _q(python),
        "PYTHONPATH": _q(_project_pythonpath()),
        "CPUS_PER_NODE": str(spec.cpus_per_node),
        "GPUS_PER_NODE": str(spec.gpus_per_node),
        "NODE_TMP": _q(spec.node_tmp),
        "PORT_BASE": str(spec.port_base),
        "INTERFACE": _q(spec.interface or ""),
        "TRACKING_URI": _q(spec.tracking_uri or ""),
        "MLFLOW_SERVER": "1" if spec.uses_mlflow_server else "0",
        "MLFLOW_HOST": _q(spec.mlflow_host or ""),
        "REQUEUE": "1" if spec.requeue else "0",
        "JOIN_TIMEOUT": str(spec.join_timeout),
        "HEAD_RESERVED_CPUS": str(spec.head_reserved_cpus),
        "DASK_WORKERS": str(spec.dask_workers_per_node),
        "COMMAND": _q(spec.command or ""),
        "DRIVER_ARGS": " ".join(_q(a) for a in spec.driver_args),
        "LIB": LIB.read_text().rstrip("\n"),
    }
    text = TEMPLATES[spec.kind].read_text()

    def fill(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise HepscanError(f"{TEMPLATES[spec.kind]}: unknown placeholder @@{key}@@")
        return values[key]

    return _PLACEHOLDER.sub(fill, text)


# ---------------------------------------------------------------------------- cluster checks


# sbatch's input variables override #SBATCH lines; drop those that would override ours.
_OVERRIDDEN = (
    "OUTPUT",
    "ERROR",
    "OPEN_MODE",
    "JOB_NAME",
    "TIMELIMIT",
    "SIGNAL",
    "REQUEUE",
    "NO_REQUEUE",
    "GPUS_PER_NODE",
)


def _sbatch_env(spec: JobSpec) -> dict[str, str]:
    env = dict(os.environ)
    drop = list(_OVERRIDDEN)
    drop += [
        k
        for k, v in (("PARTITION", spec.partition), ("ACCOUNT", spec.account), ("QOS", spec.qos))
        if v
    ]
    for key in drop:
        env.pop(f"SBATCH_{key}", None)
    return env


def _run(
    cmd: list[str], timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    if shutil.which(cmd[0]) is None:
        raise HepscanError(
            f"{cmd[0]} not found: run this where SLURM's client commands are installed "
            "(for the local test cluster: slurm/testcluster/up.sh, then "
            'eval "$(slurm/testcluster/env.sh)")'
        )
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    except subprocess.TimeoutExpired as exc:
        raise HepscanError(f"{' '.join(cmd)} did not answer in {timeout:.0f} s") from exc


def _kv(text: str) -> dict[str, str]:
    """``scontrol show -o`` output as a dict (values may not contain spaces except the last)."""
    out: dict[str, str] = {}
    for token in text.split():
        if "=" in token:
            key, _, value = token.partition("=")
            out[key] = value
    return out


def _partitions() -> dict[str, dict[str, str]]:
    proc = _run(["scontrol", "show", "partition", "-o"])
    if proc.returncode != 0:
        raise HepscanError(f"scontrol show partition failed: {proc.stderr.strip()}")
    parts = {}
    for line in proc.stdout.splitlines():
        if line.strip():
            info = _kv(line)
            parts[info.get("PartitionName", "")] = info
    return parts


def _node_info(nodelist: str) -> list[dict[str, str]]:
    proc = _run(["scontrol", "show", "node", "-o", nodelist])
    if proc.returncode != 0:
        return []
    return [_kv(line) for line in proc.stdout.splitlines() if line.strip()]


def _gpus_of(node: dict[str, str]) -> int:
    total = 0
    for item in node.get("Gres", "").split(","):
        m = re.match(r"gpu(?::[^:(]+)?:(\d+)", item)
        if m:
            total += int(m.group(1))
    return total


def check_partition(spec: JobSpec) -> str:
    """Fail now, with a message naming the option, for what the partition can never run."""
    parts = _partitions()
    wanted = spec.partition or os.environ.get("SBATCH_PARTITION")
    if wanted:
        name = wanted
        if name not in parts:
            known = ", ".join(sorted(parts)) or "none"
            raise ConfigError(f"--partition: unknown partition {name!r} (available: {known})")
    else:
        defaults = [n for n, p in parts.items() if p.get("Default") == "YES"]
        if not defaults:
            raise ConfigError(
                "--partition: the cluster has no default partition; name one "
                f"(available: {', '.join(sorted(parts)) or 'none'})"
            )
        name = defaults[0]
    part = parts[name]
    total_nodes = int(part.get("TotalNodes", "0") or 0)
    if spec.nodes > total_nodes:
        raise ConfigError(
            f"--nodes {spec.nodes}: partition {name!r} has only {total_nodes} node(s)"
        )
    max_nodes = part.get("MaxNodes", "UNLIMITED")
    if max_nodes.isdigit() and spec.nodes > int(max_nodes):
        raise ConfigError(f"--nodes {spec.nodes}: partition {name!r} allows at most {max_nodes}")
    max_time = part.get("MaxTime", "UNLIMITED")
    if max_time not in ("UNLIMITED", "INFINITE") and time_to_seconds(spec.time) > time_to_seconds(
        max_time
    ):
        raise ConfigError(f"--time {spec.time}: partition {name!r} allows at most {max_time}")
    nodes = _node_info(part.get("Nodes", ""))
    if nodes:
        fits = [
            n
            for n in nodes
            if int(n.get("CPUTot", "0") or 0) >= spec.cpus_per_node
            and _gpus_of(n) >= spec.gpus_per_node
        ]
        if len(fits) < spec.nodes:
            best_cpus = max(int(n.get("CPUTot", "0") or 0) for n in nodes)
            best_gpus = max(_gpus_of(n) for n in nodes)
            raise ConfigError(
                f"--nodes {spec.nodes} x (--cpus-per-node {spec.cpus_per_node}, "
                f"--gpus-per-node {spec.gpus_per_node}): partition {name!r} has "
                f"{len(fits)} node(s) that large (largest: {best_cpus} CPUs, {best_gpus} GPUs)"
            )
    return name


# ---------------------------------------------------------------------------- submit / status


def tracking_store(spec: JobSpec, scan_dir: Path | None) -> str:
    """The MLflow store the scan driver writes to (what ``mlflow ui`` should open)."""
    if spec.tracking_uri:
        return spec.tracking_uri
    return f"sqlite:///{scan_dir}/mlflow.db" if scan_dir else ""


def _tracking_description(spec: JobSpec, scan_dir: Path | None, run_dir: Path) -> str:
    if spec.kind != "scan":
        return ""
    store = tracking_store(spec, scan_dir)
    if spec.uses_mlflow_server:
        return f"{store} (live viewer: mlflow server, URL in {run_dir}/mlflow_server_url)"
    return store


def submit(spec: JobSpec, dry_run: bool = False) -> SubmitResult:
    """Validate, render, write the script into the run directory and ``sbatch`` it.

    With ``dry_run`` nothing is written and no SLURM command runs; ``job_id`` is None.
    """
    config, run_dir, scan_dir, _out = _resolved(spec)
    if not config.is_file():
        raise ConfigError(f"config file not found: {config}")
    script = render_script(spec, run_dir)
    log_path = run_dir / "logs" / f"{spec.name}-%j.out"
    tracking = _tracking_description(spec, scan_dir, run_dir)
    if dry_run:
        return SubmitResult(None, script, None, run_dir, log_path, scan_dir, tracking)

    partition = check_partition(spec)
    for sub in ("logs", "ray", "dask"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    script_path = run_dir / f"{spec.kind}.sbatch"
    tmp = script_path.with_name(f".{script_path.name}.tmp")
    tmp.write_text(script)
    tmp.chmod(0o755)
    tmp.replace(script_path)

    cmd = ["sbatch", "--parsable"]
    if not spec.partition:
        cmd.append(f"--partition={partition}")
    proc = _run([*cmd, str(script_path)], timeout=60, env=_sbatch_env(spec))
    if proc.returncode != 0:
        raise HepscanError(
            f"sbatch failed (exit {proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
        )
    job_id = proc.stdout.strip().split(";")[0]
    log_path = run_dir / "logs" / f"{spec.name}-{job_id}.out"
    return SubmitResult(job_id, script, script_path, run_dir, log_path, scan_dir, tracking)


def status(job_id: str | int) -> JobStatus:
    """State of a job from ``scontrol`` (pending, running, recently finished), else ``sacct``."""
    jid = str(job_id)
    proc = _run(["scontrol", "show", "job", "-o", jid])
    if proc.returncode == 0 and proc.stdout.strip():
        info = _kv(proc.stdout.splitlines()[0])
        return JobStatus(
            job_id=jid,
            state=info.get("JobState", "UNKNOWN"),
            exit_code=info.get("ExitCode"),
            nodes=info.get("NodeList"),
            reason=info.get("Reason"),
            restarts=int(info.get("Restarts", "0") or 0),
            log_path=info.get("StdOut"),
            fields=info,
        )
    if shutil.which("sacct"):
        acct = _run(["sacct", "-j", jid, "-X", "-n", "-P", "-o", "JobID,State,ExitCode,NodeList"])
        line = acct.stdout.strip().splitlines()[0] if acct.stdout.strip() else ""
        if acct.returncode == 0 and line:
            _jid, state, exit_code, nodes = (line.split("|") + ["", "", "", ""])[:4]
            return JobStatus(jid, state, exit_code, nodes, None, 0, None, {})
    raise HepscanError(f"job {jid}: unknown to scontrol and sacct ({proc.stderr.strip()})")


# ---------------------------------------------------------------------------- CLI


@click.group("slurm")
def slurm_group() -> None:
    """Run hepscan on a SLURM cluster: submit scans/preprocessing, query jobs."""


@slurm_group.command("submit", context_settings={"show_default": True})
@click.argument("config", type=click.Path(path_type=Path))
@click.argument("driver_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--kind", type=click.Choice(["scan", "preprocess"]), default="scan")
@click.option("--nodes", type=int, default=1, help="Nodes in the allocation.")
@click.option("--gpus-per-node", type=int, default=0)
@click.option("--cpus-per-node", type=int, required=True, help="CPUs per node for Ray/Dask.")
@click.option("--time", "time_", required=True, help="Time limit, HH:MM:SS or D-HH:MM:SS.")
@click.option("--partition", default=None, help="Partition (default: the cluster's default).")
@click.option("--account", default=None)
@click.option("--qos", default=None)
@click.option("--job-name", default=None, help="[default: hepscan-KIND-CONFIGSTEM]")
@click.option(
    "--run-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Job files: script, logs/, ray/, dask/, scan/ [default: ./hepscan-slurm/NAME-TIME]",
)
@click.option(
    "--scan-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Scan directory; an existing one is resumed [default: RUN_DIR/scan]",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="Output directory of --kind preprocess.",
)
@click.option(
    "--signal-seconds",
    type=int,
    default=None,
    help="USR1 this many seconds before the time limit, 0: none "
    "[default: min(300, a fifth of --time)].",
)
@click.option(
    "--requeue/--no-requeue",
    default=True,
    help="Requeue after a checkpoint on USR1 and resume the scan.",
)
@click.option("--tracking-uri", default=None, help="Existing MLflow tracking URI to log to.")
@click.option(
    "--mlflow-server/--no-mlflow-server",
    default=False,
    help="Start `mlflow server` in the job as a live viewer of the scan's MLflow store.",
)
@click.option(
    "--mlflow-host",
    default=None,
    help="Bind address of that server [default: 127.0.0.1 on one node, the head node's "
    "address on several].",
)
@click.option(
    "--python", "python_", default=sys.executable, help="Python of the venv the job activates."
)
@click.option("--node-tmp", default="/tmp", help="Node-local directory for Ray/Dask temp dirs.")
@click.option(
    "--port-base",
    type=int,
    default=0,
    help="First of 200 pinned ports [default: 10000 + 200 * (jobid % 100)].",
)
@click.option("--interface", default=None, help="Network interface for node addresses (ib0).")
@click.option(
    "--dask-workers-per-node",
    type=int,
    default=0,
    help="Dask worker processes per node [default: one per CPU].",
)
@click.option(
    "--head-reserved-cpus",
    type=int,
    default=0,
    help="CPUs of the head node kept out of Ray for the driver, GCS and MLflow.",
)
@click.option(
    "--command",
    default=None,
    help="Run this shell command instead of the hepscan driver (RAY_ADDRESS or "
    "DASK_SCHEDULER_ADDRESS set).",
)
@click.option(
    "--sbatch-arg",
    "sbatch_args",
    multiple=True,
    help="Extra sbatch option, repeatable (e.g. --sbatch-arg=--constraint=a100).",
)
@click.option("--dry-run", is_flag=True, help="Print the job script; submit nothing.")
def submit_command(
    config: Path,
    driver_args: tuple[str, ...],
    kind: str,
    nodes: int,
    gpus_per_node: int,
    cpus_per_node: int,
    time_: str,
    dry_run: bool,
    python_: str,
    **options: Any,
) -> None:
    """Submit CONFIG as a scan (or preprocessing) job; arguments after `--` go to the driver."""
    spec = JobSpec(
        config=config,
        kind=kind,  # type: ignore[arg-type]
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        cpus_per_node=cpus_per_node,
        time=time_,
        python=python_,
        driver_args=tuple(driver_args),
        **options,
    )
    result = submit(spec, dry_run=dry_run)
    if dry_run:
        click.echo(result.script, nl=False)
        return
    click.echo(f"submitted job {result.job_id} ({spec.kind}, {spec.nodes} node(s))")
    click.echo(f"  script:   {result.script_path}")
    click.echo(f"  log:      {result.log_path}")
    if result.scan_dir:
        click.echo(f"  scan dir: {result.scan_dir}")
    if spec.kind == "preprocess" and spec.out:
        click.echo(f"  output:   {Path(spec.out).absolute()}")
    if result.tracking:
        click.echo(f"  MLflow:   {result.tracking}")
        store = tracking_store(spec, result.scan_dir)
        if not store.startswith("http"):
            click.echo(f"  review:   mlflow ui --backend-store-uri {store}")
    click.echo(f"  status:   hepscan slurm status {result.job_id}")


@slurm_group.command("status")
@click.argument("job_id")
def status_command(job_id: str) -> None:
    """State, nodes, exit code and log of JOB_ID."""
    st = status(job_id)
    click.echo(f"job {st.job_id}: {st.state}")
    if st.nodes and st.nodes != "(null)":
        click.echo(f"  nodes:     {st.nodes}")
    if st.reason and st.reason != "None":
        click.echo(f"  reason:    {st.reason}")
    if st.exit_code:
        click.echo(f"  exit code: {st.exit_code}")
    if st.restarts:
        click.echo(f"  restarts:  {st.restarts}")
    if st.log_path:
        click.echo(f"  log:       {st.log_path}")


__all__ = [
    "JobSpec",
    "JobStatus",
    "SubmitResult",
    "check_partition",
    "render_script",
    "slurm_group",
    "status",
    "submit",
    "time_to_seconds",
    "tracking_store",
]
