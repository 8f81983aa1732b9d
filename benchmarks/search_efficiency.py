"""Search efficiency: TPE + ASHA vs random search without early stopping, 5 seeds x 2 datasets.

.. code-block:: bash

    PYTHONPATH=. .venv/bin/python benchmarks/search_efficiency.py             # ~10 min, 2 cores
    PYTHONPATH=. .venv/bin/python benchmarks/search_efficiency.py --trials 8  # 13 min (docs figures)
    PYTHONPATH=. .venv/bin/python benchmarks/search_efficiency.py --quick     # ~1 min, smoke run

Datasets (simulated with ``jobs.simulate`` and preprocessed with the shipped configs, tiny so the
whole benchmark fits in ~10 minutes):

* **zll** unfolding, family ``unfold_bins`` (``configs/preprocess_zll.yaml``, 3 000 events),
  objective ``val_loss``;
* **jets**, the conditional ``flow`` (``configs/preprocess_jets.yaml``, 3 000 jets), objective
  ``val_loss``.

Every scan runs through ``scan.launch`` (Ray Tune + Optuna + MLflow; one Ray instance for the
whole run, one worker per trial, trials one after another so that the order of epochs is
exact). Per (dataset, seed) two scans with the same space, seed, trial count (``--trials``,
default 6) and epoch budget per trial (``--epochs``, default 4): random search trained to the
full budget, and TPE (``--startup`` random start-up trials, default 3) + ASHA (grace period 1,
reduction factor 3). Random's best objective value (over all epochs of all its trials) is the
target. The figure per (dataset, seed) is

    epochs TPE+ASHA needs to first reach random's best / epochs random needed to first reach it

with epochs summed over trials in the order they ran (the old definition divided by random's
whole budget ``trials x epochs``; it is printed alongside). A TPE+ASHA scan that never reaches
the target counts its whole budget, a lower bound, flagged ``>=``. Prints every (dataset, seed),
the mean and spread (sample standard deviation) per dataset and over all, and last
``ratio=<mean TPE+ASHA epochs / mean random epochs to its best>`` over all (dataset, seed) (goal
<= 0.40 by the old definition; < 1 means TPE+ASHA finds random's best sooner).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

__all__ = ["DATASETS", "Outcome", "epochs_curve", "figure", "main"]

ZLL_SPACE: dict[str, Any] = {
    "alpha": {"type": "loguniform", "low": 0.25, "high": 16.0},
    "p": {"type": "uniform", "low": 0.5, "high": 2.0},
    "depth": {"type": "int", "low": 1, "high": 3},
    "batchnorm": {"type": "choice", "values": [False, True]},
    "dropout": {"type": "uniform", "low": 0.0, "high": 0.5, "when": {"batchnorm": False}},
    "lr": {"type": "loguniform", "low": 1.0e-5, "high": 3.0e-2},
}
FLOW_SPACE: dict[str, Any] = {
    "kind": {"type": "choice", "values": ["maf", "nsf"]},
    "transforms": {"type": "int", "low": 1, "high": 3},
    "hidden_features": {"type": "int", "low": 8, "high": 64},
    "hidden_layers": {"type": "int", "low": 1, "high": 2},
    "bins": {"type": "int", "low": 4, "high": 8, "when": {"kind": "nsf"}},
    "lr": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-2},
}
# name: (sample, family, space, fixed)
DATASETS: dict[str, tuple[str, str, dict[str, Any], dict[str, Any]]] = {
    "zll": ("zll", "unfold_bins", ZLL_SPACE, {"batch_size": 256, "patience": 0}),
    "jets": (
        "jets",
        "flow",
        FLOW_SPACE,
        {"batch_size": 256, "patience": 0, "efficiency_head": True},
    ),
}


def prepare(sample: str, events: int, where: Path) -> Path:
    """Simulate ``events`` of ``sample`` and preprocess them with the shipped config."""
    from jobs.preprocess import preprocess
    from jobs.simulate import simulate

    files = simulate(sample, events, 1, 1, where / f"{sample}-root", workers=1, progress=False)
    out = where / sample
    preprocess(
        REPO / "configs" / f"preprocess_{sample}.yaml",
        out,
        inputs=[str(f) for f in files],
        workers=1,
        overwrite=True,
    )
    return out


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


@dataclass(frozen=True)
class Outcome:
    """One (dataset, seed): random's best and when each scan first reached it."""

    dataset: str
    seed: int
    target: float
    random_first: int  # epochs random needed to first reach its own best
    random_total: int  # random's whole budget (the old denominator)
    tpe_epochs: int  # epochs TPE+ASHA needed to reach the target (its total when never)
    tpe_total: int
    reached: bool

    @property
    def ratio(self) -> float:
        return self.tpe_epochs / self.random_first

    @property
    def old_ratio(self) -> float:
        return self.tpe_epochs / self.random_total


def figure(
    dataset: str, seed: int, rnd: list[tuple[int, float]], tpe: list[tuple[int, float]]
) -> Outcome:
    """The (dataset, seed) figure from the two best-so-far curves (objective minimised)."""
    target = rnd[-1][1]
    random_first = next(n for n, b in rnd if b <= target)
    reached = next((n for n, b in tpe if b <= target), None)
    return Outcome(
        dataset=dataset,
        seed=seed,
        target=target,
        random_first=random_first,
        random_total=rnd[-1][0],
        tpe_epochs=tpe[-1][0] if reached is None else reached,
        tpe_total=tpe[-1][0],
        reached=reached is not None,
    )


