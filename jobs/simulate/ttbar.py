"""The ``ttbar`` sample: a Z′ → tt̄ resonance at several masses over a falling SM tt̄ background.

Truth (GeV): each event is signal with probability ``signal_fraction``. A signal event picks
its Z′ mass uniformly from ``masses`` and draws m_tt̄ from a Breit–Wigner of width
``width * M`` (cut at ``2 m_top``); the tt̄ decay angle follows 1 + cos²θ* (spin 1, qq̄ → Z′).
A background event draws m_tt̄ from the falling ``dN/dm ∝ (1 − x)^p1 / x^p2`` (x = m/√s,
from ``2 m_top``; about 4 % above 1 TeV, 0.4 % above 2 TeV) and a forward-peaked angle
∝ 1/(a − cos²θ*) (t-channel gg/qq̄ → tt̄). A fraction ``fake_fraction`` of the background has
no real b quarks (W+jets-like, mis-reconstructed tops). Background events carry a mass too,
drawn uniformly from ``masses``: the parameter of a parameterized classifier, which must not
tell signal from background on its own (Baldi et al. 2016).

Both tops get the same centre-of-mass momentum; the tt̄ system has rapidity ~ N(0, ``y_sigma``)
and no transverse recoil. Reco: relative smearing of m_tt̄ (``mass_res``) and of each top pT
(``pt_res``), η of each top from its smeared pT and rapidity, b-tag scores (Beta
distributions, real b or light), and a jet multiplicity 4 + Poisson growing with log m_tt̄.

Branches: ``truth_label`` (int32: 1 signal, 0 background), ``truth_mass`` (the Z′ mass, or
the mass drawn for a background event), ``truth_mtt``, ``reco_mtt``, ``reco_top{1,2}_pt``
(leading first), ``reco_top{1,2}_eta``, ``reco_abs_dy`` (|Δy| of the two tops),
``reco_btag{1,2}`` (in [0, 1]), ``reco_njets`` (float32 except the label).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jobs.simulate.common import SQRT_S, ArrayDict, _from_table, _inverse_cdf_table

__all__ = ["M_TOP", "TTBAR_MASSES", "TtbarConfig"]

M_TOP = 172.5
TTBAR_MASSES: tuple[float, ...] = (500.0, 750.0, 1000.0, 1250.0, 1500.0, 2000.0, 2500.0, 3000.0)
_MTT_MIN = 350.0
_MTT_MAX = 6000.0


@dataclass(frozen=True)
class TtbarConfig:
    masses: tuple[float, ...] = TTBAR_MASSES
    signal_fraction: float = 0.5
    width: float = 0.03  # Γ / M of the Z′
    p1: float = 8.0  # background (1 - x)^p1 / x^p2
    p2: float = 4.0
    forward: float = 1.1  # background angle ∝ 1 / (forward - cos²θ*)
    fake_fraction: float = 0.3  # background without real b quarks
    y_sigma: float = 0.9
    mass_res: float = 0.08
    pt_res: float = 0.08
    njets_slope: float = 0.6


def _signal_cos(u: np.ndarray) -> np.ndarray:
    """Inverse CDF of 1 + cos²θ on [-1, 1]: the real root of c³ + 3c + 4 − 8u = 0 (Cardano)."""
    q = 4.0 - 8.0 * u
    s = np.sqrt(q * q / 4.0 + 1.0)
    return np.asarray(np.cbrt(-q / 2.0 + s) + np.cbrt(-q / 2.0 - s))


def _background_cos(u: np.ndarray, a: float) -> np.ndarray:
    """Inverse CDF of 1 / (a − cos²θ) on [-1, 1] (a > 1)."""
    r = np.sqrt(a)
    t = np.arctanh(1.0 / r)
    return np.asarray(r * np.tanh((2.0 * u - 1.0) * t))


def _gen_ttbar(rng: np.random.Generator, n: int, cfg: TtbarConfig) -> ArrayDict:
    masses = np.asarray(cfg.masses, dtype=np.float64)
    signal = rng.random(n) < cfg.signal_fraction
    mass = masses[rng.integers(0, len(masses), n)]
    # signal: Breit-Wigner (Cauchy in m) around M, above the tt threshold
    bw = mass + 0.5 * cfg.width * mass * np.tan(np.pi * (rng.random(n) - 0.5))
    bw = np.clip(bw, _MTT_MIN, _MTT_MAX)
    table = _inverse_cdf_table("dijet", _MTT_MIN, _MTT_MAX, (cfg.p1, cfg.p2, 0.0))
    falling = _from_table(table, rng.random(n))
    mtt = np.where(signal, bw, falling)
    u = rng.random(n)
    cos = np.where(signal, _signal_cos(u), _background_cos(u, cfg.forward))
    # two tops back to back in the tt rest frame
    e_star = 0.5 * mtt
    p_star = np.sqrt(np.maximum(e_star**2 - M_TOP**2, 0.0))
    pt = p_star * np.sqrt(np.maximum(1.0 - cos**2, 0.0))
    y_star = np.arctanh(np.clip(p_star * cos / e_star, -0.999999, 0.999999))
    y_sys = cfg.y_sigma * rng.standard_normal(n)
    y1, y2 = y_sys + y_star, y_sys - y_star
    # reco
    reco_mtt = mtt * (1.0 + cfg.mass_res * rng.standard_normal(n))
    pt_a = np.abs(pt * (1.0 + cfg.pt_res * rng.standard_normal(n))) + 1.0
    pt_b = np.abs(pt * (1.0 + cfg.pt_res * rng.standard_normal(n))) + 1.0
    lead_a = pt_a >= pt_b
    pt1, pt2 = np.where(lead_a, pt_a, pt_b), np.where(lead_a, pt_b, pt_a)
    ya, yb = np.where(lead_a, y1, y2), np.where(lead_a, y2, y1)

    def eta(p: np.ndarray, y: np.ndarray) -> np.ndarray:
        mt = np.sqrt(p * p + M_TOP**2)
        return np.asarray(np.arcsinh(mt * np.sinh(y) / p))

    real_b = signal | (rng.random(n) >= cfg.fake_fraction)
    btag = np.where(
        real_b[:, None], rng.beta(5.0, 1.5, (n, 2)), rng.beta(1.2, 6.0, (n, 2))
    )  # (n, 2) scores, then ordered
    btag.sort(axis=1)
    lam = np.maximum(cfg.njets_slope * np.log(mtt / _MTT_MIN), 0.0) + 0.5
    njets = 4 + rng.poisson(lam)
    f32 = np.float32
    return {
        "truth_label": signal.astype(np.int32),
        "truth_mass": mass.astype(f32),
        "truth_mtt": mtt.astype(f32),
        "reco_mtt": reco_mtt.astype(f32),
        "reco_top1_pt": pt1.astype(f32),
        "reco_top2_pt": pt2.astype(f32),
        "reco_top1_eta": eta(pt1, ya).astype(f32),
        "reco_top2_eta": eta(pt2, yb).astype(f32),
        "reco_abs_dy": np.abs(y1 - y2).astype(f32),
        "reco_btag1": btag[:, 1].astype(f32),
        "reco_btag2": btag[:, 0].astype(f32),
        "reco_njets": njets.astype(f32),
    }


def check_masses(masses: tuple[float, ...]) -> tuple[float, ...]:
    """Sorted unique masses, each between the tt̄ threshold and √s, or a ValueError."""
    out = tuple(sorted({float(m) for m in masses}))
    if not out or not all(_MTT_MIN < m < min(_MTT_MAX, SQRT_S) for m in out):
        raise ValueError(
            f"masses must be a non-empty list within ({_MTT_MIN:g}, {_MTT_MAX:g}) GeV, "
            f"got {list(masses)}"
        )
    return out
