"""Fast simulation with the resolution, GAN and flow families: truth rows in, reco rows out.

Writes ``OUT/generated.parquet`` (``--format root``: ``OUT/generated.root``, tree ``events``,
via uproot): the input's truth (condition) columns, ``event_id`` when present, and one smeared
reco sample per row (columns named as the model's targets: ``reco_<q>`` plus ``reconstructed``
for ``resolution``; the generative targets for ``gan``/``flow``). When the input also holds
the real reco columns: per-column Wasserstein-1 distance (``w1_<column>``) and the classifier
two-sample AUC on (truth, reco) pairs (:func:`models.metrics.generative_scores`; 0.5 = the
classifier cannot tell generated from real) in ``metrics.json``, and ``generated.png``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from jobs.apply.inputs import Inputs
from models.bundle import ModelBundle
from models.errors import ConfigError

__all__ = ["FORMATS", "GenerateResult", "generate_events", "write_generated"]

FORMATS = ("parquet", "root")


@dataclass
class GenerateResult:
    columns: dict[str, np.ndarray]  # what is written
    generated: list[str]  # generated column names
    real: np.ndarray | None  # the real reco rows (when known), aligned with `generated`
    metrics: dict[str, float] = field(default_factory=dict)


def generate_events(bundle: ModelBundle, inputs: Inputs, *, seed: int = 0) -> GenerateResult:
    """One generated reco row per input row, and the comparison with real reco when present."""
    from models.metrics import classifier_auc, wasserstein_per_feature

    output = "score" if bundle.kind == "score" else "sample"  # classify families: per-event score
    out = bundle.predict(inputs.columns, output=output, seed=seed, where=inputs.source)
    names = [c for c in out if c != "reconstructed"]
    cond_cols = [c for c in bundle.input_columns() if c in inputs.columns]
    columns: dict[str, np.ndarray] = {}
    if "event_id" in inputs.columns:
        columns["event_id"] = np.asarray(inputs.columns["event_id"])
    for c in cond_cols:
        columns[c] = np.asarray(inputs.columns[c], np.float64)
    columns.update(out)
    metrics: dict[str, float] = {"events": float(inputs.rows)}
    if "reconstructed" in out:
        metrics["efficiency"] = float(np.mean(out["reconstructed"]))
    real = None
    if bundle.kind == "score":
        metrics.update(_score_metrics(bundle, inputs, out["score"]))
        return GenerateResult(columns, names, real, metrics)
    if all(c in inputs.columns for c in names):
        real = np.stack([np.asarray(inputs.columns[c], np.float64) for c in names], axis=1)
        gen = np.stack([out[c] for c in names], axis=1)
        ok_real = np.isfinite(real).all(axis=1)
        ok_gen = np.isfinite(gen).all(axis=1)
        if ok_real.any() and ok_gen.any():
            w1 = wasserstein_per_feature(real[ok_real], gen[ok_gen])
            metrics.update({f"w1_{c}": float(v) for c, v in zip(names, w1, strict=True)})
            metrics["w1_mean"] = float(np.mean(w1))
            both = ok_real & ok_gen
            cond = np.stack([columns[c] for c in cond_cols], axis=1)
            if both.sum() >= 8:
                metrics["auc"] = classifier_auc(
                    np.concatenate([cond[both], real[both]], axis=1),
                    np.concatenate([cond[both], gen[both]], axis=1),
                    seed=seed,
                    max_per_sample=20000,
                )
    return GenerateResult(columns, names, real, metrics)


def _score_metrics(bundle: ModelBundle, inputs: Inputs, score: np.ndarray) -> dict[str, float]:
    """ROC AUC and background rejection at 50 % signal efficiency when the input rows carry the
    0/1 label column of the training manifest (``classify.label``); none otherwise."""
    from models.metrics import rejection_at_efficiency, roc_auc

    label = (bundle.manifest.get("classify") or {}).get("label")
    if not label or label not in inputs.columns:
        return {}
    y = np.asarray(inputs.columns[label], np.float64)
    ok = np.isfinite(score) & np.isfinite(y)
    y, s = y[ok], np.asarray(score, np.float64)[ok]
    if not (y == 1).any() or not (y == 0).any():
        return {}
    return {
        "signal_events": float((y == 1).sum()),
        "auc": roc_auc(s, y),
        "rejection_at_50": rejection_at_efficiency(s, y, 0.5),
    }


def write_generated(
    r: GenerateResult, out: Path, fmt: str = "parquet", title: str = ""
) -> list[Path]:
    """``generated.parquet`` or ``generated.root``, ``metrics.json`` and ``generated.png``."""
    from jobs.apply.plots import plot_generated, save

    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: choose from {list(FORMATS)}")
    paths = []
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = out / "generated.parquet"
        pq.write_table(pa.table({k: np.asarray(v) for k, v in r.columns.items()}), path)
    else:
        from models.errors import require

        uproot = require("uproot")
        path = out / "generated.root"
        with uproot.recreate(path) as f:
            f["events"] = {k: _root_array(v) for k, v in r.columns.items()}
    paths.append(path)
    metrics = {k: (v if math.isfinite(v) else None) for k, v in r.metrics.items()}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1, sort_keys=True))
    paths.append(out / "metrics.json")
    gen = np.stack([r.columns[c] for c in r.generated], axis=1)
    paths.append(save(plot_generated(r.real, gen, r.generated, title), out / "generated.png"))
    return paths


def _root_array(v: Any) -> np.ndarray:
    a = np.asarray(v)
    return a.astype(np.uint8) if a.dtype == bool else a
