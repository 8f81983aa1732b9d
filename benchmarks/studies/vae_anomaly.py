"""Study 8 — a VAE anomaly detector for Z′ → tt̄, scanned by hepscan, against the supervised
parameterized classifier (papers ``../shared/papers/001_*`` (β-VAE loss) and ``002_*``).

The whole chain with the real tools:

1. ``jobs.simulate`` ``ttbar`` (signal at the eight masses 0.5–3 TeV, half of the events) and
   ``jobs.preprocess`` with ``configs/preprocess_ttbar.yaml`` (features, label, mass);
2. ``scan.launch`` of ``configs/vae_ttbar.yaml``: the ``vae`` family (loss
   (1 − β)·MSE + β·KL on the **background rows only**), TPE over latent size, β, depth and
   learning rate, ASHA, objective = validation ROC AUC of the reconstruction-error score
   against the validation signal (all masses);
3. every trial's best checkpoint is scored on the test split with both anomaly scores
   (reconstruction error and KL term), per signal mass: ROC AUC and background rejection
   1/ε_B at 50 % signal efficiency;
4. the supervised reference: a ``param_classifier`` trained (in memory, family contract) on the
   train split of the same shards with the labels, evaluated at each mass hypothesis.

Launch (``make studies``)::

    python -m benchmarks.studies.vae_anomaly                 # full: 200k events, 10 trials
    python -m benchmarks.studies.vae_anomaly --fast --out /tmp/s8

Outputs in --out (default studies-output/vae_anomaly): ``table.md``, ``table_*.csv``,
``vae_vs_supervised.png`` (AUC vs mass; trial AUC vs β). The scan directory (Tune results,
MLflow store) is ``studies-output/.cache/scan-vae_anomaly-<time>`` (printed).
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.studies import common
from benchmarks.studies.param_classifier import ALL_MASSES, REJECTION

NAME = "vae_anomaly"
REPO = Path(__file__).resolve().parents[2]
PREPROCESS = REPO / "configs" / "preprocess_ttbar.yaml"
SCAN_CONFIG = REPO / "configs" / "vae_ttbar.yaml"


def dataset(cache: Path, events: int, seed: int) -> Path:
    """Simulated ttbar → shards (reused when present)."""
    from jobs.preprocess import preprocess
    from jobs.simulate import simulate

    root = cache / NAME / f"ttbar-n{events}-s{seed}"
    data = cache / NAME / f"ttbar_shards-n{events}-s{seed}"
    if (data / "manifest.json").exists():
        return data
    files = simulate("ttbar", events, 2, seed, root, progress=False, workers=1)
    preprocess(PREPROCESS, data, inputs=[str(f) for f in files], workers=1, overwrite=True)
    return data


def split_arrays(data: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(standardised features (N, F) float32, label, mass) of one split."""
    from jobs.manifest import load_manifest, load_split

    man = load_manifest(data)
    feats = [f"feat_{f}" for f in man.features]
    d = load_split(man, split, [*feats, "truth_label", "truth_mass"])
    x = np.stack([d[c] for c in feats], axis=1).astype(np.float32)
    return x, d["truth_label"].astype(np.int64), d["truth_mass"].astype(np.float64)


def per_mass(scores: np.ndarray, label: np.ndarray, mass: np.ndarray, m: float) -> dict[str, float]:
    from models.metrics import efficiency_at_rejection, rejection_at_efficiency, roc_auc

    keep = (label == 0) | (mass == m)
    s, y = scores[keep], label[keep]
    return {
        "auc": roc_auc(s, y),
        "rej50": rejection_at_efficiency(s, y, 0.5),
        "eff": efficiency_at_rejection(s, y, REJECTION),
    }


def vae_scores(model: Any, x: np.ndarray) -> dict[str, np.ndarray]:
    """Both anomaly scores of a trained ``vae`` model (eval mode, z = μ)."""
    from models.base import eval_mode

    xt = torch.as_tensor(x)
    with torch.no_grad(), eval_mode(model):
        recon, kl = model._terms(xt)
    return {"recon": recon.double().numpy(), "kl": kl.double().numpy()}


