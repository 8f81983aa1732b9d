"""Resolve and cross-check a TrainConfig against its dataset and family.

:func:`prepare` raises (naming the manifest, key or column) before any row is read or any
process starts; :class:`TrainSession` then streams the rows (:mod:`jobs.train.feed`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from jobs.manifest import MANIFEST_NAME, Manifest, load_manifest
from jobs.train.config import TrainConfig
from models.errors import ConfigError

__all__ = ["MODEL_DIM_KEYS", "Prepared", "prepare", "resolve_family"]

MODEL_DIM_KEYS = ("n_bins", "n_classes", "n_inputs", "n_features")


def resolve_family(name: str) -> Any:
    """A registered :class:`models.base.Family`, or ``"pkg.module:ATTR"`` for one defined elsewhere."""
    from models.registry import get_family

    try:
        return get_family(name)
    except ConfigError as exc:
        raise ConfigError(f"key 'family': {exc}") from None


@dataclass
class Prepared:
    """Everything checked before any data row is read: manifest, family, spec, model config."""

    manifest: Manifest
    family: Any
    spec: Any
    model_config: Any


def prepare(config: TrainConfig) -> Prepared:
    """Resolve and cross-check manifest, family and model config; raises before training starts."""
    manifest = load_manifest(config.dataset)
    mpath = manifest.root / MANIFEST_NAME
    family = resolve_family(config.family)
    spec = family.data_spec(manifest)
    wanted = list(dict.fromkeys([*spec.x_columns, *spec.y_columns]))
    missing = [c for c in wanted if c not in manifest.columns]
    if missing:
        raise ConfigError(
            f"{mpath}: family {config.family!r} needs column(s) {missing} that the dataset "
            f"lacks (have {sorted(manifest.columns)})"
        )
    for split in ("train", "validation"):
        manifest.shard_paths(split)  # raises naming the split when absent
    if spec.dims.n_inputs != len(spec.x_columns):
        raise ConfigError(
            f"{mpath}: family {config.family!r} expects {spec.dims.n_inputs} input features "
            f"but its columns {list(spec.x_columns)} give {len(spec.x_columns)}"
        )
    # Dimension keys (n_bins, n_inputs, ...) come from the dataset; a config that pins one must
    # agree with the shards. Families that take them from DataDims do not list them as fields,
    # so a matching value is accepted and dropped.
    dims = {
        "n_inputs": spec.dims.n_inputs,
        "n_features": spec.dims.n_inputs,
        "n_bins": spec.dims.n_classes[0] if spec.dims.n_classes else None,
        "n_classes": spec.dims.n_classes[0] if len(spec.dims.n_classes) == 1 else None,
    }
    for key in MODEL_DIM_KEYS:
        given = config.model.get(key)
        if given is not None and dims[key] is not None and given != dims[key]:
            what = "bin edges" if key in ("n_bins", "n_classes") else "features"
            raise ConfigError(
                f"key 'model.{key}' is {given!r} but the dataset {mpath} has {dims[key]} "
                f"(from its {what}); drop the key or preprocess with matching {what}"
            )
    field_names = {f.name for f in dataclasses.fields(family.config_cls)}
    params = {k: v for k, v in config.model.items() if k in field_names or k not in MODEL_DIM_KEYS}
    unknown = sorted(set(params) - field_names)
    if unknown:
        raise ConfigError(
            f"key 'model': unknown parameter(s) {unknown} for family {config.family!r} "
            f"(allowed: {', '.join(sorted(field_names))})"
        )
    try:
        model_config = family.config_cls(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"key 'model': invalid parameters for {config.family!r}: {exc}") from None
    allowed = {"val_loss", "train_loss", *family.metrics}
    if config.monitor not in allowed and not config.monitor.startswith("train_"):
        raise ConfigError(
            f"key 'monitor': {config.monitor!r} is not reported by family {config.family!r} "
            f"(choose from {', '.join(sorted(allowed))})"
        )
    modes = getattr(family, "metric_modes", {}) or {}
    if modes.get(config.monitor, config.mode) != config.mode:
        raise ConfigError(
            f"key 'mode': {config.monitor!r} should be {modes[config.monitor]!r}imised, "
            f"not {config.mode!r}imised"
        )
    return Prepared(manifest, family, spec, model_config)
