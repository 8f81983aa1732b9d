"""The ``dijet`` sample: truth m_jj from the CMS 13 TeV dijet fit function, Gaussian smearing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jobs.simulate.common import SQRT_S, ArrayDict, _from_table, _inverse_cdf_table

__all__ = ["DijetConfig", "dijet_pdf"]


@dataclass(frozen=True)
class DijetConfig:
    mass_range: tuple[float, float] = (1500.0, 3000.0)
    p1: float = 4.82
    p2: float = 7.19
    p3: float = 0.291
    smearing: float = 0.03


def dijet_pdf(m: np.ndarray, cfg: DijetConfig | None = None) -> np.ndarray:
    """The CMS 13 TeV dijet fit function (unnormalised, p0 = 1) at masses ``m`` in GeV."""
    cfg = cfg or DijetConfig()
    x = np.asarray(m, dtype=np.float64) / SQRT_S
    return np.asarray((1.0 - x) ** cfg.p1 / x ** (cfg.p2 + cfg.p3 * np.log(x)))


def _gen_dijet(rng: np.random.Generator, n: int, cfg: DijetConfig) -> ArrayDict:
    lo, hi = cfg.mass_range
    table = _inverse_cdf_table("dijet", lo, hi, (cfg.p1, cfg.p2, cfg.p3))
    truth = _from_table(table, rng.random(n))
    reco = truth * (1.0 + cfg.smearing * rng.standard_normal(n))
    return {"truth_mjj": truth.astype(np.float32), "reco_mjj": reco.astype(np.float32)}
