"""Render a job script: the kind's sbatch template with every ``@@NAME@@`` filled in from a
:class:`~slurm.spec.JobSpec`; where the job's run directory goes by default."""

from __future__ import annotations

import datetime as _dt
import re
import shlex
from pathlib import Path

from models.errors import HepscanError
from slurm.spec import HERE, LIB, TEMPLATES, JobSpec

__all__ = ["render_script"]

_PLACEHOLDER = re.compile(r"@@([A-Z_]+)@@")


def _project_pythonpath() -> str:
    """The source checkout to put on PYTHONPATH when hepscan is not installed in the venv."""
    root = HERE.parent
    if (root / "scan" / "cli.py").is_file() and "site-packages" not in root.parts:
        return str(root)
    return ""


def _default_run_dir(spec: JobSpec) -> Path:
    """``hepscan-slurm/<job-name>-<timestamp>`` next to the scan (``--scan-dir``) or the
    preprocessing output (``--out``), else in the current directory: job files belong with the
    results they produce, not in a source checkout."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    anchor = spec.scan_dir if spec.kind == "scan" else spec.out
    parent = Path(anchor).expanduser().absolute().parent if anchor else Path.cwd()
    return parent / "hepscan-slurm" / f"{spec.name}-{stamp}"


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
