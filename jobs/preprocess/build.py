"""Manifest building of ``hepscan preprocess``: merge partition statistics, build the manifest.

:func:`fit` merges the per-partition statistics in partition order (so they do not depend on
scheduling): feature mean/std on the train split only, (reco - truth) quantile edges of the
train split for the resolution classes, unfolding histograms. :func:`build_manifest` assembles
``manifest.json`` (written with :func:`jobs.manifest.write_manifest`); :func:`plot_truth_reco`
draws the truth-vs-reco PNG of an unfolding target with truth.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jobs.manifest import MANIFEST_VERSION, SPLITS
from jobs.preprocess.plan import InputFile, Plan
from models.errors import InputError

__all__ = ["build_manifest", "column_types", "fit", "plot_name", "plot_truth_reco"]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hepscan")
    except PackageNotFoundError:
        return "0.1.0"


def column_types(plan: Plan) -> dict[str, str]:
    cfg = plan.cfg
    types = {"event_id": "uint64", "weight": "float64"}
    types.update({f"feat_{f}": "float32" for f in cfg.features})
    if cfg.unfold is not None:
        types["reco_bin"] = "int32"
        if cfg.unfold.truth:
            types.update(truth_bin="int32", migration="int32")
    if cfg.resolution is not None:
        types.update({f"res_{q}": "int32" for q in cfg.resolution.quantities})
    types.update({c: "float64" for c in plan.written})
    if plan.has_ok:
        types["reco_ok"] = "bool"
    return types


def _merge_moments(stats: list[dict[str, Any]], n_feat: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Chan's parallel mean/variance merge, in partition order."""
    n_tot, mean, m2 = 0, np.zeros(n_feat), np.zeros(n_feat)
    for s in stats:
        nb = s["n"]
        if nb == 0:
            continue
        delta = s["mean"] - mean
        tot = n_tot + nb
        mean = mean + delta * (nb / tot)
        m2 = m2 + s["m2"] + delta**2 * (n_tot * nb / tot)
        n_tot = tot
    return n_tot, mean, m2


def fit(plan: Plan, stats: list[dict[str, Any]], files: list[InputFile]) -> dict[str, Any]:
    cfg = plan.cfg
    where = files[0].display if len(files) == 1 else f"{files[0].display} (+{len(files) - 1} more)"
    total = sum(sum(s["rows"]) for s in stats)
    read = sum(s["counts"][0] for s in stats)
    if total == 0:
        raise InputError(
            f"{where}: selection {cfg.selection.kind!r} kept no events of {read} read "
            f"(check the selection parameters, branches and unfold edges)"
        )
    n, mean, m2 = _merge_moments(stats, len(cfg.features))
    if n == 0:
        raise InputError(f"{where}: no rows fall into the train split; cannot fit the scaler")
    std = np.sqrt(m2 / n)
    std = np.where(std > 0, std, 1.0)
    res_edges: dict[str, tuple[float, ...]] = {}
    res_rows = 0
    if cfg.resolution is not None:
        lo_q, hi_q = cfg.resolution.quantile_range
        for q, spec in cfg.resolution.quantities.items():
            deltas = np.concatenate([s["deltas"][q] for s in stats])
            res_rows = int(deltas.size)
            if spec.range is not None:
                lo, hi = spec.range
            elif deltas.size < 2:
                raise InputError(
                    f"{where}: resolution.quantities.{q}: fewer than 2 reconstructed/matched "
                    f"train rows to fit the class edges; set 'range: [low, high]' for it"
                )
            else:
                lo, hi = (float(x) for x in np.quantile(deltas, [lo_q, hi_q]))
                if not hi > lo:
                    hi = lo + 1e-12
            res_edges[q] = tuple(
                float(x) for x in np.linspace(lo, hi, cfg.resolution.n_classes + 1)
            )
    hist: dict[str, np.ndarray] = {}
    for key in ("reco", "truth"):
        parts = [s["hist"][key] for s in stats if key in s["hist"]]
        if parts:
            hist[key] = np.sum(parts, axis=0)
    return {
        "mean": [float(x) for x in mean],
        "std": [float(x) for x in std],
        "res_edges": res_edges,
        "res_rows": res_rows,
        "hist": hist,
    }


def plot_name(plan: Plan) -> str | None:
    u = plan.cfg.unfold
    return f"truth_vs_reco_{u.quantity}.png" if u is not None and u.truth else None


