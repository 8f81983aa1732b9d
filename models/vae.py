"""Variational autoencoder as an unsupervised anomaly detector (background-only training).

Encoder MLP → (μ, log σ²) of a ``latent``-dimensional Gaussian, reparameterised sample z,
decoder MLP → reconstructed features. The loss is the one of the CHEP23 paper (Salt et al.):

    L = (1 − β) · MSE(x, x̂) + β · KL(q(z|x) ‖ N(0, 1))

(MSE averaged over features, KL summed over latent dimensions, both averaged over events),
computed on **background rows only** (label 0): the signal rows of a batch are ignored, so a
dataset with both classes (the ``classify`` section) trains an anomaly detector while its
validation split still measures how well the score separates the signal.

Anomaly score (``score`` hyper-parameter): ``recon`` — the per-event MSE between x and the
decoding of μ (deterministic), or ``kl`` — the per-event KL term. Higher = more anomalous.

Manifest section read: ``classify`` (only its ``label``; the mass parameter is not an input).
Inputs: the ``feat_*`` columns (standardised by preprocess).

Per-epoch metrics: ``val_loss`` (the loss on the validation background, decoding μ — no
sampling, so it is a function of the weights), ``auc`` (ROC AUC of the chosen score, signal vs
background of the validation split), ``rejection_at_50`` (background rejection 1/ε_B at 50 %
signal efficiency), and both scores' AUCs ``auc_recon``, ``auc_kl``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from models.base import (
    DataDims,
    DataSpec,
    Family,
    SearchSpace,
    StepFn,
    chunked,
    eval_mode,
    manifest_features,
    mlp,
    model_device,
    model_dtype,
)
from models.manifest import Manifest
from models.metrics import rejection_at_efficiency, roc_auc
from models.param_classifier import classify_columns

__all__ = ["FAMILY", "VAE", "VAEConfig"]

NAME = "vae"
SCORES = ("recon", "kl")
METRICS = ("val_loss", "auc", "rejection_at_50", "auc_recon", "auc_kl")
MODES = {
    "val_loss": "min",
    "auc": "max",
    "rejection_at_50": "max",
    "auc_recon": "max",
    "auc_kl": "max",
}


@dataclass
class VAEConfig:
    latent: int = 3
    hidden: int = 64
    depth: int = 2  # hidden layers of the encoder and of the decoder
    beta: float = 0.01  # L = (1 - beta) MSE + beta KL
    score: str = "recon"  # recon | kl
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got {self.score!r}")
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must lie in [0, 1], got {self.beta}")
        if self.latent < 1 or self.depth < 1 or self.hidden < 1:
            raise ValueError("latent, hidden and depth must be >= 1")


def data_spec(manifest: Manifest) -> DataSpec:
    label, mass = classify_columns(manifest, NAME)
    x_cols = manifest_features(manifest, NAME)
    return DataSpec(
        x_columns=x_cols,
        y_columns=(label,),
        target_kind="class",
        dims=DataDims(n_inputs=len(x_cols), n_classes=(2,)),
        extra={"label": label, "mass": mass, "output": "score"},
    )


class VAE(nn.Module):
    def __init__(self, config: VAEConfig, dims: DataDims) -> None:
        super().__init__()
        self.config = config
        widths = [config.hidden] * config.depth
        self.encoder = mlp(dims.n_inputs, widths, 2 * config.latent)
        self.decoder = mlp(config.latent, widths, dims.n_inputs)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar.clamp(-15.0, 15.0)

    def forward(self, x: Tensor) -> Tensor:
        """The anomaly score (B,) of the configured kind (deterministic: z = μ)."""
        recon, kl = self._terms(x)
        return recon if self.config.score == "recon" else kl

    def _terms(self, x: Tensor, z: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Per-event (MSE over features, KL summed over latent dims); decodes ``z`` or μ."""
        mu, logvar = self.encode(x)
        x_hat = self.decoder(mu if z is None else z)
        recon = (x_hat - x).pow(2).mean(dim=-1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)
        return recon, kl

    def _loss(self, recon: Tensor, kl: Tensor, background: Tensor) -> Tensor:
        w = background.to(recon.dtype)
        per_event = (1.0 - self.config.beta) * recon + self.config.beta * kl
        return (per_event * w).sum() / w.sum().clamp(min=1.0)

    @torch.no_grad()
    def score(self, x: Tensor) -> Tensor:
        """Anomaly score (B,) in eval mode."""
        x = x.to(model_device(self), model_dtype(self))
        with eval_mode(self):
            return chunked(self, x)

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.parameters(), lr=lr, weight_decay=self.config.weight_decay)]

    def training_step(
        self, batch: dict[str, Tensor], optimizers: list[torch.optim.Optimizer], step_fn: StepFn
    ) -> dict[str, float | Tensor]:
        x = batch["x"]
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        x_hat = self.decoder(z)
        recon = (x_hat - x).pow(2).mean(dim=-1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)
        loss = self._loss(recon, kl, batch["y"].reshape(-1) == 0)
        step_fn(optimizers[0], loss)
        return {"loss": loss.detach()}

    @torch.no_grad()
    def evaluate(self, data: dict[str, Tensor]) -> dict[str, float]:
        dev = model_device(self)
        x = data["x"].to(dev, model_dtype(self))
        y = data["y"].to(dev).reshape(-1)
        with eval_mode(self):
            terms = [self._terms(c) for c in x.split(65536)]
        recon = torch.cat([t[0] for t in terms])
        kl = torch.cat([t[1] for t in terms])
        labels = y.cpu().numpy()
        r, k = recon.double().cpu().numpy(), kl.double().cpu().numpy()
        chosen = r if self.config.score == "recon" else k
        auc_r, auc_k = roc_auc(r, labels), roc_auc(k, labels)
        return {
            "val_loss": float(self._loss(recon, kl, y == 0)),
            "auc": auc_r if self.config.score == "recon" else auc_k,
            "rejection_at_50": rejection_at_efficiency(chosen, labels, 0.5),
            "auc_recon": auc_r,
            "auc_kl": auc_k,
        }


def build(config: VAEConfig, dims: DataDims) -> VAE:
    return VAE(config, dims)


def search_space() -> SearchSpace:
    return {
        "latent": ("int", 1, 8),
        "beta": ("loguniform", 1e-3, 0.5),
        "depth": ("int", 1, 4),
        "hidden": ("int", 32, 128),
    }


FAMILY = Family(
    name=NAME,
    config_cls=VAEConfig,
    build=build,
    data_spec=data_spec,
    search_space=search_space,
    metrics=METRICS,
    description="VAE anomaly detector trained on background: reconstruction or KL score.",
    metric_modes=MODES,
)
