"""The dataset contract between jobs/preprocess (writer) and jobs/train, scan/ (readers).

A dataset directory holds Parquet shards per split and a ``manifest.json``:

.. code-block:: text

    DIR/manifest.json
    DIR/train/part-00000.parquet ...
    DIR/validation/part-00000.parquet ...
    DIR/test/part-00000.parquet ...

Shard columns (all optional except ``event_id``; the manifest lists which exist):

* ``event_id`` (uint64): stable per-event id; the split is a hash of it.
* ``feat_<name>`` (float32): standardised input features, in ``Manifest.features`` order.
* ``truth_bin`` / ``reco_bin`` (int32): bin index of the unfolding quantity with
  ``Manifest.unfold["edges"]``; -1 when outside the edges. ``migration`` = truth_bin - reco_bin.
* ``res_<q>`` (int32): resolution class of quantity q; ``n_classes`` (the last index) is the
  inefficiency class (object not reconstructed).
* ``truth_<q>`` / ``reco_<q>`` (float64): continuous values for generative models and studies.
* ``weight`` (float64): per-event weight (1 unless the config reweights).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from models.errors import ConfigError, InputError
from models.manifest import MANIFEST_NAME, MANIFEST_VERSION, SPLITS, Manifest

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "SPLITS",
    "Manifest",
    "feature_matrix",
    "load_manifest",
    "load_split",
]


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read ``manifest.json`` (or the directory holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    try:
        raw = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"{p}: manifest not found (run 'hepscan preprocess' first)") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: not valid JSON ({exc})") from None
    for key in ("sample", "features", "scaler", "splits", "columns"):
        if key not in raw:
            raise InputError(f"{p}: manifest lacks key {key!r}")
    return Manifest(
        root=p.parent,
        sample=raw["sample"],
        features=list(raw["features"]),
        scaler=raw["scaler"],
        splits=raw["splits"],
        columns=raw["columns"],
        unfold=raw.get("unfold"),
        resolution=raw.get("resolution"),
        generative=raw.get("generative"),
        raw=raw,
    )


def load_split(
    manifest: Manifest, split: str, columns: list[str] | None = None
) -> dict[str, np.ndarray]:
    """All rows of one split as numpy arrays, shards concatenated in manifest order."""
    import pyarrow.parquet as pq

    wanted = list(manifest.columns) if columns is None else columns
    missing = [c for c in wanted if c not in manifest.columns]
    if missing:
        raise ConfigError(
            f"{manifest.root / MANIFEST_NAME}: columns {missing} not in dataset "
            f"(have {sorted(manifest.columns)})"
        )
    parts: dict[str, list[np.ndarray]] = {c: [] for c in wanted}
    for shard in manifest.shard_paths(split):
        try:
            table = pq.read_table(shard, columns=wanted)
        except (OSError, ValueError) as exc:
            raise InputError(f"{shard}: cannot read shard ({exc})") from None
        for c in wanted:
            parts[c].append(table.column(c).to_numpy())
    return {
        c: (np.concatenate(v) if v else np.empty(0, dtype=manifest.columns[c]))
        for c, v in parts.items()
    }


def feature_matrix(manifest: Manifest, data: dict[str, np.ndarray]) -> np.ndarray:
    """Stack the standardised feature columns into an (N, F) float32 matrix."""
    return np.stack([data[f"feat_{f}"] for f in manifest.features], axis=1).astype(np.float32)