def plot_truth_reco(
    path: Path, plan: Plan, edges: np.ndarray, truth: np.ndarray, reco: np.ndarray
) -> None:
    """Truth and reco histograms of the unfolding quantity (no pyplot: runs in a thread)."""
    import matplotlib.style
    import mplhep
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cfg = plan.cfg
    assert cfg.unfold is not None
    with matplotlib.style.context(mplhep.style.CMS):
        # fixed margins and no minor ticks: constrained layout and the CMS style's minor ticks
        # cost 0.3 of the 0.4 CPU-s this plot took, on the 2 cores the partitions run on
        fig = Figure(figsize=(8, 6))
        FigureCanvasAgg(fig)
        fig.subplots_adjust(left=0.15, right=0.97, bottom=0.13, top=0.93)
        ax = fig.add_subplot()
        mplhep.histplot(truth, edges, ax=ax, label=f"truth ({cfg.unfold.truth})")
        mplhep.histplot(reco, edges, ax=ax, label=f"reco ({cfg.unfold.reco})")
        ax.minorticks_off()
        ax.set_xlabel(cfg.unfold.quantity)
        ax.set_ylabel("rows / bin")
        ax.set_title(f"{cfg.sample}: truth vs reco", fontsize=14)
        ax.legend(loc="upper right", fontsize=14)
        fig.savefig(path, dpi=80)


def build_manifest(
    plan: Plan,
    files: list[InputFile],
    digests: list[str],
    patterns: list[str],
    stats: list[dict[str, Any]],
    written: list[list[dict[str, Any]]],
    fit: dict[str, Any],
    plot: str | None,
) -> dict[str, Any]:
    """The manifest (see :mod:`jobs.manifest`) from the merged partition results."""
    cfg = plan.cfg
    splits: dict[str, dict[str, Any]] = {s: {"rows": 0, "files": []} for s in SPLITS}
    for shard_list in written:
        for sh in shard_list:
            entry = splits[sh.pop("split")]
            entry["files"].append(sh)
            entry["rows"] += sh["rows"]
    for s in SPLITS:
        splits[s]["files"].sort(key=lambda d: d["path"])

    counts = np.sum([s["counts"] for s in stats], axis=0)
    rows_total = sum(splits[s]["rows"] for s in SPLITS)
    norm_cfg = cfg.model_dump(mode="json")
    norm_cfg["files"] = patterns
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "hepscan_version": _version(),
        "sample": cfg.sample,
        "selection": cfg.selection.kind,
        "selection_source": plan.selection_source,
        "tree": cfg.tree,
        "branches": dict(sorted(plan.branches.items())),
        "features": list(cfg.features),
        "scaler": {"mean": fit["mean"], "std": fit["std"], "fitted_on": "train"},
        "columns": column_types(plan),
        "splits": splits,
        "split": {
            "fractions": cfg.split.model_dump(),
            "method": "splitmix64(event_id) >> 11 as a uniform in [0, 1)",
            "event_id": (
                list(plan.eid_branches)
                if plan.eid_branches
                else "splitmix64(sha256(file)[:16] ^ entry)"
            ),
        },
        "counts": {
            "entries_read": int(counts[0]),
            "nan_dropped": int(counts[1]),
            "failed_selection": int(counts[2]),
            "outside_edges": int(counts[3]),
            "rows": rows_total,
        },
        "inputs": [
            {"path": f.display, "size": f.size, "sha256": d, "entries": f.entries}
            for f, d in zip(files, digests, strict=True)
        ],
        "config": norm_cfg,
        "unfold": None,
        "resolution": None,
        "generative": None,
        "classify": None,
        "regression": None,
        "plots": [],
    }
    if cfg.unfold is not None:
        edges = [float(e) for e in np.asarray(plan.edges)]
        manifest["unfold"] = {
            "quantity": cfg.unfold.quantity,
            "truth": cfg.unfold.truth,
            "reco": cfg.unfold.reco,
            "edges": edges,
            "n_bins": len(edges) - 1,
            "has_truth": cfg.unfold.truth is not None,
            "outside": cfg.unfold.outside,
            "reco_counts": [int(x) for x in fit["hist"]["reco"]],
            "truth_counts": (
                [int(x) for x in fit["hist"]["truth"]] if "truth" in fit["hist"] else None
            ),
        }
        if plot:
            manifest["plots"] = [plot]
    if cfg.resolution is not None:
        manifest["resolution"] = {
            "n_classes": cfg.resolution.n_classes,
            "inefficiency_class": cfg.resolution.n_classes,
            "quantiles": list(cfg.resolution.quantile_range),
            "matched_train_rows": fit["res_rows"],
            "quantities": {
                q: {
                    "column": f"res_{q}",
                    "truth": spec.truth,
                    "reco": spec.reco,
                    "mode": spec.mode,
                    "edges": list(fit["res_edges"][q]),
                }
                for q, spec in cfg.resolution.quantities.items()
            },
        }
    if cfg.generative is not None:
        manifest["generative"] = cfg.generative.model_dump()
    if cfg.classify is not None:
        manifest["classify"] = cfg.classify.model_dump()
    if cfg.regression is not None:
        manifest["regression"] = cfg.regression.model_dump()
    return manifest
