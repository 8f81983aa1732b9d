"""``hepscan slurm submit`` and ``hepscan slurm status``: thin click wrappers over
:func:`slurm.submit.submit` and :func:`slurm.cluster.status`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from slurm.cluster import status
from slurm.spec import JobSpec
from slurm.submit import submit, tracking_store
from tracking.store import ui_command

__all__ = ["slurm_group"]


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
    help="Job files: script, logs/, ray/, dask/, scan/ [default: hepscan-slurm/NAME-TIME next "
    "to --scan-dir (scan) or --out (preprocess), else in the current directory]",
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
@click.option(
    "--tracking-uri",
    default=None,
    envvar="HEPSCAN_TRACKING_URI",
    help="Existing MLflow tracking URI to log to; or HEPSCAN_TRACKING_URI, which keeps a "
    "database password off the command line.",
)
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
            click.echo(f"  review:   {ui_command(store)}")
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