def supervised(
    data: Path, test: tuple[np.ndarray, np.ndarray, np.ndarray], epochs: int, seed: int
) -> tuple[dict[float, dict[str, float]], dict[str, Any]]:
    """A param_classifier on the train split, evaluated per mass hypothesis on the test split."""
    from models.param_classifier import ParamClassifierConfig

    x, y, m = split_arrays(data, "train")
    mu, sd = float(m.mean()), float(m.std()) or 1.0
    family = common.registry_family("param_classifier")
    manifest = {
        "features": [f"f{i}" for i in range(x.shape[1])],
        "classify": {"label": "y", "mass": "m"},
    }
    model = common.build_model(family, ParamClassifierConfig(), manifest, seed)
    settings = common.TrainSettings(epochs=epochs, batch_size=512, lr=2e-3, patience=3, seed=seed)
    info = common.fit(model, np.column_stack([x, (m - mu) / sd]).astype(np.float32), y, settings)
    xt, yt, mt = test
    out = {}
    for mass in ALL_MASSES:
        keep = (yt == 0) | (mt == mass)
        hyp = np.column_stack([xt[keep], np.full(int(keep.sum()), (mass - mu) / sd)])
        s = model.score(torch.as_tensor(hyp.astype(np.float32))).double().numpy()  # type: ignore[operator]
        out[mass] = per_mass(s, yt[keep], mt[keep], mass)
    return out, info


