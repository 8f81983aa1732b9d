"""Benchmark: raw uproot read vs the full ``hepscan preprocess`` pipeline on simulated zll events.

Run (from the repository root)::

    python benchmarks/preprocess.py                      # 2 M events, 4 files, /tmp/hepscan-bench
    python benchmarks/preprocess.py --events 4000000 --files 8 --workdir /scratch/bench

The simulated files are cached in ``--workdir`` (re-simulated only when events/files/seed
change). Measured, after one untimed read that warms the page cache:

* ``raw``: ``uproot.open(f)[tree].arrays(branches)`` of exactly the branches the pipeline
  reads, file after file, in this process;
* ``pipeline_Nworkers``: ``preprocess(configs/preprocess_zll.yaml)`` (read + NaN check +
  selection + features + split + Parquet shards + manifest + plot) against a running Dask
  LocalCluster with N single-threaded worker processes, warmed up with one untimed run (the
  cluster start-up is excluded, as on SLURM where the cluster outlives the call);
* ``pipeline_2workers_cold``: the same, starting its own cluster, for reference.

Each measurement is repeated ``--repeat`` times (default 3) and the fastest run counts (the
median is printed too): on a machine shared with other jobs the fastest run is the closest to
what the code can do. The last line is ``ratio=<pipeline_2workers / raw>`` (events/s over
events/s).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = ROOT / "configs" / "preprocess_zll.yaml"


def _simulate(workdir: Path, events: int, files: int, seed: int) -> list[str]:
    from jobs.simulate import simulate

    sim = workdir / "zll"
    stamp = workdir / "zll.json"
    want = {"events": events, "files": files, "seed": seed}
    paths = sorted(str(p) for p in sim.glob("zll_*.root"))
    if stamp.exists() and json.loads(stamp.read_text()) == want and len(paths) == files:
        return paths
    shutil.rmtree(sim, ignore_errors=True)
    t0 = time.perf_counter()
    out = simulate("zll", events, files, seed, sim, progress=True)
    print(f"simulated {events} zll events into {files} files in {time.perf_counter() - t0:.1f} s")
    stamp.write_text(json.dumps(want))
    return [str(p) for p in out]


def _branches(files: list[str]) -> tuple[str, list[str]]:
    from jobs.preprocess import expand, make_plan, validate_inputs
    from jobs.preprocess.config import load_config

    cfg, _, source = load_config(CONFIG)
    plan = make_plan(cfg, source)
    _, plan = validate_inputs(plan, expand(files, Path.cwd(), "--input"))
    return cfg.tree, plan.read_branches


def _raw_read(files: list[str], tree: str, branches: list[str]) -> tuple[int, float]:
    import uproot

    t0 = time.perf_counter()
    n = 0
    for f in files:
        with uproot.open(f) as fobj:
            arrays = fobj[tree].arrays(branches, library="ak")
            n += len(arrays)
    return n, time.perf_counter() - t0


def _pipeline(files: list[str], out: Path, scheduler: str | None, workers: int | None) -> float:
    from jobs.preprocess import preprocess

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    preprocess(CONFIG, out, inputs=files, scheduler=scheduler, workers=workers)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=2_000_000)
    ap.add_argument("--files", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/hepscan-bench"))
    ap.add_argument("--repeat", type=int, default=3, help="runs per measurement (fastest counts)")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-cluster reference run")
    ap.add_argument("--verbose", action="store_true", help="log the pipeline's phase timings")
    args = ap.parse_args()
    if args.verbose:
        logging.basicConfig(level=logging.WARNING, format="  %(message)s")
        logging.getLogger("jobs.preprocess").setLevel(logging.INFO)
    if args.events < 2_000_000:
        print("note: the issue asks for >= 2 M events", file=sys.stderr)

    import dask
    from distributed import LocalCluster

    args.workdir.mkdir(parents=True, exist_ok=True)
    files = _simulate(args.workdir, args.events, args.files, args.seed)
    tree, branches = _branches(files)
    print(f"branches read ({len(branches)}): {' '.join(branches)}")
    n_events, _ = _raw_read(files, tree, branches)  # warms the page cache
    times = [_raw_read(files, tree, branches)[1] for _ in range(args.repeat)]
    t_raw = min(times)
    raw = n_events / t_raw
    print(
        f"raw: {n_events} events in {t_raw:.2f} s (median {statistics.median(times):.2f} s) "
        f"= {raw:,.0f} events/s"
    )

    out = args.workdir / "out"
    rates: dict[int, float] = {}
    for workers in (1, 2):
        # the same worker environment preprocess() gives its own LocalCluster
        with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=True,
                dashboard_address=":0",
                silence_logs=logging.ERROR,
            )
        try:
            _pipeline(files, out, cluster.scheduler_address, None)  # warm-up: imports on workers
            times = [
                _pipeline(files, out, cluster.scheduler_address, None) for _ in range(args.repeat)
            ]
        finally:
            cluster.close()
        t = min(times)
        rates[workers] = n_events / t
        print(
            f"pipeline_{workers}worker{'s' if workers > 1 else ''}: {n_events} events in "
            f"{t:.2f} s (median {statistics.median(times):.2f} s) = {rates[workers]:,.0f} events/s"
        )
    if not args.no_cold:
        t = _pipeline(files, out, None, 2)
        print(
            f"pipeline_2workers_cold (own LocalCluster, start-up included): {t:.2f} s = "
            f"{n_events / t:,.0f} events/s"
        )
    manifest = json.loads((out / "manifest.json").read_text())
    print(f"rows written: {manifest['counts']['rows']} of {manifest['counts']['entries_read']}")
    print(f"ratio={rates[2] / raw:.3f}")


if __name__ == "__main__":
    main()
