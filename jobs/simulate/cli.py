"""``hepscan simulate``: the command line over :func:`jobs.simulate.simulate`.

.. code-block:: bash

    hepscan simulate zll --events 10000000 --files 8 --seed 1 --out data/zll
    hepscan simulate jets --events 1000000 --files 2 --seed 1 --out data/jets
    hepscan simulate dijet --events 1000000 --files 2 --seed 1 --out data/dijet \
        --smearing 0.10 --mass-min 1TeV --mass-max 4TeV
    hepscan simulate ttbar --events 400000 --files 2 --seed 1 --out data/ttbar \
        --masses 500,1000,1.5TeV
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import click

from jobs.simulate.dijet import DijetConfig
from jobs.simulate.samples import sample_config
from jobs.simulate.write import simulate
from jobs.simulate.zll import ZllConfig
from models.errors import ConfigError

__all__ = ["MassType", "simulate_command"]

_UNITS = {"gev": 1.0, "tev": 1000.0}


class MassType(click.ParamType):
    """A mass in GeV: ``1500``, ``1500GeV`` or ``1.5TeV``."""

    name = "mass"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*", value)
        if match is None or match.group(2).lower() not in ("", *_UNITS):
            self.fail(f"{value!r} is not a mass such as 1500, 1500GeV or 1.5TeV", param, ctx)
        return float(match.group(1)) * _UNITS.get(match.group(2).lower(), 1.0)


@click.command("simulate")
@click.argument("sample")
@click.option("--events", "-n", type=click.IntRange(min=1), required=True, help="Total events.")
@click.option("--files", "-k", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--seed", "-s", type=click.IntRange(min=0), default=0, show_default=True)
@click.option("--out", "-o", type=click.Path(path_type=Path), required=True, help="Output dir.")
@click.option(
    "--smearing", type=float, default=None, help="dijet: relative mass resolution [0.03]."
)
@click.option(
    "--mass-min",
    type=MassType(),
    default=None,
    help="zll/dijet: truth mass window low edge (GeV, or e.g. 1.5TeV).",
)
@click.option(
    "--mass-max", type=MassType(), default=None, help="zll/dijet: truth mass window high edge."
)
@click.option(
    "--masses",
    default=None,
    help="ttbar: comma-separated Z' masses (GeV, or e.g. 1.5TeV) [500,750,...,3000].",
)
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    default=500_000,
    show_default=True,
    help="Events in memory per file.",
)
@click.option(
    "--workers",
    "-j",
    type=click.IntRange(min=1),
    default=None,
    help="Files in parallel [min(files, CPUs)].",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
def simulate_command(
    sample: str,
    events: int,
    files: int,
    seed: int,
    out: Path,
    smearing: float | None,
    mass_min: float | None,
    mass_max: float | None,
    masses: str | None,
    chunk_size: int,
    workers: int | None,
    progress: bool,
) -> None:
    """Simulate SAMPLE (zll, jets, dijet, ttbar, recoil or jets_tail) into ROOT files in --out."""
    mass_list: tuple[float, ...] | None = None
    if masses is not None:
        parse = MassType()
        mass_list = tuple(parse.convert(v, None, None) for v in masses.split(",") if v.strip())
    mass_range: tuple[float, float] | None = None
    if mass_min is not None or mass_max is not None:
        default = sample_config(sample)
        if not isinstance(default, (ZllConfig, DijetConfig)):
            raise ConfigError(
                "options --mass-min/--mass-max apply to samples 'zll' and 'dijet' only"
            )
        lo, hi = default.mass_range
        mass_range = (
            mass_min if mass_min is not None else lo,
            mass_max if mass_max is not None else hi,
        )
    start = time.perf_counter()
    paths = simulate(
        sample,
        events,
        files,
        seed,
        out,
        smearing=smearing,
        mass_range=mass_range,
        masses=mass_list,
        chunk_size=chunk_size,
        workers=workers,
        progress=progress,
    )
    elapsed = time.perf_counter() - start
    size = sum(p.stat().st_size for p in paths)
    names = paths[0].name if len(paths) == 1 else f"{paths[0].name} .. {paths[-1].name}"
    click.echo(
        f"wrote {events} {sample} events in {len(paths)} file(s) ({names}, {size / 1e6:.1f} MB)"
        f" to {out} in {elapsed:.1f} s ({events / max(elapsed, 1e-9):,.0f} events/s)"
    )
