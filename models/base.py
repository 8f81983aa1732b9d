"""The contract every model family meets, so one training loop and one scan serve them all.

A family is registered in :data:`models.registry.REGISTRY` as a :class:`Family`. The training
loop (jobs/train) does, for any family:

.. code-block:: python

    family = get_family(name)                       # a registered name or "pkg.module:ATTR"
    spec = family.data_spec(manifest)               # models.manifest.Manifest -> x/y columns
    config = family.config_cls(**params)            # dataclass, stored with every checkpoint
    model = family.build(config, spec.dims)         # an nn.Module that is a HepModel
    optimizers = model.configure_optimizers(lr)
    for batch in batches:                           # batch = {"x": Tensor, "y": Tensor}
        stats = model.training_step(batch, optimizers, step_fn)
    metrics = model.evaluate({"x": X_val, "y": Y_val})   # names in family.metrics

``step_fn(optimizer, loss)`` is supplied by the loop and does exactly
``optimizer.zero_grad(); loss.backward(); optimizer.step()`` (returning ``None``), with the
(possibly Horovod-wrapped) optimizer, so families with several optimizers (GAN) stay
backend-agnostic. A family calls it once per optimizer update and never calls ``backward`` or
``step`` itself; a loss handed to ``step_fn`` only reaches the parameters of that optimizer
(the GAN freezes the other network while its loss is built), so Horovod's per-parameter hooks
fire once per step.

``training_step`` returns the loss(es) of the step as detached 0-d tensors (or floats; a
``float(loss)`` costs a device sync per step on GPU, a tensor is summed on the device and read
once per epoch); ``evaluate`` switches to eval mode,
restores the previous mode, and returns ``{name: float}`` with at least ``val_loss`` and every
name in ``family.metrics``; ``family.metric_modes`` says whether a scan should minimise or
maximise each.

Standardisation: the loop standardises the ``spec.standardise`` columns with train-split
mean/std. Families that produce physical values (``smear``, ``sample``) derive from
:class:`StandardisationBuffers`; the loop then calls
``model.set_standardisation(x_mean, x_std, y_mean, y_std)`` (vectors aligned with
``spec.x_columns`` / ``spec.y_columns``, identity for unlisted columns; see
:func:`standardisation_vectors`). The values are buffers, so they travel with the state_dict.

Optional hooks are typed protocols, found with ``isinstance`` (never by name): a model that is
:class:`Standardisable` receives the loop's standardisation, one that is :class:`Calibratable`
is refitted after every epoch (``TrainConfig.calibrate``). The executable form of this contract
is :mod:`models.testing` (run it on your own family); :func:`models.contract.validate_family`
is its cheap static part, run when a scan config is loaded.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from models.manifest import Manifest

__all__ = [
    "Calibratable",
    "DataDims",
    "DataSpec",
    "Family",
    "HepModel",
    "SearchSpace",
    "Standardisable",
    "StandardisationBuffers",
    "StepFn",
    "TargetKind",
    "chunked",
    "default_device",
    "eval_mode",
    "manifest_features",
    "manifest_section",
    "mlp",
    "model_device",
    "model_dtype",
    "standardisation_vectors",
]

TargetKind = Literal["class", "multiclass", "continuous"]
StepFn = Callable[[torch.optim.Optimizer, Tensor], None]


@dataclass(frozen=True)
class DataDims:
    """Sizes a family needs to build its network, derived from the dataset manifest."""

    n_inputs: int
    n_classes: tuple[int, ...] = ()  # one entry per head (class targets); () for continuous
    n_targets: int = 0  # continuous target dimension (generative families)
    # Optional, additive: what some families need at build time so that a checkpoint is
    # self-contained (stored as buffers). One entry per head / target.
    names: tuple[str, ...] = ()  # head or target names (resolution: quantities; gen: targets)
    edges: tuple[tuple[float, ...], ...] = ()  # unfolding: (edges,); resolution: per head
    relative: tuple[bool, ...] = ()  # resolution: delta is (reco - truth) / truth
    periodic: tuple[bool, ...] = ()  # resolution: wrap reco into (-pi, pi] (phi)
    # generative (models.response): per target, its condition column and its response spread
    pairs: tuple[int, ...] = ()
    scales: tuple[float, ...] = ()


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


@runtime_checkable
class HepModel(Protocol):
    """What the training loop calls on a built model (which is also an ``nn.Module``).

    ``isinstance(model, HepModel)`` checks that the three methods exist (not their signatures;
    :mod:`models.testing` calls them)."""

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]: ...

    def training_step(
        self, batch: dict[str, Tensor], optimizers: list[torch.optim.Optimizer], step_fn: StepFn
    ) -> dict[str, float | Tensor]: ...

    @torch.no_grad()
    def evaluate(self, data: dict[str, Tensor]) -> dict[str, float]: ...


@runtime_checkable
class Standardisable(Protocol):
    """Optional hook: the model keeps the loop's train-split standardisation (as buffers).

    :class:`StandardisationBuffers` implements it; vectors are aligned with the spec's
    columns (see :func:`standardisation_vectors`)."""

    def set_standardisation(
        self,
        x_mean: Tensor,
        x_std: Tensor,
        y_mean: Tensor | None = None,
        y_std: Tensor | None = None,
    ) -> None: ...


@runtime_checkable
class Calibratable(Protocol):
    """Optional hook: refit a calibration on training rows with the network frozen.

    The loop calls it after every epoch (``TrainConfig.calibrate``) with all of a rank's
    training rows and, data-parallel, ``reduce`` = a sum over ranks that the model applies to
    every sum it forms (so all ranks end with the same calibration). Returns diagnostics."""

    def calibrate(
        self,
        x: Tensor,
        y: Tensor,
        weights: Tensor | None = None,
        *,
        max_iter: int = 100,
        tol: float = 1e-9,
        reduce: Callable[[Tensor], Tensor] | None = None,
    ) -> dict[str, float]: ...


# A search-space entry: ("uniform", lo, hi) | ("loguniform", lo, hi) | ("int", lo, hi)
# | ("choice", [values...]) ; conditional params are expressed by scan configs, not here.
SearchSpace = dict[str, tuple[Any, ...]]


@dataclass(frozen=True)
class Family:
    """One model family: registered by name, or reached as ``"package.module:ATTR"``.

    ``config_cls`` is a dataclass whose fields all have defaults (the searchable
    hyperparameters); ``build(config, dims)`` returns an ``nn.Module`` that is a
    :class:`HepModel`; ``data_spec(manifest)`` reads the typed
    :class:`models.manifest.Manifest`; ``search_space()`` is the default scan space
    (:data:`SearchSpace`) over ``config_cls`` fields."""

    name: str
    config_cls: type
    build: Callable[[Any, DataDims], nn.Module]
    data_spec: Callable[[Manifest], DataSpec]
    search_space: Callable[[], SearchSpace]
    metrics: tuple[str, ...]  # keys evaluate() returns, usable as scan objectives
    description: str = ""
    # Additive: "min" or "max" per metric name, so a scan knows the direction of an objective.
    metric_modes: Mapping[str, str] = field(default_factory=dict)

    def mode(self, metric: str) -> str:
        """``"min"`` or ``"max"`` for ``metric`` (losses and distances default to ``"min"``)."""
        return self.metric_modes.get(metric, "min")


def manifest_section(manifest: Manifest, key: str, family: str) -> Mapping[str, Any]:
    """The manifest's ``key`` section (``unfold``, ``resolution``, ``generative``), or a
    :class:`models.errors.ConfigError` naming the key and the sections the dataset has."""
    from models.errors import ConfigError
    from models.manifest import SECTIONS

    section = getattr(manifest, key, None) if key in SECTIONS else None
    if not isinstance(section, Mapping) or not section:
        have = [s for s in SECTIONS if getattr(manifest, s, None)]
        raise ConfigError(
            f"manifest.json: family {family!r} needs the {key!r} section, "
            f"which this dataset lacks (it has {have}); preprocess with that target"
        )
    return section


def manifest_features(manifest: Manifest, family: str) -> tuple[str, ...]:
    """The ``feat_<name>`` columns, in manifest order; a ConfigError if there are none."""
    from models.errors import ConfigError

    if not manifest.features:
        raise ConfigError(f"manifest.json: family {family!r} needs a non-empty 'features' list")
    return tuple(f"feat_{f}" for f in manifest.features)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def standardisation_vectors(
    spec: DataSpec, mean: Mapping[str, float], std: Mapping[str, float]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(x_mean, x_std, y_mean, y_std) aligned with the spec's columns; identity where a column
    is not in ``spec.standardise``."""

    def vec(cols: tuple[str, ...], stats: Mapping[str, float], fill: float) -> Tensor:
        return torch.tensor(
            [float(stats[c]) if c in spec.standardise else fill for c in cols],
            dtype=torch.float32,
        )

    return (
        vec(spec.x_columns, mean, 0.0),
        vec(spec.x_columns, std, 1.0),
        vec(spec.y_columns, mean, 0.0) if spec.target_kind == "continuous" else torch.zeros(0),
        vec(spec.y_columns, std, 1.0) if spec.target_kind == "continuous" else torch.ones(0),
    )


