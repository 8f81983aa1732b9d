"""Selection kind ``recoil``: one row per ``hepscan simulate recoil`` event, in the raw-recoil frame.

Every vector is expressed in the frame of the event's raw particle-flow recoil ``U``: the
x axis along ``U``, the y axis 90 degrees counter-clockwise from it. The regression then learns
a rotation-invariant correction (the detector has no preferred azimuth) and its prediction is
rotated back with the measured phi of ``U``. Columns (float64):

* inputs: ``reco_u`` (|U|), ``reco_ch_par`` / ``reco_ch_perp`` (charged-track recoil),
  ``reco_sumet``, ``reco_sumet_ch``, ``reco_sumet_neu``, ``reco_npv``, ``reco_mu``,
  ``reco_njets``, ``reco_j{1,2}_par`` / ``reco_j{1,2}_perp`` (leading jets, 0 when absent),
  ``reco_nch``, ``reco_nneu`` (particle-flow object counts);
* targets: ``truth_upar`` / ``truth_uperp`` (the true recoil, -boson pT, in that frame) and
  ``truth_pt`` (boson pT).

The neutral recoil is ``U - U_charged`` and therefore not a separate input.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jobs.preprocess.common import KindSpec

__all__ = ["SPEC", "recoil"]

_FLAT = (
    "pf_ux",
    "pf_uy",
    "ch_ux",
    "ch_uy",
    "sumet_pf",
    "sumet_ch",
    "sumet_neu",
    "npv",
    "mu",
    "njets",
    "j1_pt",
    "j1_phi",
    "j2_pt",
    "j2_phi",
    "n_ch",
    "n_neu",
    "truth_ux",
    "truth_uy",
    "truth_pt",
)

SPEC = KindSpec(
    branches={b: b for b in _FLAT},
    columns=(
        "reco_u",
        "reco_ch_par",
        "reco_ch_perp",
        "reco_sumet",
        "reco_sumet_ch",
        "reco_sumet_neu",
        "reco_npv",
        "reco_mu",
        "reco_njets",
        "reco_j1_par",
        "reco_j1_perp",
        "reco_j2_par",
        "reco_j2_perp",
        "reco_nch",
        "reco_nneu",
        "truth_upar",
        "truth_uperp",
        "truth_pt",
    ),
)


def recoil(
    sel: Any, a: dict[str, Any], n: int, columns: tuple[str, ...]
) -> tuple[dict[str, Any], np.ndarray]:
    def f(name: str) -> np.ndarray:
        return np.asarray(a[name], dtype=np.float64)

    ux, uy = f("pf_ux"), f("pf_uy")
    u = np.hypot(ux, uy)
    phi = np.arctan2(uy, ux)  # 0 for U = 0
    c, s = np.cos(phi), np.sin(phi)

    def par_perp(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x * c + y * s, -x * s + y * c

    cols: dict[str, Any] = {"reco_u": u}
    cols["reco_ch_par"], cols["reco_ch_perp"] = par_perp(f("ch_ux"), f("ch_uy"))
    cols["truth_upar"], cols["truth_uperp"] = par_perp(f("truth_ux"), f("truth_uy"))
    for i in (1, 2):
        pt, jphi = f(f"j{i}_pt"), f(f"j{i}_phi")
        cols[f"reco_j{i}_par"], cols[f"reco_j{i}_perp"] = par_perp(
            pt * np.cos(jphi), pt * np.sin(jphi)
        )
    for col, branch in (
        ("reco_sumet", "sumet_pf"),
        ("reco_sumet_ch", "sumet_ch"),
        ("reco_sumet_neu", "sumet_neu"),
        ("reco_npv", "npv"),
        ("reco_mu", "mu"),
        ("reco_njets", "njets"),
        ("reco_nch", "n_ch"),
        ("reco_nneu", "n_neu"),
        ("truth_pt", "truth_pt"),
    ):
        cols[col] = f(branch)
    return {k: cols[k] for k in columns}, np.arange(n, dtype=np.int64)
