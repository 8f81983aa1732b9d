"""``hepscan scan``, ``hepscan resume`` and ``hepscan report``: thin click wrappers.

.. code-block:: bash

    hepscan scan configs/unfold_zll.yaml --set num_trials=24 --scan-dir scans/zll
    hepscan resume scans/zll          # after SIGTERM/SIGINT (exit code 3) or a crash
    hepscan report scans/zll
"""

from __future__ import annotations

import json
import sys

import click

from scan.config import parse_override
from scan.driver import launch, resume
from scan.report import ScanResult, build_report
from scan.signals import EXIT_INTERRUPTED, ScanInterrupted
from scan.state import TUNE_DIR

__all__ = ["EXIT_NO_RESULT", "report_command", "resume_command", "scan_command"]

EXIT_NO_RESULT = 1


def _print_result(result: ScanResult) -> None:
    from tracking.store import ui_command

    click.echo(result.table())
    click.echo("")
    click.echo(f"best trial: {result.best_trial_id}  {result.best_metrics}")
    click.echo(f"best config: {json.dumps(result.best_config, default=str)}")
    click.echo(f"MLflow parent run: {result.parent_run_id}")
    click.echo(f"review: {ui_command(result.tracking_uri)}")


def _finish(result: ScanResult) -> None:
    """Print the result; a scan with nothing to show must not look like a success to sbatch."""
    _print_result(result)
    if result.best_trial_id is None:
        click.echo(
            f"hepscan: no trial reported the objective (every trial failed); their errors are "
            f"in {result.scan_dir / TUNE_DIR}/trial_*/error.txt",
            err=True,
        )
        sys.exit(EXIT_NO_RESULT)


@click.command("scan")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override a config key")
@click.option("--scan-dir", default=None, help="where the scan keeps its state")
@click.option("--address", default=None, help="Ray cluster address (default: start Ray locally)")
@click.option(
    "--tracking-uri",
    default=None,
    envvar="HEPSCAN_TRACKING_URI",
    help="MLflow tracking URI (default: sqlite in dir); or HEPSCAN_TRACKING_URI, which keeps a "
    "password out of the command line",
)
@click.option("--register-top", type=int, default=None, metavar="K", help="register the K best")
def scan_command(
    config_path: str,
    sets: tuple[str, ...],
    scan_dir: str | None,
    address: str | None,
    tracking_uri: str | None,
    register_top: int | None,
) -> None:
    """Run a hyperparameter scan from a YAML scan config."""
    overrides = dict(parse_override(s) for s in sets)
    if register_top is not None:
        overrides["register_top"] = register_top
    try:
        result = launch(
            config_path,
            overrides,
            scan_dir=scan_dir,
            address=address,
            tracking_uri=tracking_uri,
        )
    except ScanInterrupted as exc:
        click.echo(f"hepscan: {exc}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    _finish(result)


@click.command("resume")
@click.argument("scan_dir", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--address", default=None, help="Ray cluster address (default: start Ray locally)")
@click.option(
    "--tracking-uri",
    default=None,
    envvar="HEPSCAN_TRACKING_URI",
    help="MLflow tracking URI (default: the scan's); or HEPSCAN_TRACKING_URI",
)
def resume_command(scan_dir: str, address: str | None, tracking_uri: str | None) -> None:
    """Continue an interrupted scan."""
    try:
        result = resume(scan_dir, address=address, tracking_uri=tracking_uri)
    except ScanInterrupted as exc:
        click.echo(f"hepscan: {exc}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    _finish(result)


@click.command("report")
@click.argument("scan_dir", metavar="DIR", type=click.Path(file_okay=False, exists=True))
def report_command(scan_dir: str) -> None:
    """Summarise a scan: trials, best trial, parameter importances, plots."""
    _, text, _ = build_report(scan_dir)
    click.echo(text)
