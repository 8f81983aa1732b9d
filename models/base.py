"""The contract every model family meets, so one training loop and one scan serve them all.

A family is registered in :data:`models.registry.REGISTRY` as a :class:`Family`. The training
loop (jobs/train) does, for any family:

.. code-block:: python

    family = REGISTRY[name]
    spec = family.data_spec(manifest_dict)          # which dataset columns feed x and y
    config = family.config_cls(**params)            # dataclass, stored with every checkpoint
    model = family.build(config, spec.dims)         # an nn.Module implementing HepModel
    optimizers = model.configure_optimizers(lr)
    for batch in batches:                           # batch = {"x": Tensor, "y": Tensor}
        stats = model.training_step(batch, optimizers, step_fn)
    metrics = model.evaluate({"x": X_val, "y": Y_val})   # names in family.metrics

``step_fn(optimizer, loss)`` is supplied by the loop: it runs backward and the (possibly
Horovod-wrapped) optimizer step, so families with several optimizers (GAN) stay backend-agnostic.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

TargetKind = Literal["class", "multiclass", "continuous"]
StepFn = Callable[[torch.optim.Optimizer, Tensor], None]


@dataclass(frozen=True)
class DataDims:
    """Sizes a family needs to build its network, derived from the dataset manifest."""

    n_inputs: int
    n_classes: tuple[int, ...] = ()  # one entry per head (class targets); () for continuous
    n_targets: int = 0  # continuous target dimension (generative families)


@dataclass(frozen=True)
class DataSpec:
    """Which shard columns form x and y, and what y is.

    x columns are float features (stacked in order); y columns are int class indices
    (``class``: one column, ``multiclass``: one per head) or floats (``continuous``).
    ``standardise`` lists x/y columns the loop must standardise with train-split mean/std
    (already-standardised ``feat_*`` columns are not listed).
    """

    x_columns: tuple[str, ...]
    y_columns: tuple[str, ...]
    target_kind: TargetKind
    dims: DataDims
    standardise: tuple[str, ...] = ()
    drop_negative_y: bool = False  # rows with y < 0 (outside the binning) are not trainable
    extra: Mapping[str, Any] = field(default_factory=dict)  # e.g. bin edges for metrics


class HepModel(Protocol):
    """What the training loop calls on a built model (an ``nn.Module``)."""

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]: ...

    def training_step(
        self, batch: dict[str, Tensor], optimizers: list[torch.optim.Optimizer], step_fn: StepFn
    ) -> dict[str, float]: ...

    @torch.no_grad()
    def evaluate(self, data: dict[str, Tensor]) -> dict[str, float]: ...


# A search-space entry: ("uniform", lo, hi) | ("loguniform", lo, hi) | ("int", lo, hi)
# | ("choice", [values...]) ; conditional params are expressed by scan configs, not here.
SearchSpace = dict[str, tuple[Any, ...]]


@dataclass(frozen=True)
class Family:
    """One registered model family."""

    name: str
    config_cls: type
    build: Callable[[Any, DataDims], nn.Module]
    data_spec: Callable[[Mapping[str, Any]], DataSpec]
    search_space: Callable[[], SearchSpace]
    metrics: tuple[str, ...]  # keys evaluate() returns, usable as scan objectives
    description: str = ""
