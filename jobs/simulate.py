"""Simulated samples (``zll``, ``jets``, ``dijet``) written as ROOT files (TTree ``events``).

Launch::

    hepscan simulate zll --events 10000000 --files 8 --seed 1 --out data/zll
    hepscan simulate jets --events 1000000 --files 2 --seed 1 --out data/jets
    hepscan simulate dijet --events 1000000 --files 2 --seed 1 --out data/dijet \
        --smearing 0.10 --mass-min 1TeV --mass-max 4TeV

or from Python::

    from jobs.simulate import simulate
    paths = simulate("zll", 200_000, files=4, seed=1, out="data/zll")

One Dask task writes one file. Every file draws from its own ``SeedSequence(seed).spawn(files)``
child, and inside a file every block of ``RNG_BLOCK`` events from its own grandchild, so the
output depends only on (sample, events, files, seed, options): not on the worker count, the
scheduler or ``chunk_size``. ``chunk_size`` only bounds memory: a file is generated and
written one chunk at a time (``TTree.extend``), so memory does not grow with the number of
events. Files are written under temporary names and renamed only once every file is complete.

``event_id`` is ``(file_index << 40) | index_in_file`` (uint64): unique across the files of a
sample and stable when the files are regenerated.

Branches (floats are float32, integers int32 unless stated):

``zll`` (Z/gamma* -> ee or mumu, GeV):
    ``event_id`` (uint64), ``pileup``, ``truth_flavour`` (11 or 13), ``truth_mass``,
    ``truth_pt``, ``truth_y``, ``truth_l{1,2}_{pt,eta,phi,charge}`` (l1 is the harder lepton),
    ``reco_ok`` (bool: both truth leptons reconstructed and in acceptance), ``reco_mass``
    (mass of the two matched reco leptons, 0 when not ``reco_ok``), and the jagged
    reconstructed-lepton collection ``nlep``, ``lep_{pt,eta,phi,charge,flavour,iso,truth_index}``
    sorted by decreasing pT (``lep_truth_index``: 0 or 1 for truth lepton 1 or 2, -1 for fakes).
``jets`` (one jet per entry, the ANL toy detector):
    ``event_id``, ``truth_{pt,eta,phi,m}``, ``reco_{pt,eta,phi,m}``, ``reco_ok`` (reco_* are 0
    when the jet is lost).
``dijet``:
    ``event_id``, ``truth_mjj``, ``reco_mjj`` (GeV).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue as queue_mod
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import click
import numpy as np

from models.errors import ConfigError, OutputError

SAMPLES: tuple[str, ...] = ("zll", "jets", "dijet")
TREE_NAME = "events"
META_KEY = "hepscan_simulate"
# Events drawn from one generator: fixing it (rather than using chunk_size) keeps the output
# independent of the memory setting.
RNG_BLOCK = 1 << 16
_LOCAL_BITS = 40
_ROOT_COMPRESSION_LEVEL = 1  # ZSTD(1): compresses like ZLIB(1) at several times its speed

# PDG values (GeV)
M_Z = 91.1876
GAMMA_Z = 2.4952
M_ELECTRON = 0.51099895e-3
M_MUON = 0.1056583755
SQRT_S = 13000.0

ArrayDict = dict[str, np.ndarray]


# --------------------------------------------------------------------------------------------
# configuration


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


@dataclass(frozen=True)
class DijetConfig:
    mass_range: tuple[float, float] = (1500.0, 3000.0)
    p1: float = 4.82
    p2: float = 7.19
    p3: float = 0.291
    smearing: float = 0.03


SampleConfig = ZllConfig | JetsConfig | DijetConfig


def sample_config(
    sample: str,
    *,
    smearing: float | None = None,
    mass_range: tuple[float, float] | None = None,
) -> SampleConfig:
    """The generator configuration of ``sample`` with the user's options applied."""
    if sample not in SAMPLES:
        raise ConfigError(f"unknown sample {sample!r}: valid samples are {', '.join(SAMPLES)}")
    if smearing is not None:
        if sample != "dijet":
            raise ConfigError(f"option 'smearing' applies to sample 'dijet' only, not {sample!r}")
        if not (0.0 < smearing < 1.0):
            raise ConfigError(f"option 'smearing' must lie in (0, 1), got {smearing}")
    if mass_range is not None:
        if sample == "jets":
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
    kwargs: dict[str, Any] = {}
    if smearing is not None:
        kwargs["smearing"] = float(smearing)
    if mass_range is not None:
        kwargs["mass_range"] = mass_range
    return DijetConfig(**kwargs)


