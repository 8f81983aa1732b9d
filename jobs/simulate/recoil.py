"""The ``recoil`` sample: Z -> ll + hadronic recoil with a particle-flow-like detector (GeV).

The true boson transverse momentum ``B`` is balanced by the hadronic recoil ``T = -B`` (ISR jets
plus a soft, unclustered remainder; the underlying event adds scalar activity that sums to
zero). What the detector measures of ``T`` (see :class:`RecoilConfig` for every number):

* a per-event charged fraction ``fc ~ Beta(6, 4)`` of every hadronic component is seen by the
  tracker (response 0.97 for jets; the soft part also loses the particles outside the tracker,
  ``Beta(8, 2)`` in acceptance); pile-up charged particles mostly fail the vertex association
  and leak a noise ``~ 0.8 GeV sqrt(n_pv)`` per component; the particle-by-particle
  charged/neutral split moves a random vector ``~ 0.7 sqrt(ΣET_had)`` between the two systems;
* the neutral remainder is seen by the calorimeters with a pT-dependent jet response
  ``1 - 0.9 / pT^0.3`` (0.67 at 27 GeV, 0.82 at 150 GeV), a stochastic resolution
  ``1/sqrt(pT) (+) 8 %`` and a soft-term response of 0.5; neutral pile-up adds
  ``Gamma``-distributed ΣET of 8 GeV per vertex whose vector sum fluctuates by
  ``0.6 sqrt(ΣET_PU)`` per component, the dominant resolution term at high pile-up;
* pile-up: ``mu ~ Gamma(10, 3.2)`` (mean 32, sd 10, the LHC Run-2 profile), reconstructed
  vertices ``n_pv = 1 + Poisson(0.85 mu)``; pile-up jets (20 GeV + Exp(6 GeV), random phi) with
  probability ``0.005 n_pv``.

The raw particle-flow recoil is ``U = U_charged + U_neutral``: its response ``<u_par>/<pT>``
grows from ~0.65 at low boson pT to ~0.85 at 200 GeV and its resolution grows with pile-up and
ΣET, as for the ATLAS/CMS recoil. The two leptons are measured (``reco_ll_*``, 1.5 % pT
resolution), so in Z -> ll the boson axis is known and u_par / u_perp can be formed.

Branches (float32 unless stated; phi in (-pi, pi]): ``truth_pt``, ``truth_phi`` (boson),
``truth_ux``, ``truth_uy`` (true recoil = -boson pT), ``reco_ll_pt``, ``reco_ll_phi``,
``mu``, ``npv`` (int32), ``{pf,ch,neu}_{ux,uy}`` (raw recoils), ``sumet_{pf,ch,neu}``,
``njets`` (int32, reco pT > 20 GeV), ``j{1,2}_{pt,phi}`` (leading jets, 0 when absent),
``n_ch``, ``n_neu`` (int32, particle-flow object counts).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jobs.simulate.common import ArrayDict, _wrap_phi

__all__ = ["RecoilConfig"]


@dataclass(frozen=True)
class RecoilConfig:
    pt_scale: float = 8.0  # dN/dpT ~ pT s / (s^2 + pT^2)^1.5: peak ~6 GeV, tail ~ pT^-2
    pt_max: float = 300.0
    mu_mean: float = 32.0
    mu_shape: float = 10.0  # Gamma shape: sd = mean / sqrt(shape)
    vertex_eff: float = 0.85
    jet_scale: float = 30.0  # P(ISR jet) = 1 - exp(-pT / jet_scale)
    jet2_prob: float = 0.35
    charged_a: float = 6.0  # charged fraction ~ Beta(a, b)
    charged_b: float = 4.0
    track_response: float = 0.97
    track_acc_a: float = 8.0  # soft particles inside the tracker ~ Beta(a, b)
    track_acc_b: float = 2.0
    neutral_a: float = 0.9  # neutral jet response 1 - a / pT^p
    neutral_p: float = 0.3
    neutral_stochastic: float = 1.0  # sigma/pT = s/sqrt(pT) (+) c
    neutral_constant: float = 0.08
    soft_response: float = 0.5
    soft_resolution: float = 0.3
    ue_mean: float = 60.0  # underlying-event scalar ΣET ~ Gamma(4, mean/4)
    ue_noise_charged: float = 0.25  # per-component noise / sqrt(ΣET_UE)
    ue_noise_neutral: float = 0.35
    partition_noise: float = 0.7  # charged/neutral split of the hadrons: per comp. / sqrt(ΣET)
    pu_charged_noise: float = 0.8  # per component / sqrt(n_pv)
    pu_neutral_sumet: float = 8.0  # per vertex
    pu_neutral_noise: float = 0.6  # per component / sqrt(ΣET_PU)
    pu_jet_rate: float = 0.005  # per vertex
    jet_pt_min: float = 20.0
    lepton_pt_res: float = 0.015


def _boson_pt(rng: np.random.Generator, n: int, cfg: RecoilConfig) -> np.ndarray:
    s = cfg.pt_scale
    u_max = 1.0 - s / np.hypot(s, cfg.pt_max)
    u = rng.uniform(0.0, u_max, n)
    return np.asarray(s * np.sqrt(1.0 / (1.0 - u) ** 2 - 1.0))


def _xy(mag: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return mag * np.cos(phi), mag * np.sin(phi)


def _gen_recoil(rng: np.random.Generator, n: int, cfg: RecoilConfig) -> ArrayDict:
    pt = _boson_pt(rng, n, cfg)
    phi = rng.uniform(-np.pi, np.pi, n)
    t_phi = _wrap_phi(phi + np.pi)
    tx, ty = _xy(pt, t_phi)

    mu = rng.gamma(cfg.mu_shape, cfg.mu_mean / cfg.mu_shape, n)
    npv = 1 + rng.poisson(cfg.vertex_eff * mu)

    # true hadronic activity: up to two ISR jets, the soft remainder balances the boson
    has1 = rng.random(n) < 1.0 - np.exp(-pt / cfg.jet_scale)
    j1 = np.where(has1, rng.beta(5.0, 2.0, n) * pt, 0.0)
    phi1 = t_phi + rng.normal(0.0, 1.0, n) * (0.1 + 4.0 / (pt + 5.0))
    has2 = has1 & (rng.random(n) < cfg.jet2_prob * (1.0 - np.exp(-pt / 60.0)))
    j2 = np.where(has2, rng.uniform(0.15, 0.45, n) * pt, 0.0)
    phi2 = t_phi + rng.normal(0.0, 1.0, n)
    j1x, j1y = _xy(j1, phi1)
    j2x, j2y = _xy(j2, phi2)
    sx, sy = tx - j1x - j2x, ty - j1y - j2y
    soft = np.hypot(sx, sy)
    ue = rng.gamma(4.0, cfg.ue_mean / 4.0, n)

    fc = rng.beta(cfg.charged_a, cfg.charged_b, n)
    acc = rng.beta(cfg.track_acc_a, cfg.track_acc_b, n)

    def jet(j: np.ndarray, jphi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(charged pT, neutral pT, measured phi) of one true jet."""
        ch = fc * j * cfg.track_response * (1.0 + 0.02 * rng.standard_normal(n))
        neu_true = np.maximum((1.0 - fc) * j, 1e-3)
        resp = np.clip(1.0 - cfg.neutral_a / np.maximum(neu_true, 1.0) ** cfg.neutral_p, 0.3, 1)
        sig = np.hypot(cfg.neutral_stochastic / np.sqrt(np.maximum(neu_true, 1.0)),
                       cfg.neutral_constant)  # fmt: skip
        neu = np.maximum(resp * neu_true * (1.0 + sig * rng.standard_normal(n)), 0.0)
        neu = np.where(j > 0, neu, 0.0)
        return ch, neu, jphi + 0.03 * rng.standard_normal(n)

    ch1, neu1, mphi1 = jet(j1, phi1)
    ch2, neu2, mphi2 = jet(j2, phi2)
    soft_ch = fc * acc * cfg.track_response
    soft_neu = (1.0 - fc) * cfg.soft_response * (1.0 + cfg.soft_resolution * rng.standard_normal(n))

    # pile-up jets: neutral-dominated, random direction
    has_pu = rng.random(n) < cfg.pu_jet_rate * npv
    puj = np.where(has_pu, 20.0 + rng.exponential(6.0, n), 0.0)
    puj_phi = rng.uniform(-np.pi, np.pi, n)
    pux, puy = _xy(puj, puj_phi)

    sq_ue = np.sqrt(ue)
    sq_pv = np.sqrt(npv)
    pu_sumet = rng.gamma(2.0 * npv, cfg.pu_neutral_sumet / 2.0)
    sig_neu = np.sqrt((cfg.ue_noise_neutral * sq_ue) ** 2 + cfg.pu_neutral_noise**2 * pu_sumet)
    sig_ch = np.hypot(cfg.ue_noise_charged * sq_ue, cfg.pu_charged_noise * sq_pv)

    # the particle-by-particle charged/neutral split: a random vector P moves from the neutral
    # to the charged system (true total unchanged), then each is measured with its response
    sig_part = cfg.partition_noise * np.sqrt(soft + ue + j1 + j2)
    px, py = sig_part * rng.standard_normal(n), sig_part * rng.standard_normal(n)
    c1x, c1y = _xy(ch1, mphi1)
    c2x, c2y = _xy(ch2, mphi2)
    ch_x = c1x + c2x + soft_ch * (sx + px) + sig_ch * rng.standard_normal(n)
    ch_y = c1y + c2y + soft_ch * (sy + py) + sig_ch * rng.standard_normal(n)
    n1x, n1y = _xy(neu1, mphi1)
    n2x, n2y = _xy(neu2, mphi2)
    neu_x = (
        n1x
        + n2x
        + soft_neu * sx
        - cfg.soft_response * px
        + 0.8 * pux
        + sig_neu * rng.standard_normal(n)
    )
    neu_y = (
        n1y
        + n2y
        + soft_neu * sy
        - cfg.soft_response * py
        + 0.8 * puy
        + sig_neu * rng.standard_normal(n)
    )

    soft_scalar = soft + ue
    sumet_ch = ch1 + ch2 + fc * acc * cfg.track_response * soft_scalar + rng.gamma(npv * 1.0, 0.7)
    sumet_neu = neu1 + neu2 + (1.0 - fc) * cfg.soft_response * soft_scalar + pu_sumet + 0.8 * puj

    # reconstructed jets: charged + neutral, a residual pile-up offset, pT > jet_pt_min
    def reco_jet(ch: np.ndarray, neu: np.ndarray) -> np.ndarray:
        off = 0.15 * (npv - cfg.vertex_eff * cfg.mu_mean) + 1.5 * rng.standard_normal(n)
        return np.where(ch + neu > 0, np.maximum(ch + neu + off, 0.0), 0.0)

    cand_pt = np.stack([reco_jet(ch1, neu1), reco_jet(ch2, neu2), 0.8 * puj], axis=1)
    cand_phi = np.stack([mphi1, mphi2, puj_phi], axis=1)
    cand_pt = np.where(cand_pt > cfg.jet_pt_min, cand_pt, 0.0)
    order = np.argsort(-cand_pt, axis=1)
    cand_pt = np.take_along_axis(cand_pt, order, axis=1)
    cand_phi = np.where(cand_pt > 0, _wrap_phi(np.take_along_axis(cand_phi, order, axis=1)), 0.0)
    njets = (cand_pt > 0).sum(axis=1)

    ll_pt = pt * (1.0 + cfg.lepton_pt_res * rng.standard_normal(n))
    ll_phi = _wrap_phi(phi + 0.002 * rng.standard_normal(n))

    f32, i32 = np.float32, np.int32
    return {
        "truth_pt": pt.astype(f32),
        "truth_phi": phi.astype(f32),
        "truth_ux": tx.astype(f32),
        "truth_uy": ty.astype(f32),
        "reco_ll_pt": ll_pt.astype(f32),
        "reco_ll_phi": ll_phi.astype(f32),
        "mu": mu.astype(f32),
        "npv": npv.astype(i32),
        "pf_ux": (ch_x + neu_x).astype(f32),
        "pf_uy": (ch_y + neu_y).astype(f32),
        "ch_ux": ch_x.astype(f32),
        "ch_uy": ch_y.astype(f32),
        "neu_ux": neu_x.astype(f32),
        "neu_uy": neu_y.astype(f32),
        "sumet_pf": (sumet_ch + sumet_neu).astype(f32),
        "sumet_ch": sumet_ch.astype(f32),
        "sumet_neu": sumet_neu.astype(f32),
        "njets": njets.astype(i32),
        "j1_pt": cand_pt[:, 0].astype(f32),
        "j1_phi": cand_phi[:, 0].astype(f32),
        "j2_pt": cand_pt[:, 1].astype(f32),
        "j2_phi": cand_phi[:, 1].astype(f32),
        "n_ch": rng.poisson(sumet_ch / 1.2).astype(i32),
        "n_neu": rng.poisson(sumet_neu / 2.5).astype(i32),
    }
