"""The embedded demo (``make demo``): simulate, preprocess, scan, and show how to review it.

.. code-block:: bash

    python -m scan.demo                 # workdir ./demo (what `make demo` runs)
    python -m scan.demo --workdir /tmp/d --trials 12 --events 40000

1. ``jobs.simulate``: a small ``zll`` sample (ROOT files);
2. ``jobs.preprocess`` with ``configs/preprocess_zll.yaml``: Parquet shards + manifest;
3. ``scan.launch`` with ``configs/demo.yaml``: unfolding (``unfold_bins``) trials, TPE + ASHA,
   2-worker Horovod trials on a local Ray, every trial an MLflow child run;
4. prints the ranked trials, the exact ``mlflow ui`` command for the scan's sqlite store and
   the ``hepscan apply`` command that unfolds the test split with the best (registered) model.

Each run scans into a fresh ``WORKDIR/scan-<time>``; simulated data are reused when present.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]


def run_demo(
    workdir: str | Path = "demo",
    *,
    events: int = 40_000,
    trials: int | None = None,
    address: str | None = None,
) -> Any:
    """Run the demo in ``workdir``; returns the :class:`scan.report.ScanResult`."""
    from jobs.preprocess import preprocess
    from jobs.simulate import simulate
    from scan.driver import launch
    from tracking.store import ui_command

    t0 = time.perf_counter()
    work = Path(workdir).absolute()
    root_dir = work / "root" / "zll"
    data_dir = work / "data" / "zll"
    stamp = work / "data" / f".zll-{events}.done"
    if not stamp.exists():
        print(f"[demo] simulating {events} zll events -> {root_dir}", flush=True)
        files = simulate("zll", events, 2, 0, root_dir, progress=False)
        print(f"[demo] preprocessing -> {data_dir}", flush=True)
        preprocess(
            REPO / "configs" / "preprocess_zll.yaml",
            data_dir,
            inputs=[str(f) for f in files],
            workers=2,
            overwrite=True,
        )
        stamp.write_text("ok\n")
    else:
        print(f"[demo] reusing {data_dir}", flush=True)
    t_data = time.perf_counter() - t0
    overrides: dict[str, Any] = {"dataset": str(data_dir)}
    if trials is not None:
        overrides["num_trials"] = trials
    scan_dir = work / f"scan-{time.strftime('%Y%m%d-%H%M%S')}"
    print(f"[demo] scanning -> {scan_dir}", flush=True)
    result = launch(
        REPO / "configs" / "demo.yaml", overrides, scan_dir=scan_dir, address=address, verbose=1
    )
    total = time.perf_counter() - t0
    print("")
    print("Trials, best first:")
    print(result.table())
    print("")
    print(f"best trial {result.best_trial_id}: {result.best_metrics}")
    print(f"best config: {result.best_config}")
    print(f"MLflow parent run {result.parent_run_id} ({len(result.trials)} trial runs)")
    print(f"[demo] data {t_data:.0f} s, total {total:.0f} s")
    print("")
    print("Review the scan in the MLflow UI:")
    print(f"  {ui_command(result.tracking_uri)}")
    print("Unfold the test split with the best model (registered in the MLflow Model Registry):")
    print(f"  hepscan apply {scan_dir} --split test --out {work / 'unfolded'}-{scan_dir.name}")
    print(f"Report: hepscan report {scan_dir}")
    return result


def main(argv: list[str] | None = None) -> int:
    from models.errors import HepscanError
    from scan.signals import EXIT_INTERRUPTED, ScanInterrupted

    ap = argparse.ArgumentParser(prog="python -m scan.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--workdir", default="demo")
    ap.add_argument("--events", type=int, default=40_000)
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--address", default=None)
    args = ap.parse_args(argv)
    try:
        run_demo(args.workdir, events=args.events, trials=args.trials, address=args.address)
    except ScanInterrupted as exc:
        print(f"hepscan: {exc}")
        return EXIT_INTERRUPTED
    except HepscanError as exc:
        print(f"hepscan: error: {exc}")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
