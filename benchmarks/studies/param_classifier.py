"""Study 7 — the parameterized Z′ → tt̄ classifier: interpolation to masses left out of training
(Baldi et al. 2016; the CHEP23 tt̄-resonance study, ``../shared/papers/001_*``).

Samples (``hepscan simulate ttbar``, :mod:`jobs.simulate.ttbar`): a training sample with the
signal at ``TRAIN_MASSES`` only (500, 1000, 1500, 2500, 3000 GeV; background masses drawn from
that list), one sample per mass for the per-mass reference classifiers, and an independent
test sample with the signal at all eight masses. Classifiers (the ``param_classifier``
family, trained through the family contract with :func:`benchmarks.studies.common.fit`):

* **param** — the parameterized network, mass hypothesis as the last input;
* **per-mass** — one network per mass trained on that mass's sample only (its mass input is a
  constant, so it is a plain classifier): the upper reference, also at the masses the
  parameterized network never saw;
* **inclusive** — one network on the training sample without the mass input (the "simple NN"
  trained on all masses at once, what the paper compares the parameterized one with).

For each mass m of the test sample: the signal at m against all background, the mass input
set to m for both (the hypothesis being tested) — ROC AUC, signal efficiency at a background
rejection of 100 (ε_B = 1 %) and background rejection 1/ε_B at 50 % signal efficiency.

Launch::

    python -m benchmarks.studies.param_classifier    # full: 250k train, 8 x 80k, 400k test events
    python -m benchmarks.studies.param_classifier --fast --out /tmp/s7

Outputs in --out (default studies-output/param_classifier): ``table.md``, ``table_*.csv``,
``auc_vs_mass.png`` (AUC and ε_S at ε_B = 1 % vs mass).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.studies import common

NAME = "param_classifier"
FEATURES = (
    "reco_mtt",
    "reco_top1_pt",
    "reco_top2_pt",
    "reco_top1_eta",
    "reco_top2_eta",
    "reco_abs_dy",
    "reco_btag1",
    "reco_btag2",
    "reco_njets",
)
ALL_MASSES = (500.0, 750.0, 1000.0, 1250.0, 1500.0, 2000.0, 2500.0, 3000.0)
TRAIN_MASSES = (500.0, 1000.0, 1500.0, 2500.0, 3000.0)
LEFT_OUT = tuple(m for m in ALL_MASSES if m not in TRAIN_MASSES)
REJECTION = 100.0  # ε_B = 1 %
MANIFEST = {
    "features": [f.removeprefix("reco_") for f in FEATURES],
    "classify": {"label": "truth_label", "mass": "truth_mass"},
}


@dataclass
class Events:
    x: np.ndarray  # (N, F) raw features
    label: np.ndarray  # (N,) int64
    mass: np.ndarray  # (N,) signal mass / mass drawn for background


def load(events: int, seed: int, cache: Path, masses: Sequence[float]) -> Events:
    paths = common.simulate_cached("ttbar", events, seed, cache, masses=masses)
    d = common.read_branches(paths, [*FEATURES, "truth_label", "truth_mass"])
    x = np.stack([d[f].astype(np.float64) for f in FEATURES], axis=1)
    return Events(x, d["truth_label"].astype(np.int64), d["truth_mass"].astype(np.float64))


@dataclass
class Scaler:
    """Train-sample standardisation of the features and of the mass input."""

    mean: np.ndarray
    std: np.ndarray
    m_mean: float
    m_std: float
    use_mass: bool = True

    @classmethod
    def fit(cls, ev: Events, use_mass: bool = True) -> Scaler:
        std = ev.x.std(axis=0)
        m_std = float(ev.mass.std())
        return cls(
            ev.x.mean(axis=0),
            np.where(std > 0, std, 1.0),
            float(ev.mass.mean()),
            m_std if m_std > 0 else 1.0,
            use_mass,
        )

    def __call__(self, x: np.ndarray, mass: np.ndarray | float) -> np.ndarray:
        m = np.broadcast_to(np.asarray(mass, np.float64), (len(x),))
        col = (m - self.m_mean) / self.m_std if self.use_mass else np.zeros(len(x))
        return np.column_stack([(x - self.mean) / self.std, col]).astype(np.float32)


@dataclass
class Trained:
    model: Any
    scaler: Scaler
    info: dict[str, Any]

    def score(self, x: np.ndarray, mass: float) -> np.ndarray:
        xt = torch.as_tensor(self.scaler(x, mass))
        return self.model.score(xt).double().cpu().numpy()  # type: ignore[no-any-return]


def train(
    ev: Events, settings: common.TrainSettings, hidden: int, depth: int, use_mass: bool = True
) -> Trained:
    from models.param_classifier import ParamClassifierConfig

    family = common.registry_family("param_classifier")
    scaler = Scaler.fit(ev, use_mass)
    model = common.build_model(
        family, ParamClassifierConfig(hidden=hidden, depth=depth), MANIFEST, settings.seed
    )
    info = common.fit(model, scaler(ev.x, ev.mass), ev.label, settings)
    info["events"] = len(ev.label)
    return Trained(model, scaler, info)


def at_mass(test: Events, m: float) -> tuple[np.ndarray, np.ndarray]:
    """(features, labels) of the signal at ``m`` and all background."""
    keep = (test.label == 0) | (test.mass == m)
    return test.x[keep], test.label[keep]


def metrics_at(
    score: Callable[[np.ndarray, float], np.ndarray], test: Events, m: float
) -> dict[str, float]:
    from models.metrics import efficiency_at_rejection, rejection_at_efficiency, roc_auc

    x, y = at_mass(test, m)
    s = score(x, m)
    return {
        "auc": roc_auc(s, y),
        "eff": efficiency_at_rejection(s, y, REJECTION),
        "rej50": rejection_at_efficiency(s, y, 0.5),
        "n_signal": int(y.sum()),
    }


def run(
    out: Path,
    *,
    fast: bool = False,
    train_events: int | None = None,
    per_mass_events: int | None = None,
    test_events: int | None = None,
    epochs: int | None = None,
    hidden: int = 64,
    depth: int = 3,
    seed: int = 7,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    train_events = train_events or (40_000 if fast else 250_000)
    per_mass_events = per_mass_events or (20_000 if fast else 80_000)
    test_events = test_events or (60_000 if fast else 400_000)
    epochs = epochs or (5 if fast else 15)
    reference = LEFT_OUT if fast else ALL_MASSES
    cache = cache_dir or (out.parent / ".cache")
    settings = common.TrainSettings(epochs=epochs, batch_size=512, lr=2e-3, patience=3, seed=seed)
    start = time.perf_counter()
    with common.torch_threads(1), common.output_dir(out) as tmp:
        train_ev = load(train_events, seed, cache, TRAIN_MASSES)
        test = load(test_events, seed + 1000, cache, ALL_MASSES)
        param = train(train_ev, settings, hidden, depth)
        print(
            f"{NAME}: param trained ({param.info['epochs']} epochs, {param.info['seconds']:.0f} s)"
        )
        inclusive = train(train_ev, settings, hidden, depth, use_mass=False)
        per_mass: dict[float, Trained] = {}
        for i, m in enumerate(reference):
            ev = load(per_mass_events, seed + 1 + i, cache, (m,))
            per_mass[m] = train(ev, settings, hidden, depth)
            print(f"  per-mass {m:g}: {per_mass[m].info['seconds']:.0f} s")
        results: dict[float, dict[str, dict[str, float]]] = {}
        for m in ALL_MASSES:
            results[m] = {
                "param": metrics_at(param.score, test, m),
                "inclusive": metrics_at(inclusive.score, test, m),
            }
            if m in per_mass:
                results[m]["per_mass"] = metrics_at(per_mass[m].score, test, m)
        tables = _tables(results, param, inclusive, per_mass)
        _plot(results, tmp / "auc_vs_mass.png")
        elapsed = time.perf_counter() - start
        lo = [results[m] for m in LEFT_OUT if "per_mass" in results[m]]
        headline = {
            "auc_param_left_out": float(np.mean([r["param"]["auc"] for r in lo])),
            "auc_per_mass_left_out": float(np.mean([r["per_mass"]["auc"] for r in lo])),
        }
        header = (
            f"# Study 7: parameterized Z′→tt̄ classifier ({'fast' if fast else 'full'} mode: "
            f"{train_events} training events (signal at {', '.join(f'{m:g}' for m in TRAIN_MASSES)}"
            f" GeV), {per_mass_events} per per-mass classifier, {test_events} test events; "
            f"{elapsed:.0f} s)\n\nLeft-out masses {', '.join(f'{m:g}' for m in LEFT_OUT)} GeV: "
            f"mean AUC parameterized {headline['auc_param_left_out']:.4f} vs per-mass "
            f"{headline['auc_per_mass_left_out']:.4f}."
        )
        md = common.write_tables(tmp, "table", tables, header)
    print(md)
    return {"results": results, "tables": tables, "headline": headline, "seconds": elapsed}


def _tables(
    results: dict[float, dict[str, dict[str, float]]],
    param: Trained,
    inclusive: Trained,
    per_mass: dict[float, Trained],
) -> list[common.Table]:
    nan = float("nan")
    rows: list[list[Any]] = []
    for m, r in results.items():
        p, inc, pm = r["param"], r["inclusive"], r.get("per_mass")
        rows.append(
            [
                int(m),
                "yes" if m in TRAIN_MASSES else "no (interpolated)",
                p["n_signal"],
                round(p["auc"], 4),
                round(pm["auc"], 4) if pm else nan,
                round(inc["auc"], 4),
                round(p["auc"] - pm["auc"], 4) if pm else nan,
                round(p["eff"], 4),
                round(pm["eff"], 4) if pm else nan,
                round(inc["eff"], 4),
                round(p["rej50"], 1),
                round(pm["rej50"], 1) if pm else nan,
                round(inc["rej50"], 1),
            ]
        )
    per_mass_table = common.Table(
        "Per mass: signal at m vs all background, mass input = m",
        [
            "mass [GeV]",
            "in training",
            "signal events",
            "AUC param",
            "AUC per-mass",
            "AUC inclusive",
            "ΔAUC param − per-mass",
            "ε_S@ε_B=1% param",
            "ε_S@ε_B=1% per-mass",
            "ε_S@ε_B=1% inclusive",
            "rejection@50 param",
            "rejection@50 per-mass",
            "rejection@50 inclusive",
        ],
        rows,
    )
    train_rows = [
        ["param", param.info["events"], param.info["epochs"], round(param.info["seconds"], 1)],
        [
            "inclusive",
            inclusive.info["events"],
            inclusive.info["epochs"],
            round(inclusive.info["seconds"], 1),
        ],
    ]
    for m, t in per_mass.items():
        train_rows.append(
            [f"per-mass {m:g}", t.info["events"], t.info["epochs"], round(t.info["seconds"], 1)]
        )
    training = common.Table("Training", ["classifier", "events", "epochs", "seconds"], train_rows)
    return [per_mass_table, training]


def _plot(results: dict[float, dict[str, dict[str, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    masses = np.array(list(results))
    trained = np.isin(masses, TRAIN_MASSES)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, key, label in ((axes[0], "auc", "ROC AUC"), (axes[1], "eff", "ε_S at ε_B = 1 %")):
        p = np.array([results[m]["param"][key] for m in masses])
        inc = np.array([results[m]["inclusive"][key] for m in masses])
        pm_m = [m for m in masses if "per_mass" in results[m]]
        pm = [results[m]["per_mass"][key] for m in pm_m]
        ax.plot(masses, p, color="tab:blue", lw=1)
        ax.plot(masses[trained], p[trained], "o", color="tab:blue", label="param (trained mass)")
        ax.plot(
            masses[~trained],
            p[~trained],
            "o",
            mfc="white",
            color="tab:blue",
            label="param (left out, interpolated)",
        )
        ax.plot(pm_m, pm, "s", color="tab:red", ms=5, label="per-mass classifier")
        ax.plot(
            masses, inc, "^--", color="tab:grey", ms=4, lw=0.8, label="inclusive (no mass input)"
        )
        ax.set_xlabel("Z′ mass [GeV]")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--out", type=Path, default=common.DEFAULT_ROOT / NAME)
    ap.add_argument("--train-events", type=int, default=None)
    ap.add_argument("--per-mass-events", type=int, default=None)
    ap.add_argument("--test-events", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--cache-dir", type=Path, default=None)
    args = ap.parse_args(argv)
    return run(
        args.out,
        fast=args.fast,
        train_events=args.train_events,
        per_mass_events=args.per_mass_events,
        test_events=args.test_events,
        epochs=args.epochs,
        hidden=args.hidden,
        depth=args.depth,
        seed=args.seed,
        cache_dir=args.cache_dir,
    )


if __name__ == "__main__":
    common.exit_on_sigterm()
    main()
