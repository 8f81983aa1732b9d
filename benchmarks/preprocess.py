"""Benchmark: ``hepscan preprocess`` vs a raw uproot read of the same branches, warm and cold.

Run (from the repository root, alone on the machine: ``flock /tmp/heavy.lock ...`` here)::

    python benchmarks/preprocess.py            # 2 M zll events in 4 files, ~2-3 min
    python benchmarks/preprocess.py --quick    # 50 k events in 2 files, ~20 s (tests/test_benchmarks.py)
    python benchmarks/preprocess.py --events 4000000 --files 8 --workdir /scratch/bench

The simulated files are cached in ``--workdir`` (re-simulated only when events/files/seed
change). Both sides do the same reading: ``uproot.open(f)[tree].arrays(branches)`` of exactly
the branches the pipeline reads, over the pipeline's own partitions (entry ranges).

*Warm* (page cache holding the inputs, every process started and its imports done, one untimed
run first; fastest of ``--repeat``, median printed too):

* ``raw_1proc``: the partitions read one after the other in this process;
* ``raw_Nproc``: the partitions dealt out to N already-started processes (``multiprocessing``
  pool), N = the pipeline's workers: the fair comparison;
* ``pipeline_Nworkers``: ``preprocess(configs/preprocess_zll.yaml)`` (validation + read + NaN
  check + selection + ids/splits/bins + statistics + Parquet shards + checksums + manifest +
  plot) on an already running ``LocalCluster`` of N single-threaded workers
  (:func:`jobs.preprocess.driver.local_cluster`, what ``preprocess`` starts by itself).

*Cold* (inputs evicted from the page cache with ``posix_fadvise(DONTNEED)`` before each run,
for both sides; new processes; wall time from start to exit, so interpreter start and imports
count on both sides; fastest of ``--cold-repeat``):

* ``raw_1proc_cold``: one new Python process reads every partition;
* ``raw_Nproc_cold``: N new Python processes, each its share of the partitions;
* ``pipeline_Nworkers_cold``: ``python -m jobs.preprocess ... --workers N`` in a new process,
  which starts (and stops) its own cluster: the cluster start-up counts.

Printed: one line per measurement, the pipeline's phase breakdown (seconds since the call
began, from :data:`jobs.preprocess.driver.PHASE` log records) and CPU seconds per process,
the ratios (``events/s of the pipeline / events/s of raw``; ``*_fair`` against N raw
processes), and last ``ratio=<pipeline_2workers / raw_1proc>`` (warm), the figure of
issue 14 (goal >= 0.5).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import multiprocessing
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIG = ROOT / "configs" / "preprocess_zll.yaml"
WORKERS = 2  # the pipeline's workers in the headline figure; raw_Nproc uses as many processes

Part = tuple[str, int, int]  # (file, entry_start, entry_stop)

# a cold raw read: a new interpreter that imports uproot and reads its partitions
_COLD_RAW = """
import json, sys
import uproot
tree, branches, parts = json.loads(sys.argv[1])
n = 0
for path, a, b in parts:
    with uproot.open(path) as f:
        n += len(f[tree].arrays(branches, entry_start=a, entry_stop=b, library="ak"))