class StandardisationBuffers(nn.Module):
    """Mixin holding the loop's standardisation of x (and continuous y) as buffers."""

    x_mean: Tensor
    x_std: Tensor
    y_mean: Tensor
    y_std: Tensor

    def _init_standardisation(self, n_x: int, n_y: int) -> None:
        self.register_buffer("x_mean", torch.zeros(n_x))
        self.register_buffer("x_std", torch.ones(n_x))
        self.register_buffer("y_mean", torch.zeros(n_y))
        self.register_buffer("y_std", torch.ones(n_y))

    @torch.no_grad()
    def set_standardisation(
        self,
        x_mean: Tensor,
        x_std: Tensor,
        y_mean: Tensor | None = None,
        y_std: Tensor | None = None,
    ) -> None:
        self.x_mean.copy_(torch.as_tensor(x_mean, dtype=torch.float32))
        self.x_std.copy_(torch.as_tensor(x_std, dtype=torch.float32))
        if y_mean is not None and self.y_mean.numel():
            self.y_mean.copy_(torch.as_tensor(y_mean, dtype=torch.float32))
        if y_std is not None and self.y_std.numel():
            self.y_std.copy_(torch.as_tensor(y_std, dtype=torch.float32))

    def standardise_x(self, x: Tensor) -> Tensor:
        return (x - self.x_mean) / self.x_std

    def unstandardise_y(self, y: Tensor) -> Tensor:
        return y * self.y_std + self.y_mean


