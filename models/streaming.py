"""Optional hooks for families whose validation and calibration can run on a stream of batches.

The training loop never holds a whole split (jobs/train/stream.py). Evaluation and the
per-epoch calibration therefore run on every rank over that rank's share of the split, as a
stream of batches, and the ranks combine *sums* (``reduce`` = an all-reduce sum; ``None`` for
one process). A family opts in by implementing these methods on its model:

.. code-block:: python

    class MyNet(nn.Module):
        def evaluate_stream(self, batches, reduce=None) -> dict[str, float]:
            sums = torch.zeros(3, dtype=torch.float64)
            for b in batches():                     # a fresh pass over this rank's rows
                ...                                 # accumulate sums
            sums = reduce(sums) if reduce else sums # identical on every rank afterwards
            return {...}                            # the same keys as evaluate()

``batches()`` starts a new pass each call (calibration makes several); every batch is
``{"x": Tensor, "y": Tensor}`` on the model's device. Families without the hooks are evaluated
by :meth:`HepModel.evaluate` on rank 0 over the whole validation split held in memory (and
calibrated on each rank's share held in memory), so metrics that are not sums (KS on samples,
classifier AUC) keep working.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol, runtime_checkable

from torch import Tensor

__all__ = ["Batches", "Reduce", "StreamCalibratable", "StreamEvaluable"]

Batches = Callable[[], Iterable[dict[str, Tensor]]]
Reduce = Callable[[Tensor], Tensor]


@runtime_checkable
class StreamEvaluable(Protocol):
    """Validation metrics from sums over a stream, all-reduced with ``reduce``."""

    def evaluate_stream(
        self, batches: Batches, reduce: Reduce | None = None
    ) -> dict[str, float]: ...


@runtime_checkable
class StreamCalibratable(Protocol):
    """The per-epoch calibration over a stream (several passes), sums all-reduced."""

    def calibrate_stream(
        self,
        batches: Batches,
        *,
        max_iter: int = 100,
        tol: float = 1e-9,
        reduce: Reduce | None = None,
    ) -> dict[str, float]: ...
