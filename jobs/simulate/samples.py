"""The sample registry: names, their configurations and generators, and the user's options."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from jobs.simulate.common import M_MUON, SQRT_S, ArrayDict
from jobs.simulate.dijet import DijetConfig, _gen_dijet
from jobs.simulate.jets import JetsConfig, _gen_jets
from jobs.simulate.recoil import RecoilConfig, _gen_recoil
from jobs.simulate.ttbar import TtbarConfig, _gen_ttbar, check_masses
from jobs.simulate.zll import ZllConfig, _gen_zll
from models.errors import ConfigError

__all__ = ["SAMPLES", "SampleConfig", "sample_config"]

SAMPLES: tuple[str, ...] = ("zll", "jets", "dijet", "ttbar", "recoil", "jets_tail")
# jets_tail: the jets detector with a Crystal Ball low tail in the pT response (12 % of jets)
JETS_TAIL = JetsConfig(tail_alpha=1.5, tail_n=3.0)


SampleConfig = ZllConfig | JetsConfig | DijetConfig | TtbarConfig | RecoilConfig


def sample_config(
    sample: str,
    *,
    smearing: float | None = None,
    mass_range: tuple[float, float] | None = None,
    masses: tuple[float, ...] | None = None,
) -> SampleConfig:
    """The generator configuration of ``sample`` with the user's options applied."""
    if sample not in SAMPLES:
        raise ConfigError(f"unknown sample {sample!r}: valid samples are {', '.join(SAMPLES)}")
    if masses is not None and sample != "ttbar":
        raise ConfigError(f"option 'masses' applies to sample 'ttbar' only, not {sample!r}")
    if sample == "ttbar":
        if smearing is not None or mass_range is not None:
            raise ConfigError("options 'smearing' and 'mass_range' do not apply to sample 'ttbar'")
        if masses is None:
            return TtbarConfig()
        try:
            return TtbarConfig(masses=check_masses(tuple(masses)))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"option 'masses': {exc}") from None
    if smearing is not None:
        if sample != "dijet":
            raise ConfigError(f"option 'smearing' applies to sample 'dijet' only, not {sample!r}")
        if not (0.0 < smearing < 1.0):
            raise ConfigError(f"option 'smearing' must lie in (0, 1), got {smearing}")
    if mass_range is not None:
        if sample in ("jets", "recoil", "jets_tail"):
            raise ConfigError("option 'mass_range' applies to samples 'zll' and 'dijet' only")
        lo, hi = (float(v) for v in mass_range)
        lower_limit = 2 * M_MUON if sample == "zll" else 0.0
        if not (lower_limit < lo < hi < SQRT_S):
            raise ConfigError(
                f"option 'mass_range' must satisfy {lower_limit:g} < min < max < {SQRT_S:g} GeV,"
                f" got ({lo:g}, {hi:g})"
            )
        mass_range = (lo, hi)
    if sample == "zll":
        return ZllConfig() if mass_range is None else ZllConfig(mass_range=mass_range)
    if sample == "jets":
        return JetsConfig()
    if sample == "recoil":
        return RecoilConfig()
    if sample == "jets_tail":
        return JETS_TAIL
    kwargs: dict[str, Any] = {}
    if smearing is not None:
        kwargs["smearing"] = float(smearing)
    if mass_range is not None:
        kwargs["mass_range"] = mass_range
    return DijetConfig(**kwargs)


_GENERATORS: dict[str, Callable[[np.random.Generator, int, Any], ArrayDict]] = {
    "zll": _gen_zll,
    "jets": _gen_jets,
    "jets_tail": _gen_jets,
    "dijet": _gen_dijet,
    "ttbar": _gen_ttbar,
    "recoil": _gen_recoil,
}