def run_scan(
    name: str, data: Path, scan_dir: Path, searcher: str, seed: int, args: Any
) -> list[tuple[int, float]]:
    from scan import launch

    _, family, space, fixed = DATASETS[name]
    cfg = {
        "name": f"eff-{name}-{searcher}-s{seed}",
        "dataset": str(data),
        "family": family,
        "search_space": space,
        "fixed": fixed,
        "objective": {"metric": args.metric, "mode": "min"},
        "searcher": searcher,
        "scheduler": (
            {"type": "asha", "grace_period": 1, "reduction_factor": 3}
            if searcher == "tpe"
            else {"type": "none"}
        ),
        "num_trials": args.trials,
        "concurrency": 1,
        "resources": {"workers": 1, "cpus_per_worker": 1},
        "backend": "single",
        "max_epochs": args.epochs,
        "seed": seed,
        "register": False,
    }
    if searcher == "tpe":
        cfg["n_startup_trials"] = args.startup
    launch(cfg, scan_dir=str(scan_dir), verbose=0)
    return epochs_curve(scan_dir, args.metric, "min")


def _mean_spread(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {spread:.2f}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="1 seed, 4 trials x 2 epochs")
    ap.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 5)")
    ap.add_argument("--datasets", default="zll,jets")
    ap.add_argument("--events", type=int, default=None, help="events per dataset (3000)")
    ap.add_argument("--trials", type=int, default=None, help="trials per scan (6)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per trial (4)")
    ap.add_argument("--startup", type=int, default=3, help="TPE random start-up trials")
    ap.add_argument("--metric", default="val_loss")
    args = ap.parse_args(argv)
    seeds = args.seeds or (1 if args.quick else 5)
    args.trials = args.trials or (4 if args.quick else 6)
    args.epochs = args.epochs or (2 if args.quick else 4)
    args.startup = min(args.startup, args.trials)
    events = args.events or (1500 if args.quick else 3000)
    names = [n.strip() for n in args.datasets.split(",") if n.strip()]
    unknown = sorted(set(names) - set(DATASETS))
    if unknown:
        ap.error(f"--datasets: unknown {unknown} (have {sorted(DATASETS)})")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("HEPSCAN_RAY_CPUS", "2")
    print(
        f"datasets {names}, {events} events each; seeds 0..{seeds - 1}; {args.trials} trials x "
        f"{args.epochs} epochs per scan; TPE start-up {args.startup}; metric {args.metric}",
        flush=True,
    )
    import warnings

    import ray

    from benchmarks.studies.common import ray_workers_import_repo

    outcomes: list[Outcome] = []
    t_all = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hepscan-eff-") as tmp:
        t0 = time.perf_counter()
        data = {n: prepare(DATASETS[n][0], events, Path(tmp)) for n in names}
        print(f"simulate + preprocess: {time.perf_counter() - t0:.0f} s", flush=True)
        # one Ray for every scan (scan.launch joins a running one and leaves it running)
        ray_workers_import_repo()
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        print(f"ray.init: {time.perf_counter() - t0:.1f} s", flush=True)
        try:
            for name in names:
                for seed in range(seeds):
                    t0 = time.perf_counter()
                    base = Path(tmp) / f"{name}-s{seed}"
                    rnd = run_scan(name, data[name], base / "random", "random", seed, args)
                    t1 = time.perf_counter()
                    tpe = run_scan(name, data[name], base / "tpe", "tpe", seed, args)
                    t2 = time.perf_counter()
                    o = figure(name, seed, rnd, tpe)
                    outcomes.append(o)
                    ge = "" if o.reached else ">="
                    print(
                        f"{name:4s} seed {seed}: random best {o.target:.5g} first at epoch "
                        f"{o.random_first}/{o.random_total} ({t1 - t0:.0f} s); tpe+asha reached "
                        f"it at {ge}{o.tpe_epochs}/{o.tpe_total} ({t2 - t1:.0f} s); "
                        f"figure {ge}{o.ratio:.3f} (old definition {ge}{o.old_ratio:.3f})",
                        flush=True,
                    )
        finally:
            ray.shutdown()
    print(f"\nwall time {time.perf_counter() - t_all:.0f} s")
    print("dataset  tpe+asha epochs  random epochs to its best  figure  old figure  (mean ± sd)")
    groups = {n: [o for o in outcomes if o.dataset == n] for n in names}
    groups["all"] = outcomes
    for name, group in groups.items():
        missed = sum(not o.reached for o in group)
        print(
            f"{name:7s}  {_mean_spread([o.tpe_epochs for o in group]):>15s}  "
            f"{_mean_spread([o.random_first for o in group]):>25s}  "
            f"{_mean_spread([o.ratio for o in group]):>12s}  "
            f"{_mean_spread([o.old_ratio for o in group]):>12s}"
            + (f"  ({missed} never reached: budget counted)" if missed else "")
        )
    tpe_mean = statistics.fmean(o.tpe_epochs for o in outcomes)
    rnd_mean = statistics.fmean(o.random_first for o in outcomes)
    old = tpe_mean / statistics.fmean(o.random_total for o in outcomes)
    print(f"old definition (mean tpe+asha epochs / mean random budget): {old:.3f}")
    print(f"ratio={tpe_mean / rnd_mean:.3f}")


if __name__ == "__main__":
    main()
