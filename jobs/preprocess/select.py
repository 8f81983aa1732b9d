"""Built-in selections of ``hepscan preprocess``: ROOT branches (by logical name) -> rows.

Every selection kind declares the logical branch names it reads (with the default branch of
the ``hepscan simulate`` schema, overridable through the config's ``branches`` mapping) and the
row columns it produces. Row columns are float64 numpy arrays named ``truth_*`` / ``reco_*``
(plus ``reco_ok`` where an object may be unreconstructed or unmatched); ``row_entry`` maps each
row to its entry in the partition (non-decreasing), which the caller turns into event ids and
split labels.

Selections work on plain numpy: flat branches as arrays, jagged ones as :class:`Jagged`
(offsets + content), which is several times faster than awkward broadcasting for these
few-objects-per-event cases and keeps the pipeline close to the raw read speed.

Kinds: ``zll_pair``, ``jets``, ``dijet``, ``ttbar``, ``hzz_muon_match``, ``zmumu_reco`` (here; the
``recoil`` kind lives in :mod:`jobs.preprocess.recoil`;
``hepscan simulate`` schemas and the scikit-hep-testdata files), ``nanoaod_dilepton``
(:mod:`jobs.preprocess.nanoaod`). Import-string selections (:mod:`jobs.preprocess.user`) get
awkward arrays instead and do not pass through :func:`select`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jobs.preprocess import nanoaod, recoil, user
from jobs.preprocess.common import (
    ELECTRON_MASS,
    MUON_MASS,
    Jagged,
    KindSpec,
    best_pairs,
    four_vectors,
    pair_sum,
)

__all__ = ["ELECTRON_MASS", "KINDS", "MUON_MASS", "Jagged", "KindSpec", "kind_spec", "select"]

_LEP = ("pt", "eta", "phi", "iso", "charge")
_TTBAR = (
    "truth_label",
    "truth_mass",
    "truth_mtt",
    "reco_mtt",
    *(f"reco_top{i}_{v}" for i in (1, 2) for v in ("pt", "eta")),
    "reco_abs_dy",
    "reco_btag1",
    "reco_btag2",
    "reco_njets",
)


def _zll_needs(columns: tuple[str, ...]) -> set[str]:
    """zll reads the truth branches only on demand."""
    need = {f"lep_{v}" for v in (*_LEP, "flavour")}
    for c in columns:
        if c == "reco_pileup":
            need.add("pileup")
        elif c.startswith("truth_l"):
            need |= {"lep_truth_index", f"truth_l1_{c[9:]}", f"truth_l2_{c[9:]}"}
        elif c.startswith("truth_"):
            need.add(c)
    return need


KINDS: dict[str, KindSpec] = {
    "zll_pair": KindSpec(
        branches={
            **{f"lep_{v}": f"lep_{v}" for v in (*_LEP, "flavour", "truth_index")},
            "pileup": "pileup",
            "truth_mass": "truth_mass",
            "truth_pt": "truth_pt",
            "truth_y": "truth_y",
            **{f"truth_l{i}_{v}": f"truth_l{i}_{v}" for i in (1, 2) for v in ("pt", "eta", "phi")},
        },
        columns=(
            "reco_mass",
            "reco_pt",
            "reco_y",
            "reco_flavour",
            "reco_pileup",
            *(f"reco_l{i}_{v}" for i in (1, 2) for v in _LEP),
            "truth_mass",
            "truth_pt",
            "truth_y",
            *(f"truth_l{i}_{v}" for i in (1, 2) for v in ("pt", "eta", "phi")),
        ),
        optional=frozenset({"pileup", "lep_truth_index"}),
        need=_zll_needs,
    ),
    "jets": KindSpec(
        branches={
            **{
                f"{s}_{v}": f"{s}_{v}" for s in ("truth", "reco") for v in ("pt", "eta", "phi", "m")
            },
            "reco_ok": "reco_ok",
        },
        columns=(
            *(f"{s}_{v}" for s in ("truth", "reco") for v in ("pt", "eta", "phi", "m")),
            "reco_ok",
        ),
    ),
    "dijet": KindSpec(
        branches={"truth_mjj": "truth_mjj", "reco_mjj": "reco_mjj"},
        columns=("truth_mjj", "reco_mjj"),
    ),
    "ttbar": KindSpec(
        branches={c: c for c in _TTBAR},
        columns=_TTBAR,
    ),
    "hzz_muon_match": KindSpec(
        branches={
            "muon_px": "Muon_Px",
            "muon_py": "Muon_Py",
            "muon_pz": "Muon_Pz",
            "muon_e": "Muon_E",
            "muon_charge": "Muon_Charge",
            "muon_iso": "Muon_Iso",
            "truth_px": "MClepton_px",
            "truth_py": "MClepton_py",
            "truth_pz": "MClepton_pz",
            "truth_pdgid": "MCleptonPDGid",
        },
        columns=(
            "reco_pt",
            "reco_eta",
            "reco_phi",
            "reco_e",
            "reco_iso",
            "reco_charge",
            "reco_dr",
            "truth_pt",
            "truth_eta",
            "truth_phi",
            "reco_ok",
        ),
        optional=frozenset({"truth_pdgid"}),
    ),
    "zmumu_reco": KindSpec(
        branches={
            "mass": "M",
            **{f"l{i}_{v}": f"{v}{i}" for i in (1, 2) for v in ("pt", "eta", "phi")},
            "l1_charge": "Q1",
            "l2_charge": "Q2",
        },
        columns=(
            "reco_mass",
            *(f"reco_l{i}_{v}" for i in (1, 2) for v in ("pt", "eta", "phi", "charge")),
        ),
    ),
    "recoil": recoil.SPEC,
}


def kind_spec(sel: Any) -> KindSpec:
    """The branches and columns of selection ``sel`` (a config model with ``kind``)."""
    if sel.kind == "nanoaod_dilepton":
        return nanoaod.spec(sel)
    if ":" in sel.kind:
        return user.spec(sel)
    return KINDS[sel.kind]


def select(
    sel: Any, arrays: dict[str, Any], n: int, columns: tuple[str, ...]
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Apply built-in selection ``sel`` (a config model with ``kind``) to ``n`` entries.

    Returns at least ``columns`` (float64, one value per row) and the row -> entry map.
    """
    fn = {
        "zll_pair": _zll_pair,
        "jets": _jets,
        "dijet": _dijet,
        "ttbar": _dijet,  # every event, the columns as they are
        "hzz_muon_match": _hzz_muon_match,
        "zmumu_reco": _zmumu_reco,
        "nanoaod_dilepton": nanoaod.nanoaod_dilepton,
        "recoil": recoil.recoil,
    }[sel.kind]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        cols, rows = fn(sel, arrays, n, columns)
    return {c: np.asarray(cols[c], dtype=np.float64) for c in columns}, rows


