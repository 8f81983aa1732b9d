"""Study 9 — regression of the hadronic recoil (``../shared/papers/004``: a DNN regressing the
two components of the true recoil vector from event-level inputs).

Sample: ``hepscan simulate recoil`` (Z -> ll + hadronic recoil, particle-flow-like detector with
pile-up: response < 1 rising with pT, resolution growing with pile-up and ΣET; see
:mod:`jobs.simulate.recoil`), preprocessed with ``configs/preprocess_recoil.yaml`` (hadronic
inputs only, every vector in the frame of the raw recoil; targets: the true recoil's components
in that frame). Three estimates of the recoil vector are compared on the held-out test split:

* **raw**: the particle-flow recoil as measured;
* **linear calibration**: in each bin of (raw |U| quantile × n_pv) of the *training* split, a
  least-squares line ``t_par = a + b |U|`` of the true recoil's component along U; applied to
  the test split (direction unchanged);
* **regression**: the ``regression`` family (MLP) — full mode: the best trial of a real scan
  (``scan.launch`` with ``configs/regression_recoil.yaml``: TPE + ASHA, single-rank trials,
  concurrency 2); ``--fast``: one ``jobs.train.train`` run of the family's defaults.

Projected on the true recoil direction (= −boson axis): u∥ (a perfect measurement has
u∥ = pT) and u⊥. Response ⟨u∥⟩/⟨pT⟩, resolutions σ(u∥ − pT) and σ(u⊥) (standard deviations)
and their response-corrected forms σ/R, integrated and in bins of boson pT and of n_pv
(:func:`models.metrics.recoil_scores`).

Launch::

    python -m benchmarks.studies.recoil_regression                  # full: 300k events, scan
    python -m benchmarks.studies.recoil_regression --fast --out /tmp/s7

Outputs in --out (default studies-output/recoil_regression): ``table.md``, ``table_*.csv``
(integrated; vs pT; vs pile-up; scan trials), ``recoil_vs_pt.png``, ``recoil_vs_pileup.png``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.studies import common

NAME = "recoil_regression"
REPO = Path(__file__).resolve().parents[2]
PREPROCESS = REPO / "configs" / "preprocess_recoil.yaml"
SCAN = REPO / "configs" / "regression_recoil.yaml"
METHODS = ("raw", "linear calibration", "regression")
PT_EDGES = np.array([0.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 300.0])
NPV_EDGES = np.array([1.0, 15.0, 20.0, 25.0, 30.0, 35.0, 40.0, 50.0, 100.0])
HIGH_PT = 50.0  # GeV: the response above it is quoted separately (MSE shrinks at low pT)
CAL_U_BINS = 10  # quantile bins of raw |U| for the linear calibration
CAL_NPV_EDGES = np.array([1.0, 20.0, 28.0, 36.0, 1000.0])
SCORES = ("response", "resolution_par", "resolution_perp", "resolution_par_corr",
          "resolution_perp_corr")  # fmt: skip


# --------------------------------------------------------------------------------------------
# data


def dataset(cache: Path, events: int, seed: int) -> Path:
    """Simulated ``recoil`` events preprocessed into shards (cached)."""
    from jobs.preprocess import preprocess

    data = cache / f"recoil-shards-n{events}-s{seed}"
    if not (data / "manifest.json").exists():
        files = common.simulate_cached("recoil", events, seed, cache)
        preprocess(PREPROCESS, data, inputs=[str(f) for f in files], workers=1, overwrite=True)
    return data


def load_split(data: Path, split: str) -> dict[str, np.ndarray]:
    """``x`` (standardised features), ``target`` (n, 2) and the raw ``reco_u`` / ``npv``."""
    import pyarrow.parquet as pq

    from jobs.manifest import load_manifest

    m = load_manifest(data)
    table = pq.ParquetDataset([str(p) for p in m.shard_paths(split)]).read()
    cols = {c: table.column(c).to_numpy() for c in table.column_names}
    x = np.stack([cols[f"feat_{f}"] for f in m.features], axis=1).astype(np.float32)
    mean, std = m.scaler["mean"], m.scaler["std"]

    def raw(name: str) -> np.ndarray:
        i = m.features.index(name)
        return np.asarray(cols[f"feat_{name}"], np.float64) * float(std[i]) + float(mean[i])

    if m.regression is None:
        raise ValueError(f"{data}: the dataset has no 'regression' targets")
    target = np.stack([cols[c] for c in m.regression["target"]], axis=1).astype(np.float64)
    return {"x": x, "target": target, "reco_u": raw("reco_u"), "npv": np.rint(raw("reco_npv"))}


# --------------------------------------------------------------------------------------------
# the linear calibration


def fit_linear(train: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Per (|U| quantile × n_pv) bin: least squares ``t_par = a + b |U|`` on the training rows."""
    u, npv, t_par = train["reco_u"], train["npv"], train["target"][:, 0]
    u_edges = np.quantile(u, np.linspace(0.0, 1.0, CAL_U_BINS + 1))
    u_edges[0], u_edges[-1] = -np.inf, np.inf
    iu = np.clip(np.searchsorted(u_edges, u, side="right") - 1, 0, CAL_U_BINS - 1)
    iv = np.clip(np.searchsorted(CAL_NPV_EDGES, npv, side="right") - 1, 0, len(CAL_NPV_EDGES) - 2)
    coef = np.zeros((CAL_U_BINS, len(CAL_NPV_EDGES) - 1, 2))
    for i in range(CAL_U_BINS):
        for j in range(len(CAL_NPV_EDGES) - 1):
            sel = (iu == i) & (iv == j)
            if sel.sum() < 10:
                coef[i, j] = (0.0, 1.0 / 0.75)
                continue
            b, a = np.polyfit(u[sel], t_par[sel], 1)
            coef[i, j] = (a, b)
    return {"u_edges": u_edges, "coef": coef}


