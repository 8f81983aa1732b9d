"""Search efficiency: TPE + ASHA vs random search without early stopping (unfold_bins).

.. code-block:: bash

    python benchmarks/search_efficiency.py                       # synthetic zll-like dataset
    python benchmarks/search_efficiency.py --dataset demo/data/zll --metric chi2_ndf

Both scans run through ``scan.launch`` (Ray Tune + Optuna + MLflow, one worker per trial,
trials one after another so the order of epochs is exact) with the same space, seed and epoch
budget per trial (``--epochs``). The reference is the best objective value (over all epochs of
all trials) that ``--trials`` random trials reach, trained to the full budget each. The figure
of merit is the compute, in epochs summed over trials in the order they ran, that TPE + ASHA
needs to reach that value, as a fraction of the random scan's total (``trials x epochs``).
Last line: ``ratio=<TPE+ASHA epochs / random epochs>`` (goal <= 0.40).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SPACE: dict[str, Any] = {
    "alpha": {"type": "loguniform", "low": 0.25, "high": 16.0},
    "p": {"type": "uniform", "low": 0.5, "high": 2.0},
    "depth": {"type": "int", "low": 1, "high": 3},
    "batchnorm": {"type": "choice", "values": [False, True]},
    "dropout": {"type": "uniform", "low": 0.0, "high": 0.5, "when": {"batchnorm": False}},
    "lr": {"type": "loguniform", "low": 1.0e-5, "high": 3.0e-2},
}


def epochs_curve(scan_dir: Path, metric: str, mode: str) -> list[tuple[int, float]]:
    """(cumulative epochs, best-so-far) after every epoch, trials in the order they ran."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(scan_dir / "tune"))
    frames = analysis.trial_dataframes
    # Trials ran one at a time (concurrency 1), in creation order: the order Tune lists them.
    ids = [t.trial_id for t in analysis.trials if t.trial_id in frames]
    ids = [i for i in ids if not frames[i].empty]
    curve: list[tuple[int, float]] = []
    best = math.inf if mode == "min" else -math.inf
    n = 0
    for tid in ids:
        df = frames[tid].drop_duplicates("training_iteration", keep="last")
        for v in df.sort_values("training_iteration")[metric]:
            n += 1
            if math.isfinite(float(v)):
                best = min(best, float(v)) if mode == "min" else max(best, float(v))
            curve.append((n, best))
    return curve


def run(dataset: str, scan_dir: Path, searcher: str, scheduler: str, args: Any) -> list:
    from scan import launch

    cfg = {
        "name": f"eff-{searcher}-{scheduler}",
        "dataset": dataset,
        "family": "unfold_bins",
        "search_space": SPACE,
        "fixed": {"batch_size": 256, "patience": 0},
        "objective": {"metric": args.metric, "mode": "min"},
        "searcher": searcher,
        "scheduler": {"type": scheduler, "grace_period": 1, "reduction_factor": 3},
        "num_trials": args.trials,
        "concurrency": 1,
        "max_epochs": args.epochs,
        "seed": args.seed,
        "n_startup_trials": 10,
    }
    t0 = time.perf_counter()
    launch(cfg, scan_dir=str(scan_dir), verbose=0)
    print(f"{searcher}+{scheduler}: {time.perf_counter() - t0:.0f} s", flush=True)
    return epochs_curve(scan_dir, args.metric, "min")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default=None, help="dataset dir (default: synthetic)")
    ap.add_argument("--metric", default="val_loss")
    ap.add_argument("--trials", type=int, default=64)
    ap.add_argument("--epochs", type=int, default=9)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HEPSCAN_RAY_CPUS", "2")
    with tempfile.TemporaryDirectory() as tmp:
        dataset = args.dataset
        if dataset is None:
            from jobs.train_synthetic import write_unfold_dataset

            dataset = str(write_unfold_dataset(Path(tmp) / "ds", rows=8000, n_bins=20, seed=1))
        rnd = run(dataset, Path(tmp) / "random", "random", "none", args)
        tpe = run(dataset, Path(tmp) / "tpe", "tpe", "asha", args)
    target = rnd[-1][1]
    total_random = rnd[-1][0]
    random_first = next(n for n, b in rnd if b <= target)
    reached = next((n for n, b in tpe if b <= target), None)
    print(f"metric={args.metric} trials={args.trials} epochs/trial={args.epochs}")
    print(
        f"random: best={target:.5g}, total epochs={total_random}, first reached at {random_first}"
    )
    print(
        f"tpe+asha: best={tpe[-1][1]:.5g}, total epochs={tpe[-1][0]}, "
        f"reached random's best at {reached}"
    )
    if reached is None:
        print(f"tpe+asha did not reach {target:.5g} within {tpe[-1][0]} epochs")
        print("ratio=inf")
        return
    print(f"vs random's epochs to its own best: {reached / random_first:.3f}")
    print(f"ratio={reached / total_random:.3f}")


if __name__ == "__main__":
    main()
