"""Tables and figures of the fast-simulation study (``generative_jets``)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.studies import common
from benchmarks.studies.generative_refs import ETA_EDGES, PT_EDGES, Objects

__all__ = ["goals", "plots", "tables"]

RESPONSES = ("pT ratio", "Δη", "Δφ", "m ratio")


def tables(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    contenders: Mapping[str, Sequence[Any]],
    s: Any,
) -> list[common.Table]:
    main_rows, dist_rows, eff_rows = [], [], []
    for sample, cs in contenders.items():
        for c in cs:
            r = results[sample][c.name]
            main_rows.append(
                [
                    sample,
                    c.name,
                    c.source,
                    c.trials,
                    r["auc"],
                    float(np.mean(r["w1"])),
                    float(np.max(r["ks"])),
                    r["frac_rms90"],
                    r["frac_mean"],
                    int(r["n_bins"]),
                    r["eff_central"],
                    r["eff_forward"],
                    r["max_eff_dev"],
                    r["corr_dev"],
                    r["speed"],
                    r["speed_ratio"],
                ]
            )
            for i, q in enumerate(RESPONSES):
                dist_rows.append([sample, c.name, q, float(r["w1"][i]), float(r["ks"][i])])
            eff_rows.append([sample, c.name, *[float(v) for v in r["eff"]]])
        ref = results[sample][cs[0].name]
        eff_rows.append([sample, "simulator (evaluation)", *[float(v) for v in ref["eff_ref"]]])
    main = common.Table(
        "Contenders vs the simulator's evaluation sample (reconstructed objects; "
        f"well-populated bin: ≥ {s.min_count} objects)",
        [
            "sample",
            "contender",
            "scan parent run",
            "trials",
            "classifier AUC",
            "W1/σ (mean of 4 responses)",
            "max KS",
            "RMS90 within 5 % (frac of bins)",
            "mean within 5 % (frac)",
            "bins",
            "eff |η|<2.5",
            "eff |η|>2.5",
            "max |Δeff| (|η| bins)",
            "max |Δρ|",
            "objects/s",
            "speed / simulator",
        ],
        main_rows,
    )
    dist = common.Table(
        "Per-response Wasserstein-1 (in units of the simulator's σ) and KS statistic",
        ["sample", "contender", "response", "W1/σ", "KS"],
        dist_rows,
    )
    centres = 0.5 * (EFF_EDGES_LABEL[:-1] + EFF_EDGES_LABEL[1:])
    eff = common.Table(
        "Efficiency vs |η| (bin centres)",
        ["sample", "contender", *[f"{c:.2f}" for c in centres]],
        eff_rows,
    )
    scan_rows = []
    for sample, cs in contenders.items():
        for c in cs:
            if c.extra.get("scanned_on"):
                cfg = {k: v for k, v in c.extra["best_config"].items() if k not in _STATIC}
                scan_rows.append(
                    [
                        sample,
                        c.name,
                        c.extra["scanned_on"],
                        c.source,
                        c.trials,
                        c.extra["scan_s"],
                        c.extra["final_s"],
                        json.dumps(cfg, sort_keys=True, default=str),
                    ]
                )
    scans = common.Table(
        f"Scans and final trainings (scans: TPE + ASHA, {s.trials} trials, ≤ {s.epochs} epochs "
        f"on the first {s.scan_rows or 'all'} rows per split, concurrency 2; final: the best "
        f"configuration on every training row, {s.final_epochs} epochs, best epoch kept)",
        [
            "sample",
            "family",
            "scanned on",
            "scan parent run",
            "trials",
            "scan s",
            "final training s",
            "best configuration",
        ],
        scan_rows,
    )
    return [main, scans, dist, eff]


# keys of a trial's config that are the same for every trial of a scan
_STATIC = ("dataset", "family", "workers", "backend", "monitor", "mode", "seed", "max_epochs")
EFF_EDGES_LABEL = np.linspace(0.0, 4.0, 17)


def _compare(value: float, op: str, target: float) -> bool:
    return math.isfinite(value) and (value <= target if op == "<=" else value >= target)


def goals(
    results: Mapping[str, Mapping[str, Mapping[str, Any]]],
    spec: Sequence[tuple[str, str, str, float]],
) -> common.Table:
    rows = []
    jets = results.get("jets", {})
    for name, metric, op, target in spec:
        value = float(jets.get(name, {}).get(metric, math.nan))
        verdict = "met" if _compare(value, op, target) else "missed"
        rows.append([name, metric, f"{op} {target:g}", f"{value:.4g}", verdict])
    return common.Table("Goals (jets)", ["contender", "metric", "goal", "value", "verdict"], rows)


def _ratio(
    truth: np.ndarray, reco: np.ndarray, ok: np.ndarray, box: tuple[float, float, float, float]
) -> np.ndarray:
    """reco/truth pT of the reconstructed objects in a (pT, |η|) box."""
    plo, phi, elo, ehi = box
    a = np.abs(truth[:, 1])
    sel = ok & (truth[:, 0] >= plo) & (truth[:, 0] < phi) & (a >= elo) & (a < ehi)
    return np.asarray(reco[sel, 0] / truth[sel, 0])


def plots(sample: str, ev: Objects, cs: Sequence[Any], directory: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.metrics import efficiency_vs, resolution_summary

    # response distributions in four (pT, |η|) bins
    bins = [((25.0, 40.0), (0.0, 1.5)), ((110.0, 300.0), (0.0, 1.5))]
    bins += [((25.0, 40.0), (2.5, 4.0)), ((110.0, 300.0), (2.5, 4.0))]
    fig, axes = plt.subplots(2, 4, figsize=(16, 6), gridspec_kw={"height_ratios": [3, 1]})
    edges = np.linspace(0.0, 2.0, 61)
    for j, ((plo, phi), (elo, ehi)) in enumerate(bins):
        ax, rax = axes[0, j], axes[1, j]

        box = (plo, phi, elo, ehi)
        h_ref = np.histogram(_ratio(ev.truth, ev.reco, ev.ok, box), edges)[0].astype(float)
        ax.stairs(h_ref, edges, color="black", label="simulator", lw=1.5)
        for c in cs:
            h = np.histogram(_ratio(c.truth, c.reco, c.ok, box), edges)[0].astype(float)
            h *= h_ref.sum() / max(h.sum(), 1.0)
            ax.stairs(h, edges, label=c.name)
            with np.errstate(divide="ignore", invalid="ignore"):
                rax.plot(0.5 * (edges[1:] + edges[:-1]), h / h_ref, ".", ms=3)
        ax.set_yscale("log")
        ax.set_title(f"{plo:g}<pT<{phi:g}, {elo:g}<|η|<{ehi:g}", fontsize=9)
        rax.set_ylim(0.5, 1.5)
        rax.axhline(1.0, color="grey", lw=0.8)
        rax.set_xlabel("reco / truth pT")
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].set_ylabel("contender / simulator")
    fig.tight_layout()
    fig.savefig(directory / f"response_{sample}.png", dpi=90)
    plt.close(fig)

    # RMS90 ratio to the simulator vs pT, central and forward
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    centres = np.sqrt(PT_EDGES[1:] * PT_EDGES[:-1])

    def summary(truth: np.ndarray, reco: np.ndarray, ok: np.ndarray) -> dict[str, np.ndarray]:
        t, r = truth[ok], reco[ok]
        return resolution_summary(
            r[:, 0] / t[:, 0], np.abs(t[:, 1]), t[:, 0], ETA_EDGES, PT_EDGES, min_count=50
        )

    ref = summary(ev.truth, ev.reco, ev.ok)
    for ax, (label, rows) in zip(axes, (("|η| 0–0.5", 0), ("|η| 3.0–3.5", 6)), strict=True):
        for c in cs:
            sm = summary(c.truth, c.reco, c.ok)
            ax.plot(centres, sm["rms90"][rows] / ref["rms90"][rows], "o-", ms=3, label=c.name)
        ax.axhspan(0.95, 1.05, color="lightgrey", alpha=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("truth pT [GeV]")
        ax.set_title(label)
    axes[0].set_ylabel("RMS90(reco/truth pT) / simulator")
    axes[0].set_ylim(0.5, 1.5)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(directory / f"rms90_{sample}.png", dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4))
    c_eff = 0.5 * (EFF_EDGES_LABEL[1:] + EFF_EDGES_LABEL[:-1])
    ax.plot(
        c_eff,
        efficiency_vs(np.abs(ev.truth[:, 1]), ev.ok, EFF_EDGES_LABEL),
        "k-",
        label="simulator",
    )
    for c in cs:
        ax.plot(
            c_eff, efficiency_vs(np.abs(c.truth[:, 1]), c.ok, EFF_EDGES_LABEL), ".--", label=c.name
        )
    ax.set_xlabel("|η| (truth)")
    ax.set_ylabel("efficiency")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(directory / f"efficiency_{sample}.png", dpi=90)
    plt.close(fig)
