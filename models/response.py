"""The detector response as the generative families' target (issue 12).

A flow or GAN that models reco objects directly has to learn a near-identity map reco ≈ truth
across a steeply falling spectrum before it can learn the few-per-cent smearing around it.
:class:`ResponseMap` lets them model the *response* instead, the quantity a detector physicist
would fit: per target column, with the truth column it belongs to,

* ``relative``: r = reco / truth − 1 (pT, mass),
* ``angle``: r = wrap(reco − truth) into (−π, π] (φ),
* ``absolute``: r = reco − truth (η),

divided by a per-target spread so that r is O(1). The pairing, the mode and the spread come
from the manifest's ``resolution.quantities`` (``truth``, ``reco``, ``mode`` and the class
``edges``, which span the central ``resolution.quantiles`` of the train split's response: the
spread is that width over the same quantile range of a unit Gaussian). A dataset without that
section cannot use the response parameterisation (the families raise naming the key).

The map is affine in the targets for a fixed condition, so a flow's density transforms with the
constant-in-y Jacobian :meth:`ResponseMap.log_abs_det`: −log p(reco | truth) stays comparable
with and without it. All tensors are the loop's standardised ones; the map goes through physical
units with the model's standardisation buffers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["MODES", "ResponseMap", "response_dims", "response_map"]

MODES = ("relative", "absolute", "angle")


def response_dims(
    res: Mapping[str, Any] | None, x_cols: Sequence[str], y_cols: Sequence[str]
) -> dict[str, tuple[Any, ...]]:
    """``pairs``, ``relative``, ``periodic``, ``scales`` (one entry per target) for
    :class:`models.base.DataDims`, from the manifest's ``resolution`` section ``res``; ``{}``
    when a target has no quantity there (the response map is then unavailable)."""
    if not isinstance(res, Mapping) or not isinstance(res.get("quantities"), Mapping):
        return {}
    lo_q, hi_q = (float(v) for v in res.get("quantiles", (0.01, 0.99)))
    width_sigma = NormalDist().inv_cdf(hi_q) - NormalDist().inv_cdf(lo_q)
    by_reco = {str(q.get("reco")): q for q in res["quantities"].values() if isinstance(q, Mapping)}
    pairs, relative, periodic, scales = [], [], [], []
    for y in y_cols:
        q = by_reco.get(y)
        if q is None or q.get("truth") not in x_cols or q.get("mode") not in MODES:
            return {}
        edges: Sequence[float] = q.get("edges") or []
        spread = (float(edges[-1]) - float(edges[0])) / width_sigma if len(edges) >= 2 else 0.0
        if not (math.isfinite(spread) and spread > 0):
            return {}
        pairs.append(list(x_cols).index(q["truth"]))
        relative.append(q["mode"] == "relative")
        periodic.append(q["mode"] == "angle")
        scales.append(spread)
    return {
        "pairs": tuple(pairs),
        "relative": tuple(relative),
        "periodic": tuple(periodic),
        "scales": tuple(scales),
    }


class ResponseMap(nn.Module):
    """Standardised reco targets y ↔ scaled response r, given the standardised condition x."""

    pairs: Tensor
    relative: Tensor
    periodic: Tensor
    scales: Tensor

    def __init__(
        self,
        pairs: Sequence[int],
        relative: Sequence[bool],
        periodic: Sequence[bool],
        scales: Sequence[float],
    ) -> None:
        super().__init__()
        self.register_buffer("pairs", torch.tensor(list(pairs), dtype=torch.long))
        self.register_buffer("relative", torch.tensor(list(relative), dtype=torch.bool))
        self.register_buffer("periodic", torch.tensor(list(periodic), dtype=torch.bool))
        self.register_buffer("scales", torch.tensor(list(scales), dtype=torch.float32))

    @staticmethod
    def _wrap(v: Tensor) -> Tensor:
        return torch.remainder(v + math.pi, 2 * math.pi) - math.pi

    def _truth(self, x: Tensor, std: Any) -> Tensor:
        """Physical truth value of each target's paired condition column, (B, T)."""
        return (x * std.x_std + std.x_mean)[:, self.pairs]

    def to_response(self, x: Tensor, y: Tensor, std: Any) -> Tensor:
        return self._to_response(self._truth(x, std), y, std)

    def to_response_with_log_det(self, x: Tensor, y: Tensor, std: Any) -> tuple[Tensor, Tensor]:
        """:meth:`to_response` and :meth:`log_abs_det` from one look-up of the truth columns
        (the flow's loss needs both)."""
        truth = self._truth(x, std)
        return self._to_response(truth, y, std), self._log_abs_det(truth, std)

    def _to_response(self, truth: Tensor, y: Tensor, std: Any) -> Tensor:
        reco = y * std.y_std + std.y_mean
        diff = torch.where(self.periodic, self._wrap(reco - truth), reco - truth)
        r = torch.where(self.relative, diff / truth, diff)
        return r / self.scales

    def from_response(self, x: Tensor, r: Tensor, std: Any) -> Tensor:
        truth = self._truth(x, std)
        d = r * self.scales
        reco = torch.where(self.relative, truth * (1.0 + d), truth + d)
        reco = torch.where(self.periodic, self._wrap(reco), reco)
        return (reco - std.y_mean) / std.y_std

    def log_abs_det(self, x: Tensor, std: Any) -> Tensor:
        """log |∂r/∂y| per row, (B,): what turns a density of r into one of y."""
        return self._log_abs_det(self._truth(x, std), std)

    def _log_abs_det(self, truth: Tensor, std: Any) -> Tensor:
        per = torch.log(std.y_std / self.scales).expand(len(truth), -1)
        rel = torch.log(truth.abs().clamp_min(1e-12))
        return (per - torch.where(self.relative, rel, torch.zeros_like(rel))).sum(dim=1)


def response_map(dims: Any, family: str) -> ResponseMap:
    """The :class:`ResponseMap` of a family's ``DataDims``, or a ``ConfigError`` naming the
    manifest key it needs."""
    from models.errors import ConfigError

    if not dims.pairs or len(dims.pairs) != dims.n_targets:
        raise ConfigError(
            f"{family}: response=true needs manifest.json 'resolution.quantities' with a "
            "truth, reco, mode and edges for every generative target (preprocess with a "
            "'resolution' section), or response=false"
        )
    return ResponseMap(dims.pairs, dims.relative, dims.periodic, dims.scales)
