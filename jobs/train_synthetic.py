"""A tiny synthetic unfolding dataset in the jobs/manifest.py layout, for tests and benchmarks.

Truth ``m`` follows a Breit-Wigner-like peak on a falling background; reco is ``m`` smeared by a
Gaussian of relative width ``smear``. Features are standardised functions of reco (reco value,
its square, and noise columns), so the bin classifier has something to learn.

.. code-block:: bash

    python -m jobs.train_synthetic /tmp/synth --rows 20000
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from jobs.manifest import MANIFEST_NAME, MANIFEST_VERSION, write_manifest


def write_unfold_dataset(
    path: str | os.PathLike[str],
    *,
    rows: int = 2000,
    n_bins: int = 10,
    n_features: int = 4,
    seed: int = 0,
    smear: float = 0.05,
    lo: float = 65.0,
    hi: float = 115.0,
    train_shards: int = 2,
    row_group_rows: int = 65536,
) -> Path:
    """Write ``rows`` events split 70/15/15 into train/validation/test; returns the directory.

    Shards hold Parquet row groups of ``row_group_rows`` rows (65 536 as ``hepscan preprocess``
    writes; tests pass small values so that tiny datasets stream as several row groups)."""
    rng = np.random.default_rng(seed)
    truth = np.where(
        rng.random(rows) < 0.8,
        91.19 + 2.5 * rng.standard_cauchy(rows),
        lo + rng.exponential(30.0, rows),
    )
    truth = np.clip(truth, lo - 20, hi + 20)
    reco = truth * (1.0 + smear * rng.standard_normal(rows))
    edges = np.linspace(lo, hi, n_bins + 1)

    def binned(v: np.ndarray) -> np.ndarray:
        b = np.digitize(v, edges) - 1
        return np.where((v >= lo) & (v < hi), b, -1).astype(np.int32)

    raw_feats = [reco, (reco - 91.0) ** 2] + [
        rng.standard_normal(rows) for _ in range(max(0, n_features - 2))
    ]
    raw_feats = raw_feats[:n_features]
    names = [f"f{i}" for i in range(n_features)]
    mean = [float(np.mean(f)) for f in raw_feats]
    std = [float(np.std(f)) or 1.0 for f in raw_feats]
    columns: dict[str, np.ndarray] = {"event_id": np.arange(rows, dtype=np.uint64)}
    for n, f, m, s in zip(names, raw_feats, mean, std, strict=True):
        columns[f"feat_{n}"] = ((f - m) / s).astype(np.float32)
    columns["truth_bin"] = binned(truth)
    columns["reco_bin"] = binned(reco)
    columns["migration"] = columns["truth_bin"] - columns["reco_bin"]
    columns["truth_m"] = truth.astype(np.float64)
    columns["reco_m"] = reco.astype(np.float64)
    columns["weight"] = np.ones(rows)
    split = rng.choice(3, size=rows, p=[0.7, 0.15, 0.15])
    return _write(path, columns, split, names, mean, std, edges, train_shards, row_group_rows)


def _write(
    path: str | os.PathLike[str],
    columns: dict[str, np.ndarray],
    split: np.ndarray,
    names: list[str],
    mean: list[float],
    std: list[float],
    edges: np.ndarray,
    train_shards: int,
    row_group_rows: int = 65536,
) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    dest = Path(path)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        splits: dict[str, dict[str, object]] = {}
        for i, name in enumerate(("train", "validation", "test")):
            idx = np.flatnonzero(split == i)
            n_shards = train_shards if name == "train" else 1
            files = []
            for k, part in enumerate(np.array_split(idx, n_shards)):
                rel = f"{name}/part-{k:05d}.parquet"
                (tmp / name).mkdir(exist_ok=True)
                pq.write_table(
                    pa.table({c: v[part] for c, v in columns.items()}),
                    tmp / rel,
                    row_group_size=row_group_rows,
                )
                files.append({"path": rel, "rows": len(part)})
            splits[name] = {"rows": len(idx), "files": files}
        manifest = {
            "manifest_version": MANIFEST_VERSION,
            "sample": "synthetic_zll",
            "features": names,
            "scaler": {"mean": mean, "std": std},
            "splits": splits,
            "columns": {c: str(v.dtype) for c, v in columns.items()},
            "unfold": {
                "quantity": "m",
                "edges": [float(e) for e in edges],
                "n_bins": len(edges) - 1,
            },
            "generative": {"condition": ["truth_m"], "target": ["reco_m"]},
        }
        write_manifest(tmp / MANIFEST_NAME, manifest)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dest


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("path")
    ap.add_argument("--rows", type=int, default=20000)
    ap.add_argument("--bins", type=int, default=10)
    ap.add_argument("--features", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(
        write_unfold_dataset(a.path, rows=a.rows, n_bins=a.bins, n_features=a.features, seed=a.seed)
    )