def _f64(x: np.ndarray) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _zll_pair(
    sel: Any, a: dict[str, Any], n: int, columns: tuple[str, ...]
) -> tuple[dict[str, Any], np.ndarray]:
    lep: Jagged = a["lep_pt"]
    pt_all = lep.content
    iso_all = a["lep_iso"].content
    ent = np.repeat(np.arange(n, dtype=np.int64), lep.counts)

    # pairs only among isolated leptons above threshold: usually exactly two per event
    good = np.flatnonzero((iso_all < sel.iso_max) & (pt_all > sel.lep_pt_min))
    pt = _f64(pt_all[good])
    eta, phi = _f64(a["lep_eta"].content[good]), _f64(a["lep_phi"].content[good])
    q, fl = a["lep_charge"].content[good], a["lep_flavour"].content[good]
    p4 = four_vectors(pt, eta, phi, np.where(np.abs(fl) == 11, ELECTRON_MASS, MUON_MASS))
    best_d, best_i, best_j = best_pairs(p4, q, fl, ent[good], n, sel.z_mass)
    rows = np.flatnonzero(best_d < sel.window * sel.z_mass)
    bi, bj = best_i[rows], best_j[rows]
    m, spt, sz, se = pair_sum(p4, bi, bj)

    swap = pt[bj] > pt[bi]  # leading-pT lepton first
    g1, g2 = np.where(swap, bj, bi), np.where(swap, bi, bj)
    cols: dict[str, Any] = {}
    want = set(columns)
    cols["reco_mass"] = m
    if "reco_pt" in want:
        cols["reco_pt"] = spt
    if "reco_y" in want:
        cols["reco_y"] = 0.5 * np.log((se + sz) / (se - sz))
    flat = {"pt": pt, "eta": eta, "phi": phi, "iso": iso_all[good], "charge": q}
    for v in _LEP:
        for k, g in (("1", g1), ("2", g2)):
            if f"reco_l{k}_{v}" in want:
                cols[f"reco_l{k}_{v}"] = flat[v][g]
    if "reco_flavour" in want:
        cols["reco_flavour"] = np.abs(fl[g1])
    if "reco_pileup" in want:
        cols["reco_pileup"] = (
            a["pileup"][rows] if "pileup" in a else np.zeros(rows.size, dtype=np.float64)
        )
    for v in ("mass", "pt", "y"):
        if f"truth_{v}" in want:
            cols[f"truth_{v}"] = a[f"truth_{v}"][rows]
    # truth lepton 1 is the one matched to reco lepton 1 when the match is known
    t_swap = (
        a["lep_truth_index"].content[good[g1]] == 1
        if "lep_truth_index" in a
        else np.zeros(rows.size, dtype=bool)
    )
    for v in ("pt", "eta", "phi"):
        if f"truth_l1_{v}" in want or f"truth_l2_{v}" in want:
            t1, t2 = a[f"truth_l1_{v}"][rows], a[f"truth_l2_{v}"][rows]
            cols[f"truth_l1_{v}"] = np.where(t_swap, t2, t1)
            cols[f"truth_l2_{v}"] = np.where(t_swap, t1, t2)
    return cols, rows


