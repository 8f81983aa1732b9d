"""Selection of the CMS dimuon file ``uproot-Zmumu.root`` for unfolding with a ``zll`` model.

Used by ``configs/preprocess_zmumu_cms.yaml`` through the import-string selection contract
(:mod:`jobs.preprocess.user`)::

    PYTHONPATH=. hepscan preprocess configs/preprocess_zmumu_cms.yaml --out OUT

Why not the built-in ``zmumu_reco`` (``configs/preprocess_zmumu.yaml``) for a model trained on
``zll`` shards:

* the file holds up to four candidates per event, one per muon reconstruction (``Type``: GG
  global–global, GT global–tracker, TT tracker–tracker) — the same dimuon counted up to four
  times; here only the ``types`` asked for are kept (default ``GG``: 485 candidates in 484
  events);
* muon 1/2 are in file order (muon 1 is the harder one in only 45 % of the candidates) while
  the ``zll_pair`` selection of the training data puts the leading-pT lepton first; here
  ``reco_l1_*`` is the leading muon, as in training.

Columns: ``entry``, ``reco_mass`` (the file's ``M``), ``reco_l{1,2}_{pt,eta,phi,charge}``.
"""

from __future__ import annotations

from collections.abc import Sequence

import awkward as ak
import numpy as np

__all__ = ["global_dimuons"]


def global_dimuons(
    events: ak.Array,
    *,
    types: Sequence[str] = ("GG",),
    opposite_charge: bool = True,
    z_mass: float = 91.1876,
    window: float = 0.25,
) -> dict[str, np.ndarray]:
    """One row per kept candidate (see the module docstring)."""
    kind = np.asarray(ak.to_list(events["Type"]), dtype=object)
    keep = np.isin(kind, list(types))
    q1 = ak.to_numpy(events["Q1"]).astype(np.float64)
    q2 = ak.to_numpy(events["Q2"]).astype(np.float64)
    mass = ak.to_numpy(events["M"]).astype(np.float64)
    if opposite_charge:
        keep &= q1 * q2 < 0
    keep &= np.abs(mass - z_mass) < window * z_mass
    rows = np.flatnonzero(keep)
    lep = {
        (i, v): ak.to_numpy(events[f"{v}{i}"]).astype(np.float64)[rows]
        for i in (1, 2)
        for v in ("pt", "eta", "phi")
    }
    lep.update({(1, "charge"): q1[rows], (2, "charge"): q2[rows]})
    swap = lep[(2, "pt")] > lep[(1, "pt")]  # leading-pT muon first, as zll_pair does
    out: dict[str, np.ndarray] = {"entry": rows.astype(np.int64), "reco_mass": mass[rows]}
    for v in ("pt", "eta", "phi", "charge"):
        a, b = lep[(1, v)], lep[(2, v)]
        out[f"reco_l1_{v}"] = np.where(swap, b, a)
        out[f"reco_l2_{v}"] = np.where(swap, a, b)
    return out
