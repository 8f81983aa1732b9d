"""Conditional GAN for the generator-to-detector transformation (DPF 2019 "future plans").

generator(truth, noise) → reco, critic(truth, reco) → score. Default loss: WGAN-GP
(Gulrajani et al. 2017: critic ``D(fake) − D(real) + λ (|∇D(x̂)| − 1)²`` on interpolates,
generator ``−D(fake)``, Adam β = (0.5, 0.9)); ``loss="bce"`` gives the original
non-saturating GAN. Both work in standardised space (x = generative condition columns,
y = target columns, both standardised by the loop); :meth:`GANNet.sample` maps physical
truth to physical reco through the stored standardisation buffers.

Steps: every ``training_step`` updates the critic once; the generator is updated on every
``n_critic``-th call (a step counter kept as a buffer, so resume is exact and every rank
agrees). While the generator loss is built the critic is frozen, so ``step_fn`` only ever
back-propagates into the optimizer's own network.

``efficiency_head=True``: rows whose targets are all exactly 0 in physical units (an object
that was not reconstructed) train a logistic head p(reconstructed | truth) (with the
generator's optimizer) and are left out of the critic and generator losses; :meth:`sample`
draws the Bernoulli first and returns all-zero targets for lost objects. ``ema > 0`` keeps an
exponential moving average of the generator's weights (decay ``ema`` per generator step),
which :meth:`sample` and :meth:`evaluate` use; ``critic_lr_factor`` (two time-scale update
rule) and ``spectral_norm`` (of the critic's layers) are the other stabilisers (issue 12).
``response=True``: the generator produces, and the critic judges, the detector response
(:mod:`models.response`) rather than reco; :meth:`sample` maps it back to reco.
"""

from __future__ import annotations

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
    manifest_section,
    mlp,
    model_device,
    model_dtype,
)
from models.manifest import Manifest
from models.response import ResponseMap, response_dims, response_map

__all__ = ["FAMILY", "GANConfig", "GANNet", "generative_data_spec"]

NAME = "gan"
METRICS = ("val_loss", "wasserstein", "auc", "critic_w")
MODES = {"val_loss": "min", "wasserstein": "min", "auc": "min", "critic_w": "min"}
EVAL_SEED = 12345
LOSSES = ("wgan-gp", "bce")


