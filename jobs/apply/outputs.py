"""The files ``hepscan apply`` writes for an unfolding, and reading them back.

``OUT/unfolded.json`` (layout ``hepscan.unfolded/1``)::

    {"format": "hepscan.unfolded/1", "quantity": "mass",
     "unfolded": <hist>, "reco": <hist>, "truth": <hist>|null,
     "ibu": <hist>, "tikhonov": <hist>,                       # when the bundle has a response
     "iterations": [<hist>, ...],                             # prior iterations 0..N
     "covariance": [[...]], "covariance_stat": [[...]], "covariance_ensemble": [[...]],
     "settings": {...}, "metrics": {...}}

Each ``<hist>`` is a ``hist.Hist`` (one ``Variable`` axis, ``Weight`` storage: content and
variance = stderr²) in the UHI JSON schema (``uhi.io.json``); read it back with
:func:`read_unfolded`, which returns ``hist.Hist`` objects and numpy covariances.

``OUT/unfolded.csv``: one row per bin — ``lo, hi, unfolded, stderr, stderr_stat,
stderr_ensemble, stderr_poisson, reco, truth, ibu, tikhonov``; ``OUT/covariance.csv``: the full
covariance (bins x bins, no header); ``OUT/metrics.json``; ``OUT/unfolded.png`` (and
``OUT/iterations.png`` with ``--prior-iterations``).
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from jobs.apply.unfold import UnfoldResult

__all__ = ["FORMAT", "read_unfolded", "to_hist", "write_unfolding"]

FORMAT = "hepscan.unfolded/1"


def to_hist(edges: np.ndarray, values: np.ndarray, variances: np.ndarray | None, name: str) -> Any:
    """A ``hist.Hist`` with a Variable axis and Weight storage (variance 0 when unknown)."""
    import hist

    h = hist.Hist(hist.axis.Variable(edges, name=name), storage=hist.storage.Weight())
    view = h.view()
    view.value = np.asarray(values, np.float64)
    view.variance = (
        np.zeros(len(values)) if variances is None else np.asarray(variances, np.float64)
    )
    return h


def _finite(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (v if not isinstance(v, float) or math.isfinite(v) else None) for k, v in d.items()}


def unfolded_document(r: UnfoldResult) -> dict[str, Any]:
    import uhi.io.json

    q = r.quantity
    h = {
        "unfolded": to_hist(r.edges, r.unfolded, np.diag(r.covariance), q),
        "reco": to_hist(r.edges, r.reco, r.reco, q),
        "truth": None if r.truth is None else to_hist(r.edges, r.truth, r.truth, q),
    }
    for name, values in r.baselines.items():
        h[name] = to_hist(r.edges, values, np.diag(r.baseline_cov[name]), q)
    doc: dict[str, Any] = {"format": FORMAT, "quantity": q}
    doc.update(h)
    doc["iterations"] = [
        to_hist(r.edges, v, e**2, q) for v, e in zip(r.iterations, r.iteration_stderr, strict=True)
    ]
    doc["covariance"] = r.covariance.tolist()
    doc["covariance_stat"] = r.cov_stat.tolist()
    doc["covariance_ensemble"] = r.cov_ensemble.tolist()
    doc["settings"] = r.settings
    doc["metrics"] = _finite(r.metrics)
    return json.loads(json.dumps(doc, default=uhi.io.json.default))


def read_unfolded(path: str | os.PathLike[str]) -> dict[str, Any]:
    """``unfolded.json`` (or its directory) with ``hist.Hist`` objects and numpy covariances."""
    import hist
    import uhi.io.json

    p = Path(path)
    if p.is_dir():
        p = p / "unfolded.json"
    doc = json.loads(p.read_text(), object_hook=uhi.io.json.object_hook)
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if isinstance(value, dict) and "uhi_schema" in value:
            out[key] = hist.Hist(value)
        elif key == "iterations":
            out[key] = [hist.Hist(v) for v in value]
        elif key.startswith("covariance"):
            out[key] = np.asarray(value, np.float64)
        else:
            out[key] = value
    return out


def write_unfolding(r: UnfoldResult, out: Path, title: str = "") -> list[Path]:
    """Write the files listed in the module docstring into ``out`` (an existing directory)."""
    from jobs.apply.plots import plot_iterations, plot_unfolding, save

    doc = unfolded_document(r)
    paths = [out / "unfolded.json", out / "unfolded.csv", out / "covariance.csv"]
    paths[0].write_text(json.dumps(doc, indent=1))
    nan = np.full(len(r.unfolded), np.nan)
    table = {
        "lo": r.edges[:-1],
        "hi": r.edges[1:],
        "unfolded": r.unfolded,
        "stderr": r.stderr,
        "stderr_stat": r.stderr_stat,
        "stderr_ensemble": r.stderr_ensemble,
        "stderr_poisson": r.poisson_stderr,
        "reco": r.reco,
        "truth": r.truth if r.truth is not None else nan,
        "ibu": r.baselines.get("ibu", nan),
        "tikhonov": r.baselines.get("tikhonov", nan),
    }
    with paths[1].open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(list(table))
        for i in range(len(r.unfolded)):
            w.writerow([_fmt(v[i]) for v in table.values()])
    np.savetxt(paths[2], r.covariance, delimiter=",", fmt="%.10g")
    metrics_path = out / "metrics.json"
    metrics_path.write_text(json.dumps(_finite(r.metrics), indent=1, sort_keys=True))
    paths.append(metrics_path)
    paths.append(save(plot_unfolding(r, title), out / "unfolded.png"))
    if len(r.iterations) > 1:
        paths.append(save(plot_iterations(r, title), out / "iterations.png"))
    return paths


def _fmt(v: float) -> str:
    return "" if not math.isfinite(float(v)) else f"{float(v):.10g}"
