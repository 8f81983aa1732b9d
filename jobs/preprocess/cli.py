"""``hepscan preprocess``: the click command over :func:`jobs.preprocess.preprocess`.

hepscan preprocess configs/preprocess_zll.yaml --out data/zll-prep --input 'data/zll/*.root'
python -m jobs.preprocess configs/preprocess_zll.yaml --out data/zll-prep
"""

from __future__ import annotations

import json

import click

from jobs.manifest import SPLITS
from jobs.preprocess.driver import preprocess

__all__ = ["preprocess_command"]


@click.command("preprocess")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(), help="Output dataset directory.")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    help="ROOT file or glob (repeatable); replaces the config's 'files'.",
)
@click.option("--scheduler", default=None, help="Address of a running Dask scheduler.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Local Dask workers.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out when done.")
def preprocess_command(
    config: str,
    out: str,
    inputs: tuple[str, ...],
    scheduler: str | None,
    workers: int | None,
    overwrite: bool,
) -> None:
    """Select events from ROOT files into Parquet shards + manifest.json."""
    path = preprocess(
        config,
        out,
        inputs=list(inputs) or None,
        scheduler=scheduler,
        workers=workers,
        overwrite=overwrite,
    )
    man = json.loads(path.read_text())
    rows = " / ".join(f"{s} {man['splits'][s]['rows']}" for s in SPLITS)
    click.echo(f"preprocess: {man['counts']['rows']} rows ({rows}) -> {path}")
    for plot in man.get("plots", []):
        click.echo(f"preprocess: plot {path.parent / plot}")
