"""Training-loop and whole-epoch overhead of ``jobs.train.train()`` against a bare torch loop.

.. code-block:: bash

    PYTHONPATH=. .venv/bin/python benchmarks/train.py            # ~1-2 minutes on 2 cores
    PYTHONPATH=. .venv/bin/python benchmarks/train.py --quick    # ~15 s, a smoke run

One process, the same model (``unfold_bins``), optimizer (Adam), batch size, data and epochs on
both sides, in the same run; runs alternate (``--repeats``) to share the machine's noise and the
median over all epochs of all repeats is compared. The bare loop is what someone would write by
hand: randperm + slices, forward, cross-entropy, zero_grad/backward/step; after it, the same
per-epoch work hepscan does: the family's calibration (``model.calibrate(x_train, y_train,
tol=1e-6, max_iter=30)``, hepscan's per-epoch call) and validation (``model.evaluate`` on the
validation split in memory).

Clock boundaries, identical on both sides:

* **loop**: from the start of the epoch (before the shuffle) to the end of the last optimizer
  step (hepscan: including the epoch's one host sync of its training statistics). Figure:
  training samples/s.
* **epoch**: from the same start to the end of validation, calibration included (hepscan's
  ``epoch_time_s``). Figure: epochs/s, i.e. the bare epoch time over hepscan's.

Prints a per-side breakdown (loop, calibration, validation), then ``epoch_ratio=<bare epoch
time / hepscan epoch time>`` and, last, ``ratio=<hepscan loop samples/s / bare loop samples/s>``
(the training-loop ratio as before; goal >= 0.9). Data-parallel step times (1 vs 2 ranks,
Horovod and DDP) moved to ``benchmarks/horovod_vs_ddp.py``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.manifest import feature_matrix, load_manifest, load_split  # noqa: E402
from jobs.train import TrainConfig, train  # noqa: E402
from jobs.train_synthetic import write_unfold_dataset  # noqa: E402
from models.registry import get_family  # noqa: E402

__all__ = ["BareEpoch", "bare_loop", "main"]


@dataclass(frozen=True)
class BareEpoch:
    """One epoch of the bare loop: seconds of each part and the training samples/s."""

    loop_s: float
    calibrate_s: float
    validate_s: float
    samples_per_s: float

    @property
    def epoch_s(self) -> float:
        return self.loop_s + self.calibrate_s + self.validate_s


def _split(cfg: TrainConfig, split: str) -> tuple[torch.Tensor, torch.Tensor]:
    m = load_manifest(cfg.dataset)
    data = load_split(m, split, [f"feat_{f}" for f in m.features] + ["truth_bin"])
    x = torch.from_numpy(feature_matrix(m, data))
    y = torch.from_numpy(data["truth_bin"].astype(np.int64))
    keep = y >= 0
    return x[keep], y[keep]


def bare_loop(cfg: TrainConfig, epochs: int) -> list[BareEpoch]:
    """The plain loop someone would write by hand, plus hepscan's per-epoch calibration and
    validation calls, timed with the same boundaries as the session's."""
    torch.manual_seed(cfg.seed)
    m = load_manifest(cfg.dataset)
    x, y = _split(cfg, "train")
    xv, yv = _split(cfg, "validation")
    family = get_family(cfg.family)
    model: Any = family.build(family.config_cls(**cfg.model), family.data_spec(m).dims)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    b, n = cfg.batch_size, len(x)
    out = []
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
        t1 = time.perf_counter()
        if cfg.calibrate:
            model.calibrate(x, y, tol=1e-6, max_iter=30)
        t2 = time.perf_counter()
        model.eval()
        with torch.no_grad():
            model.evaluate({"x": xv, "y": yv})
        t3 = time.perf_counter()
        out.append(BareEpoch(t1 - t0, t2 - t1, t3 - t2, (n // b) * b / (t1 - t0)))
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small dataset, 1 repeat, 2 epochs")
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (OMP_NUM_THREADS)")
    args = ap.parse_args(argv)
    # Small matmuls on a shared 2-core machine: a second OpenMP thread per process measures
    # scheduler contention (erratic under load), not the loop.
    torch.set_num_threads(args.threads)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    rows = args.rows or (10_000 if args.quick else 80_000)
    repeats = args.repeats or (1 if args.quick else 3)
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
        calibrate=True,
    )
    print(
        f"dataset: {rows} rows (70 % train, 15 % validation), 8 features, 40 bins; batch 512; "
        f"{epochs} epochs x {repeats} repeats; torch threads {torch.get_num_threads()}",
        flush=True,
    )
    ours: list[dict[str, float]] = []
    bare: list[BareEpoch] = []
    for r in range(repeats):
        ours += train(cfg).history
        bare += bare_loop(cfg, epochs)
        print(
            f"repeat {r}: loop hepscan {statistics.median(h['samples_per_s'] for h in ours):.0f}"
            f"/s bare {statistics.median(e.samples_per_s for e in bare):.0f}/s; epoch hepscan "
            f"{statistics.median(h['epoch_time_s'] for h in ours):.3f} s bare "
            f"{statistics.median(e.epoch_s for e in bare):.3f} s",
            flush=True,
        )

    def med(values: Any) -> float:
        return float(statistics.median(values))

    o_loop, o_epoch = med(h["train_time_s"] for h in ours), med(h["epoch_time_s"] for h in ours)
    o_sps = med(h["samples_per_s"] for h in ours)
    b_loop, b_epoch = med(e.loop_s for e in bare), med(e.epoch_s for e in bare)
    b_cal, b_val = med(e.calibrate_s for e in bare), med(e.validate_s for e in bare)
    b_sps = med(e.samples_per_s for e in bare)
    print("\nper epoch (median over epochs)  loop_s  calibrate_s  validate_s  epoch_s  samples/s")
    print(
        f"hepscan train()                {o_loop:6.3f}  {'(calibrate + validate)':>23s} "
        f"{o_epoch - o_loop:.3f}  {o_epoch:7.3f}  {o_sps:9.0f}"
    )
    print(
        f"bare torch loop                {b_loop:6.3f}  {b_cal:11.3f}  {b_val:10.3f}  "
        f"{b_epoch:7.3f}  {b_sps:9.0f}"
    )
    print(f"whole epoch: hepscan {o_epoch:.3f} s, bare {b_epoch:.3f} s")
    print(f"training loop: hepscan {o_sps:.0f} samples/s, bare {b_sps:.0f} samples/s")
    print(f"epoch_ratio={b_epoch / o_epoch:.3f}")
    print(f"ratio={o_sps / b_sps:.3f}")


if __name__ == "__main__":
    main()
