"""Figures of ``hepscan apply`` (mplhep style, Figures without pyplot).

``jobs`` may not import ``tracking`` (shared/DESIGN.md), so these are written here in the
style of :mod:`tracking.plots`: the unfolded spectrum with its total error bars (statistical
error as inner ticks), truth, reco and the baselines, and a ratio panel to truth (or, without
truth, to the unfolded central value).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from jobs.apply.unfold import UnfoldResult

__all__ = ["plot_generated", "plot_iterations", "plot_unfolding", "save"]

COLORS = ["#5790fc", "#f89c20", "#e42536", "#964a8b", "#9c9ca1", "#7a21dd"]


def save(fig: Figure, path: Path, dpi: int = 100) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _figure(size: tuple[float, float]) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=size, layout="constrained")


def _ratio(num: np.ndarray, den: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ok = den > 0
    safe = np.where(ok, den, 1.0)
    return np.where(ok, num / safe, np.nan), np.where(ok, err / safe, np.nan)


def plot_unfolding(r: UnfoldResult, title: str = "") -> Figure:
    import mplhep

    e = r.edges
    c = 0.5 * (e[1:] + e[:-1])
    fig = _figure((6.4, 6.0))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ref = r.truth if r.truth is not None else r.unfolded
    if r.truth is not None:
        mplhep.histplot(r.truth, e, ax=top, histtype="step", color="black", label="truth")
    mplhep.histplot(
        r.reco, e, ax=top, histtype="step", color="#9c9ca1", linestyle="--", label="reco"
    )
    for i, (name, values) in enumerate(r.baselines.items()):
        err = np.sqrt(np.clip(np.diag(r.baseline_cov[name]), 0.0, None))
        color = COLORS[(i + 1) % len(COLORS)]
        label = {"ibu": "IBU", "tikhonov": "Tikhonov"}.get(name, name)
        top.errorbar(c, values, yerr=err, fmt="s", ms=2.5, color=color, alpha=0.8, label=label)
        rv, re = _ratio(values, ref, err)
        bottom.errorbar(c, rv, yerr=re, fmt="s", ms=2.5, color=color, alpha=0.8)
    label = "unfolded (ML)" if len(r.members) == 1 else f"unfolded (ML, {len(r.members)} models)"
    top.errorbar(c, r.unfolded, yerr=r.stderr, fmt="o", ms=3.5, color=COLORS[0], label=label)
    top.errorbar(c, r.unfolded, yerr=r.stderr_stat, fmt="none", color=COLORS[0], capsize=2)
    rv, re = _ratio(r.unfolded, ref, r.stderr)
    bottom.errorbar(c, rv, yerr=re, fmt="o", ms=3.5, color=COLORS[0])
    bottom.axhline(1.0, color="black", linewidth=0.8)
    top.set_ylabel("events / bin")
    top.legend(frameon=False, fontsize="small")
    chi2 = r.metrics.get("chi2_ndf")
    head = title + (f"  χ²/ndf = {chi2:.2f}" if chi2 is not None and np.isfinite(chi2) else "")
    if head:
        top.set_title(head.strip(), fontsize="medium")
    bottom.set_ylabel("/ truth" if r.truth is not None else "/ unfolded")
    bottom.set_xlabel(r.quantity)
    finite = rv[np.isfinite(rv)]
    lo = min(0.5, float(finite.min()) - 0.05) if finite.size else 0.5
    hi = max(1.5, float(finite.max()) + 0.05) if finite.size else 1.5
    bottom.set_ylim(max(lo, 0.0), min(hi, 3.0))
    return fig


def plot_iterations(r: UnfoldResult, title: str = "") -> Figure:
    """Every prior iteration's unfolded spectrum and its ratio to iteration 0 (or truth)."""
    e = r.edges
    c = 0.5 * (e[1:] + e[:-1])
    fig = _figure((6.4, 6.0))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    ref = r.truth if r.truth is not None else r.iterations[0]
    if r.truth is not None:
        top.stairs(r.truth, e, color="black", label="truth")
    for k, (h, err) in enumerate(zip(r.iterations, r.iteration_stderr, strict=True)):
        color = COLORS[k % len(COLORS)]
        dx = (k - (len(r.iterations) - 1) / 2) * 0.08 * np.diff(e)
        top.errorbar(c + dx, h, yerr=err, fmt="o", ms=3, color=color, label=f"iteration {k}")
        rv, re = _ratio(h, ref, err)
        bottom.errorbar(c + dx, rv, yerr=re, fmt="o", ms=3, color=color)
    bottom.axhline(1.0, color="black", linewidth=0.8)
    top.set_ylabel("events / bin")
    top.legend(frameon=False, fontsize="small")
    if title:
        top.set_title(f"{title}: prior iterations", fontsize="medium")
    bottom.set_ylabel("/ truth" if r.truth is not None else "/ iteration 0")
    bottom.set_xlabel(r.quantity)
    return fig


def plot_generated(
    reference: np.ndarray | None, generated: np.ndarray, names: list[str], title: str = ""
) -> Figure:
    """Per-column histograms of generated rows (and the real reco when given)."""
    n = generated.shape[1]
    ncols = min(n, 4)
    nrows = (n + ncols - 1) // ncols
    fig = _figure((3.2 * ncols, 3.0 * nrows))
    axes: Any = fig.subplots(nrows, ncols, squeeze=False)
    for j in range(n):
        ax = axes[j // ncols][j % ncols]
        g = generated[:, j][np.isfinite(generated[:, j])]
        src = reference[:, j][np.isfinite(reference[:, j])] if reference is not None else g
        lo, hi = np.quantile(src, [0.005, 0.995]) if src.size else (0.0, 1.0)
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 41)
        if reference is not None:
            ax.hist(src, bins, histtype="step", color="black", density=True, label="real")
        ax.hist(g, bins, histtype="step", color=COLORS[0], density=True, label="generated")
        ax.set_xlabel(names[j])
        if j == 0:
            ax.legend(frameon=False, fontsize="small")
    if title:
        fig.suptitle(title)
    return fig
