"""Study 4 — the ANL resolution classifier on simulated ``jets`` (Benjamin, Chekanov, Hopkins,
Love, DPF 2019).

The ``resolution`` family (one head per quantity; 100 classes of reco − truth spanning the
central 1–99 % of the training distribution — relative for pT and m, absolute for η, wrapped
for φ — plus an inefficiency class) is trained on truth → reco jets. Held-out truth jets are
then smeared with ``ResolutionNet.smear`` (random sampling of the class probabilities) and the
smeared reco jets are compared with the simulator's reco jets:

* per-bin agreement of the pT, η, φ and m histograms in bins whose statistical uncertainty is
  below 10 % (≥ 100 simulator jets): the fraction of such bins within 5 % and within 15 %
  (the ANL anchor), and the largest deviation;
* the η dependence of the pT resolution (RMS and RMS90 of reco/truth pT) for |η| < 0.4,
  |η| > 0.8, 0.8 < |η| < 2.5 and |η| > 2.5, and the efficiency beyond |η| 2.5 — learned from η
  as a continuous input, without η binning.

Deltas outside the 1–99 % class range are clipped into the edge classes (the ANL note drops
them; clipping keeps every jet, so the inefficiency fraction stays right).

Launch::

    python -m benchmarks.studies.resolution_jets                  # full: 400k + 400k jets
    python -m benchmarks.studies.resolution_jets --fast --out /tmp/s4

Outputs in --out (default studies-output/resolution_jets): ``table.md``, ``table_*.csv``,
``histograms.png`` (4 quantities with ratio panels), ``resolution_vs_eta.png``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.studies import common

NAME = "resolution_jets"
QUANTITIES = ("pt", "eta", "phi", "m")
RELATIVE = {"pt": True, "eta": False, "phi": False, "m": True}
HIST_EDGES = {
    "pt": np.geomspace(20.0, 2000.0, 31),
    "eta": np.linspace(-4.5, 4.5, 37),
    "phi": np.linspace(-np.pi, np.pi, 33),
    "m": np.geomspace(0.5, 500.0, 31),
}
ETA_REGIONS = (
    ("|η| < 0.4", 0.0, 0.4),
    ("|η| > 0.8", 0.8, np.inf),
    ("0.8 < |η| < 2.5", 0.8, 2.5),
    ("|η| > 2.5", 2.5, np.inf),
)


def deltas(truth: dict[str, np.ndarray], reco: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """reco − truth per quantity: relative for pT and m, wrapped into (−π, π] for φ."""
    out = {}
    for q in QUANTITIES:
        d = reco[q] - truth[q]
        if q == "phi":
            d = np.remainder(d + np.pi, 2 * np.pi) - np.pi
        if RELATIVE[q]:
            d = d / truth[q]
        out[q] = d
    return out


def class_targets(
    truth: dict[str, np.ndarray],
    reco: dict[str, np.ndarray],
    ok: np.ndarray,
    n_classes: int,
    quantile_range: tuple[float, float],
) -> tuple[dict[str, Any], np.ndarray]:
    """(manifest ``resolution`` section with class edges, targets (N, 4) with the last class
    for unreconstructed jets)."""
    d = deltas(truth, reco)
    section: dict[str, Any] = {"n_classes": n_classes, "quantities": {}}
    y = np.empty((len(ok), len(QUANTITIES)), np.int64)
    for i, q in enumerate(QUANTITIES):
        lo, hi = np.quantile(d[q][ok], quantile_range)
        edges = np.linspace(lo, hi, n_classes + 1)
        section["quantities"][q] = {"edges": edges.tolist(), "relative": RELATIVE[q]}
        cls = np.clip(np.searchsorted(edges, d[q], side="right") - 1, 0, n_classes - 1)
        y[:, i] = np.where(ok, cls, n_classes)
    return {"resolution": section}, y


def load(events: int, seed: int, cache: Path) -> tuple[dict[str, np.ndarray], ...]:
    branches = [f"{k}_{q}" for k in ("truth", "reco") for q in QUANTITIES] + ["reco_ok"]
    d = common.read_branches(common.simulate_cached("jets", events, seed, cache), branches)
    truth = {q: d[f"truth_{q}"].astype(np.float64) for q in QUANTITIES}
    reco = {q: d[f"reco_{q}"].astype(np.float64) for q in QUANTITIES}
    return truth, reco, {"ok": d["reco_ok"].astype(bool)}


def hist_agreement(
    sim: np.ndarray, smeared: np.ndarray, edges: np.ndarray, min_count: float = 100.0
) -> dict[str, Any]:
    """Per-bin smeared/simulator − 1 in bins where the simulator's stat. uncertainty
    (1/√N) is below 10 %."""
    hs = np.histogram(sim, edges)[0].astype(np.float64)
    hm = np.histogram(smeared, edges)[0].astype(np.float64)
    used = hs >= min_count
    with np.errstate(divide="ignore", invalid="ignore"):
        dev = np.where(hs > 0, hm / hs - 1.0, np.nan)
    d = np.abs(dev[used])
    return {
        "sim": hs,
        "smeared": hm,
        "deviation": dev,
        "used": used,
        "n_used": int(used.sum()),
        "within5": float(np.mean(d < 0.05)) if len(d) else np.nan,
        "within15": float(np.mean(d < 0.15)) if len(d) else np.nan,
        "max_dev": float(d.max()) if len(d) else np.nan,
    }


def run(
    out: Path,
    *,
    fast: bool = False,
    train_events: int | None = None,
    test_events: int | None = None,
    epochs: int | None = None,
    hidden: int = 100,
    depth: int = 5,
    n_classes: int = 100,
    quantile_range: tuple[float, float] = (0.01, 0.99),
    seed: int = 4,
    cache_dir: Path | None = None,
) -> dict[str, Any]:
    from models.metrics import rms90
    from models.resolution import ResolutionConfig

    train_events = train_events or (20_000 if fast else 400_000)
    test_events = test_events or (20_000 if fast else 400_000)
    settings = common.TrainSettings(
        epochs=epochs or (4 if fast else 20), batch_size=512 if fast else 1024, seed=seed
    )
    cache = cache_dir or (out.parent / ".cache")
    start = time.perf_counter()
    truth, reco, flags = load(train_events, seed, cache)
    t_truth, t_reco, t_flags = load(test_events, seed + 100, cache)
    manifest, y = class_targets(truth, reco, flags["ok"], n_classes, quantile_range)
    x = np.stack([truth[q] for q in QUANTITIES], axis=1)
    mean, std = x.mean(axis=0), x.std(axis=0)
    print(f"{NAME}: train {len(x)} jets, test {len(t_flags['ok'])} jets")
    family = common.registry_family("resolution")
    with common.torch_threads(1), common.output_dir(out) as tmp:
        model = common.build_model(
            family, ResolutionConfig(hidden=hidden, depth=depth), manifest, seed
        )
        model.set_standardisation(  # type: ignore[operator]
            torch.as_tensor(mean, dtype=torch.float32), torch.as_tensor(std, dtype=torch.float32)
        )
        hist = common.fit(model, (x - mean) / std, y, settings)
        print(f"  trained: {hist['epochs']} epochs, {hist['seconds']:.1f}s")
        xt = torch.as_tensor(np.stack([t_truth[q] for q in QUANTITIES], axis=1))
        gen = torch.Generator().manual_seed(seed)
        sm, rec = model.smear(xt, generator=gen)  # type: ignore[operator]
        smeared = {q: sm[:, i].double().cpu().numpy() for i, q in enumerate(QUANTITIES)}
        rec_np = rec.cpu().numpy().astype(bool)
        sim_ok = t_flags["ok"]

        agreement = {
            q: hist_agreement(t_reco[q][sim_ok], smeared[q][rec_np], HIST_EDGES[q])
            for q in QUANTITIES
        }
        agree_rows = [
            [q, a["n_used"], a["within5"], a["within15"], a["max_dev"]]
            for q, a in agreement.items()
        ]
        all_dev = np.concatenate([np.abs(a["deviation"][a["used"]]) for a in agreement.values()])
        agree_rows.append(
            [
                "all",
                len(all_dev),
                float(np.mean(all_dev < 0.05)),
                float(np.mean(all_dev < 0.15)),
                float(all_dev.max()),
            ]
        )
        agree = common.Table(
            "Smeared vs simulator reco histograms, bins with stat. uncertainty < 10 %",
            ["quantity", "bins used", "fraction within 5 %", "fraction within 15 %", "max |dev|"],
            agree_rows,
        )

        abs_eta = np.abs(t_truth["eta"])
        eta_rows = []
        for label, lo, hi in ETA_REGIONS:
            region = (abs_eta >= lo) & (abs_eta < hi)
            r_sim = t_reco["pt"][region & sim_ok] / t_truth["pt"][region & sim_ok]
            r_sm = smeared["pt"][region & rec_np] / t_truth["pt"][region & rec_np]
            eta_rows.append(
                [
                    label,
                    float(np.std(r_sim)),
                    float(np.std(r_sm)),
                    rms90(r_sim),
                    rms90(r_sm),
                    float(np.mean(sim_ok[region])),
                    float(np.mean(rec_np[region])),
                ]
            )
        eta_table = common.Table(
            "η dependence of the pT response reco/truth (η a continuous input, no η binning)",
            [
                "region",
                "RMS simulator",
                "RMS smeared",
                "RMS90 simulator",
                "RMS90 smeared",
                "efficiency simulator",
                "efficiency smeared",
            ],
            eta_rows,
        )
        _plot_hists(agreement, tmp / "histograms.png")
        _plot_eta(t_truth, t_reco, smeared, sim_ok, rec_np, tmp / "resolution_vs_eta.png")
        header = (
            f"# Study 4: resolution classifier on jets ({len(x)} train / {len(xt)} test jets, "
            f"{hist['epochs']} epochs, {'fast' if fast else 'full'} mode, "
            f"{time.perf_counter() - start:.0f} s)"
        )
        md = common.write_tables(tmp, "table", [agree, eta_table], header)
    print(md)
    return {"tables": [agree, eta_table], "agreement": agreement}


def _plot_hists(agreement: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        2, 4, figsize=(15, 6), sharex="col", gridspec_kw={"height_ratios": [3, 1]}
    )
    labels = {"pt": "pT [GeV]", "eta": "η", "phi": "φ", "m": "m [GeV]"}
    for j, q in enumerate(QUANTITIES):
        a = agreement[q]
        e = HIST_EDGES[q]
        ax, rax = axes[0, j], axes[1, j]
        ax.stairs(a["sim"], e, label="simulator", color="black")
        ax.stairs(a["smeared"], e, label="NN smeared", color="tab:red")
        if q in ("pt", "m"):
            ax.set_xscale("log")
            ax.set_yscale("log")
        c = 0.5 * (e[1:] + e[:-1])
        ratio = 1.0 + a["deviation"]
        rax.plot(c[a["used"]], ratio[a["used"]], "o", ms=3, color="tab:red")
        rax.plot(c[~a["used"]], ratio[~a["used"]], "o", ms=3, color="lightgrey")
        for lvl, ls in ((0.05, ":"), (0.15, "--")):
            rax.axhline(1 + lvl, color="grey", ls=ls, lw=0.8)
            rax.axhline(1 - lvl, color="grey", ls=ls, lw=0.8)
        rax.set_ylim(0.7, 1.3)
        rax.set_xlabel(labels[q])
        ax.legend(fontsize=8)
    axes[1, 0].set_ylabel("NN / simulator")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_eta(
    truth: dict[str, np.ndarray],
    reco: dict[str, np.ndarray],
    smeared: dict[str, np.ndarray],
    sim_ok: np.ndarray,
    rec: np.ndarray,
    path: Path,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.metrics import resolution_summary

    eta_edges = np.linspace(0.0, 4.0, 21)
    pt_edges = np.array([20.0, 2000.0])
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for label, r, ok in (("simulator", reco["pt"], sim_ok), ("NN smeared", smeared["pt"], rec)):
        s = resolution_summary(
            r[ok] / truth["pt"][ok], np.abs(truth["eta"][ok]), truth["pt"][ok], eta_edges, pt_edges
        )
        c = 0.5 * (eta_edges[1:] + eta_edges[:-1])
        ax.plot(c, s["rms"][:, 0], marker="o", ms=3, label=f"RMS, {label}")
        ax.plot(c, s["rms90"][:, 0], marker="s", ms=3, ls="--", label=f"RMS90, {label}")
    ax.set_xlabel("|η| (truth)")
    ax.set_ylabel("resolution of reco/truth pT")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--fast", action="store_true")
    ap.add_argument("--out", type=Path, default=common.DEFAULT_ROOT / NAME)
    ap.add_argument("--train-events", type=int, default=None)
    ap.add_argument("--test-events", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--hidden", type=int, default=100)
    ap.add_argument("--depth", type=int, default=5)
    ap.add_argument("--classes", type=int, default=100)
    ap.add_argument("--seed", type=int, default=4)
    args = ap.parse_args(argv)
    run(
        args.out,
        fast=args.fast,
        train_events=args.train_events,
        test_events=args.test_events,
        epochs=args.epochs,
        hidden=args.hidden,
        depth=args.depth,
        n_classes=args.classes,
        seed=args.seed,
    )


if __name__ == "__main__":
    common.exit_on_sigterm()
    main()
