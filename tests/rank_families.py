"""Test doubles for tests/test_rank_groups.py: families whose per-rank parts are made rank-free.

The real GAN draws its noise and gradient-penalty mixing from a generator seeded by
``(seed, epoch, rank)`` (jobs/train/session.py), so 2 ranks draw other numbers than one process
and agree with it only in distribution. ``GAN_FIXED_NOISE`` is the same network, losses and
*two optimizers* with the noise set to zero and the penalty's mixing weight to 0.5: the gradient
averaging of both optimizers can then be checked weight for weight.

``UNFOLD_MIGRATION_NO_BN`` is unfold_migration without its (built-in) batch-norm layers: batch
statistics are per rank under data parallelism (no SyncBatchNorm), so only without them can
2 ranks give one process's weights; its masked loss and everything else stay.

``VAE_FIXED_NOISE`` is the VAE with its reparameterisation noise set to zero (the real one
draws ``torch.randn_like`` from the per-rank seeded generator) and its background-masked mean
normalised by the batch's rows instead of its background rows: each rank divides by its own
background count, a ratio whose rank average is not the global batch's (per-rank by design, like
a per-rank batch mean); by the rows (equal on every rank) the loss is linear in the rows and the
signal rows stay masked out.

Used through the family import strings ``tests.rank_families:GAN_FIXED_NOISE``,
``tests.rank_families:UNFOLD_MIGRATION_NO_BN`` and ``tests.rank_families:VAE_FIXED_NOISE`` (Ray
workers import them from the repository root).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from models import gan, unfold_migration, vae
from models.base import DataDims, StepFn

__all__ = ["GAN_FIXED_NOISE", "UNFOLD_MIGRATION_NO_BN", "VAE_FIXED_NOISE"]


class FixedNoiseGAN(gan.GANNet):
    def noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        return torch.zeros(n, self.config.latent_dim, device=gan.model_device(self))

    def _gradient_penalty(self, x: Tensor, real: Tensor, fake: Tensor) -> Tensor:
        mix = (0.5 * real + 0.5 * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.score(x, mix).sum(), mix, create_graph=True)
        return ((grad.norm(2, dim=1) - 1) ** 2).mean()


def _build(config: gan.GANConfig, dims: DataDims) -> FixedNoiseGAN:
    return FixedNoiseGAN(config, dims)


GAN_FIXED_NOISE = dataclasses.replace(
    gan.FAMILY, name="gan_fixed_noise", build=_build, description="GAN, zero noise (tests)"
)


def _build_no_bn(
    config: unfold_migration.UnfoldMigrationConfig, dims: DataDims
) -> unfold_migration.UnfoldMigrationNet:
    model = unfold_migration.build(config, dims)
    for i, layer in enumerate(model.net):
        if isinstance(layer, nn.BatchNorm1d):
            model.net[i] = nn.Identity()
    return model


UNFOLD_MIGRATION_NO_BN = dataclasses.replace(
    unfold_migration.FAMILY,
    name="unfold_migration_no_bn",
    build=_build_no_bn,
    description="unfold_migration without batch norm (tests)",
)


class FixedNoiseVAE(vae.VAE):
    def training_step(
        self,
        batch: dict[str, Tensor],
        optimizers: list[torch.optim.Optimizer],
        step_fn: StepFn,
    ) -> dict[str, float | Tensor]:
        x = batch["x"]
        mu, logvar = self.encode(x)
        x_hat = self.decoder(mu)  # z = mu + 0 * sigma: zero noise
        recon = (x_hat - x).pow(2).mean(dim=-1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)
        w = (batch["y"].reshape(-1) == 0).to(recon.dtype)
        per_event = (1.0 - self.config.beta) * recon + self.config.beta * kl
        loss = (per_event * w).sum() / len(w)  # by the rows: linear in the rows
        step_fn(optimizers[0], loss)
        return {"loss": loss.detach()}


def _build_vae(config: vae.VAEConfig, dims: DataDims) -> FixedNoiseVAE:
    return FixedNoiseVAE(config, dims)


VAE_FIXED_NOISE = dataclasses.replace(
    vae.FAMILY, name="vae_fixed_noise", build=_build_vae, description="VAE, zero noise (tests)"
)
