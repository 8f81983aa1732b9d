"""Selections of ``hepscan preprocess``: ROOT branches (by logical name) -> one row per object.

Every selection kind declares the logical branch names it reads (with the default branch of
the ``hepscan simulate`` schema, overridable through the config's ``branches`` mapping) and the
row columns it produces. Row columns are float64 numpy arrays named ``truth_*`` / ``reco_*``
(plus ``reco_ok`` where an object may be unreconstructed or unmatched); ``row_entry`` maps each
row to its entry in the partition, which the caller turns into event ids and split labels.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

MUON_MASS = 0.1056583755
ELECTRON_MASS = 0.00051099895


@dataclass(frozen=True)
class KindSpec:
    branches: dict[str, str]  # logical name -> default branch
    columns: tuple[str, ...]  # row columns the selection produces
    optional: frozenset[str] = field(
        default_factory=frozenset
    )  # logical names that may be unmapped


_LEP = ("pt", "eta", "phi", "iso", "charge")

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
}


def _np(x: Any, dtype: Any = np.float64) -> np.ndarray:
    import awkward as ak

    return np.asarray(ak.to_numpy(x), dtype=dtype)


def _eta(px: Any, py: Any, pz: Any) -> Any:
    pt = np.hypot(px, py)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.arcsinh(pz / pt)


def select(sel: Any, arrays: dict[str, Any], n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Apply selection ``sel`` (a config model with ``kind``) to ``n`` entries."""
    fn = {
        "zll_pair": _zll_pair,
        "jets": _jets,
        "dijet": _dijet,
        "hzz_muon_match": _hzz_muon_match,
        "zmumu_reco": _zmumu_reco,
    }[sel.kind]
    return fn(sel, arrays, n)


