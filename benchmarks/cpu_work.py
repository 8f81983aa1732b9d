"""The fixed CPU work of one benchmark epoch, in plain torch (no hepscan imports).

Used by the hepscan family :mod:`benchmarks.cpu_family`, by the calibration and by plain Ray
Tune's hand-written trainable in :mod:`benchmarks.scan_overhead`, so all three do the same work:
``steps`` SGD steps of a ``depth`` x ``width`` tanh MLP on ``rows`` fixed random rows.

.. code-block:: bash

    python -c "from benchmarks.cpu_work import make_mlp; print(make_mlp(256, 3, 512)[0])"
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["make_mlp", "work_epoch"]


def make_mlp(width: int, depth: int, rows: int, seed: int = 0) -> tuple[nn.Module, Tensor, Tensor]:
    """(MLP, inputs, targets), deterministic for ``seed``."""
    g = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.Tanh()]
    layers.append(nn.Linear(width, 1))
    torch.manual_seed(seed)
    net = nn.Sequential(*layers)
    x = torch.randn(rows, width, generator=g)
    y = torch.randn(rows, 1, generator=g)
    return net, x, y


def work_epoch(
    net: nn.Module, x: Tensor, y: Tensor, steps: int, step: Callable[[Tensor], None]
) -> tuple[float, float, float]:
    """``steps`` training steps (``step(loss)`` does backward, gradient sync and the update);
    returns (last loss, first-step time, last-step end time), both ``time.time()``."""
    t0 = time.time()
    loss = torch.zeros(())
    for _ in range(steps):
        loss = F.mse_loss(net(x), y)
        step(loss)
    return float(loss.detach()), t0, time.time()