@dataclass
class GANConfig:
    latent_dim: int = 4
    hidden: int = 64
    depth: int = 2
    critic_hidden: int = 64
    critic_depth: int = 2
    n_critic: int = 5
    gp_lambda: float = 10.0
    loss: str = "wgan-gp"
    beta1: float = 0.5
    beta2: float = 0.9
    efficiency_head: bool = False
    ema: float = 0.0  # decay of the generator-weight EMA per generator step (0: off)
    critic_lr_factor: float = 1.0  # TTUR: the critic's learning rate is lr × this
    spectral_norm: bool = False  # spectral normalisation of the critic's linear layers
    response: bool = False  # generate the response r(reco, truth) (models.response), not reco

    def __post_init__(self) -> None:
        if not (0.0 <= self.ema < 1.0):
            raise ValueError(f"ema must lie in [0, 1), got {self.ema}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        if self.n_critic < 1:
            raise ValueError("n_critic must be >= 1")


def generative_data_spec(manifest: Manifest, family: str) -> DataSpec:
    """x = ``generative.condition`` columns, y = ``generative.target`` columns (continuous)."""
    from models.errors import ConfigError

    gen = manifest_section(manifest, "generative", family)
    cond, target = gen.get("condition"), gen.get("target")
    for key, cols in (("condition", cond), ("target", target)):
        if not isinstance(cols, (list, tuple)) or not cols:
            raise ConfigError(f"manifest.json: 'generative.{key}' must be a non-empty list")
    assert isinstance(cond, (list, tuple)) and isinstance(target, (list, tuple))
    x_cols, y_cols = tuple(map(str, cond)), tuple(map(str, target))
    response = response_dims(manifest.resolution, x_cols, y_cols)
    return DataSpec(
        x_columns=x_cols,
        y_columns=y_cols,
        target_kind="continuous",
        dims=DataDims(n_inputs=len(x_cols), n_targets=len(y_cols), names=y_cols, **response),
        standardise=x_cols + y_cols,
    )


def data_spec(manifest: Manifest) -> DataSpec:
    return generative_data_spec(manifest, NAME)


class GANNet(StandardisationBuffers):
    step_count: Tensor

    def __init__(self, config: GANConfig, dims: DataDims) -> None:
        super().__init__()
        if dims.n_targets < 1:
            raise ValueError(f"{NAME} needs continuous targets (DataDims.n_targets >= 1)")
        self.config = config
        self.n_targets = dims.n_targets
        self._init_standardisation(dims.n_inputs, dims.n_targets)
        self.register_buffer("step_count", torch.zeros((), dtype=torch.long))
        self.generator = mlp(
            dims.n_inputs + config.latent_dim,
            [config.hidden] * config.depth,
            dims.n_targets,
            activation=nn.LeakyReLU,
        )
        # No batch norm in the critic: the gradient penalty is per-sample.
        self.critic = mlp(
            dims.n_inputs + dims.n_targets,
            [config.critic_hidden] * config.critic_depth,
            1,
            activation=nn.LeakyReLU,
        )
        if config.loss == "wgan-gp":
            # D(real) - D(fake) and the penalty are blind to a constant offset: no output bias.
            last = self.critic[-1]
            assert isinstance(last, nn.Linear)
            self.critic[-1] = nn.Linear(last.in_features, 1, bias=False)
        if config.spectral_norm:
            for i, layer in enumerate(self.critic):
                if isinstance(layer, nn.Linear):
                    self.critic[i] = nn.utils.parametrizations.spectral_norm(layer)
        self.efficiency: nn.Module | None = None
        if config.efficiency_head:
            self.efficiency = mlp(dims.n_inputs, [32, 32], 1)
        self.response: ResponseMap | None = response_map(dims, NAME) if config.response else None
        self.generator_ema: nn.Module | None = None
        if config.ema > 0:
            import copy

            self.generator_ema = copy.deepcopy(self.generator).requires_grad_(False)

    def reconstructed(self, y: Tensor) -> Tensor:
        """(B,) bool: rows whose standardised targets are not all the physical 0."""
        zero = -self.y_mean / self.y_std
        return (y - zero).abs().max(dim=1).values > 1e-4 * (1.0 + zero.abs().max())

    @torch.no_grad()
    def _update_ema(self) -> None:
        assert self.generator_ema is not None
        d = self.config.ema
        for pe, p in zip(self.generator_ema.parameters(), self.generator.parameters(), strict=True):
            pe.mul_(d).add_(p.detach(), alpha=1.0 - d)

    def forward(self, x: Tensor, noise: Tensor) -> Tensor:
        """Generated (standardised) targets from standardised condition and noise."""
        return self.generator(torch.cat([x, noise], dim=1))  # type: ignore[no-any-return]

    def score(self, x: Tensor, y: Tensor) -> Tensor:
        return self.critic(torch.cat([x, y], dim=1)).squeeze(1)  # type: ignore[no-any-return]

    def noise(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        dev = model_device(self)
        return torch.randn(n, self.config.latent_dim, generator=generator, device=dev)

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        betas = (self.config.beta1, self.config.beta2)
        gen_params = list(self.generator.parameters())
        if self.efficiency is not None:
            gen_params += list(self.efficiency.parameters())
        return [
            torch.optim.Adam(gen_params, lr=lr, betas=betas),
            torch.optim.Adam(
                self.critic.parameters(), lr=lr * self.config.critic_lr_factor, betas=betas
            ),
        ]

    def _gradient_penalty(self, x: Tensor, real: Tensor, fake: Tensor) -> Tensor:
        eps = torch.rand(len(real), 1, device=real.device)
        mix = (eps * real + (1 - eps) * fake).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.score(x, mix).sum(), mix, create_graph=True)
        return ((grad.norm(2, dim=1) - 1) ** 2).mean()

    def training_step(
        self, batch: dict[str, Tensor], optimizers: list[torch.optim.Optimizer], step_fn: StepFn
    ) -> dict[str, float | Tensor]:
        opt_g, opt_c = optimizers
        x, real = batch["x"], batch["y"]
        eff_loss = None
        if self.efficiency is not None:
            ok = self.reconstructed(real)
            logit = self.efficiency(x).squeeze(1)
            eff_loss = F.binary_cross_entropy_with_logits(logit, ok.to(logit.dtype))
            if int(ok.sum()) >= 2:
                x, real = x[ok], real[ok]
        if self.response is not None:  # generator and critic work on the response
            real = self.response.to_response(x, real, self)
        with torch.no_grad():
            fake = self(x, self.noise(len(x)))
        d_real, d_fake = self.score(x, real), self.score(x, fake)
        if self.config.loss == "wgan-gp":
            w = d_real.mean() - d_fake.mean()
            loss_c = -w + self.config.gp_lambda * self._gradient_penalty(x, real, fake)
        else:
            w = d_real.mean() - d_fake.mean()
            loss_c = F.binary_cross_entropy_with_logits(
                d_real, torch.ones_like(d_real)
            ) + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake))
        step_fn(opt_c, loss_c)
        out: dict[str, float | Tensor] = {"loss_critic": loss_c.detach(), "critic_w": w.detach()}
        if int(self.step_count) % self.config.n_critic == 0:
            self.critic.requires_grad_(False)
            try:
                d_gen = self.score(x, self(x, self.noise(len(x))))
                if self.config.loss == "wgan-gp":
                    loss_g = -d_gen.mean()
                else:
                    loss_g = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))
                if eff_loss is not None:
                    loss_g = loss_g + eff_loss
                step_fn(opt_g, loss_g)
                if self.generator_ema is not None:
                    self._update_ema()
            finally:
                self.critic.requires_grad_(True)
            out["loss_generator"] = loss_g.detach()
        self.step_count += 1
        out["loss"] = out["loss_critic"]
        return out

    @torch.no_grad()
    def sample_standardised(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        with eval_mode(self):
            x = x.to(model_device(self), model_dtype(self))
            net = self.generator_ema if self.generator_ema is not None else self.generator
            y: Tensor = net(torch.cat([x, self.noise(len(x), generator)], dim=1))
            if self.response is not None:
                y = self.response.from_response(x, y, self)
            if self.efficiency is not None:
                p = torch.sigmoid(self.efficiency(x).squeeze(1))
                lost = torch.rand(len(x), generator=generator, device=x.device) >= p
                y = torch.where(lost.unsqueeze(1), (-self.y_mean / self.y_std).to(y.dtype), y)
            return y

    @torch.no_grad()
    def sample(self, condition: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One reco sample per truth row, physical units in and out."""
        x = self.standardise_x(condition.to(model_device(self), model_dtype(self)))
        return self.unstandardise_y(self.sample_standardised(x, generator))

    @torch.no_grad()
    def evaluate(self, data: dict[str, Tensor]) -> dict[str, float]:
        """``val_loss`` = mean per-feature Wasserstein-1 of generated vs real (standardised
        units; unlike the critic's estimate it is comparable across epochs and trials)."""
        from models.metrics import generative_scores

        dev = model_device(self)
        x = data["x"].to(dev, model_dtype(self))
        real = data["y"].to(dev, model_dtype(self)).reshape(len(x), -1)
        gen = torch.Generator(device=dev).manual_seed(EVAL_SEED)
        fake = self.sample_standardised(x, gen)
        with eval_mode(self):
            if self.response is not None:  # the critic scores responses
                both = torch.cat(
                    [
                        x,
                        self.response.to_response(x, real, self),
                        self.response.to_response(x, fake, self),
                    ],
                    dim=1,
                )
            else:
                both = torch.cat([x, real, fake], dim=1)
            nx, ny = x.shape[1], real.shape[1]

            def critic_gap(c: Tensor) -> Tensor:
                s_real = self.score(c[:, :nx], c[:, nx : nx + ny])
                s_fake = self.score(c[:, :nx], c[:, nx + ny :])
                return torch.stack([s_real, s_fake], dim=1)

            s = chunked(critic_gap, both)
        scores = generative_scores(x.cpu().numpy(), real.cpu().numpy(), fake.cpu().numpy())
        return {
            "val_loss": scores["wasserstein"],
            "wasserstein": scores["wasserstein"],
            "auc": scores["auc"],
            "critic_w": float(s[:, 0].mean() - s[:, 1].mean()),
        }


def build(config: GANConfig, dims: DataDims) -> GANNet:
    return GANNet(config, dims)


def search_space() -> SearchSpace:
    return {
        "latent_dim": ("int", 2, 32),
        "hidden": ("int", 32, 256),
        "depth": ("int", 1, 4),
        "critic_hidden": ("int", 32, 256),
        "critic_depth": ("int", 1, 4),
        "n_critic": ("int", 1, 10),
        "gp_lambda": ("loguniform", 1.0, 30.0),
    }


FAMILY = Family(
    name=NAME,
    config_cls=GANConfig,
    build=build,
    data_spec=data_spec,
    search_space=search_space,
    metrics=METRICS,
    description="Conditional WGAN-GP: generator(truth, noise) → reco, critic(truth, reco).",
    metric_modes=MODES,
)
