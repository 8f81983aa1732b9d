"""hepscan model families (plain ``nn.Module``s), the registry, physics metrics, baselines.

``import models`` loads torch, numpy and scipy only; zuko is imported when a flow is built,
scikit-learn when a classifier two-sample AUC is computed.
"""

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