print(n)
"""


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
    out = simulate("zll", events, files, seed, sim, progress=False)
    print(f"simulated {events} zll events into {files} files in {time.perf_counter() - t0:.1f} s")
    stamp.write_text(json.dumps(want))
    return [str(p) for p in out]


def _plan(files: list[str]) -> tuple[str, list[str], list[Part]]:
    """Tree, branches read and the partitions (entry ranges) of the pipeline."""
    from jobs.preprocess import expand, make_plan, partitions, validate_inputs
    from jobs.preprocess.config import load_config

    cfg, _, source = load_config(CONFIG)
    plan = make_plan(cfg, source)
    inputs, plan = validate_inputs(plan, expand(files, Path.cwd(), "--input"))
    parts = [(f.path, a, b) for f, a, b in partitions(inputs)]
    return cfg.tree, plan.read_branches, parts


def _deal(parts: list[Part], n: int) -> list[list[Part]]:
    """Partitions dealt to ``n`` processes, largest first to the least loaded (as balanced
    as a scheduler can make it)."""
    shares: list[list[Part]] = [[] for _ in range(n)]
    load = [0] * n
    for p in sorted(parts, key=lambda p: p[2] - p[1], reverse=True):
        k = load.index(min(load))
        shares[k].append(p)
        load[k] += p[2] - p[1]
    return shares


def _read(job: tuple[str, list[str], list[Part]]) -> int:
    """Raw read of some partitions (module level: the process pool pickles it)."""
    import uproot

    tree, branches, parts = job
    n = 0
    for path, a, b in parts:
        with uproot.open(path) as f:
            n += len(f[tree].arrays(branches, entry_start=a, entry_stop=b, library="ak"))
    return n


def _import_uproot() -> None:
    import awkward  # noqa: F401
    import uproot  # noqa: F401


def _evict(files: list[str]) -> None:
    """Drop the inputs from the page cache (clean pages; no root needed)."""
    for f in files:
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _best(times: list[float]) -> tuple[float, float]:
    return min(times), statistics.median(times)


def _line(name: str, n: int, times: list[float], note: str = "") -> float:
    t, med = _best(times)
    extra = f" (median {med:.2f} s)" if len(times) > 1 else ""
    print(f"{name}: {n} events in {t:.2f} s{extra} = {n / t:,.0f} events/s{note}", flush=True)
    return n / t


class _Phases(logging.Handler):
    """Collects the pipeline's phase records of one call."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.phases: list[tuple[str, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        from jobs.preprocess.driver import PHASE

        if PHASE in record.__dict__:
            self.phases.append(record.__dict__[PHASE])


def _cpu(pid: int) -> float:
    import psutil

    c = psutil.Process(pid).cpu_times()
    return float(c.user + c.system)


def _pipeline_warm(
    files: list[str], out: Path, workers: int, repeat: int
) -> tuple[list[float], list[tuple[str, float]], list[float]]:
    """Times on a running cluster; the phases and CPU seconds (this process, then each worker)
    of the fastest run."""
    from jobs.preprocess import preprocess
    from jobs.preprocess.driver import local_cluster

    handler = _Phases()
    logger = logging.getLogger("jobs.preprocess.driver")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    cluster = local_cluster(workers)
    try:
        pids = [n.process.pid for n in cluster.workers.values()]

        def run() -> tuple[float, list[tuple[str, float]], list[float]]:
            shutil.rmtree(out, ignore_errors=True)
            handler.phases = []
            c0 = [time.process_time()] + [_cpu(p) for p in pids]
            t = _timed(
                lambda: preprocess(CONFIG, out, inputs=files, scheduler=cluster.scheduler_address)
            )
            c1 = [time.process_time()] + [_cpu(p) for p in pids]
            return t, list(handler.phases), [b - a for a, b in zip(c0, c1, strict=True)]

        run()  # warm-up: imports on the workers, page cache
        runs = [run() for _ in range(repeat)]
    finally:
        cluster.close()
        logger.removeHandler(handler)
        logger.setLevel(level)
    best = min(runs, key=lambda r: r[0])
    return [r[0] for r in runs], best[1], best[2]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    return env


def _raw_cold(files: list[str], tree: str, branches: list[str], shares: list[list[Part]]) -> float:
    _evict(files)
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _COLD_RAW, json.dumps([tree, branches, share])],
            stdout=subprocess.DEVNULL,
            env=_env(),
        )
        for share in shares
    ]
    codes = [p.wait() for p in procs]
    t = time.perf_counter() - t0
    if any(codes):
        raise SystemExit(f"cold raw read failed (exit codes {codes})")
    return t


