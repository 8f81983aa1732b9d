"""Study 2 — the unfolding paper's Table IV: a steeply falling spectrum.

Simulated ``dijet`` masses (CMS 13 TeV fit function between 1.5 and 3 TeV) with 3 % and 10 %
Gaussian relative smearing, 60 bins; ML (``unfold_bins`` on the reco mass alone) vs IBU,
Tikhonov (L-curve τ) and inversion, k-fold cross-validated, χ²/ndf, KS and AD scores as
mean ± standard deviation across folds. Population as in study 1: truth and reco inside the
binning.

Launch::

    python -m benchmarks.studies.falling_spectrum                 # full: 10 folds, 1M events
    python -m benchmarks.studies.falling_spectrum --fast --out /tmp/s2

Outputs in --out (default studies-output/falling_spectrum): ``table.md``, ``table_*.csv``,
``unfolded_sigma<s>.png`` (log scale, ratio panel, first fold).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.studies import common

NAME = "falling_spectrum"
LO, HI = 1500.0, 3000.0


def run(
    out: Path,
    *,
    fast: bool = False,
    folds: int | None = None,
    smearings: Sequence[float] = (0.03, 0.10),
    n_bins: int = 60,
    events: int | None = None,
    epochs: int | None = None,
    seed: int = 2,
    cache_dir: Path | None = None,
    calibrate: bool = True,
    jobs: int = 1,
) -> dict[str, object]:
    folds = folds or (3 if fast else 10)
    events = events or (30_000 if fast else 1_000_000)
    cfg = common.UnfoldConfig(
        train=common.TrainSettings(
            epochs=epochs or (4 if fast else 30),
            batch_size=512 if fast else 2048,
            patience=3,
            calibrate=calibrate,
        )
    )
    cache = cache_dir or (out.parent / ".cache")
    start = time.perf_counter()
    edges = np.linspace(LO, HI, n_bins + 1)
    results: dict[str, list[common.FoldResult]] = {}
    sizes: dict[str, int] = {}
    with common.torch_threads(1), common.output_dir(out) as tmp:
        for s in smearings:
            paths = common.simulate_cached("dijet", events, seed, cache, smearing=s)
            d = common.read_branches(paths, ["truth_mjj", "reco_mjj"])
            truth, reco = d["truth_mjj"].astype(np.float64), d["reco_mjj"].astype(np.float64)
            inside = (truth >= LO) & (truth < HI) & (reco >= LO) & (reco < HI)
            truth, reco = truth[inside], reco[inside]
            # TeV, so the single feature is O(1) before standardisation
            x = (reco / 1000.0)[:, None]
            key = f"σ = {s:g}"
            sizes[key] = len(x)
            print(f"{NAME}: smearing {s:g}: {len(x)} of {events} events inside, {folds} folds")
            res = common.unfolding_kfold(
                x,
                common.bin_index(truth, edges),
                common.bin_index(reco, edges),
                edges,
                ("reco_mjj",),
                folds,
                cfg,
                seed,
                jobs=jobs,
            )
            results[key] = res
            h = res[0].hists
            common.plot_unfolded(
                edges,
                h["Truth"],
                h["Reco (no unfolding)"],
                {m: h[m] for m in ("ML", "IBU", "Tikhonov", "Inversion")},
                tmp / f"unfolded_sigma{s:g}.png",
                title=f"dijet, σ = {s:g}, {n_bins} bins, fold 1 of {folds}",
                xlabel="m(jj) [GeV]",
                logy=True,
            )
        paper, long = common.unfolding_tables(results, "smearing")
        info = common.Table(
            "Events and training (mean over folds)",
            ["smearing", "events", "ML epochs", "ML train s/fold", "Tikhonov τ (L-curve)"],
            [
                [
                    c,
                    sizes[c],
                    float(np.mean([r.info["epochs"] for r in rs])),
                    float(np.mean([r.info["train_seconds"] for r in rs])),
                    float(np.mean([r.info["tau"] for r in rs])),
                ]
                for c, rs in results.items()
            ],
        )
        header = (
            f"# Study 2: falling dijet spectrum, {n_bins} bins in [{LO:g}, {HI:g}) GeV, "
            f"{folds}-fold CV ({'fast' if fast else 'full'} mode, "
            f"{time.perf_counter() - start:.0f} s)"
        )
        md = common.write_tables(tmp, "table", [*paper, info, long], header)
    print(md)
    return {"tables": [*paper, info, long], "results": results}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--fast", action="store_true", help="tiny data, 3 folds, few epochs")
    ap.add_argument("--out", type=Path, default=common.DEFAULT_ROOT / NAME)
    ap.add_argument("--folds", type=int, default=None, help="k of k-fold (10 in full mode)")
    ap.add_argument("--smearing", type=float, nargs="+", default=[0.03, 0.10])
    ap.add_argument("--bins", type=int, default=60)
    ap.add_argument("--events", type=int, default=None, help="simulated dijet events per sample")
    ap.add_argument("--epochs", type=int, default=None, help="max epochs (early stopping)")
    ap.add_argument("--seed", type=int, default=2)
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
        smearings=args.smearing,
        n_bins=args.bins,
        events=args.events,
        epochs=args.epochs,
        seed=args.seed,
        calibrate=not args.no_calibrate,
        jobs=args.jobs,
    )


if __name__ == "__main__":
    common.exit_on_sigterm()
    main()
