"""Unfolding as migration classification (Işıldak, Hayreter, Wiederhold — Table II, Table V).

features (+ reco bin) → Linear(100) linear → 600 ReLU → BN → dropout → 750 tanh → BN →
dropout → 600 ReLU → BN → softmax over migrations ``m = truth_bin − reco_bin`` in
``[−M, M]`` (``migration_range`` M; 0 = the full range N−1, where no event is outside).

Migrations that would put an event outside the truth binning (``reco_bin + m ∉ [0, N)``) are
masked out of the softmax, so every event's probabilities land inside the histogram and the
unfolded histogram sums to the number of events. The unfolded histogram is, per event, its
migration probabilities shifted by its reco bin, summed over events.

Events migrating further than M (paper, Table V):

* ``outside="cut"`` (the paper): they are removed from training; ``evaluate`` reports the
  scores on the *uncut* sample (``chi2_ndf``, ``ks``, ``ad``: all events with a reco bin) and
  on the *cut* sample (``chi2_ndf_cut``, ``ks_cut``: only events within ±M), which is the
  paper's finding that cut scores look fine while uncut ones do not unless M covers all.
* ``outside="clip"``: they are trained as the edge class ±M (a biased but complete target).

Columns: x = ``feat_*`` then ``reco_bin`` (last column, not standardised; fed to the net as a
one-hot, a scaled index, or not at all: ``reco_input``); y = ``truth_bin``. The migration is
computed in the model as ``truth_bin − reco_bin`` because the shards' ``migration`` column is
meaningless when either bin is −1, and a signed target cannot be filtered by
``drop_negative_y``. Events with ``reco_bin = −1`` (reco outside the binning) cannot be
unfolded by migration and are ignored.
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
    chunked,
    eval_mode,
    manifest_features,
    manifest_section,
    model_device,
    model_dtype,
)
from models.manifest import Manifest
from models.metrics import unfolding_scores
from models.unfold_bins import class_target, unfold_edges

__all__ = ["FAMILY", "UnfoldMigrationConfig", "UnfoldMigrationNet"]

NAME = "unfold_migration"
METRICS = (
    "val_loss",
    "accuracy",
    "chi2_ndf",
    "ks",
    "ad",
    "chi2_ndf_cut",
    "ks_cut",
    "frac_in_range",
)
MODES = {
    "val_loss": "min",
    "accuracy": "max",
    "chi2_ndf": "min",
    "ks": "max",
    "ad": "max",
    "chi2_ndf_cut": "min",
    "ks_cut": "max",
    "frac_in_range": "max",
}
OUTSIDE = ("cut", "clip")
RECO_INPUT = ("onehot", "index", "none")


@dataclass
class UnfoldMigrationConfig:
    migration_range: int = 3  # M; classes are -M..M; 0 = full range (N - 1)
    outside: str = "cut"  # "cut" (paper) | "clip"
    reco_input: str = "onehot"  # how the reco bin enters the net: "onehot" | "index" | "none"
    input_width: int = 100
    width_scale: float = 1.0  # multiplies the paper's 600/750/600
    dropout: float = 0.1
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        if self.outside not in OUTSIDE:
            raise ValueError(f"outside must be one of {OUTSIDE}, got {self.outside!r}")
        if self.reco_input not in RECO_INPUT:
            raise ValueError(f"reco_input must be one of {RECO_INPUT}, got {self.reco_input!r}")
        if self.migration_range < 0:
            raise ValueError("migration_range must be >= 0 (0 = full range)")


def data_spec(manifest: Manifest) -> DataSpec:
    feats = manifest_features(manifest, NAME)
    edges = unfold_edges(manifest, NAME)
    n_bins = len(edges) - 1
    quantity = manifest_section(manifest, "unfold", NAME).get("quantity", "")
    return DataSpec(
        x_columns=(*feats, "reco_bin"),
        y_columns=("truth_bin",),
        target_kind="class",
        # n_classes: the full migration range; the net's output size is 2M+1 from the config.
        dims=DataDims(n_inputs=len(feats) + 1, n_classes=(2 * n_bins - 1,), edges=(edges,)),
        drop_negative_y=True,
        extra={"edges": list(edges), "quantity": quantity},
    )


class UnfoldMigrationNet(nn.Module):
    shifts: Tensor

    def __init__(self, config: UnfoldMigrationConfig, dims: DataDims) -> None:
        super().__init__()
        if not dims.edges:
            raise ValueError(f"{NAME} needs the unfolding edges in DataDims.edges")
        self.config = config
        self.n_bins = len(dims.edges[0]) - 1
        full = self.n_bins - 1
        self.m = full if config.migration_range == 0 else min(config.migration_range, full)
        self.n_features = dims.n_inputs - 1
        self.register_buffer("shifts", torch.arange(-self.m, self.m + 1), persistent=False)
        extra = {"onehot": self.n_bins, "index": 1, "none": 0}[config.reco_input]
        w1, w2, w3 = (max(1, round(w * config.width_scale)) for w in (600, 750, 600))
        first = nn.Linear(self.n_features + extra, config.input_width)
        nn.init.xavier_normal_(first.weight)  # Table II: Glorot normal
        self.net = nn.Sequential(
            first,
            nn.Linear(config.input_width, w1),
            nn.ReLU(),
            nn.BatchNorm1d(w1),
            nn.Dropout(config.dropout),
            nn.Linear(w1, w2),
            nn.Tanh(),
            nn.BatchNorm1d(w2),
            nn.Dropout(config.dropout),
            nn.Linear(w2, w3),
            nn.ReLU(),
            nn.BatchNorm1d(w3),
            nn.Linear(w3, 2 * self.m + 1),
        )

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[:, : self.n_features], x[:, -1].round().long()

    def forward(self, x: Tensor) -> Tensor:
        """Logits over migrations −M..M, (B, 2M+1); impossible migrations are −inf.

        Rows with ``reco_bin = −1`` get all-finite logits (they are never unfolded)."""
        feats, reco = self._split(x)
        parts = [feats]
        if self.config.reco_input == "onehot":
            parts.append(F.one_hot(reco.clamp(min=0), self.n_bins).to(feats.dtype))
        elif self.config.reco_input == "index":
            parts.append((reco.to(feats.dtype) / max(1, self.n_bins - 1)).unsqueeze(1))
        logits = self.net(torch.cat(parts, dim=1))
        target = reco.unsqueeze(1) + self.shifts
        invalid = ((target < 0) | (target >= self.n_bins)) & (reco >= 0).unsqueeze(1)
        return logits.masked_fill(invalid, float("-inf"))

    def _targets(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(class index, training mask, in-range mask) for truth bins ``y``."""
        _, reco = self._split(x)
        mig = y - reco
        usable = (reco >= 0) & (y >= 0)
        in_range = usable & (mig.abs() <= self.m)
        train = in_range if self.config.outside == "cut" else usable
        cls = (mig.clamp(-self.m, self.m) + self.m).masked_fill(~usable, self.m)
        return cls, train, in_range

    def _masked_loss(
        self, logits: Tensor, cls: Tensor, mask: Tensor, per_row: bool = True
    ) -> Tensor:
        # Masked (not boolean indexing) so every rank always steps, even on a batch with no
        # usable event — a skipped step would deadlock Horovod's allreduce. Divided by the rows
        # of the batch, not by the usable ones: N ranks' average of this loss is then the loss
        # of their global batch (a per-rank count would weight ranks with few usable rows up,
        # and 2 ranks would train other weights than one process; tests/test_rank_groups.py).
        # ``per_row=False`` (validation, all rows at once): the mean over the usable rows.
        ce = F.cross_entropy(logits.masked_fill(~mask.unsqueeze(1), 0.0), cls, reduction="none")
        norm = max(len(mask), 1) if per_row else mask.sum().clamp(min=1)
        return (ce * mask).sum() / norm

    @torch.no_grad()
    def predict_proba(self, x: Tensor) -> Tensor:
        with eval_mode(self):
            x = x.to(model_device(self), model_dtype(self))
            return chunked(lambda c: F.softmax(self(c), dim=1), x)

    def _histogram(self, probs: Tensor, reco: Tensor) -> Tensor:
        ok = reco >= 0
        target = (reco[ok].unsqueeze(1) + self.shifts).reshape(-1)
        p = probs[ok].reshape(-1).to(torch.float64)
        valid = (target >= 0) & (target < self.n_bins)
        hist = torch.zeros(self.n_bins, dtype=torch.float64, device=probs.device)
        return hist.index_add_(0, target[valid], p[valid])

    @torch.no_grad()
    def unfold(self, x: Tensor) -> Tensor:
        """Unfolded histogram (N,) float64; sums to the number of events with a reco bin."""
        x = x.to(model_device(self), model_dtype(self))
        return self._histogram(self.predict_proba(x), self._split(x)[1])

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.parameters(), lr=lr, weight_decay=self.config.weight_decay)]

    def training_step(
        self, batch: dict[str, Tensor], optimizers: list[torch.optim.Optimizer], step_fn: StepFn
    ) -> dict[str, float | Tensor]:
        x = batch["x"]
        cls, train, _ = self._targets(x, class_target(batch["y"]))
        loss = self._masked_loss(self(x), cls, train)
        step_fn(optimizers[0], loss)
        return {"loss": loss.detach(), "frac_used": train.float().mean()}

    @torch.no_grad()
    def evaluate(self, data: dict[str, Tensor]) -> dict[str, float]:
        dev = model_device(self)
        x = data["x"].to(dev, model_dtype(self))
        y = class_target(data["y"].to(dev))
        cls, train, in_range = self._targets(x, y)
        usable = (self._split(x)[1] >= 0) & (y >= 0)
        with eval_mode(self):
            logits = chunked(self, x)
        probs = F.softmax(logits, dim=1)
        reco = self._split(x)[1]
        n_used = usable.sum().clamp(min=1)
        out = {
            "val_loss": float(self._masked_loss(logits, cls, train, per_row=False)),
            "accuracy": float(((logits.argmax(1) == cls) & in_range).sum() / n_used),
            "frac_in_range": float(in_range.sum() / n_used),
        }

        def truth_hist(mask: Tensor) -> np.ndarray:
            return np.bincount(y[mask].cpu().numpy(), minlength=self.n_bins).astype(np.float64)

        uncut = unfolding_scores(
            self._histogram(probs[usable], reco[usable]).cpu().numpy(), truth_hist(usable)
        )
        cut = unfolding_scores(
            self._histogram(probs[in_range], reco[in_range]).cpu().numpy(), truth_hist(in_range)
        )
        out.update(uncut)
        out["chi2_ndf_cut"] = cut["chi2_ndf"]
        out["ks_cut"] = cut["ks"]
        return out


def build(config: UnfoldMigrationConfig, dims: DataDims) -> UnfoldMigrationNet:
    return UnfoldMigrationNet(config, dims)


def search_space() -> SearchSpace:
    return {
        "migration_range": ("int", 1, 5),
        "outside": ("choice", ["cut", "clip"]),
        "reco_input": ("choice", ["onehot", "index"]),
        "width_scale": ("loguniform", 0.25, 1.0),
        "dropout": ("uniform", 0.0, 0.3),
    }


FAMILY = Family(
    name=NAME,
    config_cls=UnfoldMigrationConfig,
    build=build,
    data_spec=data_spec,
    search_space=search_space,
    metrics=METRICS,
    description="Unfolding as migration classification (truth − reco bin) with cut/clip study.",
    metric_modes=MODES,
)
