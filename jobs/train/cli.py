"""``hepscan train``: one configuration from the command line (also inside ``horovodrun``).

.. code-block:: bash

    hepscan train configs/train_unfold_zll.yaml                               # one process
    hepscan train configs/train_unfold_zll.yaml --workers 2 --backend horovod # horovod.runner, gloo
    hepscan train configs/train_unfold_zll.yaml --workers 2 --backend ddp     # torch.multiprocessing
    horovodrun -np 2 --gloo python -m jobs.train configs/train_unfold_zll.yaml --backend horovod
"""

from __future__ import annotations

import dataclasses
import os

import click

from jobs.backends import BACKENDS, make_comm
from jobs.train.config import _FIELD_TYPES, load_train_config, train_config_from_dict
from jobs.train.launch import _loop, _share_cores, train
from jobs.train.session import TrainSession

__all__ = ["PrintReporter", "train_command"]


class PrintReporter:
    """One line per epoch on stdout."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor

    def report(self, epoch: int, metrics: dict[str, float], checkpoint_path: str | None) -> None:
        shown = {
            k: v
            for k, v in metrics.items()
            if k in ("train_loss", self.monitor, "samples_per_s", "epoch_time_s")
        }
        text = " ".join(f"{k}={v:.5g}" for k, v in shown.items())
        click.echo(f"epoch {epoch}: {text}")


@click.command("train")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--workers", type=int, default=None, help="data-parallel ranks (overrides config)")
@click.option("--backend", type=click.Choice(BACKENDS), default=None, help="overrides config")
@click.option("--epochs", type=int, default=None, help="overrides config")
@click.option("--checkpoint-dir", default=None, help="overrides config; resumes from last.pt")
@click.option("--max-rows", type=int, default=None, help="cap rows per split")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N")
def train_command(
    config_path: str,
    workers: int | None,
    backend: str | None,
    epochs: int | None,
    checkpoint_dir: str | None,
    max_rows: int | None,
    device: str | None,
) -> None:
    """Train one configuration (YAML TrainConfig) from the dataset's shards."""
    import yaml

    base = dataclasses.asdict(load_train_config(config_path))
    overrides = {
        "workers": workers,
        "backend": backend,
        "epochs": epochs,
        "checkpoint_dir": checkpoint_dir,
        "max_rows": max_rows,
        "device": device,
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    if workers is not None and workers > 1 and backend is None and base["backend"] == "single":
        base["backend"] = "horovod"
    source = f"{config_path} (with command-line options)"
    config = train_config_from_dict({k: v for k, v in base.items() if k in _FIELD_TYPES}, source)
    if "OMPI_COMM_WORLD_RANK" in os.environ or "HOROVOD_RANK" in os.environ:
        # Already inside horovodrun: this process is one rank.
        _share_cores(int(os.environ.get("HOROVOD_LOCAL_SIZE", "1")))
        session = TrainSession(config, comm=make_comm("horovod"))
        result = _loop(session, PrintReporter(config.monitor))
        if session.rank != 0:
            return
    else:
        result = train(config, PrintReporter(config.monitor))
    summary = {
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "best_epoch": result.best_epoch,
        f"best_{config.monitor}": result.best_metric,
        "checkpoint": result.checkpoint_path,
    }
    click.echo(yaml.safe_dump(summary, sort_keys=False).rstrip())
