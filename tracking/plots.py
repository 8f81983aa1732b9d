"""Trial plots for MLflow artifacts: unfolded vs truth, resolution per bin, generated vs reference.

Every function returns a ``matplotlib.figure.Figure`` built without pyplot (no global state, no
GUI backend: the Agg canvas renders it), so plots can be made from any thread of the driver.
Save with :func:`save_png` or hand the Figure to ``ScanTracker.log_trial_figure``.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["plot_generated", "plot_resolution", "plot_unfolded", "ratio", "save_png"]

_COLORS = ["#5790fc", "#f89c20", "#e42536", "#964a8b", "#9c9ca1", "#7a21dd"]


def ratio(
    num: np.ndarray,
    den: np.ndarray,
    num_err: np.ndarray | None = None,
    den_err: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``num/den`` and its uncertainty by linear error propagation.

    Bins with ``den <= 0`` give NaN.  Without ``num_err`` the numerator is taken as Poisson
    (``sqrt(num)``); without ``den_err`` the denominator is a reference with no uncertainty.
    """
    n = np.asarray(num, dtype=np.float64)
    d = np.asarray(den, dtype=np.float64)
    en = np.sqrt(np.clip(n, 0.0, None)) if num_err is None else np.asarray(num_err, np.float64)
    ed = np.zeros_like(d) if den_err is None else np.asarray(den_err, dtype=np.float64)
    ok = d > 0
    safe = np.where(ok, d, 1.0)
    r = np.where(ok, n / safe, np.nan)
    var = (en / safe) ** 2 + (n * ed / safe**2) ** 2
    return r, np.where(ok, np.sqrt(var), np.nan)