def _jets(
    sel: Any, a: dict[str, Any], n: int, columns: tuple[str, ...]
) -> tuple[dict[str, Any], np.ndarray]:
    rows = np.flatnonzero(a["truth_pt"] >= sel.truth_pt_min)
    return {k: a[k][rows] for k in columns}, rows


def _dijet(
    sel: Any, a: dict[str, Any], n: int, columns: tuple[str, ...]
) -> tuple[dict[str, Any], np.ndarray]:
    return {k: a[k] for k in columns}, np.arange(n, dtype=np.int64)


def _eta(px: np.ndarray, py: np.ndarray, pz: np.ndarray) -> np.ndarray:
    return np.arcsinh(pz / np.hypot(px, py))


def _hzz_muon_match(
    sel: Any, a: dict[str, Any], n: int, columns: tuple[str, ...]
) -> tuple[dict[str, Any], np.ndarray]:
    muons: Jagged = a["muon_px"]
    entry = np.repeat(np.arange(n, dtype=np.int64), muons.counts)
    mpx, mpy, mpz = (_f64(a[f"muon_{c}"].content) for c in ("px", "py", "pz"))
    pt = np.hypot(mpx, mpy)
    eta = _eta(mpx, mpy, mpz)
    phi = np.arctan2(mpy, mpx)
    tpx, tpy, tpz = (_f64(a[f"truth_{c}"])[entry] for c in ("px", "py", "pz"))
    tpt = np.hypot(tpx, tpy)
    # an empty truth record (pT 0, or a pdgId that is not a lepton) never matches
    valid = tpt > 0
    if "truth_pdgid" in a:
        valid &= np.isin(np.abs(a["truth_pdgid"].astype(np.int64))[entry], (11, 13, 15))
    teta = np.where(valid, _eta(tpx, tpy, tpz), 0.0)
    tphi = np.where(valid, np.arctan2(tpy, tpx), 0.0)
    dphi = (phi - tphi + np.pi) % (2 * np.pi) - np.pi
    dr = np.where(valid, np.hypot(eta - teta, dphi), np.inf)
    ok = dr < sel.dr_max
    keep = np.flatnonzero(pt > sel.muon_pt_min)
    cols = {
        "reco_pt": pt,
        "reco_eta": eta,
        "reco_phi": phi,
        "reco_e": a["muon_e"].content,
        "reco_iso": a["muon_iso"].content,
        "reco_charge": a["muon_charge"].content,
        "reco_dr": np.where(np.isfinite(dr), dr, -1.0),
        "truth_pt": np.where(ok, tpt, 0.0),
        "truth_eta": np.where(ok, teta, 0.0),
        "truth_phi": np.where(ok, tphi, 0.0),
        "reco_ok": ok,
    }
    return {k: cols[k][keep] for k in columns}, entry[keep]


def _zmumu_reco(
    sel: Any, a: dict[str, Any], n: int, columns: tuple[str, ...]
) -> tuple[dict[str, Any], np.ndarray]:
    cols = {"reco_mass": a["mass"]}
    for i in (1, 2):
        for v in ("pt", "eta", "phi", "charge"):
            cols[f"reco_l{i}_{v}"] = a[f"l{i}_{v}"]
    keep = np.ones(n, dtype=bool)
    if sel.opposite_charge:
        keep &= cols["reco_l1_charge"] * cols["reco_l2_charge"] < 0
    if sel.window is not None:
        keep &= np.abs(cols["reco_mass"] - sel.z_mass) < sel.window * sel.z_mass
    rows = np.flatnonzero(keep)
    return {k: cols[k][rows] for k in columns}, rows
