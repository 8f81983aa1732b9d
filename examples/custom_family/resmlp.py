"""A model family of your own: a residual MLP that classifies events into unfolding truth bins.

This module lives outside hepscan (nothing registers it). A scan or a training run reaches it by
its import string, which every Ray worker, Horovod/DDP rank and SLURM node resolves itself:

.. code-block:: yaml

    family: "resmlp:FAMILY"        # module resmlp (its directory on PYTHONPATH), attribute FAMILY

.. code-block:: bash

    export PYTHONPATH=$PWD/examples/custom_family
    hepscan scan examples/custom_family/scan.yaml --set dataset=data/zll
    python -m pytest -q examples/custom_family/test_resmlp.py     # the family contract

What a family provides (``models.base.Family``): a dataclass config (the hyperparameters, all
with defaults), ``data_spec(manifest)`` reading the typed ``models.manifest.Manifest``,
``build(config, dims)`` returning an ``nn.Module`` with ``configure_optimizers``,
``training_step`` and ``evaluate`` (``models.base.HepModel``), a default search space and the
metric names ``evaluate`` returns. The unfolded histogram is the sum of predicted probabilities,
as in the built-in ``unfold_bins``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from models.base import (
    DataDims,
    DataSpec,
    Family,
    SearchSpace,
    StepFn,
    eval_mode,
    manifest_features,
    manifest_section,
)
from models.manifest import Manifest
from models.metrics import unfolding_scores

__all__ = ["FAMILY", "ResMLP", "ResMLPConfig"]

NAME = "resmlp"


@dataclass
class ResMLPConfig:
    """Hyperparameters; every field is searchable by name in a scan config."""

    width: int = 64
    blocks: int = 2
    dropout: float = 0.0
    weight_decay: float = 0.0


def data_spec(manifest: Manifest) -> DataSpec:
    """x: the standardised ``feat_*`` columns; y: the truth bin of the unfolded quantity."""
    features = manifest_features(manifest, NAME)
    edges = tuple(float(e) for e in manifest_section(manifest, "unfold", NAME)["edges"])
    return DataSpec(
        x_columns=features,
        y_columns=("truth_bin",),
        target_kind="class",
        dims=DataDims(n_inputs=len(features), n_classes=(len(edges) - 1,), edges=(edges,)),
        drop_negative_y=True,  # events outside the binning (-1) are not trainable
    )


class Block(nn.Module):
    """x + MLP(LayerNorm(x)): a pre-norm residual block."""

    def __init__(self, width: int, dropout: float) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, 2 * width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(2 * width, width),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)  # type: ignore[no-any-return]


class ResMLP(nn.Module):
    def __init__(self, config: ResMLPConfig, dims: DataDims) -> None:
        super().__init__()
        self.config = config
        self.n_bins = dims.n_classes[0]
        self.net = nn.Sequential(
            nn.Linear(dims.n_inputs, config.width),
            *(Block(config.width, config.dropout) for _ in range(config.blocks)),
            nn.LayerNorm(config.width),
            nn.Linear(config.width, self.n_bins),
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits over the truth bins, (B, n_bins)."""
        return self.net(x)  # type: ignore[no-any-return]

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return [torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=self.config.weight_decay)]

    def training_step(
        self, batch: dict[str, Tensor], optimizers: list[torch.optim.Optimizer], step_fn: StepFn
    ) -> dict[str, float]:
        loss = F.cross_entropy(self(batch["x"]), batch["y"].reshape(-1).long())
        step_fn(optimizers[0], loss)  # the loop does zero_grad / backward / step
        return {"loss": float(loss.detach())}

    @torch.no_grad()
    def evaluate(self, data: dict[str, Tensor]) -> dict[str, float]:
        param = next(self.parameters())
        x = data["x"].to(param.device, param.dtype)
        y = data["y"].reshape(-1).long().to(param.device)
        keep = y >= 0
        x, y = x[keep], y[keep]
        with eval_mode(self):  # eval mode inside, the caller's mode restored after
            logits = self(x)
        unfolded = F.softmax(logits, dim=1).sum(dim=0, dtype=torch.float64).cpu().numpy()
        truth = np.bincount(y.cpu().numpy(), minlength=self.n_bins).astype(np.float64)
        return {
            "val_loss": float(F.cross_entropy(logits, y)),
            "accuracy": float((logits.argmax(dim=1) == y).float().mean()),
            **unfolding_scores(unfolded, truth),  # chi2_ndf, ks, ad
        }


def build(config: ResMLPConfig, dims: DataDims) -> ResMLP:
    return ResMLP(config, dims)


def search_space() -> SearchSpace:
    return {
        "width": ("choice", [32, 64, 128]),
        "blocks": ("int", 1, 3),
        "dropout": ("uniform", 0.0, 0.2),
    }


FAMILY = Family(
    name=NAME,
    config_cls=ResMLPConfig,
    build=build,
    data_spec=data_spec,
    search_space=search_space,
    metrics=("val_loss", "accuracy", "chi2_ndf", "ks", "ad"),
    metric_modes={
        "val_loss": "min",
        "accuracy": "max",
        "chi2_ndf": "min",
        "ks": "max",
        "ad": "max",
    },
    description="Residual MLP classifier of the unfolding truth bin (an example user family).",
)
