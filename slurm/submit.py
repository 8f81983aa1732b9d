"""Render hepscan's sbatch templates and submit them: ``hepscan slurm submit`` / ``status``.

Launch (on a login node, or anywhere ``sbatch`` reaches a cluster)::

    hepscan slurm submit configs/unfold_zll_gpu.yaml --nodes 2 --gpus-per-node 4 \\
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
``hepscan-slurm/<job-name>-<timestamp>`` next to ``--scan-dir`` for a scan or ``--out`` for
preprocessing, else in the current directory): the rendered script, ``logs/``, ``ray/`` (auth
token, 0600, removed at the end), ``dask/`` and, unless ``--scan-dir`` says otherwise, ``scan/``
(the scan directory, whose ``mlflow.db`` is the MLflow store unless ``--tracking-uri`` names
another).  Before ``sbatch`` runs, the partition is checked with ``scontrol`` so an
unknown partition or an allocation the partition can never hold fails now, not as a job that
pends forever.

Modules: ``spec`` (JobSpec, results), ``render`` (templates), ``cluster`` (scontrol/sacct),
``cli`` (``hepscan slurm``); this one writes the run directory and calls ``sbatch``.
"""

from __future__ import annotations

import os
from pathlib import Path

from models.errors import ConfigError, HepscanError
from scan.lock import check_free
from slurm.cluster import _run, _sbatch_env, check_partition, status
from slurm.gpus import check_scan_gpus, scan_resources
from slurm.render import _resolved, render_script
from slurm.spec import JobSpec, JobStatus, SubmitResult, time_to_seconds
from tracking.store import redact_uri

__all__ = [
    "JobSpec",
    "JobStatus",
    "SubmitResult",
    "check_partition",
    "render_script",
    "status",
    "submit",
    "time_to_seconds",
    "tracking_store",
    "write_script",
]


def tracking_store(spec: JobSpec, scan_dir: Path | None) -> str:
    """The MLflow store the scan driver writes to (what ``mlflow ui`` should open)."""
    if spec.tracking_uri:
        return spec.tracking_uri
    return f"sqlite:///{scan_dir}/mlflow.db" if scan_dir else ""


def _tracking_description(spec: JobSpec, scan_dir: Path | None, run_dir: Path) -> str:
    if spec.kind != "scan":
        return ""
    store = redact_uri(tracking_store(spec, scan_dir))
    if spec.uses_mlflow_server:
        return (
            f"{store} (live viewer: mlflow server with basic auth, URL in "
            f"{run_dir}/mlflow_server_url, user and password in "
            f"{run_dir}/mlflow-auth.JOBID/credentials while the job runs)"
        )
    return store


def _check_gpus(spec: JobSpec, config: Path) -> None:
    """--gpus-per-node against the scan's GPU request (slurm/gpus.py), before any sbatch."""
    if spec.kind == "scan" and spec.command is None:
        workers, gpus_per_worker = scan_resources(config, spec.driver_args)
        check_scan_gpus(str(config), workers, gpus_per_worker, spec.gpus_per_node)


def write_script(path: Path, script: str) -> None:
    """Write a job script 0700 (owner only, whatever the umask), atomically: it may hold a
    ``--tracking-uri`` with a database password, which the job passes to its processes through
    their environment, never their command lines (see scan.sbatch)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o700)
    with os.fdopen(fd, "w") as fh:
        fh.write(script)
    os.chmod(tmp, 0o700)
    tmp.replace(path)


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
        _check_gpus(spec, config)
        return SubmitResult(None, script, None, run_dir, log_path, scan_dir, tracking)

    if spec.kind == "scan" and scan_dir is not None:
        check_free(scan_dir)  # ScanLocked naming a live driver; the job's driver takes the lock
    partition = check_partition(spec)
    _check_gpus(spec, config)
    for sub in ("logs", "ray", "dask"):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    script_path = run_dir / f"{spec.kind}.sbatch"
    write_script(script_path, script)

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