def mlp(
    n_in: int,
    widths: tuple[int, ...] | list[int],
    n_out: int,
    *,
    activation: type[nn.Module] = nn.ReLU,
    batchnorm: bool = False,
    dropout: float = 0.0,
) -> nn.Sequential:
    """Linear → [act → (BN) → (dropout)] per hidden width → Linear(n_out)."""
    layers: list[nn.Module] = []
    prev = n_in
    for w in widths:
        layers += [nn.Linear(prev, int(w)), activation()]
        if batchnorm:
            layers.append(nn.BatchNorm1d(int(w)))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        prev = int(w)
    layers.append(nn.Linear(prev, n_out))
    return nn.Sequential(*layers)


class eval_mode:
    """``with eval_mode(model):`` — eval mode inside, the previous mode restored after."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.was_training = module.training

    def __enter__(self) -> nn.Module:
        self.module.eval()
        return self.module

    def __exit__(self, *exc: object) -> None:
        self.module.train(self.was_training)


def model_device(module: nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def model_dtype(module: nn.Module) -> torch.dtype:
    """Floating dtype of the parameters, so float64 training (TrainConfig.dtype) casts inputs alike."""
    for p in module.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def chunked(fn: Callable[[Tensor], Tensor], x: Tensor, chunk: int = 65536) -> Tensor:
    """``fn`` over row chunks of ``x``, concatenated (bounded memory for big validation sets)."""
    if len(x) <= chunk:
        return fn(x)
    return torch.cat([fn(x[i : i + chunk]) for i in range(0, len(x), chunk)])