def apply_linear(cal: Mapping[str, Any], data: Mapping[str, np.ndarray]) -> np.ndarray:
    u, npv = data["reco_u"], data["npv"]
    iu = np.clip(np.searchsorted(cal["u_edges"], u, side="right") - 1, 0, CAL_U_BINS - 1)
    iv = np.clip(np.searchsorted(CAL_NPV_EDGES, npv, side="right") - 1, 0, len(CAL_NPV_EDGES) - 2)
    a, b = cal["coef"][iu, iv, 0], cal["coef"][iu, iv, 1]
    return np.stack([a + b * u, np.zeros_like(u)], axis=1)


# --------------------------------------------------------------------------------------------
# the regression


def _model_from_checkpoint(path: Path, data: Path) -> Any:
    import torch

    from jobs.manifest import load_manifest
    from models.registry import get_family, make_config

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    family = get_family("regression")
    spec = family.data_spec(load_manifest(data))
    model = family.build(make_config(family, ckpt["model_config"]), spec.dims)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return model


def train_single(data: Path, cache: Path, epochs: int, seed: int) -> tuple[Any, dict[str, Any]]:
    """One ``jobs.train.train`` run with the family's default configuration."""
    import shutil

    from jobs.train import TrainConfig, train

    ckpt = cache / f"train-{NAME}-e{epochs}-s{seed}"
    shutil.rmtree(ckpt, ignore_errors=True)  # a fresh run, not a resumed one
    cfg = TrainConfig(
        dataset=str(data),
        family="regression",
        epochs=epochs,
        batch_size=1024,
        lr=1e-3,
        seed=seed,
        patience=3,
        checkpoint_dir=str(ckpt),
        monitor="resolution_perp_corr",
    )
    result = train(cfg)
    best = Path(result.best_checkpoint_path or result.checkpoint_path or ckpt / "best.pt")
    info = {
        "how": f"one training of the defaults (jobs.train.train, {result.epochs_run} epochs)",
        "config": "defaults: hidden 128, depth 3, relu, batchnorm, mse; lr 1e-3, batch 1024",
        "trials": [],
    }
    return _model_from_checkpoint(best, data), info


