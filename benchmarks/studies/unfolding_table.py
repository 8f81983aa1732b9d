"""Study 1 — the unfolding paper's Table III on simulated ``zll``.

ML (``unfold_bins`` classifier; unfolded histogram = sum of predicted probabilities) vs
iterative Bayesian unfolding, Tikhonov (τ from the L-curve) and matrix inversion, at 20, 40,
60, 80 and 100 bins between 65 and 115 GeV, k-fold cross-validated; χ²/ndf, KS and AD scores
as mean ± standard deviation across folds. "Reco (no unfolding)" is the measured histogram
compared with the truth as-is, the reference every method must beat.

Population: reconstructed events with truth AND reco mass inside [65, 115) GeV (the paper fills
both histograms in that window); fakes and misses are outside this closure test, so the
response matrix is square with unit efficiency.

Launch::

    python -m benchmarks.studies.unfolding_table                  # full: 10 folds, 400k events
    python -m benchmarks.studies.unfolding_table --fast --out /tmp/u1
    python -m benchmarks.studies.unfolding_table --folds 5 --bins 20 40

Outputs in --out (default studies-output/unfolding_table): ``table.md``, ``table_*.csv``,
``unfolded_<N>bins.png`` (truth, reco and every method's unfolded histogram with a ratio panel,
from the first fold).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.studies import common

NAME = "unfolding_table"
LO, HI = 65.0, 115.0


def run(
    out: Path,
    *,
    fast: bool = False,
    folds: int | None = None,
    bins: Sequence[int] = (20, 40, 60, 80, 100),
    events: int | None = None,
    epochs: int | None = None,
    seed: int = 1,
    cache_dir: Path | None = None,
    calibrate: bool = True,
    jobs: int = 1,
) -> dict[str, object]:
    folds = folds or (3 if fast else 10)
    events = events or (30_000 if fast else 400_000)
    cfg = common.UnfoldConfig(
        train=common.TrainSettings(
            epochs=epochs or (4 if fast else 30),
            batch_size=512 if fast else 1024,
            patience=3,
            calibrate=calibrate,
        )
    )
    cache = cache_dir or (out.parent / ".cache")
    start = time.perf_counter()
    data = common.zll_events(common.simulate_cached("zll", events, seed, cache))
    inside = (data["truth_mass"] >= LO) & (data["truth_mass"] < HI)
    inside &= (data["reco_mass"] >= LO) & (data["reco_mass"] < HI)
    x = np.stack([data[f][inside] for f in common.ZLL_FEATURES], axis=1)
    truth, reco = data["truth_mass"][inside], data["reco_mass"][inside]
    print(f"{NAME}: {len(x)} events in [{LO}, {HI}) GeV from {events} simulated, {folds} folds")

    results: dict[str, list[common.FoldResult]] = {}
    with common.torch_threads(1), common.output_dir(out) as tmp:
        for n in bins:
            edges = np.linspace(LO, HI, n + 1)
            print(f"{n} bins:")
            res = common.unfolding_kfold(
                x,
                common.bin_index(truth, edges),
                common.bin_index(reco, edges),
                edges,
                common.ZLL_FEATURES,
                folds,
                cfg,
                seed,
                jobs=jobs,
            )
            results[f"{n} bins"] = res
            h = res[0].hists
            common.plot_unfolded(
                edges,
                h["Truth"],
                h["Reco (no unfolding)"],
                {m: h[m] for m in ("ML", "IBU", "Tikhonov", "Inversion")},
                tmp / f"unfolded_{n}bins.png",
                title=f"zll, {n} bins, fold 1 of {folds}",
                xlabel="m(ll) [GeV]",
            )
        paper, long = common.unfolding_tables(results, "bins")
        info = common.Table(
            "Training and regularisation (mean over folds)",
            ["bins", "ML epochs", "ML train s/fold", "Tikhonov τ (L-curve)"],
            [
                [
                    c,
                    float(np.mean([r.info["epochs"] for r in rs])),
                    float(np.mean([r.info["train_seconds"] for r in rs])),
                    float(np.mean([r.info["tau"] for r in rs])),
                ]
                for c, rs in results.items()
            ],
        )
        header = (
            f"# Study 1: unfolding zll ({LO:g}–{HI:g} GeV), {folds}-fold CV, {len(x)} events "
            f"({'fast' if fast else 'full'} mode, {time.perf_counter() - start:.0f} s)"
        )
        md = common.write_tables(tmp, "table", [*paper, info, long], header)
    print(md)
    return {"tables": [*paper, info, long], "results": results, "events": len(x)}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--fast", action="store_true", help="tiny data, 3 folds, few epochs")
    ap.add_argument("--out", type=Path, default=common.DEFAULT_ROOT / NAME)
    ap.add_argument("--folds", type=int, default=None, help="k of k-fold (10 in full mode)")
    ap.add_argument("--bins", type=int, nargs="+", default=[20, 40, 60, 80, 100])
    ap.add_argument("--events", type=int, default=None, help="simulated zll events")
    ap.add_argument("--epochs", type=int, default=None, help="max epochs (early stopping)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--no-calibrate",
        action="store_true",
        help="skip the per-class calibration of the classifier (the uncalibrated comparison)",
    )
    ap.add_argument(
        "--jobs", type=int, default=1, help="folds trained in parallel processes (same results)"
    )
    args = ap.parse_args(argv)
    run(
        args.out,
        fast=args.fast,
        folds=args.folds,
        bins=args.bins,
        events=args.events,
        epochs=args.epochs,
        seed=args.seed,
        calibrate=not args.no_calibrate,
        jobs=args.jobs,
    )


if __name__ == "__main__":
    common.exit_on_sigterm()
    main()
