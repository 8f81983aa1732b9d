"""Parameterized signal/background classifier (Baldi, Cranmer, Faucett, Sadowski, Whiteson 2016).

An MLP on the event features plus the signal-mass hypothesis m as one more input, trained with
binary cross-entropy on signal events at their true mass and background events with a mass
drawn from the signal mass list (the ``ttbar`` sample draws it; :mod:`jobs.simulate.ttbar`).
One network then serves every mass hypothesis, including masses between the trained ones
(interpolation): evaluate background and signal with the mass column set to the hypothesis.

Manifest section this family reads (``classify`` in the preprocess config)::

    "classify": {"label": "truth_label", "mass": "truth_mass"}

Inputs: the ``feat_*`` columns (standardised by preprocess) then the mass column (standardised
by the loop with the train-split mean/std); target: the label (0 background, 1 signal).

Per-epoch metrics (scan objectives): ``val_loss`` (BCE), ``auc`` (ROC AUC of all validation
rows, background at their drawn masses), ``auc_mean`` (mean over the signal masses of the
validation split of the AUC of that mass's signal against all background evaluated at that
mass; the overall ``auc`` when the signal has more than 32 distinct masses, i.e. no mass grid),
``rejection_at_50`` (background rejection 1/ε_B at 50 % signal efficiency, all rows).
``forward`` returns the logit (B,); :meth:`ParamClassifier.score` the probability.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

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
from models.metrics import rejection_at_efficiency, roc_auc

__all__ = ["FAMILY", "ParamClassifier", "ParamClassifierConfig", "classify_columns"]

NAME = "param_classifier"
METRICS = ("val_loss", "auc", "auc_mean", "rejection_at_50")
MODES = {"val_loss": "min", "auc": "max", "auc_mean": "max", "rejection_at_50": "max"}
MAX_MASS_POINTS = 32


@dataclass
class ParamClassifierConfig:
    hidden: int = 64
    depth: int = 3
    dropout: float = 0.0
    weight_decay: float = 0.0


def classify_columns(manifest: Manifest, family: str) -> tuple[str, str | None]:
    """(label column, mass column or None) of the manifest's ``classify`` section."""
    from models.errors import ConfigError

    sec = manifest_section(manifest, "classify", family)
    label, mass = sec.get("label"), sec.get("mass")
    if not isinstance(label, str) or not label:
        raise ConfigError("manifest.json: 'classify.label' must name the 0/1 label column")
    if mass is not None and (not isinstance(mass, str) or not mass):
        raise ConfigError("manifest.json: 'classify.mass' must name a column or be null")
    return label, mass


def data_spec(manifest: Manifest) -> DataSpec:
    from models.errors import ConfigError

    label, mass = classify_columns(manifest, NAME)
    if mass is None:
        raise ConfigError(
            f"manifest.json: family {NAME!r} needs 'classify.mass' (the mass-parameter column)"
        )
    x_cols = (*manifest_features(manifest, NAME), mass)
    return DataSpec(
        x_columns=x_cols,
        y_columns=(label,),
        target_kind="class",
        dims=DataDims(n_inputs=len(x_cols), n_classes=(2,)),
        standardise=(mass,),
        extra={"label": label, "mass": mass, "output": "score"},
    )


def mass_points(mass: Tensor, signal: Tensor) -> Tensor | None:
    """The distinct (standardised) masses of the signal rows, or None beyond a grid's size."""
    values = torch.unique(mass[signal])
    return values if 0 < len(values) <= MAX_MASS_POINTS else None


class ParamClassifier(StandardisationBuffers):
    """Keeps the loop's standardisation of the mass input (buffers), so :meth:`score` takes the
    mass in GeV (``hepscan apply``, MLflow pyfunc); ``forward`` takes standardised inputs."""

    def __init__(self, config: ParamClassifierConfig, dims: DataDims) -> None:
        super().__init__()
        self.config = config
        self._init_standardisation(dims.n_inputs, 0)
        self.net = mlp(dims.n_inputs, [config.hidden] * config.depth, 1, dropout=config.dropout)

    def forward(self, x: Tensor) -> Tensor:
        """The logit (B,) from the standardised features and mass (last column)."""
        return self.net(x).squeeze(-1)  # type: ignore[no-any-return]

    @torch.no_grad()
    def score(self, x: Tensor) -> Tensor:
        """Signal probability (B,) in eval mode; the mass column in physical units (the
        ``feat_*`` columns as preprocess standardised them)."""
        x = x.to(model_device(self), model_dtype(self))
        with eval_mode(self):
            return torch.sigmoid(chunked(self, self.standardise_x(x)))

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.parameters(), lr=lr, weight_decay=self.config.weight_decay)]

    def training_step(
        self, batch: dict[str, Tensor], optimizers: list[torch.optim.Optimizer], step_fn: StepFn
    ) -> dict[str, float | Tensor]:
        y = batch["y"].to(model_dtype(self))
        loss = F.binary_cross_entropy_with_logits(self(batch["x"]), y)
        step_fn(optimizers[0], loss)
        return {"loss": loss.detach()}

    @torch.no_grad()
    def evaluate(self, data: dict[str, Tensor]) -> dict[str, float]:
        dev = model_device(self)
        x = data["x"].to(dev, model_dtype(self))
        y = data["y"].to(dev).reshape(-1)
        with eval_mode(self):
            logits = chunked(self, x)
        loss = F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype))
        labels = y.cpu().numpy()
        scores = logits.double().cpu().numpy()
        out = {
            "val_loss": float(loss),
            "auc": roc_auc(scores, labels),
            "rejection_at_50": rejection_at_efficiency(scores, labels, 0.5),
        }
        signal = y > 0
        points = mass_points(x[:, -1], signal)
        if points is None:
            out["auc_mean"] = out["auc"]
            return out
        bkg = x[~signal]
        aucs = []
        for m in points:
            sig = x[signal & (x[:, -1] == m)]
            hyp = bkg.clone()
            hyp[:, -1] = m  # background evaluated at this mass hypothesis
            with eval_mode(self):
                s = torch.cat([chunked(self, sig), chunked(self, hyp)]).double().cpu().numpy()
            lab = np.r_[np.ones(len(sig)), np.zeros(len(hyp))]
            aucs.append(roc_auc(s, lab))
        finite = [a for a in aucs if math.isfinite(a)]
        out["auc_mean"] = float(np.mean(finite)) if finite else math.nan
        return out


def build(config: ParamClassifierConfig, dims: DataDims) -> ParamClassifier:
    return ParamClassifier(config, dims)


def search_space() -> SearchSpace:
    return {
        "hidden": ("int", 32, 256),
        "depth": ("int", 2, 5),
        "dropout": ("uniform", 0.0, 0.2),
    }


FAMILY = Family(
    name=NAME,
    config_cls=ParamClassifierConfig,
    build=build,
    data_spec=data_spec,
    search_space=search_space,
    metrics=METRICS,
    description="Parameterized signal/background classifier (mass hypothesis as an input).",
    metric_modes=MODES,
)
