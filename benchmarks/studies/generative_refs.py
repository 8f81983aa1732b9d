"""The detector samples and the two references of the fast-simulation study (study 10).

* :func:`load_objects` — truth and reco objects of a simulated sample (``jets``, ``jets_tail``);
* :class:`GaussianSmearing` — the parametric baseline a user would otherwise write: per |η|
  bin, the efficiency, and per (|η|, truth pT) bin a Gaussian for each of reco/truth pT, Δη,
  Δφ and reco/truth m, mean and width fitted to the training sample;
* :func:`simulator_speed` — objects/s of the simulator's own detector step (generation of the
  truth included: it is what a fast simulation replaces).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.studies import common

__all__ = ["GaussianSmearing", "Objects", "load_objects", "simulator_speed"]

QUANTITIES = ("pt", "eta", "phi", "m")
ETA_EDGES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0])
PT_EDGES = np.array([20.0, 25.0, 32.0, 40.0, 55.0, 75.0, 110.0, 170.0, 300.0, 2000.0])


@dataclass
class Objects:
    """Truth and reco (N, 4) arrays with columns (pt, eta, phi, m) and the reconstructed mask;
    reco rows of unreconstructed objects are NaN."""

    truth: np.ndarray
    reco: np.ndarray
    ok: np.ndarray

    def __len__(self) -> int:
        return len(self.ok)


def load_objects(sample: str, events: int, seed: int, cache: Path) -> Objects:
    branches = [f"{k}_{q}" for k in ("truth", "reco") for q in QUANTITIES] + ["reco_ok"]
    d = common.read_branches(common.simulate_cached(sample, events, seed, cache), branches)
    ok = d["reco_ok"].astype(bool)
    truth = np.stack([d[f"truth_{q}"] for q in QUANTITIES], axis=1).astype(np.float64)
    reco = np.stack([d[f"reco_{q}"] for q in QUANTITIES], axis=1).astype(np.float64)
    reco[~ok] = np.nan
    return Objects(truth, reco, ok)


def _deltas(truth: np.ndarray, reco: np.ndarray) -> np.ndarray:
    """reco/truth pT, Δη, Δφ (wrapped), reco/truth m."""
    from models.metrics import wrapped_delta

    return np.stack(
        [
            reco[:, 0] / truth[:, 0],
            reco[:, 1] - truth[:, 1],
            wrapped_delta(reco[:, 2], truth[:, 2]),
            reco[:, 3] / truth[:, 3],
        ],
        axis=1,
    )


class GaussianSmearing:
    """Per-bin Gaussian smearing fitted to a training sample (see the module docstring)."""

    def __init__(self, eta_edges: np.ndarray = ETA_EDGES, pt_edges: np.ndarray = PT_EDGES) -> None:
        self.eta_edges = np.asarray(eta_edges, np.float64)
        self.pt_edges = np.asarray(pt_edges, np.float64)
        shape = (len(self.eta_edges) - 1, len(self.pt_edges) - 1, len(QUANTITIES))
        self.mean = np.zeros(shape)
        self.sigma = np.zeros(shape)
        self.efficiency = np.ones(len(self.eta_edges) - 1)

    def _bins(self, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ie = np.clip(np.searchsorted(self.eta_edges, np.abs(truth[:, 1]), "right") - 1, 0, None)
        ip = np.clip(np.searchsorted(self.pt_edges, truth[:, 0], "right") - 1, 0, None)
        return (
            np.minimum(ie, len(self.eta_edges) - 2),
            np.minimum(ip, len(self.pt_edges) - 2),
        )

    def fit(self, objects: Objects) -> GaussianSmearing:
        ie, ip = self._bins(objects.truth)
        d = _deltas(objects.truth, objects.reco)
        for i in range(len(self.eta_edges) - 1):
            in_eta = ie == i
            self.efficiency[i] = float(objects.ok[in_eta].mean()) if in_eta.any() else 1.0
            for j in range(len(self.pt_edges) - 1):
                sel = in_eta & (ip == j) & objects.ok
                if sel.sum() < 2:  # an empty bin borrows the whole |η| bin
                    sel = in_eta & objects.ok
                self.mean[i, j] = d[sel].mean(axis=0)
                self.sigma[i, j] = d[sel].std(axis=0)
        return self

    def smear(self, truth: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        ie, ip = self._bins(truth)
        ok = rng.random(len(truth)) < self.efficiency[ie]
        d = self.mean[ie, ip] + self.sigma[ie, ip] * rng.standard_normal((len(truth), 4))
        reco = np.stack(
            [
                np.abs(truth[:, 0] * d[:, 0]),
                truth[:, 1] + d[:, 1],
                np.remainder(truth[:, 2] + d[:, 2] + math.pi, 2 * math.pi) - math.pi,
                np.abs(truth[:, 3] * d[:, 3]),
            ],
            axis=1,
        )
        reco[~ok] = np.nan
        return reco, ok


def simulator_speed(sample: str, n: int, seed: int) -> float:
    """Objects/s of the simulator's generator function (in memory, no ROOT writing)."""
    from jobs.simulate.samples import _GENERATORS, sample_config

    cfg = sample_config(sample)
    rng = np.random.default_rng(seed)
    start = time.perf_counter()
    _GENERATORS[sample](rng, n, cfg)
    return n / max(time.perf_counter() - start, 1e-9)
