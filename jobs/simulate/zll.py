"""The ``zll`` sample: Z/gamma* -> ee or mumu with a fast lepton detector simulation (GeV).

Truth: Breit-Wigner over a Drell-Yan continuum, Z pT and rapidity, 1 + cos^2 decay; reco:
per-flavour efficiency, pT/eta/phi smearing, charge flips, bremsstrahlung, isolation, and
non-prompt/fake leptons (see :class:`ZllConfig` and :class:`LeptonDetector`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jobs.simulate.common import (
    GAMMA_Z,
    M_ELECTRON,
    M_MUON,
    M_Z,
    ArrayDict,
    _from_table,
    _inverse_cdf_table,
    _power_law,
    _truncated_normal,
    _wrap_phi,
)

__all__ = ["ELECTRON", "MUON", "LeptonDetector", "ZllConfig"]


@dataclass(frozen=True)
class LeptonDetector:
    """Fast-simulation response for one lepton flavour."""

    eta_max: float  # acceptance (and tracker/calorimeter coverage)
    pt_min: float  # acceptance threshold on reco pT
    barrel_eta: float  # |eta| above which the endcap parameters apply
    eff_barrel: float
    eff_endcap: float
    res_stochastic: float  # sigma/pT = s/sqrt(pT) (+) c (+) b*pT, in the barrel
    res_constant: float
    res_linear: float  # per GeV
    endcap_res_factor: float
    eta_res: float
    phi_res: float
    charge_flip_barrel: float
    charge_flip_endcap: float
    brem_fraction: float  # electrons: fraction losing energy to unrecovered bremsstrahlung
    brem_mean_loss: float


MUON = LeptonDetector(
    eta_max=2.4,
    pt_min=15.0,
    barrel_eta=1.2,
    eff_barrel=0.97,
    eff_endcap=0.90,
    res_stochastic=0.0,
    res_constant=0.010,
    res_linear=1.0e-4,
    endcap_res_factor=2.0,
    eta_res=1.0e-3,
    phi_res=1.0e-3,
    charge_flip_barrel=0.0,  # muons flip only through the curvature smearing itself
    charge_flip_endcap=0.0,
    brem_fraction=0.0,
    brem_mean_loss=0.0,
)
ELECTRON = LeptonDetector(
    eta_max=2.5,
    pt_min=15.0,
    barrel_eta=1.2,
    eff_barrel=0.95,
    eff_endcap=0.88,
    res_stochastic=0.08,
    res_constant=0.010,
    res_linear=1.5e-4,
    endcap_res_factor=2.0,
    eta_res=1.5e-3,
    phi_res=1.5e-3,
    charge_flip_barrel=0.002,
    charge_flip_endcap=0.010,
    brem_fraction=0.15,
    brem_mean_loss=0.03,
)


@dataclass(frozen=True)
class ZllConfig:
    mass_range: tuple[float, float] = (50.0, 150.0)
    continuum_fraction: float = 0.05  # Drell-Yan gamma* continuum under the Z
    continuum_power: float = 2.0  # dN/dm ~ m^-power
    pt_core_shape: float = 1.8  # Z pT: Gamma core ...
    pt_core_scale: float = 4.0
    pt_tail_fraction: float = 0.2  # ... plus a truncated Lomax (power-law) tail
    pt_tail_alpha: float = 2.2
    pt_tail_scale: float = 25.0
    pt_max: float = 1000.0
    y_sigma: float = 1.9
    y_max: float = 4.0
    pileup_mean: float = 30.0
    iso_sum_base: float = 0.4  # GeV in the cone for a prompt lepton without pile-up ...
    iso_sum_per_vertex: float = 0.04  # ... plus this per pile-up vertex
    fake_mean: float = 0.2  # non-prompt/fake leptons per event
    fake_pt_mean: float = 6.0  # above the acceptance threshold, exponential
    fake_iso_shape: float = 2.0
    fake_iso_scale: float = 0.3


def _z_pt(rng: np.random.Generator, n: int, cfg: ZllConfig) -> np.ndarray:
    core = rng.gamma(cfg.pt_core_shape, cfg.pt_core_scale, n)
    # truncated Lomax by inverse CDF so no event piles up at pt_max
    f_max = 1.0 - (1.0 + cfg.pt_max / cfg.pt_tail_scale) ** (-cfg.pt_tail_alpha)
    u = rng.random(n) * f_max
    tail = cfg.pt_tail_scale * ((1.0 - u) ** (-1.0 / cfg.pt_tail_alpha) - 1.0)
    pt = np.where(rng.random(n) < cfg.pt_tail_fraction, tail, core)
    return np.minimum(pt, cfg.pt_max)


def _decay(
    rng: np.random.Generator,
    mass: np.ndarray,
    pt: np.ndarray,
    y: np.ndarray,
    phi: np.ndarray,
    lepton_mass: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Two-body decay with a 1 + cos^2(theta*) distribution, boosted to the lab.

    Returns the lab four-momenta (E, px, py, pz) of the negative and the positive lepton,
    each of shape (4, n).
    """
    n = len(mass)
    # inverse CDF of (1 + c^2): c^3 + 3c + 4 - 8u = 0 has a single real root (Cardano)
    q = 4.0 - 8.0 * rng.random(n)
    disc = np.sqrt(q * q / 4.0 + 1.0)
    cos_t = np.cbrt(-q / 2.0 + disc) + np.cbrt(-q / 2.0 - disc)
    cos_t = np.clip(cos_t, -1.0, 1.0)
    sin_t = np.sqrt(1.0 - cos_t * cos_t)
    phi_star = rng.uniform(-np.pi, np.pi, n)
    p_star = np.sqrt(np.maximum(mass * mass / 4.0 - lepton_mass * lepton_mass, 0.0))
    e_star = mass / 2.0
    px_s = p_star * sin_t * np.cos(phi_star)
    py_s = p_star * sin_t * np.sin(phi_star)
    pz_s = p_star * cos_t

    mt = np.sqrt(mass * mass + pt * pt)
    e_z = mt * np.cosh(y)
    bx = pt * np.cos(phi) / e_z
    by = pt * np.sin(phi) / e_z
    bz = mt * np.sinh(y) / e_z
    gamma = e_z / mass
    coef = gamma * gamma / (gamma + 1.0)

    out = []
    for sign in (1.0, -1.0):
        bp = sign * (bx * px_s + by * py_s + bz * pz_s)
        k = coef * bp + gamma * e_star
        out.append(
            np.stack(
                [
                    gamma * (e_star + bp),
                    sign * px_s + k * bx,
                    sign * py_s + k * by,
                    sign * pz_s + k * bz,
                ]
            )
        )
    return out[0], out[1]


