"""Unfolding as truth-bin classification (Işıldak, Hayreter, Wiederhold — Table I).

features → Linear(100) (linear activation) → ``depth`` × [Linear(w) → ReLU (→ BN) (→ dropout)]
→ Linear(N) → softmax over the N truth bins, with ``w = round(α·N^p)`` (capped at
``max_width``). The paper uses α=8, p=2 for 20 bins and α=p=1 for 40 and 60 bins.

The unfolded histogram is the sum of per-event predicted probabilities (paper eq. 4), not the
argmax: ``N_j = Σ_k p_k^j``.

That sum reproduces the truth histogram only if the probabilities are calibrated per class: at
the maximum of the likelihood over the output biases, ``Σ_events p_k = n_k`` on the training
sample exactly. SGD with a constant learning rate stops short of that point (the output biases
keep jittering), and because every event contributes to every bin the residual adds up: after
12 epochs at lr 1e-3 the training-set sums were off by 2–80 % per bin. :meth:`calibrate` fits a
per-class logit offset by maximum likelihood on given rows with the network frozen (a convex
problem; the stationarity condition is ``Σ p_k = n_k``), so the model stays a classifier and
the offset is part of the state dict. Call it after training, on the training rows (or a
validation fold), before unfolding.

.. code-block:: python

    spec = FAMILY.data_spec(manifest)      # x = feat_*, y = truth_bin (rows with -1 dropped)
    model = FAMILY.build(UnfoldBinsConfig(alpha=8, p=2), spec.dims)
    ...                                    # train
    model.calibrate(x_train, y_train)      # per-class logit offsets, maximum likelihood
    hist = model.unfold(x)                 # (N,) float64
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

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
    mlp,
    model_device,
    model_dtype,
)
from models.manifest import Manifest
from models.metrics import unfolding_scores

__all__ = ["FAMILY", "UnfoldBinsConfig", "UnfoldBinsNet", "unfold_edges"]

NAME = "unfold_bins"
METRICS = ("val_loss", "accuracy", "chi2_ndf", "ks", "ad")
# ks and ad are p-values, as the paper's "scores": 1 = perfect agreement.
MODES = {"val_loss": "min", "accuracy": "max", "chi2_ndf": "min", "ks": "max", "ad": "max"}


@dataclass
class UnfoldBinsConfig:
    alpha: float = 1.0
    p: float = 1.0
    depth: int = 1
    input_width: int = 100
    max_width: int = 4096
    batchnorm: bool = False
    dropout: float = 0.0
    weight_decay: float = 0.0

    def hidden_width(self, n_bins: int) -> int:
        return int(min(self.max_width, max(1, round(self.alpha * n_bins**self.p))))


def class_target(y: Tensor) -> Tensor:
    """A class column as a 1-d long tensor, whether the loop hands (B,) or (B, 1)."""
    return (y.reshape(-1) if y.ndim == 2 and y.shape[1] == 1 else y).long()


def unfold_edges(manifest: Manifest, family: str) -> tuple[float, ...]:
    """The unfolding bin edges from ``manifest.unfold["edges"]``, validated."""
    from models.errors import ConfigError

    unfold = manifest_section(manifest, "unfold", family)
    edges = unfold.get("edges")
    if not isinstance(edges, (list, tuple)) or len(edges) < 3:
        raise ConfigError(
            f"manifest.json: 'unfold.edges' must list at least 3 edges (2 bins) for {family!r}"
        )
    e = tuple(float(v) for v in edges)
    if any(b <= a for a, b in pairwise(e)) or not all(math.isfinite(v) for v in e):
        raise ConfigError("manifest.json: 'unfold.edges' must be finite and strictly increasing")
    return e


def data_spec(manifest: Manifest) -> DataSpec:
    feats = manifest_features(manifest, NAME)
    edges = unfold_edges(manifest, NAME)
    n_bins = len(edges) - 1
    quantity = manifest_section(manifest, "unfold", NAME).get("quantity", "")
    return DataSpec(
        x_columns=feats,
        y_columns=("truth_bin",),
        target_kind="class",
        dims=DataDims(n_inputs=len(feats), n_classes=(n_bins,), edges=(edges,)),
        drop_negative_y=True,
        extra={"edges": list(edges), "quantity": quantity},
    )


class UnfoldBinsNet(nn.Module):
    logit_offset: Tensor

    def __init__(self, config: UnfoldBinsConfig, dims: DataDims) -> None:
        super().__init__()
        if len(dims.n_classes) != 1 or dims.n_classes[0] < 2:
            raise ValueError(f"{NAME} needs one class head with >= 2 bins, got {dims.n_classes}")
        self.config = config
        self.n_bins = dims.n_classes[0]
        width = config.hidden_width(self.n_bins)
        self.net = nn.Sequential(
            nn.Linear(dims.n_inputs, config.input_width),  # linear "input" layer of Table I
            mlp(
                config.input_width,
                [width] * config.depth,
                self.n_bins,
                batchnorm=config.batchnorm,
                dropout=config.dropout,
            ),
        )

        # Per-class logit offset fitted by calibrate(); zero until then (a buffer, not trained).
        self.register_buffer("logit_offset", torch.zeros(self.n_bins))

    def _load_from_state_dict(
        self,
        state_dict: dict[str, Any],
        prefix: str,
        local_metadata: dict[str, Any],
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        # Checkpoints written before calibration existed have no offset: treat it as zero.
        key = prefix + "logit_offset"
        if key not in state_dict:
            state_dict[key] = torch.zeros_like(self.logit_offset)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def forward(self, x: Tensor) -> Tensor:
        """Logits over the truth bins, (B, N), including the calibration offset."""
        return self.net(x) + self.logit_offset  # type: ignore[no-any-return]

    @torch.no_grad()
    def calibrate(
        self,
        x: Tensor,
        y: Tensor,
        weights: Tensor | None = None,
        *,
        max_iter: int = 100,
        tol: float = 1e-9,
        reduce: Callable[[Tensor], Tensor] | None = None,
    ) -> dict[str, float]:
        """Fit the per-class logit offset ``b`` maximising ``Σ w log softmax(f(x) + b)[y]``.

        The network is frozen; the problem is concave in ``b`` with the stationarity condition
        ``Σ w p_k = Σ_{y=k} w`` for every class. Solved in float64 by damped Newton steps (the
        N×N Hessian ``Σ w (diag p − p pᵀ)`` is cheap for N ≲ 1000; the shift direction it
        lacks is pinned by a rank-one term). Classes absent from ``y`` get a pseudo-count far
        below one event, so their offset stays finite. Returns the number of iterations and
        the largest remaining mismatch ``|Σ w p_k − n_k|`` relative to ``max(n_k, 1)``.

        Data-parallel: each rank passes its own rows and ``reduce`` (a sum over ranks). Every
        sum above is reduced before use, so all ranks take the same Newton steps and end with
        the same offsets as one process holding all rows. :meth:`calibrate_stream` does the
        same on a stream of batches (one pass over them per Newton step).
        """
        dev = model_device(self)
        with eval_mode(self):
            raw = chunked(self.net, x.to(dev, model_dtype(self))).double()
        target = class_target(y.to(dev))
        keep = target >= 0
        w = None if weights is None else weights.to(dev, torch.float64).reshape(-1)[keep]
        data = [(raw[keep], target[keep], w)]
        return self._fit_offsets(lambda: data, max_iter=max_iter, tol=tol, reduce=reduce)

    @torch.no_grad()
    def calibrate_stream(
        self,
        batches: Callable[[], Iterable[dict[str, Tensor]]],
        *,
        max_iter: int = 100,
        tol: float = 1e-9,
        reduce: Callable[[Tensor], Tensor] | None = None,
        cache_bytes: int = 32 * 2**20,
    ) -> dict[str, float]:
        """:meth:`calibrate` over ``batches()`` (``{"x", "y"[, "w"]}``).

        The network's logits of this rank's rows are computed once and kept while they fit in
        ``cache_bytes`` (12.5k rows x 40 bins: 4 MB); only beyond that is the stream re-read
        (and the network re-run) on every Newton pass, so that memory stays bounded by one
        batch whatever the number of rows. Both give the same offsets."""
        dev = model_device(self)

        def source() -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
            with eval_mode(self):
                for b in batches():
                    raw = chunked(self.net, b["x"].to(dev, model_dtype(self))).double()
                    target = class_target(b["y"].to(dev))
                    keep = target >= 0
                    w = b.get("w")
                    w = None if w is None else w.to(dev, torch.float64).reshape(-1)[keep]
                    yield raw[keep], target[keep], w

        rows: list[tuple[Tensor, Tensor, Tensor | None]] = []
        size = 0
        for item in source():
            size += sum(t.numel() * t.element_size() for t in item if t is not None)
            if size > cache_bytes:  # too many rows for memory: every pass re-reads the stream
                return self._fit_offsets(source, max_iter=max_iter, tol=tol, reduce=reduce)
            rows.append(item)
        return self._fit_offsets(lambda: iter(rows), max_iter=max_iter, tol=tol, reduce=reduce)

    def _fit_offsets(
        self,
        source: Callable[[], Iterable[tuple[Tensor, Tensor, Tensor | None]]],
        *,
        max_iter: int,
        tol: float,
        reduce: Callable[[Tensor], Tensor] | None,
    ) -> dict[str, float]:
        red: Callable[[Tensor], Tensor] = reduce if reduce is not None else (lambda t: t)
        dev = model_device(self)
        n = self.n_bins

        def sweep(b: Tensor, first: bool) -> Tensor:
            # [Σ w lse, Σ w p (n), negative Hessian (n*n)] (+ [counts (n), Σ w, non-finite])
            acc = torch.zeros(1 + n + n * n + (n + 2 if first else 0), dtype=torch.float64)
            acc = acc.to(dev)
            hess = acc[1 + n : 1 + n + n * n].view(n, n)
            for raw, target, w in source():
                if w is None:
                    w = torch.ones(len(target), dtype=torch.float64, device=dev)
                logits = raw + b
                lse = torch.logsumexp(logits, dim=1)
                p = torch.exp(logits - lse[:, None])  # softmax, reusing the normaliser
                wp = w[:, None] * p
                acc[0] += (w * lse).sum()
                acc[1 : 1 + n] += wp.sum(dim=0)
                hess += torch.diag(wp.sum(dim=0)) - p.T @ wp
                if first:
                    tail = acc[1 + n + n * n :]
                    tail[:n].index_add_(0, target, w)
                    tail[n] += w.sum()
                    tail[n + 1] += float(not bool(torch.isfinite(raw).all()))
            return red(acc)

        # warm start from the current offsets: refits after each epoch then take a step or two
        b = self.logit_offset.to(dev, torch.float64).clone()
        b = (b - b.max()).clamp(min=-60.0)
        sums = sweep(b, first=True)
        tail = sums[1 + n + n * n :]
        counts, total = tail[:n], float(tail[n])
        if tail[n + 1] > 0 or total <= 0:
            # a diverged network (the training loop reports it) or no rows: keep the offsets
            return {"iterations": 0.0, "max_rel_mismatch": math.inf}
        eps = 1e-9 * total / n
        # pseudo-counts rescaled so they still sum to Σw (a stationary point must exist)
        goal = (counts + eps) * total / (total + n * eps)
        ones = torch.ones(n, n, dtype=torch.float64, device=dev) / n

        def unpack(b: Tensor, s: Tensor) -> tuple[float, Tensor, Tensor]:
            value = float((goal * b).sum() - s[0])
            return value, goal - s[1 : 1 + n], s[1 + n : 1 + n + n * n].view(n, n)

        value, grad, hess = unpack(b, sums)
        mismatch = math.inf
        it = 0
        for it in range(1, max_iter + 1):  # noqa: B007 - the count is reported
            mismatch = float((grad.abs() / counts.clamp(min=1.0)).max())
            if mismatch < tol:
                break
            scale = float(hess.diagonal().mean()) + 1e-300
            step = torch.linalg.solve(
                hess + scale * ones + 1e-12 * scale * torch.eye(n, dtype=torch.float64, device=dev),
                grad,
            )
            t = 1.0
            while True:  # backtracking: the objective must not decrease
                cand = (b + t * step).clamp(-60.0, 60.0)
                cand = cand - cand.max()
                new_value, new_grad, new_hess = unpack(cand, sweep(cand, first=False))
                if new_value >= value - 1e-12 * abs(value):
                    break
                t *= 0.5
                if t < 1e-6:
                    # no ascent left at float64 precision (e.g. an empty class pinned at the
                    # clamp): further iterations would only repeat this search
                    self.logit_offset.copy_(b.to(self.logit_offset.dtype))
                    return {"iterations": float(it), "max_rel_mismatch": mismatch}
            b, value, grad, hess = cand, new_value, new_grad, new_hess
        self.logit_offset.copy_(b.to(self.logit_offset.dtype))
        return {"iterations": float(it), "max_rel_mismatch": mismatch}

    @torch.no_grad()
    def predict_proba(self, x: Tensor) -> Tensor:
        with eval_mode(self):
            x = x.to(model_device(self), model_dtype(self))
            return chunked(lambda c: F.softmax(self(c), dim=1), x)

    @torch.no_grad()
    def unfold(self, x: Tensor) -> Tensor:
        """Unfolded histogram (N,) float64: the sum of predicted probabilities over events."""
        return self.predict_proba(x).sum(dim=0, dtype=torch.float64)

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return [torch.optim.Adam(self.parameters(), lr=lr, weight_decay=self.config.weight_decay)]

    def training_step(
        self, batch: dict[str, Tensor], optimizers: list[torch.optim.Optimizer], step_fn: StepFn
    ) -> dict[str, float | Tensor]:
        loss = F.cross_entropy(self(batch["x"]), class_target(batch["y"]))
        step_fn(optimizers[0], loss)
        return {"loss": loss.detach()}  # a tensor: the loop reads it once per epoch

    @torch.no_grad()
    def evaluate(self, data: dict[str, Tensor]) -> dict[str, float]:
        dev = model_device(self)
        x = data["x"].to(dev, model_dtype(self))
        y = class_target(data["y"].to(dev))
        keep = y >= 0
        x, y = x[keep], y[keep]
        with eval_mode(self):
            logits = chunked(self, x)
        probs = F.softmax(logits, dim=1)
        unfolded = probs.sum(dim=0, dtype=torch.float64).cpu().numpy()
        truth = np.bincount(y.cpu().numpy(), minlength=self.n_bins).astype(np.float64)
        out = {
            "val_loss": float(F.cross_entropy(logits, y)),
            "accuracy": float((logits.argmax(dim=1) == y).float().mean()),
        }
        out.update(unfolding_scores(unfolded, truth))
        return out

    @torch.no_grad()
    def evaluate_stream(
        self,
        batches: Callable[[], Iterable[dict[str, Tensor]]],
        reduce: Callable[[Tensor], Tensor] | None = None,
    ) -> dict[str, float]:
        """:meth:`evaluate` from sums over ``batches()``, all-reduced with ``reduce``: each
        rank passes its share of the validation rows and all get the metrics of all rows."""
        dev = model_device(self)
        n = self.n_bins
        # [Σ cross-entropy, correct, rows, unfolded (n), truth (n)]
        sums = torch.zeros(3 + 2 * n, dtype=torch.float64, device=dev)
        with eval_mode(self):
            for b in batches():
                x = b["x"].to(dev, model_dtype(self))
                y = class_target(b["y"].to(dev))
                keep = y >= 0
                x, y = x[keep], y[keep]
                logits = chunked(self, x).double()
                sums[0] += F.cross_entropy(logits, y, reduction="sum")
                sums[1] += (logits.argmax(dim=1) == y).sum()
                sums[2] += len(y)
                sums[3 : 3 + n] += F.softmax(logits, dim=1).sum(dim=0)
                sums[3 + n :] += torch.bincount(y, minlength=n).double()
        if reduce is not None:
            sums = reduce(sums)
        rows = float(sums[2])
        out = {
            "val_loss": float(sums[0]) / rows if rows else math.nan,
            "accuracy": float(sums[1]) / rows if rows else math.nan,
        }
        s = sums.cpu().numpy()
        out.update(unfolding_scores(s[3 : 3 + n], s[3 + n :]))
        return out


def build(config: UnfoldBinsConfig, dims: DataDims) -> UnfoldBinsNet:
    return UnfoldBinsNet(config, dims)


def search_space() -> SearchSpace:
    return {
        "alpha": ("loguniform", 0.5, 16.0),
        "p": ("uniform", 0.5, 2.0),
        "depth": ("int", 1, 3),
        "dropout": ("uniform", 0.0, 0.3),
        "batchnorm": ("choice", [False, True]),
    }


FAMILY = Family(
    name=NAME,
    config_cls=UnfoldBinsConfig,
    build=build,
    data_spec=data_spec,
    search_space=search_space,
    metrics=METRICS,
    description="Unfolding as truth-bin classification; histogram = sum of probabilities.",
    metric_modes=MODES,
)
