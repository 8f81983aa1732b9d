"""Horovod vs DDP data-parallel throughput on CPU: 1 and 2 ranks, same model, data, global batch.

.. code-block:: bash

    PYTHONPATH=. .venv/bin/python benchmarks/horovod_vs_ddp.py            # ~2 minutes on 2 cores
    PYTHONPATH=. .venv/bin/python benchmarks/horovod_vs_ddp.py --quick    # ~1.5 min, 1 repeat
    PYTHONPATH=. .venv/bin/python benchmarks/horovod_vs_ddp.py --smoke    # 2 ranks only (tests)
    # try a Horovod setting on top of the product defaults (repeatable):
    PYTHONPATH=. .venv/bin/python benchmarks/horovod_vs_ddp.py --env HOROVOD_CYCLE_TIME=5

Both backends go through the product launchers (``jobs.train._launch_horovod``: ``horovod.runner``
with gloo; ``jobs.train._launch_ddp``: spawned processes, gloo), so each rank gets the
product's defaults (``jobs.backends.horovod_env``, torch threads = cores / ranks).
The model is ``unfold_bins`` with a paper-sized hidden layer (alpha=1, p=2: 1600 wide for 40
bins), so a step is compute and not only collective latency; global batch 512 (256 per rank at
2 ranks). Runs alternate between the backends (``--repeats``) to share the machine's noise; the
figure per run is the median over epochs of the training-loop samples/s (the session's
``samples_per_s``: forward, backward, gradient allreduce, optimizer step), and the best run
per (backend, ranks) is kept.

Prints the 1-rank and 2-rank samples/s of both backends, each one's 2-rank speed-up, and last
``ratio=<horovod 2-rank samples/s / ddp 2-rank samples/s>`` (goal >= 0.95).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.train import TrainConfig, _launch_ddp, _launch_horovod  # noqa: E402
from jobs.train_synthetic import write_unfold_dataset  # noqa: E402

__all__ = ["main", "measure"]


def measure(cfg: TrainConfig, backend: str, ranks: int) -> tuple[float, float]:
    """(median samples/s over epochs, wall time of launch + training) of one run."""
    c = dataclasses.replace(cfg, backend=backend, workers=ranks)
    t0 = time.perf_counter()
    res = _launch_horovod(c, None, ranks) if backend == "horovod" else _launch_ddp(c, None)
    wall = time.perf_counter() - t0
    return statistics.median(h["samples_per_s"] for h in res.history), wall


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="small dataset, 1 repeat")
    ap.add_argument(
        "--smoke", action="store_true", help="tiny dataset, 1 epoch, 2-rank runs only (tests)"
    )
    ap.add_argument("--rows", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--hidden-p", type=float, default=2.0, help="unfold_bins p (width)")
    ap.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="environment for the ranks (e.g. HOROVOD_CYCLE_TIME=5); overrides the defaults",
    )
    args = ap.parse_args(argv)
    for kv in args.env:
        key, _, value = kv.partition("=")
        os.environ[key] = value
    rows = args.rows or (3_000 if args.smoke else 12_000 if args.quick else 40_000)
    epochs = args.epochs or (1 if args.smoke else 2 if args.quick else 3)
    repeats = args.repeats or (1 if args.quick or args.smoke else 2)
    rank_counts = (2,) if args.smoke else (1, 2)

    tmp = Path(tempfile.mkdtemp(prefix="hepscan-hvd-"))
    ds = write_unfold_dataset(tmp / "synth", rows=rows, n_bins=40, n_features=8, seed=0)
    cfg = TrainConfig(
        dataset=str(ds),
        family="unfold_bins",
        model={"alpha": 1.0, "p": args.hidden_p, "batchnorm": False, "dropout": 0.0},
        epochs=epochs,
        batch_size=512,
        lr=1e-3,
        patience=0,
        device="cpu",
        calibrate=False,
    )
    print(
        f"dataset: {rows} rows (70 % train), 8 features, 40 bins; unfold_bins p={args.hidden_p}; "
        f"global batch 512; {epochs} epochs x {repeats} repeats; cores {os.cpu_count()}; "
        f"env overrides {args.env or 'none'}",
        flush=True,
    )
    best: dict[tuple[str, int], float] = {}
    for r in range(repeats):
        for ranks in rank_counts:
            for backend in ("horovod", "ddp"):
                sps, wall = measure(cfg, backend, ranks)
                best[(backend, ranks)] = max(sps, best.get((backend, ranks), 0.0))
                print(
                    f"repeat {r}: {backend:8s} {ranks} rank(s) {sps:9.0f} samples/s "
                    f"(launch + train {wall:.1f} s)",
                    flush=True,
                )
    print("\nbackend  ranks  samples_per_s (best run, median over epochs)")
    for backend in ("horovod", "ddp"):
        for ranks in rank_counts:
            print(f"{backend:8s} {ranks:5d}  {best[(backend, ranks)]:13.0f}")
    for backend in ("horovod", "ddp") if 1 in rank_counts else ():
        up = best[(backend, 2)] / best[(backend, 1)]
        print(f"{backend}: 2-rank speed-up over 1 rank = {up:.2f}x")
    print(
        f"horovod 2 ranks {best[('horovod', 2)]:.0f} samples/s, "
        f"ddp 2 ranks {best[('ddp', 2)]:.0f} samples/s"
    )
    print(f"ratio={best[('horovod', 2)] / best[('ddp', 2)]:.3f}")


if __name__ == "__main__":
    main()
