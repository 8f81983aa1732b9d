"""GPU check: run where GPUs exist (after ``make install-gpu``); prints "no GPU" and exits 0 elsewhere.

.. code-block:: bash

    PYTHONPATH=. .venv/bin/python benchmarks/gpu_check.py            # ~5-10 minutes on 4 GPUs
    PYTHONPATH=. .venv/bin/python benchmarks/gpu_check.py --quick    # smaller, ~2 minutes

1. Environment: GPUs, torch/CUDA versions, NCCL in torch and in Horovod (``hvd.nccl_built()``).
2. ``unfold_bins`` and ``flow`` on a synthetic dataset, a few epochs each: samples/s of
   ``hepscan train`` on 1 GPU against a bare torch loop of the same model, batch and data
   held on the same GPU (``ratio_1gpu``), and with N = all visible GPUs for Horovod+NCCL and
   DDP+NCCL at the same per-GPU batch (weak scaling; ``efficiency = rate_N / (N rate_1)``).
   bf16 is timed too for ``unfold_bins``.
3. A 2-trial scan with ``resources: {workers: 1, gpus_per_worker: 1}`` (and, with >= 2 GPUs,
   one with 2-rank DDP trials), printing the status of every trial.

Nothing here has been run on a GPU by its author (docs/gpu.md says so); the figures it prints
are what to report.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _gpus() -> int:
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _bare(cfg: Any, epochs: int) -> float:
    """Median samples/s of a hand-written loop with the data already on the GPU."""
    import torch
    import torch.nn.functional as F

    from jobs.manifest import load_manifest, load_split
    from jobs.train.data import prepare

    prep = prepare(cfg)
    spec = prep.spec
    data = load_split(load_manifest(cfg.dataset), "train", [*spec.x_columns, *spec.y_columns])
    dev = torch.device("cuda", 0)
    x = torch.stack([torch.as_tensor(data[c]).float() for c in spec.x_columns], 1).to(dev)
    y_cols = [torch.as_tensor(data[c]) for c in spec.y_columns]
    torch.manual_seed(0)
    model = prep.family.build(prep.model_config, spec.dims).to(dev)
    if hasattr(model, "set_standardisation"):
        x = (x - x.mean(0)) / x.std(0)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    if spec.target_kind == "continuous":
        y = torch.stack([c.float() for c in y_cols], 1).to(dev)
        y = (y - y.mean(0)) / y.std(0)

        def loss_fn(xb: Any, yb: Any) -> Any:
            return -model.log_prob(yb, xb).mean()
    else:
        y = y_cols[0].long().to(dev)
        keep = y >= 0
        x, y = x[keep], y[keep]

        def loss_fn(xb: Any, yb: Any) -> Any:
            return F.cross_entropy(model(xb), yb)

    b, n = cfg.batch_size, len(x)
    rates = []
    for _ in range(epochs):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=dev)
        for k in range(n // b):
            idx = perm[k * b : (k + 1) * b]
            loss = loss_fn(x[idx], y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        torch.cuda.synchronize()
        rates.append((n // b) * b / (time.perf_counter() - t0))
    return statistics.median(rates[1:] or rates)


def _rate(result: Any) -> float:
    hist = result.history[1:] or result.history  # the first epoch includes CUDA warm-up
    return statistics.median(h["samples_per_s"] for h in hist)


def _train_checks(ds: Path, n_gpu: int, epochs: int) -> None:
    from jobs.train import TrainConfig, train

    families: dict[str, dict[str, Any]] = {
        "unfold_bins": {"alpha": 1.0, "p": 2.0},
        "flow": {"transforms": 3, "hidden_features": 64},
    }
    for family, model in families.items():
        per_gpu = 2048
        cfg = TrainConfig(
            dataset=str(ds),
            family=family,
            model=model,
            epochs=epochs,
            batch_size=per_gpu,
            lr=1e-3,
            patience=0,
            device="cuda",
        )
        one = _rate(train(cfg))
        bare = _bare(cfg, epochs)
        print(f"{family}: 1 GPU {one:,.0f} samples/s, bare torch {bare:,.0f} samples/s, "
              f"ratio_1gpu={one / bare:.3f}", flush=True)  # fmt: skip
        if family == "unfold_bins":
            bf = _rate(train(dataclasses.replace(cfg, precision="bf16")))
            print(f"{family}: bf16 {bf:,.0f} samples/s ({bf / one:.2f}x fp32)", flush=True)
        if n_gpu < 2:
            continue
        for backend in ("horovod", "ddp"):
            c = dataclasses.replace(cfg, backend=backend, workers=n_gpu, batch_size=per_gpu * n_gpu)
            try:
                rate = _rate(train(c))
            except Exception as exc:  # noqa: BLE001 - report and go on with the next check
                print(f"{family} {backend}: FAILED ({type(exc).__name__}: {exc})", flush=True)
                continue
            print(f"{family} {backend}+NCCL {n_gpu} GPUs: {rate:,.0f} samples/s, "
                  f"efficiency={rate / (n_gpu * one):.2f}", flush=True)  # fmt: skip


def _scan_check(ds: Path, work: Path, n_gpu: int) -> None:
    from scan.driver import launch

    layouts = [("single", 1)] + ([("ddp", 2)] if n_gpu >= 2 else [])
    for backend, workers in layouts:
        cfg = {
            "name": f"gpu_check_{backend}",
            "dataset": str(ds),
            "family": "unfold_bins",
            "search_space": {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
            "fixed": {"batch_size": 2048 * workers},
            "objective": {"metric": "val_loss", "mode": "min"},
            "searcher": "random",
            "scheduler": "none",
            "num_trials": 2,
            "concurrency": 2 if n_gpu >= 2 * workers else 1,
            "resources": {"workers": workers, "cpus_per_worker": 1, "gpus_per_worker": 1},
            "backend": backend,
            "max_epochs": 2,
        }
        t0 = time.perf_counter()
        result = launch(cfg, scan_dir=work / f"scan_{backend}", verbose=0)
        status = result.trials["status"].tolist() if "status" in result.trials else []
        print(f"scan ({workers}-rank trials, gpus_per_worker: 1): trials {status}, best "
              f"{result.best_metrics.get('val_loss')} in {time.perf_counter() - t0:.0f} s",
              flush=True)  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-scan", action="store_true")
    args = ap.parse_args()
    n_gpu = _gpus()
    if n_gpu == 0:
        print("no GPU: nothing to check here (run this on a GPU node after `make install-gpu`)")
        return 0
    import torch

    print(f"{n_gpu} GPU(s): {', '.join(torch.cuda.get_device_name(i) for i in range(n_gpu))}")
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, NCCL {torch.cuda.nccl.version()}")
    try:
        import horovod.torch as hvd

        print(f"horovod NCCL: {bool(hvd.nccl_built())}")
    except ImportError as exc:
        print(f"horovod: not importable ({exc})")
    from jobs.train_synthetic import write_unfold_dataset

    rows = 200_000 if args.quick else 2_000_000
    epochs = 2 if args.quick else 4
    with tempfile.TemporaryDirectory(prefix="hepscan-gpu-check-") as tmp:
        ds = write_unfold_dataset(
            Path(tmp) / "ds", rows=rows, n_bins=40, n_features=8, row_group_rows=65536
        )
        _train_checks(ds, n_gpu, epochs)
        if not args.no_scan:
            _scan_check(ds, Path(tmp), n_gpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