def save_png(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as PNG through a temporary file renamed into place."""
    dst = Path(path)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".png", dir=dst.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png", dpi=dpi)
        os.replace(tmp, dst)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return dst


def _figure(figsize: tuple[float, float]) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout="constrained")


def _hist_values(h: Any) -> tuple[np.ndarray, np.ndarray | None]:
    """Counts and errors from an array, a ``(counts, errors)`` pair or a ``hist.Hist``."""
    if hasattr(h, "values") and callable(h.values):
        values = np.asarray(h.values(), dtype=np.float64)
        variances = h.variances() if hasattr(h, "variances") else None
        return values, None if variances is None else np.sqrt(np.asarray(variances, np.float64))
    if isinstance(h, tuple) and len(h) == 2:
        return np.asarray(h[0], dtype=np.float64), np.asarray(h[1], dtype=np.float64)
    return np.asarray(h, dtype=np.float64), None


def _step(ax: Axes, edges: np.ndarray, values: np.ndarray, **kw: Any) -> None:
    import mplhep

    mplhep.histplot(values, edges, ax=ax, histtype="step", yerr=False, **kw)


def _ratio_limits(ax: Axes, values: list[np.ndarray]) -> None:
    """0.5–1.5 unless points fall outside; then widen, but never beyond 0–3."""
    finite = np.concatenate([v[np.isfinite(v)] for v in values]) if values else np.array([])
    lo = min(0.5, float(finite.min()) - 0.05) if finite.size else 0.5
    hi = max(1.5, float(finite.max()) + 0.05) if finite.size else 1.5
    ax.set_ylim(max(lo, 0.0), min(hi, 3.0))


def plot_unfolded(
    edges: Sequence[float] | np.ndarray,
    truth: Any,
    reco: Any,
    unfolded: Mapping[str, Any],
    title: str = "",
    xlabel: str = "observable",
) -> Figure:
    """Truth, reco and one or more unfolded spectra, with an unfolded/truth ratio panel.

    Each histogram is an array of counts, a ``(counts, errors)`` pair or a ``hist.Hist``;
    unfolded errors default to Poisson.
    """
    e = np.asarray(edges, dtype=np.float64)
    centers = 0.5 * (e[1:] + e[:-1])
    t, _ = _hist_values(truth)
    r, _ = _hist_values(reco)
    fig = _figure((6.0, 5.5))
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    _step(top, e, t, color="black", linewidth=1.5, label="truth")
    _step(top, e, r, color="#9c9ca1", linestyle="--", linewidth=1.2, label="reco")
    ratios: list[np.ndarray] = []
    for i, (label, h) in enumerate(unfolded.items()):
        u, ue = _hist_values(h)
        uerr = np.sqrt(np.clip(u, 0.0, None)) if ue is None else ue
        color = _COLORS[i % len(_COLORS)]
        top.errorbar(centers, u, yerr=uerr, fmt="o", markersize=3, color=color, label=label)
        rv, re = ratio(u, t, uerr)
        ratios.append(rv)
        bottom.errorbar(centers, rv, yerr=re, fmt="o", markersize=3, color=color)
    bottom.axhline(1.0, color="black", linewidth=0.8)
    top.set_ylabel("events / bin")
    top.legend(frameon=False)
    if title:
        top.set_title(title)
    bottom.set_ylabel("unfolded / truth")
    bottom.set_xlabel(xlabel)
    _ratio_limits(bottom, ratios)
    return fig


def _column(table: Any, name: str) -> np.ndarray | None:
    try:
        col = table[name]
    except (KeyError, IndexError, TypeError):
        return None
    return np.asarray(col)


def plot_resolution(table: Any, variable: str = "η", title: str = "") -> Figure:
    """Resolution mean (bias) and RMS per η or pT bin.

    ``table``: a DataFrame or mapping of equal-length columns ``bin_lo``, ``bin_hi``, ``mean``,
    ``rms``; optional ``mean_err``, ``rms_err``, and ``label`` (one series per label, e.g.
    NN vs detector).
    """
    lo = _column(table, "bin_lo")
    hi = _column(table, "bin_hi")
    mean = _column(table, "mean")
    rms = _column(table, "rms")
    if lo is None or hi is None or mean is None or rms is None:
        raise KeyError("plot_resolution: table needs columns bin_lo, bin_hi, mean, rms")
    lo, hi = lo.astype(np.float64), hi.astype(np.float64)
    mean, rms = mean.astype(np.float64), rms.astype(np.float64)
    mean_err = _column(table, "mean_err")
    rms_err = _column(table, "rms_err")
    labels = _column(table, "label")
    groups = [None] if labels is None else list(dict.fromkeys(labels.tolist()))
    fig = _figure((6.0, 5.5))
    ax_mean, ax_rms = fig.subplots(2, 1, sharex=True)
    for i, group in enumerate(groups):
        sel = np.ones(lo.shape, bool) if group is None else labels == group
        x = 0.5 * (lo[sel] + hi[sel])
        xerr = 0.5 * (hi[sel] - lo[sel])
        color = _COLORS[i % len(_COLORS)]
        kw: dict[str, Any] = {"fmt": "o", "markersize": 3, "color": color}
        ax_mean.errorbar(
            x,
            mean[sel],
            xerr=xerr,
            yerr=None if mean_err is None else mean_err[sel],
            label=None if group is None else str(group),
            **kw,
        )
        ax_rms.errorbar(
            x, rms[sel], xerr=xerr, yerr=None if rms_err is None else rms_err[sel], **kw
        )
    ax_mean.axhline(0.0, color="black", linewidth=0.8)
    ax_mean.set_ylabel("resolution mean")
    ax_rms.set_ylabel("resolution RMS")
    ax_rms.set_xlabel(variable)
    if groups != [None]:
        ax_mean.legend(frameon=False)
    if title:
        ax_mean.set_title(title)
    return fig


def plot_generated(
    reference: np.ndarray,
    generated: np.ndarray,
    names: Sequence[str] | None = None,
    bins: int = 40,
    title: str = "",
) -> Figure:
    """Per-feature normalised histograms of generated vs reference samples, ratio panels below.

    Binning spans the reference's 0.5–99.5 % quantiles so outliers do not squash the plot.
    """
    ref = np.asarray(reference, dtype=np.float64)
    gen = np.asarray(generated, dtype=np.float64)
    if ref.ndim == 1:
        ref = ref[:, None]
    if gen.ndim == 1:
        gen = gen[:, None]
    if ref.shape[1] != gen.shape[1]:
        raise ValueError(
            f"plot_generated: reference has {ref.shape[1]} features, generated {gen.shape[1]}"
        )
    nfeat = ref.shape[1]
    labels = list(names) if names is not None else [f"x{i}" for i in range(nfeat)]
    ncols = min(nfeat, 4)
    nrows = (nfeat + ncols - 1) // ncols
    fig = _figure((3.2 * ncols, 3.6 * nrows))
    grid = fig.add_gridspec(2 * nrows, ncols, height_ratios=[3, 1] * nrows)
    for j in range(nfeat):
        row, col = divmod(j, ncols)
        top = fig.add_subplot(grid[2 * row, col])
        bottom = fig.add_subplot(grid[2 * row + 1, col], sharex=top)
        rcol = ref[:, j][np.isfinite(ref[:, j])]
        gcol = gen[:, j][np.isfinite(gen[:, j])]
        lo, hi = np.quantile(rcol, [0.005, 0.995]) if rcol.size else (0.0, 1.0)
        if not hi > lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
        rc, _ = np.histogram(rcol, edges)
        gc, _ = np.histogram(gcol, edges)
        width = np.diff(edges)
        rn = max(rc.sum(), 1) * width
        gn = max(gc.sum(), 1) * width
        _step(top, edges, rc / rn, color="black", label="reference")
        _step(top, edges, gc / gn, color=_COLORS[0], label="generated")
        rv, re = ratio(gc / gn, rc / rn, np.sqrt(gc) / gn, np.sqrt(rc) / rn)
        centers = 0.5 * (edges[1:] + edges[:-1])
        bottom.errorbar(centers, rv, yerr=re, fmt="o", markersize=2, color=_COLORS[0])
        bottom.axhline(1.0, color="black", linewidth=0.8)
        _ratio_limits(bottom, [rv])
        bottom.set_xlabel(labels[j])
        top.tick_params(labelbottom=False)
        if j == 0:
            top.legend(frameon=False, fontsize="small")
            bottom.set_ylabel("gen / ref")
    if title:
        fig.suptitle(title)
    return fig
