"""The model families by name; the training loop and the scan look families up here.

.. code-block:: python

    from models.registry import get_family, make_config
    family = get_family("unfold_bins")
    spec = family.data_spec(manifest.raw)
    model = family.build(make_config(family, {"alpha": 8, "p": 2}), spec.dims)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from models import flow, gan, resolution, unfold_bins, unfold_migration
from models.base import Family
from models.errors import ConfigError

__all__ = ["REGISTRY", "UnknownFamilyError", "get_family", "make_config"]

REGISTRY: dict[str, Family] = {
    "unfold_bins": unfold_bins.FAMILY,
    "unfold_migration": unfold_migration.FAMILY,
    "resolution": resolution.FAMILY,
    "gan": gan.FAMILY,
    "flow": flow.FAMILY,
}


class UnknownFamilyError(ConfigError):
    """A family name that is not registered (a ValueError, and a HepscanError for the CLI)."""


def get_family(name: str) -> Family:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownFamilyError(
            f"unknown model family {name!r}; valid families: {', '.join(sorted(REGISTRY))}"
        ) from None


def make_config(family: Family, params: Mapping[str, Any] | None = None) -> Any:
    """``family.config_cls(**params)``, rejecting unknown keys with a message naming them.

    Extra keys of the scan (e.g. ``lr``, ``batch_size``) must be removed before the call."""
    params = dict(params or {})
    fields = {f.name for f in dataclasses.fields(family.config_cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ConfigError(
            f"model family {family.name!r}: unknown parameter(s) {unknown}; valid: {sorted(fields)}"
        )
    try:
        return family.config_cls(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model family {family.name!r}: {exc}") from None