def _pt_eta_phi(p4: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    pt = np.hypot(p4[1], p4[2])
    eta = np.arcsinh(p4[3] / np.maximum(pt, 1e-12))
    phi = np.arctan2(p4[2], p4[1])
    return pt, eta, phi


def _by_flavour(is_mu: np.ndarray, field: str) -> np.ndarray:
    return np.where(is_mu, getattr(MUON, field), getattr(ELECTRON, field))


def _reconstruct_leptons(
    rng: np.random.Generator,
    pt: np.ndarray,
    eta: np.ndarray,
    phi: np.ndarray,
    charge: np.ndarray,
    is_mu: np.ndarray,
    pileup: np.ndarray,
    cfg: ZllConfig,
) -> dict[str, np.ndarray]:
    """Efficiency, smearing, acceptance and isolation for prompt leptons (one per event)."""
    n = len(pt)
    abs_eta = np.abs(eta)
    endcap = abs_eta > _by_flavour(is_mu, "barrel_eta")
    eta_max = _by_flavour(is_mu, "eta_max")
    eff = np.where(endcap, _by_flavour(is_mu, "eff_endcap"), _by_flavour(is_mu, "eff_barrel"))
    detected = (abs_eta < eta_max) & (rng.random(n) < eff)

    stochastic = _by_flavour(is_mu, "res_stochastic")
    constant = _by_flavour(is_mu, "res_constant")
    linear = _by_flavour(is_mu, "res_linear")
    rel_res = np.sqrt(stochastic**2 / pt + constant**2 + (linear * pt) ** 2)
    rel_res *= np.where(endcap, _by_flavour(is_mu, "endcap_res_factor"), 1.0)
    z = rng.standard_normal(n)
    # muons: Gaussian in the track curvature q/pT (tails to high pT, rare charge flips);
    # electrons: Gaussian in the calorimeter energy, with a bremsstrahlung low tail
    curvature = 1.0 + rel_res * z
    mu_pt = pt / np.maximum(np.abs(curvature), 1e-6)
    mu_charge = np.where(curvature < 0.0, -charge, charge)
    brem = np.where(
        rng.random(n) < ELECTRON.brem_fraction,
        rng.exponential(ELECTRON.brem_mean_loss, n),
        0.0,
    )
    e_pt = np.abs(pt * (1.0 + rel_res * z) * np.maximum(1.0 - brem, 0.05))
    flip_p = np.where(
        endcap, _by_flavour(is_mu, "charge_flip_endcap"), _by_flavour(is_mu, "charge_flip_barrel")
    )
    e_charge = np.where(rng.random(n) < flip_p, -charge, charge)
    reco_pt = np.where(is_mu, mu_pt, e_pt)
    reco_charge = np.where(is_mu, mu_charge, e_charge)
    reco_eta = eta + _by_flavour(is_mu, "eta_res") * rng.standard_normal(n)
    reco_phi = _wrap_phi(phi + _by_flavour(is_mu, "phi_res") * rng.standard_normal(n))

    accepted = detected & (reco_pt > _by_flavour(is_mu, "pt_min")) & (np.abs(reco_eta) < eta_max)
    # cone sum of other tracks: a prompt lepton sees mostly pile-up
    cone_sum = rng.exponential(1.0, n) * (cfg.iso_sum_base + cfg.iso_sum_per_vertex * pileup)
    iso = cone_sum / np.maximum(reco_pt, 1e-6)
    return {
        "ok": accepted,
        "pt": reco_pt,
        "eta": reco_eta,
        "phi": reco_phi,
        "charge": reco_charge,
        "iso": iso,
    }


def _invariant_mass(
    pt1: np.ndarray,
    eta1: np.ndarray,
    phi1: np.ndarray,
    pt2: np.ndarray,
    eta2: np.ndarray,
    phi2: np.ndarray,
    m_lep: np.ndarray,
) -> np.ndarray:
    def four(pt: np.ndarray, eta: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, ...]:
        pz = pt * np.sinh(eta)
        e = np.sqrt(pt * pt + pz * pz + m_lep * m_lep)
        return e, pt * np.cos(phi), pt * np.sin(phi), pz

    e1, x1, y1, z1 = four(pt1, eta1, phi1)
    e2, x2, y2, z2 = four(pt2, eta2, phi2)
    m2 = (e1 + e2) ** 2 - (x1 + x2) ** 2 - (y1 + y2) ** 2 - (z1 + z2) ** 2
    return np.asarray(np.sqrt(np.maximum(m2, 0.0)))


def _gen_zll(rng: np.random.Generator, n: int, cfg: ZllConfig) -> ArrayDict:
    lo, hi = cfg.mass_range
    # truth Z/gamma*: relativistic Breit-Wigner over a falling continuum
    u = rng.random(n)
    bw = _from_table(_inverse_cdf_table("bw", lo, hi, (M_Z, GAMMA_Z)), u)
    continuum = _power_law(u, lo, hi, cfg.continuum_power)
    mass = np.where(rng.random(n) < cfg.continuum_fraction, continuum, bw)
    z_pt = _z_pt(rng, n, cfg)
    z_y = _truncated_normal(rng, n, cfg.y_sigma, cfg.y_max)
    z_phi = rng.uniform(-np.pi, np.pi, n)
    is_mu = rng.random(n) < 0.5
    flavour = np.where(is_mu, 13, 11).astype(np.int32)
    m_lep = np.where(is_mu, M_MUON, M_ELECTRON)
    pileup = rng.poisson(cfg.pileup_mean, n).astype(np.int32)

    neg, pos = _decay(rng, mass, z_pt, z_y, z_phi, m_lep)
    pt_n, eta_n, phi_n = _pt_eta_phi(neg)
    pt_p, eta_p, phi_p = _pt_eta_phi(pos)
    neg_leads = pt_n >= pt_p
    truth = {
        "l1_pt": np.where(neg_leads, pt_n, pt_p),
        "l1_eta": np.where(neg_leads, eta_n, eta_p),
        "l1_phi": np.where(neg_leads, phi_n, phi_p),
        "l1_charge": np.where(neg_leads, -1, 1).astype(np.int32),
        "l2_pt": np.where(neg_leads, pt_p, pt_n),
        "l2_eta": np.where(neg_leads, eta_p, eta_n),
        "l2_phi": np.where(neg_leads, phi_p, phi_n),
        "l2_charge": np.where(neg_leads, 1, -1).astype(np.int32),
    }
    reco = [
        _reconstruct_leptons(
            rng,
            truth[f"{k}_pt"],
            truth[f"{k}_eta"],
            truth[f"{k}_phi"],
            truth[f"{k}_charge"],
            is_mu,
            pileup,
            cfg,
        )
        for k in ("l1", "l2")
    ]
    reco_ok = reco[0]["ok"] & reco[1]["ok"]
    reco_mass = _invariant_mass(
        reco[0]["pt"],
        reco[0]["eta"],
        reco[0]["phi"],
        reco[1]["pt"],
        reco[1]["eta"],
        reco[1]["phi"],
        m_lep,
    )
    reco_mass = np.where(reco_ok, reco_mass, 0.0)

    # fakes and non-prompt leptons: soft, badly isolated, random flavour and charge
    n_fake = rng.poisson(cfg.fake_mean, n)
    fake_evt = np.repeat(np.arange(n), n_fake)
    n_f = len(fake_evt)
    fake_mu = rng.random(n_f) < 0.5
    fake_pt = _by_flavour(fake_mu, "pt_min") + rng.exponential(cfg.fake_pt_mean, n_f)
    fake_eta_max = _by_flavour(fake_mu, "eta_max")
    fake_eta = rng.uniform(-1.0, 1.0, n_f) * fake_eta_max
    fake_phi = rng.uniform(-np.pi, np.pi, n_f)
    fake_charge = np.where(rng.random(n_f) < 0.5, -1, 1)
    fake_cone = rng.exponential(1.0, n_f) * (
        cfg.iso_sum_base + cfg.iso_sum_per_vertex * pileup[fake_evt]
    )
    fake_iso = rng.gamma(cfg.fake_iso_shape, cfg.fake_iso_scale, n_f) + fake_cone / fake_pt

    # the event's reconstructed-lepton collection, ordered by decreasing pT
    evt = np.arange(n)
    ok1, ok2 = reco[0]["ok"], reco[1]["ok"]
    flav_l = np.where(is_mu, 13, 11)

    def cat(a1: np.ndarray, a2: np.ndarray, af: np.ndarray) -> np.ndarray:
        return np.concatenate([a1[ok1], a2[ok2], af])

    c_evt = cat(evt, evt, fake_evt)
    c_pt = cat(reco[0]["pt"], reco[1]["pt"], fake_pt)
    order = np.lexsort((-c_pt, c_evt))
    lep = {
        "pt": c_pt,
        "eta": cat(reco[0]["eta"], reco[1]["eta"], fake_eta),
        "phi": cat(reco[0]["phi"], reco[1]["phi"], fake_phi),
        "charge": cat(reco[0]["charge"], reco[1]["charge"], fake_charge),
        "flavour": cat(flav_l, flav_l, np.where(fake_mu, 13, 11)),
        "iso": cat(reco[0]["iso"], reco[1]["iso"], fake_iso),
        "truth_index": cat(np.zeros(n, np.int32), np.ones(n, np.int32), np.full(n_f, -1)),
    }
    f32, i32 = np.float32, np.int32
    out: ArrayDict = {
        "pileup": pileup,
        "truth_flavour": flavour,
        "truth_mass": mass.astype(f32),
        "truth_pt": z_pt.astype(f32),
        "truth_y": z_y.astype(f32),
    }
    for key, value in truth.items():
        out[f"truth_{key}"] = value.astype(i32 if key.endswith("charge") else f32)
    out["reco_ok"] = reco_ok
    out["reco_mass"] = reco_mass.astype(f32)
    out["nlep"] = np.bincount(c_evt, minlength=n).astype(np.int32)
    int_fields = ("charge", "flavour", "truth_index")
    for key, value in lep.items():
        out[f"lep_{key}"] = value[order].astype(i32 if key in int_fields else f32)
    return out
