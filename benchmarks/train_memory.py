"""Benchmark: peak memory of data-parallel training as the sample grows 10x (streaming data).

.. code-block:: bash

    PYTHONPATH=. .venv/bin/python benchmarks/train_memory.py                  # 1 M and 10 M events
    PYTHONPATH=. .venv/bin/python benchmarks/train_memory.py --events 200000  # quick look
    # also time the code of another checkout (e.g. the in-memory loop before streaming):
    PYTHONPATH=. .venv/bin/python benchmarks/train_memory.py --compare-with /path/to/old/checkout

1. Simulates ``--events`` (1x) and ``--factor`` x that (10x: 10 M events, i.e. 10 M rows of
   ROOT input by default; ~3.1 M training rows after the zll selection and the 70 % train
   split) zll events and preprocesses both with ``configs/preprocess_zll.yaml`` into
   ``--workdir`` (default under /tmp; deleted at the end unless ``--keep``).
2. Trains one epoch of ``unfold_bins`` (batch 512, calibration and validation included) with 2
   DDP ranks (gloo, one torch thread each) on each sample, every rank in a fresh process, and
   prints each rank's peak RSS (``ru_maxrss``), their sum, and the training throughput
   (samples/s of the epoch's training steps).
3. With ``--compare-with``, the 1x epoch again with that checkout's code (its throughput is the
   "in-memory" reference of issue 11; its peak RSS is printed too).

The last line is ``ratio=<summed peak RSS 10x / summed peak RSS 1x>`` (goal <= 1.3).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "preprocess_zll.yaml"


def _dataset(workdir: Path, events: int, seed: int) -> Path:
    """Simulate and preprocess ``events`` zll events (cached in ``workdir``)."""
    from jobs.preprocess import preprocess
    from jobs.simulate import simulate

    out = workdir / f"zll_{events}"
    if (out / "data" / "manifest.json").exists():
        return out / "data"
    shutil.rmtree(out, ignore_errors=True)
    files = max(1, events // 1_000_000)
    t0 = time.perf_counter()
    paths = simulate("zll", events, files, seed, out / "root")
    t1 = time.perf_counter()
    preprocess(CONFIG, out / "data", inputs=[str(p) for p in paths], workers=2)
    shutil.rmtree(out / "root")  # the ROOT files are no longer needed
    print(
        f"{events} events: simulated in {t1 - t0:.0f} s, preprocessed in "
        f"{time.perf_counter() - t1:.0f} s",
        flush=True,
    )
    return out / "data"


def _rank(rank: int, dataset: str, port: int, queue: Any) -> None:
    """One DDP rank: one epoch, then (peak RSS bytes, metrics) into the queue."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE="2",
        LOCAL_RANK=str(rank),
    )
    import torch

    from jobs.train import TrainConfig, TrainSession

    torch.set_num_threads(1)
    cfg = TrainConfig(
        dataset=dataset,
        family="unfold_bins",
        model={"alpha": 1.0, "p": 1.0},
        epochs=1,
        batch_size=512,
        backend="ddp",
        workers=2,
        device="cpu",
        patience=0,
    )
    s = TrainSession(cfg, rank=rank, world_size=2)
    s.setup()
    m = s.run_epoch()
    s.close()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    queue.put((rank, rss, {k: m[k] for k in ("samples_per_s", "train_time_s", "epoch_time_s")}))
    sys.stdout.flush()
    os._exit(0)


def _worker(dataset: str) -> None:
    """Run 2 ranks on ``dataset`` with the code on this process's path; print JSON."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    procs = mp.start_processes(_rank, args=(dataset, port, q), nprocs=2, start_method="spawn")
    del procs
    out = sorted(q.get() for _ in range(2))
    m = out[0][2]
    n_train = json.loads(Path(dataset, "manifest.json").read_text())["splits"]["train"]["rows"]
    print(json.dumps({"rss": [r[1] for r in out], "n_train": n_train, **m}))


def _measure(dataset: Path, code: Path) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_worker", str(dataset)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=code, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"worker failed:\n{proc.stdout}\n{proc.stderr}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _show(label: str, r: dict[str, Any]) -> float:
    total = sum(r["rss"]) / 2**20
    per = ", ".join(f"rank {i}: {v / 2**20:.0f} MiB" for i, v in enumerate(r["rss"]))
    print(
        f"{label}: {r['n_train']} training rows; peak RSS {per}; sum {total:.0f} MiB; "
        f"{r['samples_per_s']:,.0f} samples/s (train {r['train_time_s']:.1f} s, epoch "
        f"{r['epoch_time_s']:.1f} s)",
        flush=True,
    )
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=1_000_000, help="events of the 1x sample")
    ap.add_argument("--factor", type=int, default=10)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/hepscan-trainmem"))
    ap.add_argument("--keep", action="store_true", help="keep the generated datasets")
    ap.add_argument("--compare-with", type=Path, default=None, help="another checkout's root")
    ap.add_argument("--_worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker:
        _worker(args._worker)
        return
    args.workdir.mkdir(parents=True, exist_ok=True)
    try:
        small = _dataset(args.workdir, args.events, args.seed)
        big = _dataset(args.workdir, args.events * args.factor, args.seed + 1)
        r1 = _measure(small, ROOT)
        m1 = _show(f"1x ({args.events} events)", r1)
        if args.compare_with is not None:
            ref = _measure(small, args.compare_with.resolve())
            _show(f"1x with {args.compare_with}", ref)
            print(f"throughput vs that code: {r1['samples_per_s'] / ref['samples_per_s']:.3f}")
        r10 = _measure(big, ROOT)
        m10 = _show(f"{args.factor}x ({args.events * args.factor} events)", r10)
    finally:
        if not args.keep:
            shutil.rmtree(args.workdir, ignore_errors=True)
    print(f"ratio={m10 / m1:.3f}")


if __name__ == "__main__":
    main()