def _pipeline_cold(files: list[str], out: Path, workers: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    _evict(files)
    cmd = [sys.executable, "-m", "jobs.preprocess", str(CONFIG), "--out", str(out)]
    cmd += [a for f in files for a in ("--input", f)] + ["--workers", str(workers)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True)
    t = time.perf_counter() - t0
    if proc.returncode:
        raise SystemExit(f"cold pipeline run failed:\n{proc.stdout}{proc.stderr}")
    return t


def _ratio(name: str, value: float, what: str) -> None:
    assert math.isfinite(value) and value > 0, (name, value)
    print(f"{name}={value:.3f}  ({what})")


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--events", type=int, default=None, help="default 2 M (--quick: 50 k)")
    ap.add_argument("--files", type=int, default=None, help="default 4 (--quick: 2)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/hepscan-bench"))
    ap.add_argument("--repeat", type=int, default=None, help="warm runs (fastest counts; 3)")
    ap.add_argument("--cold-repeat", type=int, default=None, help="cold runs (fastest; 2)")
    ap.add_argument("--quick", action="store_true", help="small and one run each (the test)")
    ap.add_argument("--verbose", action="store_true", help="log the pipeline's phase timings")
    args = ap.parse_args()
    events = args.events or (50_000 if args.quick else 2_000_000)
    n_files = args.files or (2 if args.quick else 4)
    repeat = args.repeat or (1 if args.quick else 3)
    cold_repeat = args.cold_repeat or (1 if args.quick else 2)
    if args.verbose:
        logging.basicConfig(level=logging.WARNING, format="  %(message)s")
        logging.getLogger("jobs.preprocess").setLevel(logging.INFO)

    t_start = time.perf_counter()
    args.workdir.mkdir(parents=True, exist_ok=True)
    files = _simulate(args.workdir, events, n_files, args.seed)
    tree, branches, parts = _plan(files)
    print(f"{events} events, {n_files} files, {len(parts)} partitions, {len(branches)} branches: ")
    print(f"  {' '.join(branches)}")
    job = (tree, branches, parts)
    shares = _deal(parts, WORKERS)

    # --- warm ------------------------------------------------------------------------------
    n = _read(job)  # warms the page cache and the imports
    raw1 = _line("raw_1proc", n, [_timed(lambda: _read(job)) for _ in range(repeat)])
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(WORKERS, initializer=_import_uproot) as pool:
        jobs = [(tree, branches, s) for s in shares]
        pool.map(_read, jobs, chunksize=1)
        rawn = _line(
            f"raw_{WORKERS}proc",
            n,
            [_timed(lambda: pool.map(_read, jobs, chunksize=1)) for _ in range(repeat)],
        )
    out = args.workdir / "out"
    rates: dict[int, float] = {}
    for workers in (1, WORKERS) if not args.quick else (WORKERS,):
        times, phases, cpu = _pipeline_warm(files, out, workers, repeat)
        name = f"pipeline_{workers}worker{'s' if workers > 1 else ''}"
        rates[workers] = _line(name, n, times)
        print(
            f"  breakdown {name}: "
            + ", ".join(f"{p} {t:.2f} s" for p, t in phases)
            + f"; cpu: driver+scheduler {cpu[0]:.2f} s, workers "
            + " + ".join(f"{c:.2f}" for c in cpu[1:])
            + " s"
        )
    manifest = json.loads((out / "manifest.json").read_text())
    print(f"  rows written: {manifest['counts']['rows']} of {manifest['counts']['entries_read']}")

    # --- cold ------------------------------------------------------------------------------
    raw1_cold = _line(
        "raw_1proc_cold",
        n,
        [_raw_cold(files, tree, branches, [parts]) for _ in range(cold_repeat)],
        " (new process, inputs evicted)",
    )
    rawn_cold = _line(
        f"raw_{WORKERS}proc_cold",
        n,
        [_raw_cold(files, tree, branches, shares) for _ in range(cold_repeat)],
        f" ({WORKERS} new processes, inputs evicted)",
    )
    pipe_cold = _line(
        f"pipeline_{WORKERS}workers_cold",
        n,
        [_pipeline_cold(files, out, WORKERS) for _ in range(cold_repeat)],
        " (new process, own cluster start-up and shutdown, inputs evicted)",
    )
    print(f"benchmark wall time: {time.perf_counter() - t_start:.0f} s")
    w = f"{WORKERS} workers"
    _ratio("ratio_cold", pipe_cold / raw1_cold, f"cold, {w} / 1 raw process")
    _ratio("ratio_cold_fair", pipe_cold / rawn_cold, f"cold, {w} / {WORKERS} raw processes")
    _ratio("ratio_warm_fair", rates[WORKERS] / rawn, f"warm, {w} / {WORKERS} raw processes")
    _ratio("ratio_warm", rates[WORKERS] / raw1, f"warm, {w} / 1 raw process")
    print(f"ratio={rates[WORKERS] / raw1:.3f}")


if __name__ == "__main__":
    main()
