"""A user selection for ``hepscan preprocess``: Z -> ee or mumu from NanoAOD Electron + Muon.

Used through the import string ``dilepton_selection:select_dileptons`` (see ``config.yaml``
and ``README.md`` here; the contract is documented in ``jobs/preprocess/user.py``)::

    PYTHONPATH=examples/user_selection hepscan preprocess \
        examples/user_selection/config.yaml --input nano_ll.root --out ll-shards

Per event: of the isolated electrons and the isolated muons, the opposite-charge same-flavour
pair whose mass is closest to mZ, kept within ``window * z_mass``; lepton 1 is the leading one.
Truth: the generator particles the two leptons point to (``*_genPartIdx``); events where a
selected lepton has no generator match are not kept (a choice of this example).
"""

from __future__ import annotations

import awkward as ak
import numpy as np

MASS = {"Electron": 0.00051099895, "Muon": 0.1056583755}
FLAVOUR = {"Electron": 11, "Muon": 13}


def _p4(pt: ak.Array, eta: ak.Array, phi: ak.Array, mass: float) -> dict[str, ak.Array]:
    pt, eta, phi = (ak.values_astype(x, np.float64) for x in (pt, eta, phi))  # NanoAOD: float32
    px, py, pz = pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta)
    return {"px": px, "py": py, "pz": pz, "e": np.sqrt(px**2 + py**2 + pz**2 + mass**2)}


def _mass(a: dict[str, ak.Array], b: dict[str, ak.Array]) -> ak.Array:
    s = {k: a[k] + b[k] for k in a}
    return np.sqrt(np.maximum(s["e"] ** 2 - s["px"] ** 2 - s["py"] ** 2 - s["pz"] ** 2, 0.0))


def select_dileptons(
    events: ak.Array, *, iso_max: float = 0.15, z_mass: float = 91.1876, window: float = 0.25
) -> dict[str, np.ndarray]:
    """One row per selected event: ``entry`` plus reco and truth dilepton columns."""
    pairs = []
    for coll in ("Electron", "Muon"):
        lep = ak.zip(
            {
                v: events[f"{coll}_{v}"]
                for v in ("pt", "eta", "phi", "charge", "pfRelIso03_all", "genPartIdx")
            }
        )
        lep = lep[lep.pfRelIso03_all < iso_max]
        a, b = ak.unzip(ak.combinations(lep, 2))
        p4a = _p4(a.pt, a.eta, a.phi, MASS[coll])
        p4b = _p4(b.pt, b.eta, b.phi, MASS[coll])
        pair = ak.zip({"a": a, "b": b, "mass": _mass(p4a, p4b)}, depth_limit=2)
        pair = ak.with_field(
            pair, ak.full_like(pair.mass, FLAVOUR[coll], dtype=np.int32), "flavour"
        )
        pairs.append(pair[a.charge * b.charge < 0])
    every = ak.concatenate(pairs, axis=1)
    best = ak.firsts(every[ak.argmin(abs(every.mass - z_mass), axis=1, keepdims=True)])
    keep = ak.fill_none(abs(best.mass - z_mass) < window * z_mass, False)

    # truth: the generator particles of both leptons; unmatched events are not kept
    gen_n = ak.num(events["GenPart_pt"])
    matched = keep & ak.fill_none(
        (best.a.genPartIdx >= 0)
        & (best.a.genPartIdx < gen_n)
        & (best.b.genPartIdx >= 0)
        & (best.b.genPartIdx < gen_n),
        False,
    )
    entry = np.flatnonzero(ak.to_numpy(matched))
    sel, gen = best[entry], events[entry]
    lead = sel.a.pt >= sel.b.pt
    l1, l2 = ak.where(lead, sel.a, sel.b), ak.where(lead, sel.b, sel.a)

    def gen_of(lep: ak.Array, field: str) -> np.ndarray:
        idx = ak.unflatten(lep.genPartIdx, 1)  # one index per event -> pick from the jagged list
        return ak.to_numpy(ak.flatten(gen[f"GenPart_{field}"][idx]))

    mass = np.where(ak.to_numpy(sel.flavour) == 11, MASS["Electron"], MASS["Muon"])
    t1 = _p4(gen_of(l1, "pt"), gen_of(l1, "eta"), gen_of(l1, "phi"), 0.0)
    t2 = _p4(gen_of(l2, "pt"), gen_of(l2, "eta"), gen_of(l2, "phi"), 0.0)
    for t in (t1, t2):  # lepton masses on the generator side too
        t["e"] = np.sqrt(t["px"] ** 2 + t["py"] ** 2 + t["pz"] ** 2 + mass**2)
    return {
        "entry": entry,
        "reco_mass": ak.to_numpy(sel.mass),
        "reco_flavour": ak.to_numpy(sel.flavour),
        "reco_l1_pt": ak.to_numpy(l1.pt),
        "reco_l2_pt": ak.to_numpy(l2.pt),
        "reco_l1_eta": ak.to_numpy(l1.eta),
        "reco_l2_eta": ak.to_numpy(l2.eta),
        "truth_mass": ak.to_numpy(_mass(t1, t2)),
        "truth_l1_pt": gen_of(l1, "pt"),
        "truth_l2_pt": gen_of(l2, "pt"),
    }
