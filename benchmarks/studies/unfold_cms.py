"""Study 5 — the real CMS dimuon file unfolded by a model a scan trained on simulated ``zll``.

One command (``make unfold-cms``) does the whole chain with the real tools:

1. ``jobs.simulate``: ``zll`` events (ROOT);
2. ``jobs.preprocess`` with ``configs/preprocess_zll_cms.yaml``: the features the CMS file also
   has (reco mass, leading/subleading lepton pT and η — the file has no isolation), the
   unfolding edges of ``configs/preprocess_zll.yaml`` (40 bins, 65–115 GeV);
3. ``scan.launch`` with ``configs/unfold_zll_cms.yaml`` (a small TPE + ASHA scan); the two best
   trials are logged and registered as ``unfold_zll_cms`` versions 1 and 2
   (``register_top: 2``);
4. ``scan.apply`` (what ``hepscan apply`` runs) of ``models:/unfold_zll_cms/1`` and ``/2`` to
   ``uproot-Zmumu.root`` through ``configs/preprocess_zmumu_cms.yaml`` (one global–global
   candidate per event, leading muon first; the model's own scaler), with a Poisson bootstrap
   and 0/1/2 iterations of the prior update, and of the two-model ensemble.

The file has no truth: the tables report the unfolded spectrum, its bootstrap and Poisson-only
errors, how it moves between the two models and with the prior iterations, next to the
reco spectrum and IBU (the training sample's response matrix).

Launch (from the repository root; the CMS selection is imported from ``benchmarks/``)::

    python -m benchmarks.studies.unfold_cms                 # full (make unfold-cms)
    python -m benchmarks.studies.unfold_cms --fast --out /tmp/cms

Outputs in --out (default studies-output/unfold_cms): ``table.md``, ``table_*.csv``,
``cms_unfolded.png``, ``apply-v1``/``apply-v2``/``apply-ensemble`` (the ``hepscan apply``
outputs: histogram JSON/CSV, covariance, PNG, metrics). The scan directory, with its MLflow
store ``mlflow.db`` holding the registered models and the apply runs, is
``studies-output/.cache/scan-unfold_cms-<time>`` (printed).
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.studies import common

NAME = "unfold_cms"
REPO = Path(__file__).resolve().parents[2]
TRAIN_PREPROCESS = REPO / "configs" / "preprocess_zll_cms.yaml"
CMS_PREPROCESS = REPO / "configs" / "preprocess_zmumu_cms.yaml"
SCAN_CONFIG = REPO / "configs" / "unfold_zll_cms.yaml"
ITERATIONS = 2


def cms_file() -> Path:
    import skhep_testdata

    return Path(skhep_testdata.data_path("uproot-Zmumu.root"))


def mean_of(h: np.ndarray, edges: np.ndarray) -> float:
    c = 0.5 * (edges[1:] + edges[:-1])
    return float(np.sum(c * h) / np.sum(h))


def rms_of(h: np.ndarray, edges: np.ndarray) -> float:
    c = 0.5 * (edges[1:] + edges[:-1])
    m = mean_of(h, edges)
    return float(np.sqrt(np.sum((c - m) ** 2 * h) / np.sum(h)))


PEAK = (86.25, 96.25)  # GeV: the bins holding ~80 % of the events


def rel(err: np.ndarray, h: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(h >= 1.0, err / h, np.nan)


def training_data(cache: Path, events: int, seed: int) -> Path:
    """Simulated zll → shards with the CMS-compatible features (reused when present)."""
    from jobs.preprocess import preprocess
    from jobs.simulate import simulate

    # own names: common.simulate_cached's "zll-n…-s…" directories hold one file, these two
    root = cache / NAME / f"zll-n{events}-s{seed}"
    data = cache / NAME / f"zll_cms-n{events}-s{seed}"
    if (data / "manifest.json").exists():
        return data
    files = simulate("zll", events, 2, seed, root, progress=False, workers=1)
    preprocess(TRAIN_PREPROCESS, data, inputs=[str(f) for f in files], workers=1, overwrite=True)
    return data


def run(
    out: Path,
    *,
    fast: bool = False,
    events: int | None = None,
    trials: int | None = None,
    epochs: int | None = None,
    bootstrap: int | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    from scan import apply, launch
    from scan.publish import published_models

    # the CMS selection and the Ray workers import from this repository
    common.ray_workers_import_repo()
    events = events or (16_000 if fast else 200_000)
    trials = trials or (2 if fast else 6)
    epochs = epochs or (2 if fast else 10)
    bootstrap = bootstrap if bootstrap is not None else (20 if fast else 100)
    cache = cache_dir or (out.parent / ".cache")
    cache.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = training_data(cache, events, seed)
    t_data = time.perf_counter() - start
    print(f"{NAME}: training data {data} ({t_data:.0f} s)")
    # the scan (and its MLflow store, which records absolute paths) lives outside the
    # temporary output directory, so the registered models stay usable afterwards
    scan_dir = cache / f"scan-{NAME}-{time.strftime('%Y%m%d-%H%M%S')}"
    with common.output_dir(out) as tmp:
        overrides = {"dataset": str(data), "num_trials": trials, "max_epochs": epochs}
        if fast:
            overrides["concurrency"] = 1
        result = launch(SCAN_CONFIG, overrides, scan_dir=scan_dir, verbose=0)
        t_scan = time.perf_counter() - start - t_data
        print(
            f"  scan {scan_dir}: {len(result.trials)} trials in {t_scan:.0f} s; "
            f"best {result.best_metrics}"
        )
        models = published_models(scan_dir)
        if len(models) < 2:
            raise RuntimeError(f"{scan_dir}: expected two registered models, got {models}")
        uri = result.tracking_uri
        cms = cms_file()
        applied: dict[str, Any] = {}
        for label, source, ensemble in (
            ("v1", models[0]["model_uri"], 1),
            ("v2", models[1]["model_uri"], 1),
            ("ensemble", models[0]["model_uri"], 2),
        ):
            print(
                f"  hepscan apply {source} --tracking-uri {uri} --input {cms} "
                f"--config {CMS_PREPROCESS.relative_to(REPO)} --bootstrap {bootstrap} "
                f"--prior-iterations {ITERATIONS}"
                + (f" --ensemble {ensemble}" if ensemble > 1 else "")
                + f" --out {out / ('apply-' + label)}"
            )
            applied[label] = apply(
                source,
                tmp / f"apply-{label}",
                inputs=[str(cms)],
                config=CMS_PREPROCESS,
                bootstrap=bootstrap,
                ensemble=ensemble,
                prior_iterations=ITERATIONS,
                seed=seed,
                tracking_uri=uri,
                workers=1,
            )
        from scan.application import resolve_source

        src = resolve_source(models[0]["model_uri"], tracking_uri=uri)
        response = src.bundles[0].response
        for t in src._tmp:
            t.cleanup()
        tables, figures = _tables(applied, models, response)
        _plot(applied, tmp / "cms_unfolded.png")
        header = (
            f"# Study 5: CMS Z→μμ (uproot-Zmumu.root) unfolded with a zll-trained scan "
            f"({'fast' if fast else 'full'} mode: {events} simulated events, {trials} trials × "
            f"≤{epochs} epochs, bootstrap {bootstrap}; {time.perf_counter() - start:.0f} s)"
        )
        md = common.write_tables(tmp, "table", tables, header)
    print(md)
    return {"applied": applied, "tables": tables, "figures": figures, "models": models}


def _tables(
    applied: dict[str, Any], models: list[dict[str, Any]], response: dict[str, Any] | None
) -> tuple[list[common.Table], dict[str, float]]:
    u1, u2, ue = (applied[k].unfolding for k in ("v1", "v2", "ensemble"))
    edges = u1.edges
    reco = u1.reco
    centres = 0.5 * (edges[1:] + edges[:-1])
    peak = (centres > PEAK[0]) & (centres < PEAK[1])
    rows: list[list[Any]] = []
    figures: dict[str, float] = {}

    def add(label: str, h: np.ndarray, boot: np.ndarray | None) -> None:
        rb = rel(boot, h) if boot is not None else np.full(len(h), np.nan)
        rp = rel(np.sqrt(np.clip(h, 0.0, None)), h)
        ratio = rb / rp
        rows.append(
            [
                label,
                float(h.sum()),
                mean_of(h, edges),
                rms_of(h, edges),
                float(np.nanmean(rb)) if np.isfinite(rb).any() else np.nan,
                float(np.nanmean(rp)),
                float(np.nanmean(rb[peak])) if np.isfinite(rb[peak]).any() else np.nan,
                float(np.nanmean(rp[peak])),
                float(np.nanmean(ratio)) if np.isfinite(ratio).any() else np.nan,
            ]
        )

    if response is not None:  # the training sample, scaled to the data's event count
        t_mc = np.asarray(response["truth"], np.float64)
        r_mc = np.asarray(response["counts"], np.float64).sum(axis=1)
        rows.append(
            ["zll simulation: truth (training prior), scaled", reco.sum(),
             mean_of(t_mc, edges), rms_of(t_mc, edges), *([np.nan] * 5)]
        )  # fmt: skip
        rows.append(
            ["zll simulation: reco, scaled", reco.sum(), mean_of(r_mc, edges),
             rms_of(r_mc, edges), *([np.nan] * 5)]
        )  # fmt: skip
    add("reco (data, no unfolding)", reco, None)
    for tag, u in (("v1", u1), ("v2", u2)):
        for k, (h, se) in enumerate(zip(u.iterations, u.iteration_stderr, strict=True)):
            add(f"ML {tag}, prior iteration {k}", h, se)
    add("ML ensemble (v1+v2), iteration 2: bootstrap ⊕ model spread", ue.unfolded, ue.stderr)
    add("IBU (4 it., MC prior), response of v1", u1.baselines["ibu"], _diag(u1.baseline_cov["ibu"]))
    add("Tikhonov, response of v1", u1.baselines["tikhonov"], _diag(u1.baseline_cov["tikhonov"]))
    summary = common.Table(
        "Unfolded CMS spectrum: integral, mean and rms mass, mean relative error per bin",
        [
            "result",
            "integral",
            "mean m [GeV]",
            "rms m [GeV]",
            "rel. error, bootstrap (all bins)",
            "rel. error, Poisson-only √n (all bins)",
            f"bootstrap, {PEAK[0]:g}–{PEAK[1]:g} GeV",
            f"Poisson-only, {PEAK[0]:g}–{PEAK[1]:g} GeV",
            "bootstrap / Poisson (mean over bins)",
        ],
        rows,
    )
    h1, h2 = u1.iterations[0], u2.iterations[0]
    s1 = u1.iteration_stderr[0]
    # pulls over bins holding at least one unfolded event (a bin with 0.01 events and a tiny
    # bootstrap σ would otherwise dominate the maximum)
    ok = (s1 > 0) & (h1 >= 1.0)
    pull_models = np.where(ok, (h2 - h1) / np.where(ok, s1, 1.0), np.nan)
    pull_iter = np.where(ok, (u1.iterations[-1] - h1) / np.where(ok, s1, 1.0), np.nan)
    per_bin = []
    for i in range(len(h1)):
        per_bin.append(
            [
                f"{edges[i]:.2f}–{edges[i + 1]:.2f}",
                int(reco[i]),
                float(h1[i]),
                float(s1[i]),
                float(np.sqrt(max(h1[i], 0.0))),
                float(h2[i]),
                float(pull_models[i]),
                float(u1.iterations[1][i]),
                float(u1.iterations[2][i]),
                float(pull_iter[i]),
                float(u1.baselines["ibu"][i]),
            ]
        )
    bins = common.Table(
        "Per bin: model v1 (iteration 0) with bootstrap and Poisson-only errors, model v2, "
        "prior iterations, IBU",
        [
            "bin [GeV]",
            "reco",
            "ML v1",
            "σ bootstrap",
            "σ Poisson √n",
            "ML v2",
            "(v2 − v1)/σ",
            "v1 it. 1",
            "v1 it. 2",
            "(it. 2 − it. 0)/σ",
            "IBU",
        ],
        per_bin,
    )
    model_rows = [
        [
            f"v{i + 1}",
            m.get("model_uri"),
            m.get("trial_id"),
            float(m.get("metrics", {}).get("best_chi2_ndf", np.nan)),
        ]
        for i, m in enumerate(models[:2])
    ]
    model_table = common.Table(
        "Registered models (validation χ²/ndf on simulation)",
        ["version", "model URI", "trial", "validation chi2_ndf"],
        model_rows,
    )
    figures.update(
        integral_v1=float(h1.sum()),
        mean_v1=mean_of(h1, edges),
        mean_v2=mean_of(h2, edges),
        mean_v1_it2=mean_of(u1.iterations[-1], edges),
        max_abs_model_pull=float(np.nanmax(np.abs(pull_models))),
        rms_model_pull=float(np.sqrt(np.nanmean(pull_models**2))),
        max_abs_iter_pull=float(np.nanmax(np.abs(pull_iter))),
    )
    shifts = common.Table(
        "Movement of the spectrum, in units of the v1 bootstrap σ per bin (bins with ≥ 1 event)",
        ["comparison", "max |Δ|/σ", "rms Δ/σ", "Δ mean m [GeV]"],
        [
            [
                "model v2 − v1 (iteration 0)",
                figures["max_abs_model_pull"],
                figures["rms_model_pull"],
                figures["mean_v2"] - figures["mean_v1"],
            ],
            [
                "v1: prior iteration 2 − 0",
                figures["max_abs_iter_pull"],
                float(np.sqrt(np.nanmean(pull_iter**2))),
                figures["mean_v1_it2"] - figures["mean_v1"],
            ],
        ],
    )
    return [summary, shifts, model_table, bins], figures


def _diag(c: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(np.diag(c), 0.0, None))


def _plot(applied: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    u1, u2 = applied["v1"].unfolding, applied["v2"].unfolding
    e = u1.edges
    c = 0.5 * (e[1:] + e[:-1])
    w = np.diff(e)
    fig, (ax, rx) = plt.subplots(
        2, 1, figsize=(7.5, 6.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]}
    )
    ax.stairs(u1.reco, e, color="grey", label="reco (CMS data)")
    ax.errorbar(
        c, u1.iterations[0], u1.iteration_stderr[0], fmt="o", ms=3, color="C0",
        label="ML v1 (bootstrap σ)",
    )  # fmt: skip
    ax.stairs(u2.iterations[0], e, color="C1", label="ML v2")
    ax.stairs(u1.iterations[-1], e, color="C2", ls="--", label="ML v1, prior iteration 2")
    ax.stairs(u1.baselines["ibu"], e, color="C3", ls=":", label="IBU")
    ax.set_ylabel(f"events / {w[0]:.2f} GeV")
    ax.set_title("CMS Z→μμ (uproot-Zmumu.root, global–global), unfolded with zll models")
    ax.legend(fontsize=8)
    ref = np.where(u1.iterations[0] > 0, u1.iterations[0], np.nan)
    rb = u1.iteration_stderr[0] / ref
    rp = np.sqrt(np.clip(u1.iterations[0], 0, None)) / ref
    rx.fill_between(c, 1 - rb, 1 + rb, step="mid", color="C0", alpha=0.25, label="bootstrap σ")
    rx.step(c, 1 + rp, where="mid", color="k", lw=0.8, ls="--", label="Poisson √n")
    rx.step(c, 1 - rp, where="mid", color="k", lw=0.8, ls="--")
    rx.step(c, u2.iterations[0] / ref, where="mid", color="C1", label="v2")
    rx.step(c, u1.iterations[-1] / ref, where="mid", color="C2", ls="--", label="it. 2")
    rx.set_ylim(0.0, 2.0)
    rx.set_ylabel("/ ML v1")
    rx.set_xlabel("m(μμ) [GeV]")
    rx.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--out", type=Path, default=common.DEFAULT_ROOT / NAME)
    ap.add_argument("--events", type=int, default=None, help="simulated zll events")
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--bootstrap", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--figure", type=Path, default=None, help="also copy the PNG here")
    args = ap.parse_args(argv)
    run(
        args.out,
        fast=args.fast,
        events=args.events,
        trials=args.trials,
        epochs=args.epochs,
        bootstrap=args.bootstrap,
        seed=args.seed,
    )
    if args.figure is not None:
        shutil.copyfile(args.out / "cms_unfolded.png", args.figure)


if __name__ == "__main__":
    common.exit_on_sigterm()
    main()
