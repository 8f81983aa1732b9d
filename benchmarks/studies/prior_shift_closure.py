"""Study 6 — closure of the registered demo model on held-out simulation with a prior shift.

The model of ``make demo`` (``configs/demo.yaml``: ``unfold_bins`` scanned on a ``zll`` sample
simulated with seed 0, registered as ``demo_unfold_zll``) is applied with ``scan.apply`` (what
``hepscan apply`` runs) to an *independent* ``zll`` sample (another seed), preprocessed with
the same ``configs/preprocess_zll.yaml``, whose truth is tilted linearly by ±20 %:

    w(m) = 1 + tilt · (2 (m − 65 GeV) / (115 GeV − 65 GeV) − 1),   tilt = ±0.2,

i.e. ×0.8 at 65 GeV and ×1.2 at 115 GeV for +20 % (the reverse for −20 %), with m the generator
mass; events are kept with probability ``w / 1.2`` (accept–reject, so the tilted samples are
unweighted and have Poisson statistics). An untilted control keeps events with probability
``1 / 1.2``, the same acceptance on average. The samples are written as Parquet (raw feature
columns + truth) and unfolded with a Poisson bootstrap and 0/1/2 iterations of the prior
update (:func:`models.prior.iterative_prior_update`); χ²/ndf uses the full covariance
(bootstrap covariance of the result + Poisson variance of the truth; see
:mod:`jobs.apply.unfold`), for ML and for IBU/Tikhonov with the training response matrix.

Launch::

    python -m benchmarks.studies.prior_shift_closure            # scans configs/demo.yaml itself
    python -m benchmarks.studies.prior_shift_closure --source demo/scan-<stamp>   # make demo's
    python -m benchmarks.studies.prior_shift_closure --fast --out /tmp/s6

Outputs in --out (default studies-output/prior_shift_closure): ``table.md``, ``table_*.csv``,
``truth_histograms.csv``, ``closure_bias.png``, ``inputs/*.parquet`` (the tilted samples) and
``apply-tilt{p20,m20,p0}`` (the ``hepscan apply`` outputs).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.studies import common

NAME = "prior_shift_closure"
REPO = Path(__file__).resolve().parents[2]
PREPROCESS = REPO / "configs" / "preprocess_zll.yaml"
DEMO = REPO / "configs" / "demo.yaml"
LO, HI = 65.0, 115.0
ITERATIONS = 2


def tilt_mask(truth: np.ndarray, tilt: float, max_tilt: float, seed: int) -> np.ndarray:
    """Accept–reject mask: keep each event with probability ``linear_tilt(m) / (1 + max_tilt)``."""
    w = common.linear_tilt(truth, LO, HI, tilt)
    rng = np.random.default_rng(seed)
    return rng.random(len(w)) < w / (1.0 + abs(max_tilt))


def _dataset(cache: Path, events: int, seed: int) -> Path:
    from jobs.preprocess import preprocess

    data = cache / f"zll-data-n{events}-s{seed}"
    if not (data / "manifest.json").exists():
        files = common.simulate_cached("zll", events, seed, cache)
        preprocess(PREPROCESS, data, inputs=[str(f) for f in files], workers=1, overwrite=True)
    return data


def demo_model(
    cache: Path, events: int, trials: int, epochs: int, fast: bool
) -> tuple[str, str, Path]:
    """Scan ``configs/demo.yaml`` on a seed-0 zll sample (as ``make demo`` does); returns
    (registered model URI, tracking URI, scan directory)."""
    from scan import launch

    data = _dataset(cache, events, 0)
    overrides: dict[str, Any] = {"dataset": str(data), "num_trials": trials, "max_epochs": epochs}
    if fast:
        overrides["resources"] = {"workers": 1, "cpus_per_worker": 1}
    scan_dir = cache / f"scan-{NAME}-{time.strftime('%Y%m%d-%H%M%S')}"
    launch(DEMO, overrides, scan_dir=scan_dir, verbose=0)
    return _registered(scan_dir)


def _registered(scan_dir: Path) -> tuple[str, str, Path]:
    from scan.publish import published_models
    from scan.state import tracking_uri_of

    models = published_models(scan_dir)
    if not models:
        raise RuntimeError(f"{scan_dir}: no registered model (models.json)")
    return str(models[0]["model_uri"]), tracking_uri_of(scan_dir), scan_dir


def run(
    out: Path,
    *,
    fast: bool = False,
    source: str | None = None,
    tracking_uri: str | None = None,
    train_events: int | None = None,
    test_events: int | None = None,
    trials: int | None = None,
    epochs: int | None = None,
    bootstrap: int | None = None,
    tilt: float = 0.2,
    seed: int = 7,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.apply import load_inputs
    from scan import apply
    from scan.application import resolve_source

    common.ray_workers_import_repo()
    train_events = train_events or (12_000 if fast else 40_000)
    test_events = test_events or (12_000 if fast else 200_000)
    trials = trials or (2 if fast else 6)
    epochs = epochs or (2 if fast else 8)
    bootstrap = bootstrap if bootstrap is not None else (10 if fast else 100)
    cache = cache_dir or (out.parent / ".cache")
    cache.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    trained = "given model"
    if source is None:
        source, tracking_uri, scan_dir = demo_model(cache, train_events, trials, epochs, fast)
        print(f"{NAME}: scanned {scan_dir} ({time.perf_counter() - start:.0f} s) -> {source}")
        trained = (
            f"demo.yaml scan on {train_events} simulated events, {trials} trials × ≤{epochs} epochs"
        )
    elif not source.startswith(("models:/", "runs:/")):
        source, tracking_uri, _ = _registered(Path(source))
    print(f"{NAME}: model {source} (tracking {tracking_uri})")
    test_data = _dataset(cache, test_events, 1000 + seed)
    src = resolve_source(source, tracking_uri=tracking_uri)
    try:
        bundle = src.bundles[0]
        sample = load_inputs(bundle, [str(test_data)], split="all")
    finally:
        for t in src._tmp:
            t.cleanup()
    truth_col = bundle.unfold_column("truth")
    truth_mass = np.asarray(sample.columns[truth_col], np.float64)
    edges = bundle.edges
    tilts = {f"{tilt:+.0%}": tilt, f"{-tilt:+.0%}": -tilt, "+0% (control)": 0.0}
    results: dict[str, Any] = {}
    truths: dict[str, np.ndarray] = {}
    with common.output_dir(out) as tmp:
        (tmp / "inputs").mkdir()
        for i, (label, t) in enumerate(tilts.items()):
            mask = tilt_mask(truth_mass, t, tilt, seed + 10 * i)
            tag = label.split(" ")[0].replace("%", "").replace("+", "p").replace("-", "m")
            parquet = tmp / "inputs" / f"zll_tilt{tag}.parquet"
            pq.write_table(
                pa.table({c: np.asarray(v)[mask] for c, v in sample.columns.items()}), parquet
            )
            truths[label] = np.histogram(truth_mass[mask], edges)[0].astype(np.float64)
            results[label] = apply(
                source,
                tmp / f"apply-tilt{tag}",
                inputs=[str(parquet)],
                bootstrap=bootstrap,
                prior_iterations=ITERATIONS,
                seed=seed,
                tracking_uri=tracking_uri,
            )
            print(f"  {label}: {int(mask.sum())} events, " + _line(results[label].metrics))
        table, bias = _tables(results, truths, edges, tilt)
        _write_truths(tmp / "truth_histograms.csv", edges, truths)
        _plot(bias, edges, tmp / "closure_bias.png")
        (tmp / "model.json").write_text(
            json.dumps({"source": source, "tracking_uri": tracking_uri}, indent=1)
        )
        header = (
            f"# Study 6: closure with a ±{tilt:.0%} prior shift, model {source} "
            f"({'fast' if fast else 'full'} mode: {trained}; independent sample of {test_events} simulated "
            f"events, bootstrap {bootstrap}; {time.perf_counter() - start:.0f} s)"
        )
        md = common.write_tables(tmp, "table", table, header)
    print(md)
    return {"results": results, "truths": truths, "tables": table, "source": source}


def _line(m: dict[str, float]) -> str:
    its = ", ".join(f"it{k} {m.get(f'chi2_ndf_iter{k}', math.nan):.3g}" for k in range(3))
    return f"ML chi2/ndf {its}; IBU {m.get('ibu_chi2_ndf', math.nan):.3g}"


def _tables(
    results: dict[str, Any], truths: dict[str, np.ndarray], edges: np.ndarray, tilt: float
) -> tuple[list[common.Table], dict[str, dict[str, np.ndarray]]]:
    centres = 0.5 * (edges[1:] + edges[:-1])
    rows: list[list[Any]] = []
    bias: dict[str, dict[str, np.ndarray]] = {}
    for label, r in results.items():
        m, u = r.metrics, r.unfolding
        t = truths[label]
        rows.append(
            [
                label,
                int(m["events"]),
                float(np.sum(centres * t) / t.sum()),
                *(float(m.get(f"chi2_ndf_iter{k}", math.nan)) for k in range(ITERATIONS + 1)),
                float(m.get("ibu_chi2_ndf", math.nan)),
                float(m.get("tikhonov_chi2_ndf", math.nan)),
                float(m.get("mean_rel_stderr_bootstrap", math.nan)),
                float(m.get("mean_rel_stderr_poisson", math.nan)),
            ]
        )
        with np.errstate(divide="ignore", invalid="ignore"):
            sd = np.sqrt(np.where(t > 0, t, np.nan))
            bias[label] = {
                **{f"ML, iteration {k}": (h - t) / sd for k, h in enumerate(u.iterations)},
                "IBU": (u.baselines["ibu"] - t) / sd,
            }
    closure = common.Table(
        f"χ²/ndf (full covariance) of the unfolded vs true spectrum, truth tilted ±{tilt:.0%}",
        [
            "truth tilt",
            "events",
            "truth mean m [GeV]",
            "ML it. 0",
            "ML it. 1",
            "ML it. 2",
            "IBU (4 it.)",
            "Tikhonov",
            "ML rel. error, bootstrap (it. 2)",
            "ML rel. error, Poisson-only",
        ],
        rows,
    )
    per_bin = []
    labels = list(results)
    for i in range(len(centres)):
        row: list[Any] = [f"{edges[i]:.2f}–{edges[i + 1]:.2f}"]
        for label in labels[:2]:
            b = bias[label]
            row += [float(truths[label][i]), float(b["ML, iteration 0"][i])]
            row += [float(b[f"ML, iteration {ITERATIONS}"][i]), float(b["IBU"][i])]
        per_bin.append(row)
    cols = ["bin [GeV]"]
    for label in labels[:2]:
        cols += [f"truth {label}", "ML it. 0 bias/σ", f"ML it. {ITERATIONS} bias/σ", "IBU bias/σ"]
    bins = common.Table("Per bin: (unfolded − truth)/√truth", cols, per_bin)
    return [closure, bins], bias


def _write_truths(path: Path, edges: np.ndarray, truths: dict[str, np.ndarray]) -> None:
    t = common.Table(
        "truth",
        ["low", "high", *truths],
        [[float(edges[i]), float(edges[i + 1]), *(float(h[i]) for h in truths.values())]
         for i in range(len(edges) - 1)],
    )  # fmt: skip
    path.write_text(t.csv())


def _plot(bias: dict[str, dict[str, np.ndarray]], edges: np.ndarray, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = 0.5 * (edges[1:] + edges[:-1])
    labels = [k for k in bias if "control" not in k]
    fig, axes = plt.subplots(1, len(labels), figsize=(5.5 * len(labels), 4.2), sharey=True)
    for ax, label in zip(np.atleast_1d(axes), labels, strict=True):
        for name, b in bias[label].items():
            ax.plot(centres, b, marker="o", ms=2.5, lw=1, label=name)
        ax.axhline(0, color="black", lw=0.8)
        ax.fill_between([edges[0], edges[-1]], -1, 1, color="grey", alpha=0.15, label="±1σ")
        ax.set_title(f"truth tilted {label}")
        ax.set_xlabel("m(ll) truth bin [GeV]")
    np.atleast_1d(axes)[0].set_ylabel("(unfolded − truth) / √truth")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--out", type=Path, default=common.DEFAULT_ROOT / NAME)
    ap.add_argument(
        "--source", default=None, help="scan dir or models:/ URI (default: scan demo.yaml)"
    )
    ap.add_argument("--tracking-uri", default=None, help="for a models:/ or runs:/ --source")
    ap.add_argument("--train-events", type=int, default=None)
    ap.add_argument("--test-events", type=int, default=None)
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--bootstrap", type=int, default=None)
    ap.add_argument("--tilt", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--figure", type=Path, default=None, help="also copy the PNG here")
    args = ap.parse_args(argv)
    run(
        args.out,
        fast=args.fast,
        source=args.source,
        tracking_uri=args.tracking_uri,
        train_events=args.train_events,
        test_events=args.test_events,
        trials=args.trials,
        epochs=args.epochs,
        bootstrap=args.bootstrap,
        tilt=args.tilt,
        seed=args.seed,
    )
    if args.figure is not None:
        shutil.copyfile(args.out / "closure_bias.png", args.figure)


if __name__ == "__main__":
    common.exit_on_sigterm()
    main()