def run(
    out: Path,
    *,
    fast: bool = False,
    events: int | None = None,
    trials: int | None = None,
    epochs: int | None = None,
    seed: int = 8,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    from jobs.apply import bundle_from_checkpoint
    from scan import launch
    from scan.publish import trial_checkpoint

    common.ray_workers_import_repo()
    events = events or (20_000 if fast else 200_000)
    trials = trials or (2 if fast else 10)
    epochs = epochs or (2 if fast else 10)
    cache = cache_dir or (out.parent / ".cache")
    cache.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    data = dataset(cache, events, seed)
    scan_dir = cache / f"scan-{NAME}-{time.strftime('%Y%m%d-%H%M%S')}"
    with common.torch_threads(1), common.output_dir(out) as tmp:
        overrides: dict[str, Any] = {
            "dataset": str(data),
            "num_trials": trials,
            "max_epochs": epochs,
            "seed": seed,
        }
        if fast:
            overrides.update({"concurrency": 1, "fixed.hidden": 16})
        result = launch(SCAN_CONFIG, overrides, scan_dir=scan_dir, verbose=0)
        t_scan = time.perf_counter() - start
        print(f"{NAME}: scan {scan_dir}: {len(result.trials)} trials, best {result.best_metrics}")
        test = split_arrays(data, "test")
        xt, yt, mt = test
        scored: list[dict[str, Any]] = []
        for _, row in result.ranked().iterrows():
            ckpt = trial_checkpoint(scan_dir, str(row["trial_id"]))
            if ckpt is None:
                continue
            model = bundle_from_checkpoint(ckpt, dataset=data).build()
            s = vae_scores(model, xt)
            scored.append(
                {
                    "row": row,
                    "config": model.config,
                    "all": {
                        k: per_mass(v, yt, np.where(yt > 0, 0.0, mt), 0.0) for k, v in s.items()
                    },
                    "mass": {
                        k: {m: per_mass(v, yt, mt, m) for m in ALL_MASSES} for k, v in s.items()
                    },
                }
            )
        if not scored:
            raise RuntimeError(f"{scan_dir}: no trial left a checkpoint")
        sup, sup_info = supervised(data, test, 4 if fast else 15, seed)
        best = scored[0]  # ranked by the scan objective (validation AUC)
        tables = _tables(scored, best, sup)
        _plot(scored, best, sup, tmp / "vae_vs_supervised.png")
        elapsed = time.perf_counter() - start
        auc_vae = float(np.mean([best["mass"]["recon"][m]["auc"] for m in ALL_MASSES]))
        auc_sup = float(np.mean([sup[m]["auc"] for m in ALL_MASSES]))
        header = (
            f"# Study 8: VAE anomaly detector vs supervised parameterized classifier "
            f"({'fast' if fast else 'full'} mode: {events} events, scan of {len(result.trials)} "
            f"trials × ≤{epochs} epochs in {t_scan:.0f} s; {elapsed:.0f} s in all)\n\n"
            f"Mean AUC over the 8 masses: best VAE (reconstruction score) {auc_vae:.4f}, "
            f"supervised {auc_sup:.4f}. Scan directory: `{scan_dir}`."
        )
        md = common.write_tables(tmp, "table", tables, header)
    print(md)
    return {
        "scored": scored,
        "supervised": sup,
        "supervised_info": sup_info,
        "tables": tables,
        "headline": {"auc_vae": auc_vae, "auc_supervised": auc_sup},
        "seconds": elapsed,
        "scan_seconds": t_scan,
        "scan": result,
    }


def _f(v: Any, digits: int = 4) -> Any:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return v
    return round(x, digits) if math.isfinite(x) else float("nan")


def _tables(
    scored: list[dict[str, Any]], best: dict[str, Any], sup: dict[float, dict[str, float]]
) -> list[common.Table]:
    trial_rows = []
    for i, t in enumerate(scored):
        r, c = t["row"], t["config"]
        trial_rows.append(
            [
                i + 1,
                str(r["trial_id"]),
                c.latent,
                _f(c.beta, 5),
                c.depth,
                _f(r.get("lr", float("nan")), 5),
                int(r["epochs"]),
                _f(r.get("best_auc")),
                _f(t["all"]["recon"]["auc"]),
                _f(t["all"]["kl"]["auc"]),
                _f(t["all"]["recon"]["rej50"], 2),
                _f(t["all"]["kl"]["rej50"], 2),
            ]
        )
    trials = common.Table(
        "Scan trials (ranked by validation AUC), scored on the test split, all masses",
        [
            "rank",
            "trial",
            "latent",
            "β",
            "depth",
            "lr",
            "epochs",
            "val AUC (recon)",
            "test AUC recon",
            "test AUC KL",
            "rejection@50 recon",
            "rejection@50 KL",
        ],
        trial_rows,
    )
    rows = []
    for m in ALL_MASSES:
        r, k, s = best["mass"]["recon"][m], best["mass"]["kl"][m], sup[m]
        rows.append(
            [
                int(m),
                _f(r["auc"]),
                _f(k["auc"]),
                _f(s["auc"]),
                _f(r["auc"] - s["auc"]),
                _f(r["rej50"], 2),
                _f(k["rej50"], 2),
                _f(s["rej50"], 1),
                _f(r["eff"]),
                _f(s["eff"]),
            ]
        )
    masses = common.Table(
        "Best trial per mass vs the supervised parameterized classifier",
        [
            "mass [GeV]",
            "AUC VAE recon",
            "AUC VAE KL",
            "AUC supervised",
            "ΔAUC VAE − supervised",
            "rejection@50 VAE recon",
            "rejection@50 VAE KL",
            "rejection@50 supervised",
            "ε_S@ε_B=1% VAE recon",
            "ε_S@ε_B=1% supervised",
        ],
        rows,
    )
    return [masses, trials]


def _plot(
    scored: list[dict[str, Any]],
    best: dict[str, Any],
    sup: dict[float, dict[str, float]],
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = np.array(ALL_MASSES)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    ax = axes[0]
    ax.plot(ms, [sup[m]["auc"] for m in ms], "s-", color="tab:red", label="supervised (param)")
    for key, style, label in (("recon", "o-", "VAE recon. error"), ("kl", "^--", "VAE KL term")):
        ax.plot(ms, [best["mass"][key][m]["auc"] for m in ms], style, label=f"{label} (best trial)")
    ax.axhline(0.5, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("Z′ mass [GeV]")
    ax.set_ylabel("ROC AUC (signal at m vs all background)")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    beta = [t["config"].beta for t in scored]
    auc = [t["all"]["recon"]["auc"] for t in scored]
    lat = [t["config"].latent for t in scored]
    sc = ax.scatter(beta, auc, c=lat, cmap="viridis")
    fig.colorbar(sc, ax=ax, label="latent size")
    ax.set_xscale("log")
    ax.set_xlabel("β")
    ax.set_ylabel("test AUC (recon, all masses)")
    ax.set_title("scan trials", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--out", type=Path, default=common.DEFAULT_ROOT / NAME)
    ap.add_argument("--events", type=int, default=None)
    ap.add_argument("--trials", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=8)
    ap.add_argument("--cache-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    return run(
        args.out,
        fast=args.fast,
        events=args.events,
        trials=args.trials,
        epochs=args.epochs,
        seed=args.seed,
        cache_dir=args.cache_dir,
    )


if __name__ == "__main__":
    common.exit_on_sigterm()
    main()
