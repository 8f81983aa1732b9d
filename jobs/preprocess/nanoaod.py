"""The ``nanoaod_dilepton`` selection: a Z -> ll candidate from a CMS NanoAOD-layout tree.

Config (``configs/preprocess_nanoaod_zmumu.yaml``; defaults shown)::

    tree: Events
    event_id: null            # or [run, event] when the file has them
    selection:
      kind: nanoaod_dilepton
      collection: Muon        # reads nMuon-counted Muon_pt, Muon_eta, Muon_phi, Muon_charge
      flavour: null           # |pdgId| of the collection: implied 13 Muon, 11 Electron, 15 Tau
      iso: pfRelIso03_all     # isolation field: Muon_pfRelIso03_all
      iso_max: 0.15
      pt_min: 0.0
      eta_max: null
      require: []             # boolean fields that must be true, e.g. [tightId] -> Muon_tightId
      gen: GenPart            # generator collection, read only for truth_* columns
      z_mass: 91.1876
      window: 0.25

Launch::

    hepscan preprocess configs/preprocess_nanoaod_zmumu.yaml --input 'nano/*.root' --out OUT

Reco (as ``zll_pair``, with the flavour implied by the collection): among the collection's
objects with ``iso < iso_max``, ``pt > pt_min`` (and ``|eta| < eta_max``, ``require``), the
opposite-charge pair with mass closest to ``z_mass``, kept if within ``window * z_mass``;
lepton 1 is the leading-pT one. An event without such a pair is no row (``failed_selection``
in the manifest counts), whether it has 0, 1 or more objects.

Truth (only when a ``truth_*`` column is requested): truth lepton k is the generator particle
``<collection>_genPartIdx`` of reco lepton k points to, if that index is inside the event's
``<gen>`` collection and its ``|pdgId|`` is the flavour. Otherwise (``genPartIdx = -1``, out
of range, another particle) it is the highest-pT generator lepton with the reco lepton's
charge (``pdgId = -charge * flavour``; ``status == 1`` when ``<gen>_status`` exists) that is
not truth lepton 1 / the other matched particle. ``truth_mass``, ``truth_pt``, ``truth_y`` are
those of the truth pair (mass from ``<gen>_mass`` when present, else the lepton mass). An
event whose truth pair cannot be found (no such generator lepton) is no row either, counted
under ``failed_selection``: like ``zll_pair`` every row has reco and truth values, and the
unreconstructed events are counted, not written.

Only these branches are read: ``<collection>_{pt,eta,phi,charge,<iso>,genPartIdx}`` (and the
``require`` fields), ``<gen>_{pt,eta,phi,pdgId}``, and ``<gen>_mass`` / ``<gen>_status`` when the
file has them. The counters (``nMuon``, ``nGenPart``) come with the jagged branches. Each
logical name below can be mapped to another branch with the config's ``branches:``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jobs.preprocess.common import (
    LEPTON_MASS,
    Jagged,
    KindSpec,
    best_pairs,
    four_vectors,
    pair_sum,
)

__all__ = ["COLUMNS", "nanoaod_dilepton", "spec"]

_LEP = ("pt", "eta", "phi", "iso", "charge")
_GEN = ("gen_pt", "gen_eta", "gen_phi", "gen_pdgid", "gen_mass", "gen_status")

COLUMNS = (
    "reco_mass",
    "reco_pt",
    "reco_y",
    "reco_flavour",
    *(f"reco_l{i}_{v}" for i in (1, 2) for v in _LEP),
    "truth_mass",
    "truth_pt",
    "truth_y",
    *(f"truth_l{i}_{v}" for i in (1, 2) for v in ("pt", "eta", "phi")),
)


def spec(sel: Any) -> KindSpec:
    """Logical branch names -> ``<collection>_*`` / ``<gen>_*`` branches for ``sel``."""
    c, g = sel.collection, sel.gen
    branches = {
        **{f"lep_{v}": f"{c}_{v}" for v in ("pt", "eta", "phi", "charge")},
        "lep_iso": f"{c}_{sel.iso}",
        "lep_gen_index": f"{c}_genPartIdx",
        **{f"require_{name}": f"{c}_{name}" for name in sel.require},
        "gen_pt": f"{g}_pt",
        "gen_eta": f"{g}_eta",
        "gen_phi": f"{g}_phi",
        "gen_pdgid": f"{g}_pdgId",
        "gen_mass": f"{g}_mass",
        "gen_status": f"{g}_status",
    }
    reco = {k for k in branches if k.startswith(("lep_", "require_"))} - {"lep_gen_index"}
    truth = {"lep_gen_index", *_GEN}

    def need(columns: tuple[str, ...]) -> set[str]:
        return reco | truth if any(col.startswith("truth_") for col in columns) else reco

    return KindSpec(
        branches=branches,
        columns=COLUMNS,
        optional=frozenset({"gen_mass", "gen_status"}),
        need=need,
    )


def nanoaod_dilepton(
    sel: Any, a: dict[str, Any], n: int, columns: tuple[str, ...]
) -> tuple[dict[str, Any], np.ndarray]:
    """Rows (one per selected event) and the row -> entry map; see the module docstring."""
    flavour = int(sel.pdg_id)
    lep: Jagged = a["lep_pt"]
    ent = np.repeat(np.arange(n, dtype=np.int64), lep.counts)
    pt_all = np.asarray(lep.content, dtype=np.float64)
    eta_all = np.asarray(a["lep_eta"].content, dtype=np.float64)
    iso_all = np.asarray(a["lep_iso"].content, dtype=np.float64)
    cut = (iso_all < sel.iso_max) & (pt_all > sel.pt_min)
    if sel.eta_max is not None:
        cut &= np.abs(eta_all) < sel.eta_max
    for name in sel.require:
        cut &= np.asarray(a[f"require_{name}"].content).astype(bool)
    good = np.flatnonzero(cut)
    pt, eta = pt_all[good], eta_all[good]
    phi = np.asarray(a["lep_phi"].content, dtype=np.float64)[good]
    q = np.asarray(a["lep_charge"].content, dtype=np.int64)[good]
    p4 = four_vectors(pt, eta, phi, LEPTON_MASS[flavour])
    best_d, best_i, best_j = best_pairs(p4, q, None, ent[good], n, sel.z_mass)
    rows = np.flatnonzero(best_d < sel.window * sel.z_mass)
    bi, bj = best_i[rows], best_j[rows]
    swap = pt[bj] > pt[bi]  # leading-pT lepton first
    g1, g2 = np.where(swap, bj, bi), np.where(swap, bi, bj)

    want = set(columns)
    if any(c.startswith("truth_") for c in want):
        t1, t2 = _truth_pair(a, flavour, rows, good[g1], good[g2], q[g1], q[g2])
        found = (t1 >= 0) & (t2 >= 0)
        rows, g1, g2, t1, t2 = rows[found], g1[found], g2[found], t1[found], t2[found]
    m, spt, sz, se = pair_sum(p4, g1, g2)
    cols: dict[str, Any] = {"reco_mass": m, "reco_pt": spt}
    cols["reco_y"] = 0.5 * np.log((se + sz) / (se - sz))
    cols["reco_flavour"] = np.full(rows.size, float(flavour))
    flat = {"pt": pt, "eta": eta, "phi": phi, "iso": iso_all[good], "charge": q}
    for v in _LEP:
        cols[f"reco_l1_{v}"] = flat[v][g1]
        cols[f"reco_l2_{v}"] = flat[v][g2]
    if any(c.startswith("truth_") for c in want):
        gen: Jagged = a["gen_pt"]
        gpt = np.asarray(gen.content, dtype=np.float64)
        geta = np.asarray(a["gen_eta"].content, dtype=np.float64)
        gphi = np.asarray(a["gen_phi"].content, dtype=np.float64)
        gmass = (
            np.asarray(a["gen_mass"].content, dtype=np.float64)
            if "gen_mass" in a
            else LEPTON_MASS[flavour]
        )
        t4 = four_vectors(gpt, geta, gphi, gmass)
        tm, tpt, tz, te = pair_sum(t4, t1, t2)
        cols["truth_mass"], cols["truth_pt"] = tm, tpt
        cols["truth_y"] = 0.5 * np.log((te + tz) / (te - tz))
        for v, arr in (("pt", gpt), ("eta", geta), ("phi", gphi)):
            cols[f"truth_l1_{v}"], cols[f"truth_l2_{v}"] = arr[t1], arr[t2]
    return {k: cols[k] for k in columns}, rows


def _truth_pair(
    a: dict[str, Any],
    flavour: int,
    rows: np.ndarray,
    obj1: np.ndarray,
    obj2: np.ndarray,
    q1: np.ndarray,
    q2: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Flat generator-particle index of truth lepton 1 and 2 per row (-1: none found)."""
    gen: Jagged = a["gen_pt"]
    pdg = np.asarray(a["gen_pdgid"].content, dtype=np.int64)
    first, count = gen.offsets[rows], gen.counts[rows]
    local = np.asarray(a["lep_gen_index"].content, dtype=np.int64)

    def matched(obj: np.ndarray) -> np.ndarray:
        k = local[obj]
        ok = (k >= 0) & (k < count)
        idx = np.where(ok, first + k, 0)
        if pdg.size:
            ok &= np.abs(pdg[idx]) == flavour
        return np.where(ok, idx, -1)

    status_ok = (
        np.asarray(a["gen_status"].content) == 1
        if "gen_status" in a
        else np.ones(pdg.size, dtype=bool)
    )
    gpt = np.asarray(gen.content, dtype=np.float64)

    def fallback(t: np.ndarray, charge: np.ndarray, other: np.ndarray) -> np.ndarray:
        """Highest-pT generator lepton with this charge, where ``t`` is unmatched (-1)."""
        need = np.flatnonzero(t < 0)
        if need.size == 0:
            return t
        want = -charge[need] * flavour
        best = np.full(need.size, -1, dtype=np.int64)
        best_pt = np.full(need.size, -np.inf)
        for p in range(int(count[need].max(initial=0))):
            sub = np.flatnonzero(count[need] > p)
            idx = first[need[sub]] + p
            cand = (pdg[idx] == want[sub]) & status_ok[idx] & (idx != other[need[sub]])
            better = cand & (gpt[idx] > best_pt[sub])
            best[sub[better]], best_pt[sub[better]] = idx[better], gpt[idx[better]]
        out = t.copy()
        out[need] = best
        return out

    t1, t2 = matched(obj1), matched(obj2)
    t1 = fallback(t1, q1, t2)
    t2 = fallback(t2, q2, t1)
    return t1, t2
