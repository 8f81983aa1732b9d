"""Write a small NanoAOD-layout Z -> ee / mumu file to try the example selection on.

    python examples/user_selection/make_sample.py nano_ll.root --events 2000 --seed 1

Tree ``Events`` with ``nElectron``-counted ``Electron_{pt,eta,phi,charge,pfRelIso03_all,
genPartIdx}``, the same for ``Muon``, and ``nGenPart``-counted ``GenPart_{pt,eta,phi,pdgId}``
(float32 / int32 as in NanoAOD). Each event is a Z decaying to e or mu (half each); each
generator lepton is reconstructed with probability 0.9 and smeared by 2 % in pT; 5 % of the
reconstructed leptons have ``genPartIdx = -1``; Poisson(0.3) non-isolated fakes per collection.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import awkward as ak
import numpy as np
import uproot

MZ = 91.1876


def write_sample(path: str | Path, events: int = 2000, seed: int = 1) -> Path:
    rng = np.random.default_rng(seed)
    cols = ("pt", "eta", "phi", "charge", "pfRelIso03_all", "genPartIdx")
    reco: dict[str, dict[str, list[list[float]]]] = {
        c: {v: [] for v in cols} for c in ("Electron", "Muon")
    }
    gen: dict[str, list[list[float]]] = {v: [] for v in ("pt", "eta", "phi", "pdgId")}
    for _ in range(events):
        m = np.clip(MZ + 1.25 * rng.standard_cauchy(), 60.0, 125.0)
        # back-to-back leptons in the transverse plane, a random longitudinal configuration
        eta0, deta, phi = rng.normal(0, 1), rng.normal(0, 1), rng.uniform(-np.pi, np.pi)
        pt = m / (2 * np.cosh(deta / 2))  # massless: m^2 = 2 pt^2 (cosh(deta) + 1)
        flavour = 11 if rng.random() < 0.5 else 13
        coll = "Electron" if flavour == 11 else "Muon"
        glep = [(pt, eta0 + deta / 2, phi, flavour), (pt, eta0 - deta / 2, phi - np.pi, -flavour)]
        gen_ev = {"pt": [m / 10], "eta": [eta0], "phi": [phi], "pdgId": [23]}
        for g in glep:
            for v, x in zip(("pt", "eta", "phi", "pdgId"), g, strict=True):
                gen_ev[v].append(x)
        per_coll: dict[str, list[tuple[float, ...]]] = {"Electron": [], "Muon": []}
        for k, (gpt, geta, gphi, pdg) in enumerate(glep, start=1):
            if rng.random() < 0.9:
                idx = k if rng.random() >= 0.05 else -1
                q = -np.sign(pdg)
                smeared = gpt * (1 + 0.02 * rng.standard_normal())
                per_coll[coll].append((smeared, geta, gphi, q, rng.exponential(0.02), idx))
        for c in per_coll:
            for _ in range(rng.poisson(0.3)):
                per_coll[c].append(
                    (
                        5 + rng.exponential(8.0),
                        rng.uniform(-2.4, 2.4),
                        rng.uniform(-np.pi, np.pi),
                        rng.choice([-1, 1]),
                        rng.uniform(0.1, 0.8),
                        -1,
                    )
                )
            per_coll[c].sort(key=lambda lep: -lep[0])
            for i, v in enumerate(cols):
                reco[c][v].append([lep[i] for lep in per_coll[c]])
        for v in gen:
            gen[v].append(gen_ev[v])

    def typed(name: str, values: list[list[float]]) -> ak.Array:
        ints = name in ("charge", "genPartIdx", "pdgId")
        return ak.values_astype(ak.Array(values), np.int32 if ints else np.float32)

    data = {c: ak.zip({v: typed(v, reco[c][v]) for v in cols}) for c in reco}
    data["GenPart"] = ak.zip({v: typed(v, gen[v]) for v in gen})
    out = Path(path)
    with uproot.recreate(out) as f:
        f.mktree(
            "Events",
            {k: v.type.content for k, v in data.items()},
            counter_name=lambda counted: "n" + counted,
            field_name=lambda outer, inner: f"{outer}_{inner}",
        )
        f["Events"].extend(data)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("path")
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    print(write_sample(a.path, a.events, a.seed))
