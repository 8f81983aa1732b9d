"""hepscan model families (plain ``nn.Module``s), the registry, physics metrics, baselines.

``import models`` loads torch, numpy and scipy only; zuko is imported when a flow is built,
scikit-learn when a classifier two-sample AUC is computed.
"""

from models.base import (
    DataDims,
    DataSpec,
    Family,
    HepModel,
    SearchSpace,
    StandardisationBuffers,
    StepFn,
    standardisation_vectors,
)
from models.registry import REGISTRY, UnknownFamilyError, get_family, make_config

__all__ = [
    "REGISTRY",
    "DataDims",
    "DataSpec",
    "Family",
    "HepModel",
    "SearchSpace",
    "StandardisationBuffers",
    "StepFn",
    "UnknownFamilyError",
    "get_family",
    "make_config",
    "standardisation_vectors",
]