def _zll_pair(sel: Any, a: dict[str, Any], n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    import awkward as ak

    pt, eta, phi = a["lep_pt"], a["lep_eta"], a["lep_phi"]
    q, fl, iso = a["lep_charge"], a["lep_flavour"], a["lep_iso"]
    mass = ak.where(abs(fl) == 11, ELECTRON_MASS, MUON_MASS)
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    e = np.sqrt(px * px + py * py + pz * pz + mass * mass)
    good = (iso < sel.iso_max) & (pt > sel.lep_pt_min)

    i, j = ak.unzip(ak.argcombinations(pt, 2))
    ok = good[i] & good[j] & (q[i] * q[j] < 0) & (fl[i] == fl[j])
    sx, sy, sz, se = px[i] + px[j], py[i] + py[j], pz[i] + pz[j], e[i] + e[j]
    m = np.sqrt(np.maximum(se * se - sx * sx - sy * sy - sz * sz, 0.0))
    dist = ak.where(ok, abs(m - sel.z_mass), np.inf)
    best = ak.argmin(dist, axis=1, keepdims=True)
    bdist = _np(ak.fill_none(ak.firsts(dist[best]), np.inf))
    keep = bdist < sel.window * sel.z_mass
    rows = np.flatnonzero(keep)

    def pick(x: Any) -> np.ndarray:
        return _np(ak.firsts(x[best][keep]))

    bi, bj = pick(i), pick(j)
    lep_pt = ak.to_numpy(ak.flatten(pt)).astype(np.float64)
    offsets = np.asarray(ak.to_numpy(ak.num(pt)), dtype=np.int64).cumsum() - ak.to_numpy(ak.num(pt))
    base = offsets[rows]
    # leading-pT lepton first
    gi, gj = base + bi.astype(np.int64), base + bj.astype(np.int64)
    swap = lep_pt[gj] > lep_pt[gi]
    g1, g2 = np.where(swap, gj, gi), np.where(swap, gi, gj)

    def flat(name: str) -> np.ndarray:
        return np.asarray(ak.to_numpy(ak.flatten(a[name])), dtype=np.float64)

    cols: dict[str, np.ndarray] = {
        "reco_mass": pick(m),
        "reco_pt": np.hypot(pick(sx), pick(sy)),
    }
    pe, pz_ = pick(se), pick(sz)
    with np.errstate(divide="ignore", invalid="ignore"):
        cols["reco_y"] = 0.5 * np.log((pe + pz_) / (pe - pz_))
    lep = {v: flat(f"lep_{v}") for v in _LEP}
    for v in _LEP:
        cols[f"reco_l1_{v}"] = lep[v][g1]
        cols[f"reco_l2_{v}"] = lep[v][g2]
    cols["reco_flavour"] = np.abs(flat("lep_flavour")[g1])
    cols["reco_pileup"] = (
        _np(a["pileup"])[rows] if "pileup" in a else np.zeros(rows.size, dtype=np.float64)
    )
    for v in ("mass", "pt", "y"):
        cols[f"truth_{v}"] = _np(a[f"truth_{v}"])[rows]
    # truth lepton 1 is the one matched to reco lepton 1 when the match is known
    t_swap = (
        flat("lep_truth_index")[g1] == 1
        if "lep_truth_index" in a
        else np.zeros(rows.size, dtype=bool)
    )
    for v in ("pt", "eta", "phi"):
        t1, t2 = _np(a[f"truth_l1_{v}"])[rows], _np(a[f"truth_l2_{v}"])[rows]
        cols[f"truth_l1_{v}"] = np.where(t_swap, t2, t1)
        cols[f"truth_l2_{v}"] = np.where(t_swap, t1, t2)
    return cols, rows


def _jets(sel: Any, a: dict[str, Any], n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    cols = {k: _np(a[k]) for k in KINDS["jets"].columns}
    rows = np.flatnonzero(cols["truth_pt"] >= sel.truth_pt_min)
    return {k: v[rows] for k, v in cols.items()}, rows


def _dijet(sel: Any, a: dict[str, Any], n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    return {k: _np(a[k]) for k in ("truth_mjj", "reco_mjj")}, np.arange(n, dtype=np.int64)


def _hzz_muon_match(
    sel: Any, a: dict[str, Any], n: int
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    import awkward as ak

    px = a["muon_px"]
    counts = np.asarray(ak.to_numpy(ak.num(px)), dtype=np.int64)
    entry = np.repeat(np.arange(n, dtype=np.int64), counts)

    def flat(name: str) -> np.ndarray:
        return np.asarray(ak.to_numpy(ak.flatten(a[name])), dtype=np.float64)

    mpx, mpy, mpz = flat("muon_px"), flat("muon_py"), flat("muon_pz")
    pt = np.hypot(mpx, mpy)
    eta = _eta(mpx, mpy, mpz)
    phi = np.arctan2(mpy, mpx)
    tpx, tpy, tpz = (_np(a[f"truth_{c}"])[entry] for c in ("px", "py", "pz"))
    tpt = np.hypot(tpx, tpy)
    # an empty truth record (pT 0, or a pdgId that is not a lepton) never matches
    valid = tpt > 0
    if "truth_pdgid" in a:
        pdg = np.abs(_np(a["truth_pdgid"], np.int64))[entry]
        valid &= np.isin(pdg, (11, 13, 15))
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
        "reco_e": flat("muon_e"),
        "reco_iso": flat("muon_iso"),
        "reco_charge": flat("muon_charge"),
        "reco_dr": np.where(np.isfinite(dr), dr, -1.0),
        "truth_pt": np.where(ok, tpt, 0.0),
        "truth_eta": np.where(ok, teta, 0.0),
        "truth_phi": np.where(ok, tphi, 0.0),
        "reco_ok": ok.astype(np.float64),
    }
    return {k: v[keep] for k, v in cols.items()}, entry[keep]


def _zmumu_reco(sel: Any, a: dict[str, Any], n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    cols = {"reco_mass": _np(a["mass"])}
    for i in (1, 2):
        for v in ("pt", "eta", "phi", "charge"):
            cols[f"reco_l{i}_{v}"] = _np(a[f"l{i}_{v}"])
    keep = np.ones(n, dtype=bool)
    if sel.opposite_charge:
        keep &= cols["reco_l1_charge"] * cols["reco_l2_charge"] < 0
    if sel.window is not None:
        keep &= np.abs(cols["reco_mass"] - sel.z_mass) < sel.window * sel.z_mass
    rows = np.flatnonzero(keep)
    return {k: v[rows] for k, v in cols.items()}, rows