def scan_best(data: Path, cache: Path, trials: int, epochs: int) -> tuple[Any, dict[str, Any]]:
    """``scan.launch`` of configs/regression_recoil.yaml; the best trial's best checkpoint."""
    from scan import launch
    from scan.publish import trial_checkpoint

    scan_dir = cache / f"scan-{NAME}-{time.strftime('%Y%m%d-%H%M%S')}"
    overrides: dict[str, Any] = {
        "dataset": str(data),
        "num_trials": trials,
        "max_epochs": epochs,
        "register": False,
    }
    result = launch(SCAN, overrides, scan_dir=scan_dir, verbose=0)
    if result.best_trial_id is None:
        raise RuntimeError(f"{scan_dir}: the scan has no best trial")
    ckpt_dir = trial_checkpoint(scan_dir, result.best_trial_id)
    if ckpt_dir is None:
        raise RuntimeError(f"{scan_dir}: no checkpoint for trial {result.best_trial_id}")
    best = ckpt_dir / "best.pt" if (ckpt_dir / "best.pt").exists() else ckpt_dir / "last.pt"
    params = result.param_names
    rows = []
    for _, r in result.ranked().iterrows():
        rows.append(
            [str(r["trial_id"])]
            + [r.get(f"config/{p}", r.get(p, "")) for p in params]
            + [float(r.get("best_resolution_perp_corr", np.nan))]
            + [r.get("epochs", ""), str(r.get("status", ""))]
        )
    info = {
        "how": f"best of a {trials}-trial scan (configs/regression_recoil.yaml, ≤{epochs} epochs)",
        "config": ", ".join(f"{k} {v}" for k, v in sorted(result.best_config.items())),
        "trials": rows,
        "param_names": params,
        "scan_dir": str(scan_dir),
    }
    return _model_from_checkpoint(best, data), info


