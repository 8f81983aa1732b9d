"""The typed dataset manifest: what a preprocessed dataset directory holds.

This is the contract between ``jobs/preprocess`` (the writer) and the training loop, the scan
and the model families (readers). It lives in the lowest room so that families receive it
typed; reading and writing ``manifest.json`` is :mod:`jobs.manifest`'s job.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import ConfigError

__all__ = ["MANIFEST_NAME", "MANIFEST_VERSION", "SECTIONS", "SPLITS", "Manifest"]

MANIFEST_NAME = "manifest.json"
SPLITS = ("train", "validation", "test")
MANIFEST_VERSION = 1
# Optional target sections, one per kind of model family.
SECTIONS = ("unfold", "resolution", "generative", "classify", "regression")


@dataclass(frozen=True)
class Manifest:
    """What a dataset directory holds; read with :func:`load_manifest`."""

    root: Path
    sample: str
    features: list[str]
    scaler: dict[str, list[float]]
    splits: dict[str, dict[str, Any]]
    columns: dict[str, str]
    unfold: dict[str, Any] | None = None
    resolution: dict[str, Any] | None = None
    generative: dict[str, Any] | None = None
    classify: dict[str, Any] | None = None  # {"label": column, "mass": column | None}
    regression: dict[str, Any] | None = None
    version: int = MANIFEST_VERSION  # manifest_version of manifest.json
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], root: str | Path = ".") -> Manifest:
        """A manifest from its JSON content; keys a family does not read may be omitted
        (studies and tests build small ones: ``{"features": [...], "unfold": {...}}``)."""
        features = raw.get("features", [])
        if not isinstance(features, list | tuple):
            raise ConfigError(f"{Path(root) / MANIFEST_NAME}: 'features' must be a list")
        return cls(
            root=Path(root),
            sample=str(raw.get("sample", "")),
            features=[str(f) for f in features],
            scaler=dict(raw.get("scaler", {})),
            splits=dict(raw.get("splits", {})),
            columns=dict(raw.get("columns", {})),
            unfold=raw.get("unfold"),
            resolution=raw.get("resolution"),
            generative=raw.get("generative"),
            classify=raw.get("classify"),
            regression=raw.get("regression"),
            version=int(raw.get("manifest_version", raw.get("version", MANIFEST_VERSION))),
            raw=dict(raw),
        )

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def unfold_edges(self) -> np.ndarray:
        if self.unfold is None:
            raise ConfigError(f"{self.root / MANIFEST_NAME}: dataset has no 'unfold' targets")
        return np.asarray(self.unfold["edges"], dtype=np.float64)

    def rows(self, split: str) -> int:
        return int(self.splits[split]["rows"])

    def shard_paths(self, split: str) -> list[Path]:
        if split not in self.splits:
            raise ConfigError(
                f"{self.root / MANIFEST_NAME}: no split {split!r} (have {sorted(self.splits)})"
            )
        return [self.root / f["path"] for f in self.splits[split]["files"]]
