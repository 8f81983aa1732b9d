"""Regression MLP: continuous targets from event-level features (the hadronic-recoil DNN of
``../shared/papers/004``: dense layers with batch normalisation, Adam).

Data: x = the manifest's ``feat_*`` columns (standardised by preprocessing), y = the
``regression.target`` columns (standardised by the training loop with train-split mean/std and
kept as buffers, so :meth:`RegressionNet.predict` returns physical units).

Loss (``RegressionConfig.loss``, in standardised target units): ``mse``, ``huber``
(``huber_delta``) or ``quantile`` (pinball loss at ``quantile``; 0.5 = the median, robust to the
recoil's non-Gaussian tails).

Per-epoch metrics (all ``min``): ``val_loss`` (the training loss), ``rmse`` (physical units,
over all targets), and for a two-component target read as a vector — the hadronic recoil —
:func:`models.metrics.recoil_scores` of the prediction against the truth: ``response_bias``
(|⟨u∥⟩/⟨pT⟩ − 1|), ``resolution_par`` (σ(u∥ − pT)), ``resolution_perp`` (σ(u⊥)) and their
response-corrected forms ``resolution_{par,perp}_corr``; ``response`` itself is reported too
(not an objective: it should be 1, neither minimal nor maximal). With another number of
targets the vector metrics are NaN.

.. code-block:: bash

    hepscan preprocess configs/preprocess_recoil.yaml --out data/recoil_shards
    hepscan scan configs/regression_recoil.yaml --scan-dir scans/regression_recoil
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import (
    DataDims,
    DataSpec,
    Family,
    SearchSpace,
    StandardisationBuffers,
    StepFn,
    chunked,
    eval_mode,
    manifest_features,
    manifest_section,
    mlp,
    model_device,
    model_dtype,
)
from models.manifest import Manifest

__all__ = ["FAMILY", "RegressionConfig", "RegressionNet", "regression_loss"]

NAME = "regression"
LOSSES = ("mse", "huber", "quantile")
ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "silu": nn.SiLU}
VECTOR_METRICS = (
    "response_bias",
    "resolution_par",
    "resolution_perp",
    "resolution_par_corr",
    "resolution_perp_corr",
)
METRICS = ("val_loss", "rmse", *VECTOR_METRICS)
MODES = {m: "min" for m in METRICS}


@dataclass
class RegressionConfig:
    hidden: int = 128
    depth: int = 3
    activation: str = "relu"
    batchnorm: bool = True
    dropout: float = 0.0
    loss: str = "mse"
    huber_delta: float = 1.0  # standardised target units
    quantile: float = 0.5
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"activation must be one of {tuple(ACTIVATIONS)}, got {self.activation!r}"
            )
        if not 0.0 < self.quantile < 1.0:
            raise ValueError(f"quantile must lie in (0, 1), got {self.quantile}")
        if self.huber_delta <= 0:
            raise ValueError(f"huber_delta must be > 0, got {self.huber_delta}")
        if self.hidden < 1 or self.depth < 0:
            raise ValueError("hidden must be >= 1 and depth >= 0")


def regression_loss(pred: Tensor, y: Tensor, config: RegressionConfig) -> Tensor:
    """The configured loss, averaged over rows and targets."""
    if config.loss == "mse":
        return F.mse_loss(pred, y)
    if config.loss == "huber":
        return F.huber_loss(pred, y, delta=config.huber_delta)
    diff = y - pred
    q = config.quantile
    return torch.maximum(q * diff, (q - 1.0) * diff).mean()


def data_spec(manifest: Manifest) -> DataSpec:
    """x = ``feat_*`` (already standardised), y = ``regression.target`` (continuous)."""
    from models.errors import ConfigError

    section = manifest_section(manifest, "regression", NAME)
    target = section.get("target")
    if not isinstance(target, (list, tuple)) or not target:
        raise ConfigError("manifest.json: 'regression.target' must be a non-empty list")
    x_cols = manifest_features(manifest, NAME)
    y_cols = tuple(map(str, target))
    return DataSpec(
        x_columns=x_cols,
        y_columns=y_cols,
        target_kind="continuous",
        dims=DataDims(n_inputs=len(x_cols), n_targets=len(y_cols), names=y_cols),
        standardise=y_cols,
    )


class RegressionNet(StandardisationBuffers):
    def __init__(self, config: RegressionConfig, dims: DataDims) -> None:
        super().__init__()
        if dims.n_targets < 1:
            raise ValueError(f"{NAME} needs continuous targets (DataDims.n_targets >= 1)")
        self.config = config
        self.n_targets = dims.n_targets
        self._init_standardisation(dims.n_inputs, dims.n_targets)
        self.net = mlp(
            dims.n_inputs,
            [config.hidden] * config.depth,
            dims.n_targets,
            activation=ACTIVATIONS[config.activation],
            batchnorm=config.batchnorm,
            dropout=config.dropout,
        )

    def forward(self, x: Tensor) -> Tensor:
        """Standardised targets from the network's (standardised) inputs."""
        return self.net(x)  # type: ignore[no-any-return]

    @torch.no_grad()
    def predict(self, x: Tensor) -> Tensor:
        """Targets in physical units (rows, targets) from the network's inputs."""
        x = self.standardise_x(x.to(model_device(self), model_dtype(self)))
        with eval_mode(self):
            return self.unstandardise_y(chunked(self, x))

    @torch.no_grad()
    def sample(self, condition: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """:meth:`predict` (deterministic; ``generator`` is unused): what ``hepscan apply``
        and :class:`models.bundle.ModelBundle` call for continuous-target families."""
        return self.predict(condition)

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.parameters(), lr=lr, weight_decay=self.config.weight_decay)]

    def training_step(
        self, batch: dict[str, Tensor], optimizers: list[torch.optim.Optimizer], step_fn: StepFn
    ) -> dict[str, float | Tensor]:
        loss = regression_loss(
            self(batch["x"]), batch["y"].reshape(len(batch["x"]), -1), self.config
        )
        step_fn(optimizers[0], loss)
        return {"loss": loss.detach()}

    @torch.no_grad()
    def evaluate(self, data: dict[str, Tensor]) -> dict[str, float]:
        from models.metrics import recoil_scores

        dev = model_device(self)
        x = data["x"].to(dev, model_dtype(self))
        y = data["y"].to(dev, model_dtype(self)).reshape(len(x), -1)
        with eval_mode(self):
            pred = chunked(self, x)
        out = {"val_loss": float(regression_loss(pred, y, self.config))}
        p_phys = self.unstandardise_y(pred).double().cpu().numpy()
        y_phys = self.unstandardise_y(y).double().cpu().numpy()
        out["rmse"] = float(((p_phys - y_phys) ** 2).mean() ** 0.5) if len(x) else math.nan
        if self.n_targets == 2:
            scores = recoil_scores(p_phys, y_phys)
        else:
            scores = {k: math.nan for k in (*VECTOR_METRICS, "response")}
        out.update({k: float(v) for k, v in scores.items()})
        return out


def build(config: RegressionConfig, dims: DataDims) -> RegressionNet:
    return RegressionNet(config, dims)


def search_space() -> SearchSpace:
    return {
        "hidden": ("int", 32, 256),
        "depth": ("int", 2, 5),
        "activation": ("choice", ["relu", "tanh", "silu"]),
        "batchnorm": ("choice", [True, False]),
        "loss": ("choice", ["mse", "huber"]),
    }


FAMILY = Family(
    name=NAME,
    config_cls=RegressionConfig,
    build=build,
    data_spec=data_spec,
    search_space=search_space,
    metrics=METRICS,
    description="MLP regression of continuous targets (MSE / Huber / quantile loss); "
    "recoil response and resolution metrics for a 2-D vector target.",
    metric_modes=MODES,
)
