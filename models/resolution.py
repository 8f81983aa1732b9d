"""The ANL resolution classifier (Benjamin, Chekanov, Hopkins, Love — DPF 2019).

Input: the truth quantities of an object (``truth_<q>`` for q in
``manifest["resolution"]["quantities"]``, standardised by the loop). A shared trunk feeds one
head per quantity; each head classifies ``reco − truth`` (or ``(reco − truth)/truth`` for a
relative quantity) into ``n_classes`` bins (the manifest's edges, spanning the central 1–99 %)
plus a last inefficiency class (object not reconstructed).

Manifest section this family reads (written by jobs/preprocess)::

    "resolution": {"n_classes": 100,
                   "quantities": {"pt":  {"edges": [... n_classes + 1 ...], "mode": "relative"},
                                  "eta": {"edges": [...], "mode": "absolute"},
                                  "phi": {"edges": [...], "mode": "angle"}, ...}}

``mode`` is what preprocess writes (with the ``truth`` and ``reco`` columns); a hand-built
manifest may give the flags ``relative`` (default false) and ``periodic`` (default
``q == "phi"``) instead.

:meth:`ResolutionNet.smear` turns truth objects into reco objects: one Bernoulli draw decides
whether the object is reconstructed (probability 1 − mean over heads of the inefficiency
probability — one decision per object, not one per quantity), then each head samples a class
among the efficient ones and a uniform position within that class's bin. The response is
stochastic: the same input gives different outputs unless the same ``torch.Generator`` seed is
passed.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import pairwise

import numpy as np
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
    model_device,
    model_dtype,
)
from models.manifest import Manifest
from models.metrics import ks_samples

__all__ = ["FAMILY", "ResolutionConfig", "ResolutionNet"]

NAME = "resolution"
METRICS = ("val_loss", "accuracy", "wasserstein", "ks_stat", "ineff_diff")
MODES = {
    "val_loss": "min",
    "accuracy": "max",
    "wasserstein": "min",
    "ks_stat": "min",
    "ineff_diff": "min",
}
EVAL_SEED = 12345  # evaluation sampling is seeded so the metric is a function of the weights


@dataclass
class ResolutionConfig:
    hidden: int = 64
    depth: int = 3  # trunk layers (the ANL net: 5 layers of 100)
    dropout: float = 0.0
    batchnorm: bool = False
    weight_decay: float = 0.0


def data_spec(manifest: Manifest) -> DataSpec:
    from models.errors import ConfigError

    res = manifest_section(manifest, "resolution", NAME)
    quantities = res.get("quantities")
    n_classes = res.get("n_classes")
    if not isinstance(quantities, Mapping) or not quantities:
        raise ConfigError("manifest.json: 'resolution.quantities' must map quantity -> binning")
    if not isinstance(n_classes, int) or n_classes < 2:
        raise ConfigError("manifest.json: 'resolution.n_classes' must be an integer >= 2")
    names = tuple(str(q) for q in quantities)
    edges, relative, periodic = [], [], []
    for q in names:
        info = quantities[q]
        e = info.get("edges") if isinstance(info, Mapping) else None
        if not isinstance(e, (list, tuple)) or len(e) != n_classes + 1:
            raise ConfigError(
                f"manifest.json: 'resolution.quantities.{q}.edges' must list n_classes + 1 = "
                f"{n_classes + 1} edges"
            )
        ef = tuple(float(v) for v in e)
        if any(b <= a for a, b in pairwise(ef)) or not all(math.isfinite(v) for v in ef):
            raise ConfigError(
                f"manifest.json: 'resolution.quantities.{q}.edges' must be strictly increasing"
            )
        edges.append(ef)
        # hepscan preprocess writes ``mode`` (relative | absolute | angle); hand-built
        # manifests may give the two flags instead
        mode = info.get("mode")
        relative.append(mode == "relative" if mode else bool(info.get("relative", False)))
        periodic.append(mode == "angle" if mode else bool(info.get("periodic", q == "phi")))
    x_cols = tuple(f"truth_{q}" for q in names)
    return DataSpec(
        x_columns=x_cols,
        y_columns=tuple(f"res_{q}" for q in names),
        target_kind="multiclass",
        dims=DataDims(
            n_inputs=len(names),
            n_classes=(n_classes + 1,) * len(names),
            names=names,
            edges=tuple(edges),
            relative=tuple(relative),
            periodic=tuple(periodic),
        ),
        standardise=x_cols,
        extra={"quantities": list(names), "n_classes": n_classes},
    )


class ResolutionNet(StandardisationBuffers):
    edges: Tensor
    relative: Tensor
    periodic: Tensor

    def __init__(self, config: ResolutionConfig, dims: DataDims) -> None:
        super().__init__()
        if not dims.n_classes or len(set(dims.n_classes)) != 1:
            raise ValueError(f"{NAME} needs heads of one class count, got {dims.n_classes}")
        n_heads = len(dims.n_classes)
        if len(dims.edges) != n_heads or any(len(e) != dims.n_classes[0] for e in dims.edges):
            raise ValueError(f"{NAME} needs n_classes edges per head (the last class is ineff.)")
        self.config = config
        self.names = dims.names or tuple(f"q{i}" for i in range(n_heads))
        self.n_classes = dims.n_classes[0]  # including the inefficiency class
        self._init_standardisation(dims.n_inputs, 0)
        self.register_buffer("edges", torch.tensor(dims.edges, dtype=torch.float32))
        self.register_buffer(
            "relative", torch.tensor(dims.relative or (False,) * n_heads, dtype=torch.bool)
        )
        self.register_buffer(
            "periodic", torch.tensor(dims.periodic or (False,) * n_heads, dtype=torch.bool)
        )
        layers: list[nn.Module] = []
        prev = dims.n_inputs
        for _ in range(config.depth):
            layers += [nn.Linear(prev, config.hidden), nn.ReLU()]
            if config.batchnorm:
                layers.append(nn.BatchNorm1d(config.hidden))
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            prev = config.hidden
        self.trunk = nn.Sequential(*layers)
        self.heads = nn.ModuleList(nn.Linear(prev, self.n_classes) for _ in range(n_heads))

    def forward(self, x: Tensor) -> Tensor:
        """Logits (B, heads, n_classes + 1) from standardised truth."""
        h = self.trunk(x)
        return torch.stack([head(h) for head in self.heads], dim=1)

    def _loss(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits.reshape(-1, self.n_classes), y.reshape(-1).long())

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.parameters(), lr=lr, weight_decay=self.config.weight_decay)]

    def training_step(
        self, batch: dict[str, Tensor], optimizers: list[torch.optim.Optimizer], step_fn: StepFn
    ) -> dict[str, float | Tensor]:
        loss = self._loss(self(batch["x"]), batch["y"])
        step_fn(optimizers[0], loss)
        return {"loss": loss.detach()}

    def _sample_classes(
        self, probs: Tensor, generator: torch.Generator | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """(classes (B, H) among the efficient ones, reconstructed (B,), jitter (B, H))."""
        b, h, c = probs.shape
        p_ineff = probs[..., -1].mean(dim=1)
        u = torch.rand(b, generator=generator, device=probs.device)
        reconstructed = u >= p_ineff
        eff = probs[..., :-1].reshape(b * h, c - 1).clamp(min=1e-12)
        classes = torch.multinomial(eff, 1, generator=generator).reshape(b, h)
        jitter = torch.rand(b, h, generator=generator, device=probs.device)
        return classes, reconstructed, jitter

    def _delta(self, classes: Tensor, jitter: Tensor) -> Tensor:
        idx = classes.T  # (H, B)
        lo = torch.gather(self.edges, 1, idx).T
        hi = torch.gather(self.edges, 1, idx + 1).T
        return lo + jitter * (hi - lo)

    @torch.no_grad()
    def smear(
        self, truth: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Reco objects from truth objects (physical units, columns in quantity order).

        Returns ``(reco, reconstructed)``: reco (B, H) float32 with NaN rows where the object
        is not reconstructed, and the boolean mask (B,)."""
        dev = model_device(self)
        truth = truth.to(dev, model_dtype(self))
        with eval_mode(self):
            probs = F.softmax(chunked(self, self.standardise_x(truth)), dim=-1)
        classes, reconstructed, jitter = self._sample_classes(probs, generator)
        delta = self._delta(classes, jitter)
        reco = torch.where(self.relative, truth * (1.0 + delta), truth + delta)
        wrapped = torch.remainder(reco + math.pi, 2 * math.pi) - math.pi
        reco = torch.where(self.periodic, wrapped, reco)
        reco = reco.masked_fill(~reconstructed.unsqueeze(1), float("nan"))
        return reco, reconstructed

    def _centres(self, head: int, classes: Tensor) -> np.ndarray:
        e = self.edges[head]
        return (0.5 * (e[classes] + e[classes + 1])).double().cpu().numpy()

    @torch.no_grad()
    def evaluate(self, data: dict[str, Tensor]) -> dict[str, float]:
        from models.metrics import wasserstein_per_feature

        dev = model_device(self)
        x = data["x"].to(dev, model_dtype(self))
        y = data["y"].to(dev).long().reshape(len(x), -1)
        with eval_mode(self):
            logits = chunked(self, x)
        out: dict[str, float] = {"val_loss": float(self._loss(logits, y))}
        acc = (logits.argmax(dim=-1) == y).float().mean(dim=0)
        for i, name in enumerate(self.names):
            out[f"accuracy_{name}"] = float(acc[i])
        out["accuracy"] = float(acc.mean())
        gen = torch.Generator(device=dev).manual_seed(EVAL_SEED)
        classes, reconstructed, _ = self._sample_classes(F.softmax(logits, dim=-1), gen)
        ineff = self.n_classes - 1
        w, ks, di = [], [], []
        for i in range(len(self.names)):
            true_eff = y[:, i] < ineff
            a = self._centres(i, y[true_eff, i])
            b = self._centres(i, classes[reconstructed, i])
            span = float(self.edges[i, -1] - self.edges[i, 0])
            if len(a) and len(b):
                w.append(float(wasserstein_per_feature(a, b)[0]) / span)
                ks.append(ks_samples(a, b).statistic)
            di.append(
                abs(float((~true_eff).float().mean()) - float((~reconstructed).float().mean()))
            )
        out["wasserstein"] = float(np.mean(w)) if w else math.nan
        out["ks_stat"] = float(np.mean(ks)) if ks else math.nan
        out["ineff_diff"] = float(np.mean(di))
        return out


def build(config: ResolutionConfig, dims: DataDims) -> ResolutionNet:
    return ResolutionNet(config, dims)


def search_space() -> SearchSpace:
    return {
        "hidden": ("int", 32, 256),
        "depth": ("int", 2, 6),
        "dropout": ("uniform", 0.0, 0.2),
        "batchnorm": ("choice", [False, True]),
    }


FAMILY = Family(
    name=NAME,
    config_cls=ResolutionConfig,
    build=build,
    data_spec=data_spec,
    search_space=search_space,
    metrics=METRICS,
    description="ANL resolution classifier: per-quantity (reco − truth) classes + inefficiency.",
    metric_modes=MODES,
)
