"""Test double for tests/test_rank_groups.py: the GAN with its random draws made rank-free.

The real GAN draws its noise and gradient-penalty mixing from a generator seeded by
``(seed, epoch, rank)`` (jobs/train/session.py), so 2 ranks draw other numbers than one process
and agree with it only in distribution. ``GAN_FIXED_NOISE`` is the same network, losses and
*two optimizers* with the noise set to zero and the penalty's mixing weight to 0.5: the gradient
averaging of both optimizers can then be checked weight for weight.

Used through the family import string ``tests.rank_families:GAN_FIXED_NOISE`` (Ray workers
import it from the repository root).
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from models import gan
from models.base import DataDims

__all__ = ["GAN_FIXED_NOISE"]


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
