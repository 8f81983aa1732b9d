"""The ``hepscan`` command line: one group, each subcommand a thin wrapper over a Python function.

Subcommands live next to the code they run and are imported only when invoked, so
``hepscan --help`` does not start Ray, Dask or MLflow.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

# name -> "module:attribute" of a click.Command
SUBCOMMANDS: dict[str, str] = {
    "simulate": "jobs.simulate.cli:simulate_command",
    "preprocess": "jobs.preprocess:preprocess_command",
    "train": "jobs.train.cli:train_command",
    "scan": "scan.commands:scan_command",
    "resume": "scan.commands:resume_command",
    "report": "scan.commands:report_command",
    "apply": "scan.application:apply_command",
    "slurm": "slurm.cli:slurm_group",
}
# Listed by `hepscan --help` without importing the modules (and their engines).
SUMMARIES: dict[str, str] = {
    "simulate": "Simulate a sample (zll, jets, dijet, ttbar, recoil, jets_tail) into ROOT files.",
    "preprocess": "Turn ROOT files into Parquet training shards with Dask + uproot.",
    "train": "Train one configuration (single process, Horovod or DDP).",
    "scan": "Run a hyperparameter scan (Ray Tune + Optuna + ASHA, MLflow).",
    "resume": "Continue an interrupted scan.",
    "report": "Summarise a scan: trials, best trial, importances, plots.",
    "apply": "Apply a scan's best (or a registered) model: unfold or fast-simulate.",
    "slurm": "Submit scans and preprocessing to SLURM.",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(SUBCOMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, SUMMARIES[name]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = SUBCOMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command


@click.group(cls=LazyGroup)
@click.version_option(package_name="hepscan")
def cli() -> None:
    """hepscan: distributed hyperparameter scans for HEP machine learning."""


def main(argv: list[str] | None = None) -> Any:
    from models.errors import HepscanError

    try:
        return cli.main(args=argv, prog_name="hepscan", standalone_mode=False)
    except HepscanError as exc:
        click.echo(f"hepscan: error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("hepscan: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