def predict(model: Any, x: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model.predict(torch.as_tensor(x, dtype=torch.float32))
    return np.asarray(out.double().numpy())


# --------------------------------------------------------------------------------------------
# scores


def binned(
    pred: np.ndarray, truth: np.ndarray, values: np.ndarray, edges: np.ndarray, min_count: int
) -> list[dict[str, float]]:
    from models.metrics import recoil_scores

    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        sel = (values >= lo) & (values < hi)
        s = recoil_scores(pred[sel], truth[sel]) if sel.sum() >= min_count else {}
        out.append({"lo": float(lo), "hi": float(hi), "n": int(sel.sum()),
                    **{k: float(s.get(k, np.nan)) for k in SCORES}})  # fmt: skip
    return out


def plot(path: Path, curves: Mapping[str, list[dict[str, float]]], xlabel: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    styles = {"raw": ("C0", "o"), "linear calibration": ("C1", "s"), "regression": ("C2", "^")}
    for method, rows in curves.items():
        x = np.array([0.5 * (r["lo"] + r["hi"]) for r in rows])
        xerr = np.array([0.5 * (r["hi"] - r["lo"]) for r in rows])
        color, marker = styles[method]
        for ax, key in zip(axes, ("response", "resolution_par", "resolution_perp"), strict=True):
            y = np.array([r[key] for r in rows])
            ax.errorbar(x, y, xerr=xerr, fmt=marker, color=color, label=method, ms=4, capsize=0)
    axes[0].axhline(1.0, color="grey", lw=0.8, ls="--")
    axes[0].set_ylabel("response ⟨u∥⟩ / ⟨pT⟩")
    axes[1].set_ylabel("σ(u∥ − pT) [GeV]")
    axes[2].set_ylabel("σ(u⊥) [GeV]")
    for ax in axes:
        ax.set_xlabel(xlabel)
        ax.grid(alpha=0.3)
    axes[1].set_ylim(bottom=0)
    axes[2].set_ylim(bottom=0)
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _bin_table(title: str, var: str, curves: Mapping[str, list[dict[str, float]]]) -> common.Table:
    rows = []
    for method, rs in curves.items():
        for r in rs:
            rows.append([method, f"{r['lo']:g}–{r['hi']:g}", r["n"], *(r[k] for k in SCORES)])
    return common.Table(title, ["Method", var, "events", *SCORES], rows)


# --------------------------------------------------------------------------------------------
# the study


def run(
    out: Path,
    *,
    fast: bool = False,
    events: int | None = None,
    trials: int | None = None,
    epochs: int | None = None,
    seed: int = 1,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    from models.metrics import recoil_scores

    common.ray_workers_import_repo()
    events = events or (40_000 if fast else 300_000)
    trials = trials or 10
    epochs = epochs or 10
    cache = cache_dir or (out.parent / ".cache")
    cache.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = dataset(cache, events, seed)
    t_data = time.perf_counter() - start
    train, test = load_split(data, "train"), load_split(data, "test")
    with common.output_dir(out) as tmp, common.torch_threads(1):
        t0 = time.perf_counter()
        if fast:
            model, info = train_single(data, cache, epochs, seed)
        else:
            model, info = scan_best(data, cache, trials, epochs)
        t_model = time.perf_counter() - t0
        cal = fit_linear(train)
        preds = {
            "raw": np.stack([test["reco_u"], np.zeros_like(test["reco_u"])], axis=1),
            "linear calibration": apply_linear(cal, test),
            "regression": predict(model, test["x"]),
        }
        truth = test["target"]
        pt = np.hypot(truth[:, 0], truth[:, 1])
        min_count = 50 if fast else 200
        integrated = {m: recoil_scores(p, truth) for m, p in preds.items()}
        high = pt >= HIGH_PT
        for m, p in preds.items():
            integrated[m][f"response_pt{HIGH_PT:g}"] = recoil_scores(p[high], truth[high])[
                "response"
            ]
        vs_pt = {m: binned(p, truth, pt, PT_EDGES, min_count) for m, p in preds.items()}
        vs_npv = {m: binned(p, truth, test["npv"], NPV_EDGES, min_count) for m, p in preds.items()}
        plot(tmp / "recoil_vs_pt.png", vs_pt, "boson pT [GeV]",
             f"Z→ℓℓ recoil, {len(pt)} test events: vs boson pT")  # fmt: skip
        plot(tmp / "recoil_vs_pileup.png", vs_npv, "reconstructed vertices n_pv",
             f"Z→ℓℓ recoil, {len(pt)} test events: vs pile-up")  # fmt: skip
        raw_int = integrated["raw"]
        t_int = common.Table(
            "Integrated over the test split",
            ["Method", *SCORES, f"response (pT ≥ {HIGH_PT:g})", "σ⊥ / σ⊥(raw)", "σ∥ / σ∥(raw)"],
            [
                [
                    m,
                    *(s[k] for k in SCORES),
                    s[f"response_pt{HIGH_PT:g}"],
                    s["resolution_perp"] / raw_int["resolution_perp"],
                    s["resolution_par"] / raw_int["resolution_par"],
                ]  # fmt: skip
                for m, s in integrated.items()
            ],
        )
        tables = [
            t_int,
            _bin_table("In bins of boson pT", "pT [GeV]", vs_pt),
            _bin_table("In bins of pile-up (reconstructed vertices)", "n_pv", vs_npv),
        ]
        if info["trials"]:
            tables.append(
                common.Table(
                    "Scan trials (best first; objective σ⊥/R on the validation split)",
                    [
                        "trial",
                        *info["param_names"],
                        "best resolution_perp_corr",
                        "epochs",
                        "status",
                    ],
                    info["trials"],
                )
            )
        elapsed = time.perf_counter() - start
        header = (
            f"# Study 9 — hadronic-recoil regression ({'fast' if fast else 'full'} mode)\n\n"
            f"{events} simulated `recoil` events (seed {seed}); train {len(train['x'])}, "
            f"test {len(pt)} rows. Regression: {info['how']}; {info['config']}. "
            f"Linear calibration: {CAL_U_BINS} |U| quantile bins × {len(CAL_NPV_EDGES) - 1} "
            f"n_pv bins fitted on the training split. Time: data {t_data:.0f} s, "
            f"model {t_model:.0f} s, total {elapsed:.0f} s."
        )
        md = common.write_tables(tmp, "table", tables, header)
    print(md)
    return {
        "tables": tables,
        "integrated": integrated,
        "vs_pt": vs_pt,
        "vs_npv": vs_npv,
        "info": info,
        "seconds": elapsed,
    }


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--fast", action="store_true", help="40k events, one training, no scan")
    p.add_argument("--out", type=Path, default=common.DEFAULT_ROOT / NAME)
    p.add_argument("--events", type=int, default=None)
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--cache-dir", type=Path, default=None)
    a = p.parse_args(argv)
    common.exit_on_sigterm()
    run(a.out, fast=a.fast, events=a.events, trials=a.trials, epochs=a.epochs, seed=a.seed,
        cache_dir=a.cache_dir)  # fmt: skip


if __name__ == "__main__":
    main()
