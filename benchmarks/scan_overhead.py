"""Scan overhead: 32 trials of a fixed 1-second CPU workload at concurrency 2.

.. code-block:: bash

    python benchmarks/scan_overhead.py            # Ray Tune (as scans run it) + plain Optuna
    python benchmarks/scan_overhead.py --trials 16

Ray Tune runs the trials the way ``scan.driver`` does: a class Trainable reused between trials
(``reuse_actors=True``), ``OptunaSearch`` (seeded TPE, define-by-run space),
``max_concurrent_trials=2`` and only the JSON result logger, one CPU per trial on a local
2-CPU Ray (MLflow logging is not included). The timer starts at
``Tuner.fit()`` (Ray start-up excluded, reported separately). Plain Optuna runs the same workload
in-process with ``study.optimize(n_jobs=2)``. The workload spins the CPU for 1 s of wall time,
so the ideal wall time is ``trials / 2`` seconds. Last line: ``ratio=<Tune wall / ideal>``
(goal <= 1.10).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WORK_S = 1.0


def workload(x: float) -> float:
    """Spin the CPU for WORK_S seconds of wall time; returns a deterministic score."""
    end = time.perf_counter() + WORK_S
    acc = 0.0
    while time.perf_counter() < end:
        for _ in range(1000):
            acc += 1e-9
    return (x - 0.3) ** 2


def run_tune(trials: int, concurrency: int, storage: str) -> tuple[float, float, dict[str, float]]:
    import ray
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback
    from ray.tune.search.optuna import OptunaSearch

    from scan.config import load_scan_config
    from scan.space import DefineByRun, make_sampler

    # As scan.driver runs Tune: JSON results only (no CSV/TensorBoard loggers).
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"
    t0 = time.perf_counter()
    ray.init(num_cpus=concurrency, include_dashboard=False, log_to_driver=False)
    t_init = time.perf_counter() - t0

    class OneSecond(tune.Trainable):
        def setup(self, config: dict[str, Any]) -> None:
            self.x = float(config["x"])

        def step(self) -> dict[str, Any]:
            start = time.time()
            score = workload(self.x)
            return {"score": score, "work_start": start, "work_end": time.time(), "done": True}

        def reset_config(self, new_config: dict[str, Any]) -> bool:
            self.x = float(new_config["x"])
            return True

        def save_checkpoint(self, checkpoint_dir: str) -> None:
            return None

        def load_checkpoint(self, checkpoint: Any) -> None:
            pass

    cfg = load_scan_config(
        {
            "dataset": ".",
            "family": "unfold_bins",
            "search_space": {"x": ["uniform", 0.0, 1.0]},
            "objective": {"metric": "val_loss"},
            "seed": 0,
        },
        check_registry=False,
    )
    searcher = OptunaSearch(
        space=DefineByRun(cfg.space), metric="score", mode="min", sampler=make_sampler(cfg)
    )
    tuner = tune.Tuner(
        tune.with_resources(OneSecond, {"cpu": 1}),
        tune_config=tune.TuneConfig(
            search_alg=searcher,
            num_samples=trials,
            max_concurrent_trials=concurrency,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name="overhead", storage_path=storage, verbose=0, callbacks=[JsonLoggerCallback()]
        ),
    )
    fit_start = time.time()
    t0 = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - t0
    assert len(grid) == trials and not grid.errors, grid.errors
    ray.shutdown()
    return wall, t_init, _breakdown(grid.get_dataframe(), fit_start, wall, concurrency)


def _breakdown(df: Any, fit_start: float, wall: float, concurrency: int) -> dict[str, float]:
    """Where the wall time beyond the workload went: start-up, gaps between trials, the end."""
    starts = sorted(float(x) - fit_start for x in df["work_start"])
    ends = sorted(float(x) - fit_start for x in df["work_end"])
    # with c slots the (k + c)-th trial starts when the k-th one has ended and freed its slot
    gaps = [s - e for s, e in zip(starts[concurrency:], ends, strict=False)]
    return {
        "first_start": starts[0],
        "mean_gap": sum(gaps) / max(len(gaps), 1),
        "after_last": wall - ends[-1],
    }


def run_optuna(trials: int, concurrency: int) -> float:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    t0 = time.perf_counter()
    study.optimize(
        lambda t: workload(t.suggest_float("x", 0, 1)), n_trials=trials, n_jobs=concurrency
    )
    return time.perf_counter() - t0


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=2)
    args = ap.parse_args()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ideal = args.trials * WORK_S / args.concurrency
    print(
        f"cpus={os.cpu_count()} trials={args.trials} concurrency={args.concurrency} ideal={ideal:.1f}s"
    )
    wall_optuna = run_optuna(args.trials, args.concurrency)
    print(
        f"optuna in-process (n_jobs={args.concurrency}): wall={wall_optuna:.2f}s "
        f"ratio={wall_optuna / ideal:.3f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        wall, t_init, parts = run_tune(args.trials, args.concurrency, tmp)
    print(f"ray init: {t_init:.2f}s (not counted)")
    print(
        f"tune breakdown: first trial started after {parts['first_start']:.2f}s (trial actors "
        f"start: python + ray + ray.tune imports), mean gap between trials "
        f"{parts['mean_gap'] * 1000:.0f}ms, {parts['after_last']:.2f}s after the last trial"
    )
    steady = (wall - parts["first_start"] - parts["after_last"]) / ideal
    print(f"steady-state ratio (start-up and shutdown excluded) = {steady:.3f}")
    print(
        f"ray tune (reuse_actors, OptunaSearch TPE): wall={wall:.2f}s "
        f"overhead/trial={(wall - ideal) / args.trials * args.concurrency:.3f}s"
    )
    print(f"ratio={wall / ideal:.3f}")


if __name__ == "__main__":
    main()