# --------------------------------------------------------------------------------------------
# samplers


@lru_cache(maxsize=16)
def _inverse_cdf_table(name: str, lo: float, hi: float, params: tuple[float, ...]) -> np.ndarray:
    """Quantiles of a 1-D density at 2**17 equally spaced probabilities.

    The density is integrated on a fine grid (trapezoid) and inverted; linear interpolation
    between the tabulated quantiles is exact to well below the resolution of any test.
    """
    n_grid = 1 << 18
    if name == "bw":
        m = np.linspace(lo, hi, n_grid)
        mass, width = params
        pdf = 1.0 / ((m * m - mass * mass) ** 2 + (mass * width) ** 2)
    elif name == "dijet":
        m = np.geomspace(lo, hi, n_grid)
        p1, p2, p3 = params
        x = m / SQRT_S
        pdf = (1.0 - x) ** p1 / x ** (p2 + p3 * np.log(x))
    else:  # pragma: no cover - programming error
        raise ValueError(name)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (pdf[1:] + pdf[:-1]) * np.diff(m))])
    cdf /= cdf[-1]
    probs = np.linspace(0.0, 1.0, (1 << 17) + 1)
    table = np.interp(probs, cdf, m)
    table[0], table[-1] = lo, hi
    return table


def _from_table(table: np.ndarray, u: np.ndarray) -> np.ndarray:
    pos = u * (len(table) - 1)
    i = np.minimum(pos.astype(np.int64), len(table) - 2)
    frac = pos - i
    return table[i] + frac * (table[i + 1] - table[i])


def _truncated_normal(rng: np.random.Generator, n: int, sigma: float, limit: float) -> np.ndarray:
    from scipy.special import ndtr, ndtri

    edge = float(ndtr(limit / sigma))
    u = rng.uniform(1.0 - edge, edge, n)
    return np.asarray(sigma * ndtri(u))


def _power_law(u: np.ndarray, lo: float, hi: float, power: float) -> np.ndarray:
    """Inverse CDF of dN/dx ~ x^-power on [lo, hi] (power != 1)."""
    k = 1.0 - power
    return np.asarray((lo**k + u * (hi**k - lo**k)) ** (1.0 / k))


def _wrap_phi(phi: np.ndarray) -> np.ndarray:
    return np.asarray((phi + np.pi) % (2.0 * np.pi) - np.pi)


# --------------------------------------------------------------------------------------------
# zll


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


# --------------------------------------------------------------------------------------------
# jets and dijet


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


_GENERATORS: dict[str, Callable[[np.random.Generator, int, Any], ArrayDict]] = {
    "zll": _gen_zll,
    "jets": _gen_jets,
    "dijet": _gen_dijet,
}


# --------------------------------------------------------------------------------------------
# writing


@dataclass(frozen=True)
class _FileJob:
    sample: str
    config: SampleConfig
    seed: int
    file_index: int
    n_events: int
    chunk_blocks: int
    tmp_path: str
    meta: str


def _block_rng(seed: int, file_index: int, block: int) -> np.random.Generator:
    # == SeedSequence(seed).spawn(files)[file_index].spawn(n_blocks)[block]
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(file_index, block)))


def _to_tree_arrays(chunk: ArrayDict) -> dict[str, Any]:
    """Groups ``nlep`` + ``lep_*`` into one record of lists so uproot writes one counter."""
    if "nlep" not in chunk:
        return dict(chunk)
    import awkward as ak

    counts = chunk["nlep"]
    offsets = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    fields = [k for k in chunk if k.startswith("lep_")]
    record = ak.contents.RecordArray(
        [ak.contents.NumpyArray(chunk[k]) for k in fields],
        [k[len("lep_") :] for k in fields],
        length=int(offsets[-1]),
    )
    out: dict[str, Any] = {k: v for k, v in chunk.items() if k != "nlep" and k not in fields}
    out["lep"] = ak.Array(ak.contents.ListOffsetArray(ak.index.Index64(offsets), record))
    return out


class _Cancelled(Exception):
    """Another file failed or the user interrupted: stop before writing more."""


