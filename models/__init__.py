"""hepscan model families (plain ``nn.Module``s), the registry, physics metrics, baselines.

``import models`` imports nothing heavy: the names below load torch (and numpy, scipy) on first
use, so ``models.errors`` and ``models.manifest`` stay cheap for every room that raises or reads
them (a Dask preprocessing worker never pays for torch). zuko is imported when a flow is built,
scikit-learn when a classifier two-sample AUC is computed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from models.base import (
        Calibratable,
        DataDims,
        DataSpec,
        Family,
        HepModel,
        SearchSpace,
        Standardisable,
        StandardisationBuffers,
        StepFn,
        standardisation_vectors,
    )
    from models.contract import InvalidFamilyError, validate_family
    from models.manifest import Manifest
    from models.registry import (
        REGISTRY,
        UnknownFamilyError,
        get_family,
        make_config,
        register_family,
    )

_HOME = {
    **dict.fromkeys(
        (
            "Calibratable",
            "DataDims",
            "DataSpec",
            "Family",
            "HepModel",
            "SearchSpace",
            "Standardisable",
            "StandardisationBuffers",
            "StepFn",
            "standardisation_vectors",
        ),
        "models.base",
    ),
    "InvalidFamilyError": "models.contract",
    "validate_family": "models.contract",
    "Manifest": "models.manifest",
    **dict.fromkeys(
        ("REGISTRY", "UnknownFamilyError", "get_family", "make_config", "register_family"),
        "models.registry",
    ),
}


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return getattr(importlib.import_module(home), name)


__all__ = [
    "REGISTRY",
    "Calibratable",
    "DataDims",
    "DataSpec",
    "Family",
    "HepModel",
    "InvalidFamilyError",
    "Manifest",
    "SearchSpace",
    "Standardisable",
    "StandardisationBuffers",
    "StepFn",
    "UnknownFamilyError",
    "get_family",
    "make_config",
    "register_family",
    "standardisation_vectors",
    "validate_family",
]
