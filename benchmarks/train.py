"""Training-loop overhead and data-parallel step time on CPU.

.. code-block:: bash

    PYTHONPATH=. .venv/bin/python benchmarks/train.py            # ~2-4 minutes on 2 cores
    PYTHONPATH=. .venv/bin/python benchmarks/train.py --quick    # smaller, for a smoke run

1. samples/s of ``jobs.train.train()`` (one process) against a bare torch loop of the same
   model, optimizer, batch size and data in the same run (randperm + slices, forward,
   cross-entropy, zero_grad/backward/step). Runs alternate to share the machine's noise; the
   median of the per-epoch training throughput (validation excluded in both) is compared.
2. Step time of 1 vs 2 ranks with the same global batch, for Horovod (gloo) and DDP (gloo),
   one torch thread per rank (``--threads``).

The last line is ``ratio=<hepscan/bare>`` (goal >= 0.9).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from jobs.manifest import feature_matrix, load_manifest, load_split
from jobs.train import TrainConfig, _launch_ddp, _launch_horovod, train
from jobs.train_synthetic import write_unfold_dataset
from models.registry import get_family


def bare_loop(cfg: TrainConfig, epochs: int) -> list[float]:
    """Samples/s per epoch of the plain loop someone would write by hand."""
    torch.manual_seed(cfg.seed)
    m = load_manifest(cfg.dataset)
    data = load_split(m, "train", [f"feat_{f}" for f in m.features] + ["truth_bin"])
    x = torch.from_numpy(feature_matrix(m, data))
    y = torch.from_numpy(data["truth_bin"].astype(np.int64))
    keep = y >= 0
    x, y = x[keep], y[keep]
    family = get_family(cfg.family)
    spec = family.data_spec(m)
    model = family.build(family.config_cls(**cfg.model), spec.dims)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    b, n = cfg.batch_size, len(x)
    rates = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(n)
        model.train()
        for k in range(n // b):
            idx = perm[k * b : (k + 1) * b]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        rates.append((n // b) * b / (time.perf_counter() - t0))
    return rates


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per process/rank (OMP_NUM_THREADS for the ranks)",
    )
    args = ap.parse_args()
    # Small matmuls on a shared 2-core machine: a second OpenMP thread per process measures
    # scheduler contention (40-100x slower and erratic under load), not the loop. One thread
    # per rank also makes 1 vs 2 ranks a like-for-like comparison.
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    rows = args.rows or (20_000 if args.quick else 80_000)
    repeats = args.repeats or (2 if args.quick else 3)
    epochs = 2 if args.quick else 3

    tmp = Path(tempfile.mkdtemp(prefix="hepscan-bench-"))
    ds = write_unfold_dataset(tmp / "synth", rows=rows, n_bins=40, n_features=8, seed=0)
    cfg = TrainConfig(
        dataset=str(ds),
        family="unfold_bins",
        model={"alpha": 1.0, "p": 1.0, "batchnorm": False, "dropout": 0.0},
        epochs=epochs,
        batch_size=512,
        lr=1e-3,
        patience=0,
        device="cpu",
    )
    print(
        f"dataset: {rows} rows, 8 features, 40 bins; batch 512; torch threads "
        f"{torch.get_num_threads()}"
    )

    ours: list[float] = []
    bare: list[float] = []
    for r in range(repeats):
        res = train(cfg)
        ours += [h["samples_per_s"] for h in res.history]
        bare += bare_loop(cfg, epochs)
        print(
            f"repeat {r}: hepscan {statistics.median(ours):.0f}/s, "
            f"bare {statistics.median(bare):.0f}/s"
        )
    s_ours, s_bare = statistics.median(ours), statistics.median(bare)

    print(
        "\nbackend  ranks  step_time_ms  samples_per_s  "
        "(hidden 1600, global batch 512, median over epochs)"
    )
    step: dict[tuple[str, int], float] = {}
    # A paper-sized hidden layer (alpha=1, p=2: 1600 wide for 40 bins) so that a step is
    # compute, not only collective latency.
    wide = dataclasses.replace(cfg, model={**cfg.model, "p": 2.0}, epochs=2)
    for backend in ("horovod", "ddp"):
        for n in (1, 2):
            c = dataclasses.replace(wide, backend=backend, workers=n)
            t0 = time.perf_counter()
            res = _launch_horovod(c, None, n) if backend == "horovod" else _launch_ddp(c, None)
            wall = time.perf_counter() - t0
            st = statistics.median(h["step_time_s"] for h in res.history)
            sps = statistics.median(h["samples_per_s"] for h in res.history)
            step[(backend, n)] = st
            print(
                f"{backend:8s} {n:5d}  {1e3 * st:12.2f}  {sps:13.0f}  (launch+train {wall:.1f} s)"
            )
    for backend in ("horovod", "ddp"):
        print(
            f"{backend}: 2-rank speed-up per global step = "
            f"{step[(backend, 1)] / step[(backend, 2)]:.2f}x"
        )
    print(f"\nhepscan train {s_ours:.0f} samples/s, bare torch loop {s_bare:.0f} samples/s")
    print(f"ratio={s_ours / s_bare:.3f}")


if __name__ == "__main__":
    main()