def _write_file(
    job: _FileJob,
    progress: queue_mod.Queue[int] | None = None,
    cancel: threading.Event | None = None,
) -> str:
    """Generates and writes one file under its temporary name; returns that name."""
    import uproot

    if cancel is not None and cancel.is_set():
        raise _Cancelled(job.tmp_path)

    generate = _GENERATORS[job.sample]
    n_blocks = -(-job.n_events // RNG_BLOCK)
    try:
        with uproot.recreate(job.tmp_path, compression=uproot.ZSTD(_ROOT_COMPRESSION_LEVEL)) as f:
            tree = None
            # at least one (possibly empty) chunk so that the tree always exists
            for first in range(0, max(n_blocks, 1), job.chunk_blocks):
                if cancel is not None and cancel.is_set():
                    raise _Cancelled(job.tmp_path)
                blocks = range(first, min(first + job.chunk_blocks, n_blocks))
                parts = []
                for b in blocks:
                    size = min(RNG_BLOCK, job.n_events - b * RNG_BLOCK)
                    parts.append(
                        generate(_block_rng(job.seed, job.file_index, b), size, job.config)
                    )
                if not parts:
                    parts.append(generate(_block_rng(job.seed, job.file_index, 0), 0, job.config))
                chunk = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
                start = first * RNG_BLOCK
                local = np.arange(start, start + len(next(iter(chunk.values()))), dtype=np.uint64)
                ids = (np.uint64(job.file_index) << np.uint64(_LOCAL_BITS)) | local
                arrays = {"event_id": ids, **_to_tree_arrays(chunk)}
                if tree is None:
                    types = {
                        k: (v.dtype if isinstance(v, np.ndarray) else v.type)
                        for k, v in arrays.items()
                    }
                    tree = f.mktree(TREE_NAME, types)
                tree.extend(arrays)
                if progress is not None:
                    progress.put(len(ids))
            f[META_KEY] = job.meta
    except BaseException:
        Path(job.tmp_path).unlink(missing_ok=True)
        if cancel is not None:
            cancel.set()
        raise
    return job.tmp_path


def _write_file_captured(
    job: _FileJob, progress: queue_mod.Queue[int], cancel: threading.Event
) -> str | BaseException:
    """``_write_file`` returning its exception, so that compute waits for every file to stop."""
    try:
        return _write_file(job, progress, cancel)
    except Exception as exc:
        return exc


def _events_per_file(events: int, files: int) -> list[int]:
    base, extra = divmod(events, files)
    return [base + (1 if i < extra else 0) for i in range(files)]


def _prepare_out_dir(out: Path) -> bool:
    """Creates ``out`` if needed and checks it can be written; True when it was created."""
    created = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".hepscan-probe-{uuid.uuid4().hex}"
        probe.touch()
        probe.unlink()
    except OSError as exc:
        raise OutputError(f"output directory {str(out)!r} is not writable: {exc}") from exc
    return created


def _run_dask(
    jobs: list[_FileJob], workers: int, progress: bool, total: int, sample: str
) -> list[str]:
    import dask

    # Threads, not processes: the numpy kernels, the RNG fills and ZSTD release the GIL, and on
    # 2 cores the threaded scheduler measured 1.7x the synchronous speed, while the process
    # pool paid its start-up and gained nothing.
    q: queue_mod.Queue[int] = queue_mod.Queue()
    if workers > 1 and len(jobs) > 1:
        compute_kwargs: dict[str, Any] = {"scheduler": "threads", "num_workers": workers}
    else:
        compute_kwargs = {"scheduler": "synchronous"}
    cancel = threading.Event()
    tasks = [dask.delayed(_write_file_captured, pure=False)(job, q, cancel) for job in jobs]
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["paths"] = list(dask.compute(*tasks, **compute_kwargs))
        except BaseException as exc:  # re-raised in the calling thread
            result["error"] = exc

    from tqdm import tqdm

    with tqdm(
        total=total, unit="ev", unit_scale=True, desc=f"simulate {sample}", disable=not progress
    ) as bar:
        worker = threading.Thread(target=run, name="hepscan-simulate", daemon=True)
        worker.start()
        try:
            while worker.is_alive() or not q.empty():
                try:
                    bar.update(q.get(timeout=0.2))
                except queue_mod.Empty:
                    continue
        except BaseException:
            # e.g. Ctrl-C: let running files stop at their next chunk and delete themselves
            cancel.set()
            worker.join()
            raise
        worker.join()
    if "error" in result:
        raise result["error"]
    outcomes = result["paths"]
    errors = [e for e in outcomes if isinstance(e, BaseException)]
    if errors:
        # the first real failure, not the cancellations it caused in the other files
        raise next((e for e in errors if not isinstance(e, _Cancelled)), errors[0])
    return [str(p) for p in outcomes]


def simulate(
    sample: str,
    events: int,
    files: int,
    seed: int,
    out: str | Path,
    *,
    smearing: float | None = None,
    mass_range: tuple[float, float] | None = None,
    chunk_size: int = 500_000,
    workers: int | None = None,
    progress: bool = True,
) -> list[Path]:
    """Writes ``files`` ROOT files ``{sample}_{i:04d}.root`` into ``out``; returns their paths.

    ``events`` are split evenly over the files (the first ``events % files`` get one more).
    ``smearing`` (dijet: relative reco mass resolution, default 0.03) and ``mass_range``
    (zll, dijet: truth mass window in GeV) change the physics; ``chunk_size`` (events held in
    memory per file, rounded to whole RNG blocks of 65 536), ``workers`` (parallel files,
    default min(files, CPUs)) and ``progress`` do not change the output.
    """
    config = sample_config(sample, smearing=smearing, mass_range=mass_range)
    for name, value, minimum in (
        ("events", events, 1),
        ("files", files, 1),
        ("chunk_size", chunk_size, 1),
    ):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < minimum:
            raise ConfigError(f"option {name!r} must be an integer >= {minimum}, got {value!r}")
    if files > events:
        raise ConfigError(f"option 'files' ({files}) exceeds option 'events' ({events})")
    if files > 1 << (64 - _LOCAL_BITS) or -(-events // files) >= 1 << _LOCAL_BITS:
        raise ConfigError("too many events or files for the 24+40-bit event_id layout")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ConfigError(f"option 'seed' must be a non-negative integer, got {seed!r}")
    if workers is not None and workers < 1:
        raise ConfigError(f"option 'workers' must be >= 1, got {workers}")
    n_workers = min(files, workers or os.cpu_count() or 1)

    out_dir = Path(out)
    created = _prepare_out_dir(out_dir)
    token = uuid.uuid4().hex[:12]
    chunk_blocks = max(1, round(chunk_size / RNG_BLOCK))
    jobs = []
    for i, n in enumerate(_events_per_file(events, files)):
        meta = {
            "sample": sample,
            "seed": int(seed),
            "file_index": i,
            "files": files,
            "events": n,
            "total_events": events,
            "config": asdict(config),
        }
        jobs.append(
            _FileJob(
                sample=sample,
                config=config,
                seed=int(seed),
                file_index=i,
                n_events=n,
                chunk_blocks=chunk_blocks,
                tmp_path=str(out_dir / f".{sample}_{i:04d}.root.{token}.tmp"),
                meta=json.dumps(meta, sort_keys=True),
            )
        )
    finals = [out_dir / f"{sample}_{i:04d}.root" for i in range(files)]
    try:
        tmp_paths = _run_dask(jobs, n_workers, progress, events, sample)
        for tmp, final in zip(tmp_paths, finals, strict=True):
            os.replace(tmp, final)
    except OSError as exc:
        _cleanup(out_dir, token, created)
        raise OutputError(f"writing into {str(out_dir)!r} failed: {exc}") from exc
    except BaseException:
        _cleanup(out_dir, token, created)
        raise
    return finals


def _cleanup(out_dir: Path, token: str, created: bool) -> None:
    for leftover in out_dir.glob(f".*.{token}.tmp"):
        leftover.unlink(missing_ok=True)
    if created:
        # not empty when someone else wrote there meanwhile: leave it
        with contextlib.suppress(OSError):
            out_dir.rmdir()


# --------------------------------------------------------------------------------------------
# CLI

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
    chunk_size: int,
    workers: int | None,
    progress: bool,
) -> None:
    """Simulate SAMPLE (zll, jets or dijet) into ROOT files in --out."""
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


__all__ = [
    "DijetConfig",
    "JetsConfig",
    "LeptonDetector",
    "SAMPLES",
    "ZllConfig",
    "dijet_pdf",
    "sample_config",
    "simulate",
    "simulate_command",
]


def _main() -> None:  # pragma: no cover - convenience for `python -m jobs.simulate`
    import sys

    from scan.cli import main

    main(["simulate", *sys.argv[1:]])


if __name__ == "__main__":  # pragma: no cover
    _main()
