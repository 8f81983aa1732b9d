"""The ``jets`` sample: one jet per entry, the ANL toy detector (pT/eta/phi/mass response).

``jets_tail`` is the same detector with a non-Gaussian pT response: the standardised
fluctuation follows a Crystal Ball shape (Gaussian core, power-law low tail beyond
``-tail_alpha`` σ with exponent ``tail_n``), like a real calorimeter's leakage and dead
material. ``tail_alpha = None`` (``jets``) keeps the Gaussian.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jobs.simulate.common import ArrayDict, _power_law, _wrap_phi

__all__ = ["JetsConfig", "crystal_ball"]


@dataclass(frozen=True)
class JetsConfig:
    pt_range: tuple[float, float] = (20.0, 2000.0)
    pt_power: float = 2.5  # dN/dpT ~ pT^-power
    eta_max: float = 4.0
    mass_fraction_a: float = 2.0  # m/pT ~ Beta(a, b): mean ~0.11
    mass_fraction_b: float = 16.0
    response: float = 0.98
    res_constant: float = 0.03  # sigma(pT) = c*pT (+) s*sqrt(pT)
    res_stochastic: float = 0.5
    forward_eta: float = 2.5
    forward_res_factor: float = 3.0
    eff_central: float = 0.99
    eff_forward: float = 0.80
    pos_res_constant: float = 0.01  # sigma(eta) = sigma(phi) = c (+) k/pT
    pos_res_inverse: float = 0.5
    forward_pos_factor: float = 1.5
    mass_res: float = 0.10
    tail_alpha: float | None = None  # Crystal Ball low tail of the pT response (None: Gaussian)
    tail_n: float = 3.0


def crystal_ball(rng: np.random.Generator, n: int, alpha: float, power: float) -> np.ndarray:
    """Standardised Crystal Ball draws: N(0, 1) core for x > −alpha, density ∝
    (B − x)^−power below (continuous with its derivative at −alpha); exact inverse CDFs."""
    from scipy.special import ndtr, ndtri

    if alpha <= 0 or power <= 1:
        raise ValueError(f"Crystal Ball needs alpha > 0 and n > 1, got {alpha}, {power}")
    tail = power / alpha / (power - 1.0) * np.exp(-0.5 * alpha * alpha)
    core = np.sqrt(2.0 * np.pi) * float(ndtr(alpha))  # ∫ exp(−x²/2) over x > −alpha
    in_tail = rng.random(n) < tail / (tail + core)
    u = rng.random(n)
    lo = float(ndtr(-alpha))
    x = ndtri(lo + u * (1.0 - lo))  # the core: a normal truncated at -alpha
    # tail: t = B - x is Pareto on [power/alpha, inf) with index power - 1
    t = power / alpha * np.power(1.0 - u, -1.0 / (power - 1.0))
    return np.asarray(np.where(in_tail, (power / alpha - alpha) - t, x))


def _gen_jets(rng: np.random.Generator, n: int, cfg: JetsConfig) -> ArrayDict:
    lo, hi = cfg.pt_range
    pt = _power_law(rng.random(n), lo, hi, cfg.pt_power)
    eta = rng.uniform(-cfg.eta_max, cfg.eta_max, n)
    phi = rng.uniform(-np.pi, np.pi, n)
    m = pt * rng.beta(cfg.mass_fraction_a, cfg.mass_fraction_b, n)

    forward = np.abs(eta) > cfg.forward_eta
    ok = rng.random(n) < np.where(forward, cfg.eff_forward, cfg.eff_central)
    sigma_pt = np.sqrt((cfg.res_constant * pt) ** 2 + cfg.res_stochastic**2 * pt)
    sigma_pt *= np.where(forward, cfg.forward_res_factor, 1.0)
    # |.| reflects the rare negative fluctuation of a soft forward jet instead of dropping it
    if cfg.tail_alpha is None:
        fluct = rng.standard_normal(n)
    else:
        fluct = crystal_ball(rng, n, cfg.tail_alpha, cfg.tail_n)
    reco_pt = np.abs(cfg.response * pt + sigma_pt * fluct)
    sigma_pos = np.sqrt(cfg.pos_res_constant**2 + (cfg.pos_res_inverse / pt) ** 2)
    sigma_pos *= np.where(forward, cfg.forward_pos_factor, 1.0)
    reco_eta = eta + sigma_pos * rng.standard_normal(n)
    reco_phi = _wrap_phi(phi + sigma_pos * rng.standard_normal(n))
    reco_m = np.abs(m * (1.0 + cfg.mass_res * rng.standard_normal(n)))

    f32 = np.float32
    zero = np.zeros(n)
    return {
        "truth_pt": pt.astype(f32),
        "truth_eta": eta.astype(f32),
        "truth_phi": phi.astype(f32),
        "truth_m": m.astype(f32),
        "reco_pt": np.where(ok, reco_pt, zero).astype(f32),
        "reco_eta": np.where(ok, reco_eta, zero).astype(f32),
        "reco_phi": np.where(ok, reco_phi, zero).astype(f32),
        "reco_m": np.where(ok, reco_m, zero).astype(f32),
        "reco_ok": ok,
    }
