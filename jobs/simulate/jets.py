"""The ``jets`` sample: one jet per entry, the ANL toy detector (pT/eta/phi/mass response)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jobs.simulate.common import ArrayDict, _power_law, _wrap_phi

__all__ = ["JetsConfig"]


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
    reco_pt = np.abs(cfg.response * pt + sigma_pt * rng.standard_normal(n))
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
