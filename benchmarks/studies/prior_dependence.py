"""Study 3 — prior dependence of unfolding-as-classification, and an iterative prior update.

A classifier trained on events with truth distribution π₀ learns p₀(t | x) ∝ p(x | t) π₀(t);
summing its probabilities over data whose truth follows π ≠ π₀ is biased towards π₀ wherever
bins migrate into each other. The study trains ``unfold_bins`` on nominal ``zll`` and unfolds
an independent sample whose truth is tilted linearly by ±20 % across 65–115 GeV (drawn by
accept–reject, so it has Poisson statistics), and reports the bias per bin in units of its
statistical error, ``(unfolded − truth)/√truth``. An untilted control sample gives the noise
floor (for pure noise, mean |bias|/σ ≈ 0.8).

Iterative prior update (two variants, both in the table):

* ``reweight`` (:func:`iterative_prior_update`, no retraining): replace the training prior by
  the current unfolded result through Bayes' theorem,
  ``p_k(t | x) ∝ p₀(t | x) · π_k(t) / π₀(t)`` with ``π_k`` = normalised unfolded histogram of
  iteration k − 1, i.e. the EM update of the truth proportions (Saerens et al. 2002; the
  same fixed point as D'Agostini's IBU, with the network supplying the per-event likelihood).
* ``retrain`` (:func:`retrain_prior_update`): reweight the training events by
  ``π_k(t)/π₀(t)`` (weighted resampling) and continue training the network from the previous
  iteration for a few epochs, then unfold again — what iterative unfolding methods do with the
  MC truth.

Like IBU, more iterations remove more prior bias and amplify more noise; the table shows both.

Launch::

    python -m benchmarks.studies.prior_dependence                 # full
    python -m benchmarks.studies.prior_dependence --fast --out /tmp/s3

Outputs in --out (default studies-output/prior_dependence): ``table.md``, ``table_*.csv``,
``bias_per_bin.png``, ``bias_vs_iteration.png``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.studies import common

NAME = "prior_dependence"
LO, HI = 65.0, 115.0


def iterative_prior_update(
    probs: np.ndarray, train_prior: np.ndarray, n_iterations: int
) -> list[np.ndarray]:
    """Unfolded histograms of iterations ``0..n_iterations`` of the Bayes prior update.

    ``probs`` (events, bins): the classifier's p₀(t | x) on the data; ``train_prior``: the
    truth histogram (or fractions) the classifier was trained on. Iteration 0 is the plain sum
    of probabilities; iteration k reweights every event's probabilities by π_{k−1}/π₀ and
    renormalises per event.
    """
    p0 = np.asarray(probs, np.float64)
    pi0 = np.asarray(train_prior, np.float64)
    if p0.ndim != 2 or p0.shape[1] != len(pi0):
        raise ValueError(f"probs shape {p0.shape} does not match {len(pi0)} prior bins")
    if n_iterations < 0:
        raise ValueError("n_iterations must be >= 0")
    pi0 = pi0 / pi0.sum()
    hists = [p0.sum(axis=0)]
    for _ in range(n_iterations):
        pi = hists[-1] / hists[-1].sum()
        ratio = np.where(pi0 > 0, pi / np.where(pi0 > 0, pi0, 1.0), 0.0)
        q = p0 * ratio[None, :]
        norm = q.sum(axis=1, keepdims=True)
        q = np.where(norm > 0, q / np.where(norm > 0, norm, 1.0), 0.0)
        hists.append(q.sum(axis=0))
    return hists


def retrain_prior_update(
    model: torch.nn.Module,
    x_train: np.ndarray,
    truth_bin_train: np.ndarray,
    x_data: np.ndarray,
    n_iterations: int,
    settings: common.TrainSettings,
    fit: Callable[..., dict[str, Any]] = common.fit,
) -> list[np.ndarray]:
    """Unfolded histograms of iterations ``0..n_iterations``, retraining on reweighted MC.

    Iteration k weights each training event by π_{k−1}(t)/π₀(t) and continues training
    ``model`` (in place) with ``settings``; the unfolded histogram is the sum of probabilities.
    """
    n_bins = int(truth_bin_train.max()) + 1
    pi0 = np.bincount(truth_bin_train, minlength=n_bins).astype(np.float64)
    pi0 /= pi0.sum()
    xd = torch.as_tensor(x_data, dtype=torch.float32)

    def unfold() -> np.ndarray:
        with torch.no_grad():
            return np.asarray(model.unfold(xd).cpu().numpy(), np.float64)  # type: ignore[operator]

    hists = [unfold()]
    for k in range(n_iterations):
        pi = hists[-1] / hists[-1].sum()
        ratio = np.where(pi0 > 0, pi / np.where(pi0 > 0, pi0, 1.0), 0.0)
        w = ratio[truth_bin_train]
        fit(
            model,
            x_train,
            truth_bin_train,
            dataclasses.replace(settings, seed=settings.seed + k + 1),
            weights=w,
        )
        hists.append(unfold())
    return hists


def bias_in_sigma(unfolded: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(unfolded − truth)/√truth per bin (NaN for empty truth bins)."""
    t = np.asarray(truth, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(t > 0, (np.asarray(unfolded, np.float64) - t) / np.sqrt(t), np.nan)


def summary(unfolded: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    b = bias_in_sigma(unfolded, truth)
    return {
        "mean_abs_bias": float(np.nanmean(np.abs(b))),
        "max_abs_bias": float(np.nanmax(np.abs(b))),
        "chi2_ndf": common.scores(unfolded, truth)["chi2_ndf"],
    }


def run(
    out: Path,
    *,
    fast: bool = False,
    n_bins: int = 40,
    tilt: float = 0.2,
    train_events: int | None = None,
    test_events: int | None = None,
    iterations: int | None = None,
    retrain_iterations: int | None = None,
    epochs: int | None = None,
    seed: int = 1,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    from models.unfold_bins import UnfoldBinsConfig

    train_events = train_events or (30_000 if fast else 200_000)
    test_events = test_events or (30_000 if fast else 400_000)
    iterations = 4 if fast and iterations is None else (iterations or 10)
    retrain_iterations = (1 if fast else 3) if retrain_iterations is None else retrain_iterations
    settings = common.TrainSettings(
        epochs=epochs or (4 if fast else 20), batch_size=512 if fast else 1024, seed=seed
    )
    retrain_settings = dataclasses.replace(settings, epochs=max(1, settings.epochs // 4))
    cache = cache_dir or (out.parent / ".cache")
    start = time.perf_counter()
    edges = np.linspace(LO, HI, n_bins + 1)

    def population(events: int, s: int) -> dict[str, np.ndarray]:
        d = common.zll_events(common.simulate_cached("zll", events, s, cache))
        ok = (d["truth_mass"] >= LO) & (d["truth_mass"] < HI)
        ok &= (d["reco_mass"] >= LO) & (d["reco_mass"] < HI)
        return {k: v[ok] for k, v in d.items()}

    train = population(train_events, seed)
    test = population(test_events, seed + 100)
    tilted_mask = common.accept_reject(
        common.linear_tilt(test["truth_mass"], LO, HI, tilt), seed + 200
    )
    # the untilted control (the whole test sample) sets the noise floor of |bias|/σ
    samples = {
        "tilted": {k: v[tilted_mask] for k, v in test.items()},
        "control": test,
    }

    def features(d: dict[str, np.ndarray]) -> np.ndarray:
        return np.stack([d[f] for f in common.ZLL_FEATURES], axis=1)

    x_train_raw = features(train)
    mean, std = x_train_raw.mean(axis=0), x_train_raw.std(axis=0)
    x_train = (x_train_raw - mean) / std
    tb_train = common.bin_index(train["truth_mass"], edges)
    rb_train = common.bin_index(train["reco_mass"], edges)
    print(
        f"{NAME}: train {len(x_train)} events; tilted test {int(tilted_mask.sum())}, "
        f"control {len(test['truth_mass'])}; {n_bins} bins, tilt ±{tilt:.0%}"
    )
    family = common.registry_family("unfold_bins")
    cfg = common.UnfoldConfig()
    with common.torch_threads(1), common.output_dir(out) as tmp:
        model = common.build_model(
            family,
            UnfoldBinsConfig(alpha=cfg.alpha, p=cfg.p, depth=cfg.depth),
            common.unfold_manifest(common.ZLL_FEATURES, edges),
            seed,
        )
        hist = common.fit(model, x_train, tb_train, settings)
        print(f"  trained: {hist['epochs']} epochs, {hist['seconds']:.1f}s")
        pi0 = np.bincount(tb_train, minlength=n_bins).astype(np.float64)

        per_sample: dict[str, dict[str, Any]] = {}
        for name, d in samples.items():
            x = (features(d) - mean) / std
            with torch.no_grad():
                probs = (
                    model.predict_proba(torch.as_tensor(x, dtype=torch.float32))  # type: ignore[operator]
                    .double()
                    .cpu()
                    .numpy()
                )
            truth = np.bincount(common.bin_index(d["truth_mass"], edges), minlength=n_bins)
            measured = np.bincount(common.bin_index(d["reco_mass"], edges), minlength=n_bins)
            base, _ = common.baseline_unfold(
                tb_train, rb_train, measured.astype(np.float64), n_bins, cfg.ibu_iterations
            )
            per_sample[name] = {
                "x": x,
                "truth": truth.astype(np.float64),
                "measured": measured.astype(np.float64),
                "reweight": iterative_prior_update(probs, pi0, iterations),
                "ibu": base["IBU"],
            }
        tilted = per_sample["tilted"]
        print(f"  retraining {retrain_iterations} iteration(s) on reweighted MC")
        # continues from the nominal network (the reweight rows above are already computed)
        tilted["retrain"] = retrain_prior_update(
            model,
            x_train,
            tb_train,
            tilted["x"],
            retrain_iterations,
            retrain_settings,
        )

        truth = tilted["truth"]
        rows = []
        b0 = bias_in_sigma(tilted["reweight"][0], truth)
        bk = bias_in_sigma(tilted["reweight"][-1], truth)
        br = bias_in_sigma(tilted["retrain"][-1], truth)
        bi = bias_in_sigma(tilted["ibu"], truth)
        bc = bias_in_sigma(per_sample["control"]["reweight"][0], per_sample["control"]["truth"])
        for i in range(n_bins):
            rows.append(
                [
                    f"{edges[i]:.2f}–{edges[i + 1]:.2f}",
                    int(truth[i]),
                    float(tilted["reweight"][0][i]),
                    float(b0[i]),
                    float(bk[i]),
                    float(br[i]),
                    float(bi[i]),
                    float(bc[i]),
                ]
            )
        per_bin = common.Table(
            f"Bias per bin, (unfolded − truth)/√truth, tilted sample (±{tilt:.0%})",
            [
                "bin [GeV]",
                "truth",
                "ML unfolded",
                "ML bias/σ",
                f"ML + reweight ×{iterations} bias/σ",
                f"ML + retrain ×{retrain_iterations} bias/σ",
                f"IBU ({cfg.ibu_iterations} it.) bias/σ",
                "ML bias/σ, untilted control",
            ],
            rows,
        )
        it_rows: list[list[Any]] = []
        for k, h in enumerate(tilted["reweight"]):
            s = summary(h, truth)
            it_rows.append(["reweight", k, s["mean_abs_bias"], s["max_abs_bias"], s["chi2_ndf"]])
        for k, h in enumerate(tilted["retrain"]):
            s = summary(h, truth)
            it_rows.append(["retrain", k, s["mean_abs_bias"], s["max_abs_bias"], s["chi2_ndf"]])
        for label, h, t in (
            ("IBU (MC prior)", tilted["ibu"], truth),
            ("reco (no unfolding)", tilted["measured"], truth),
            (
                "control: ML, untilted",
                per_sample["control"]["reweight"][0],
                per_sample["control"]["truth"],
            ),
            (
                f"control: ML + reweight ×{iterations}, untilted",
                per_sample["control"]["reweight"][-1],
                per_sample["control"]["truth"],
            ),
        ):
            s = summary(h, t)
            it_rows.append([label, "", s["mean_abs_bias"], s["max_abs_bias"], s["chi2_ndf"]])
        iter_table = common.Table(
            "Iterative prior update on the tilted sample",
            ["method", "iteration", "mean |bias|/σ", "max |bias|/σ", "χ²/ndf"],
            it_rows,
        )
        _plot_bias(
            edges,
            {
                "ML (training prior)": b0,
                f"ML + reweight ×{iterations}": bk,
                f"ML + retrain ×{retrain_iterations}": br,
                "IBU": bi,
                "ML, untilted control": bc,
            },
            tmp / "bias_per_bin.png",
        )
        _plot_iterations(it_rows, tmp / "bias_vs_iteration.png")
        header = (
            f"# Study 3: prior dependence, zll {n_bins} bins, tilt ±{tilt:.0%} "
            f"({'fast' if fast else 'full'} mode, {time.perf_counter() - start:.0f} s)"
        )
        md = common.write_tables(tmp, "table", [iter_table, per_bin], header)
    print(md)
    return {"tables": [iter_table, per_bin], "per_sample": per_sample}


def _plot_bias(edges: np.ndarray, series: dict[str, np.ndarray], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = 0.5 * (edges[1:] + edges[:-1])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, b in series.items():
        ax.plot(centres, b, marker="o", ms=3, label=name)
    ax.axhline(0, color="black", lw=0.8)
    ax.fill_between([edges[0], edges[-1]], -1, 1, color="grey", alpha=0.15, label="±1σ")
    ax.set_xlabel("m(ll) truth bin [GeV]")
    ax.set_ylabel("(unfolded − truth) / √truth")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_iterations(rows: Sequence[Sequence[Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 4))
    for method in ("reweight", "retrain"):
        pts = [(r[1], r[2], r[4]) for r in rows if r[0] == method]
        if pts:
            k, mb, c2 = zip(*pts, strict=True)
            a1.plot(k, mb, marker="o", label=method)
            a2.plot(k, c2, marker="o", label=method)
    for r in rows:
        if str(r[0]).startswith("control: ML, untilted") and math.isfinite(float(r[2])):
            a1.axhline(float(r[2]), color="grey", ls="--", label="untilted control")
            a2.axhline(float(r[4]), color="grey", ls="--", label="untilted control")
    a1.set_xlabel("iteration")
    a1.set_ylabel("mean |bias| / σ")
    a2.set_xlabel("iteration")
    a2.set_ylabel("χ²/ndf")
    a1.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--out", type=Path, default=common.DEFAULT_ROOT / NAME)
    ap.add_argument("--bins", type=int, default=40)
    ap.add_argument("--tilt", type=float, default=0.2, help="±fractional linear tilt")
    ap.add_argument("--train-events", type=int, default=None)
    ap.add_argument("--test-events", type=int, default=None)
    ap.add_argument("--iterations", type=int, default=None, help="reweight iterations")
    ap.add_argument("--retrain-iterations", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    run(
        args.out,
        fast=args.fast,
        n_bins=args.bins,
        tilt=args.tilt,
        train_events=args.train_events,
        test_events=args.test_events,
        iterations=args.iterations,
        retrain_iterations=args.retrain_iterations,
        epochs=args.epochs,
        seed=args.seed,
    )


if __name__ == "__main__":
    common.exit_on_sigterm()
    main()
