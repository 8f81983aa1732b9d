"""A benchmark model family whose epoch is a fixed amount of CPU work (benchmarks/scan_overhead.py).

Registered the way a user plug-in family is: scans reach it by its import string
``"benchmarks.cpu_family:FAMILY"`` (every Ray worker and rank imports it; the repository root is on
``PYTHONPATH``), and :func:`register` adds it to this process's registry as ``cpu_bench``.

Every epoch, each rank trains a fixed-size MLP (``width`` x ``depth``, fixed random inputs of
``rows`` rows, seeded) for exactly ``steps`` optimizer steps, whatever the dataset: the dataset (a
tiny synthetic unfolding sample) gives one batch per rank per epoch, and :meth:`WorkMLP.training_step`
runs the ``steps`` steps on that one batch through the loop's ``step_fn`` (so the backend's
gradient all-reduce runs at every step, as in real training). ``val_loss`` depends on ``lr``, so a
searcher and ASHA have something to rank.

:func:`benchmarks.cpu_work.work_epoch` is the same work without hepscan (the calibration and plain Ray Tune's trainable
in the benchmark use it); the timestamps ``train_t0``/``train_t1`` (first/last step of the epoch,
``time.time()``, mean over ranks) let the benchmark split wall time into work and overhead.

.. code-block:: bash

    python -c "import benchmarks.cpu_family as f; f.register(); print(f.FAMILY)"
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.cpu_work import make_mlp, work_epoch
from models.base import DataDims, DataSpec, Family, SearchSpace, StepFn
from models.manifest import Manifest
from models.registry import register_family

__all__ = ["FAMILY", "CpuWorkConfig", "WorkMLP", "register"]

NAME = "cpu_bench"


@dataclass
class CpuWorkConfig:
    """The work of one epoch per rank: ``steps`` steps of a ``depth`` x ``width`` MLP on
    ``rows`` rows. ``x`` is a dummy searchable knob (the score's minimum is at x=0.3)."""

    width: int = 256
    depth: int = 3
    rows: int = 512
    steps: int = 20
    x: float = 0.5


def data_spec(manifest: Manifest) -> DataSpec:
    """Any unfolding-style manifest: the rows only set the number of batches (one per rank)."""
    from models.base import manifest_features

    features = manifest_features(manifest, NAME)
    return DataSpec(
        x_columns=features,
        y_columns=("truth_bin",),
        target_kind="class",
        dims=DataDims(n_inputs=len(features), n_classes=(2,)),
        drop_negative_y=True,
        # published as a score model (scan.publish logs the winner like any family's)
        extra={"output": "score"},
    )


class WorkMLP(nn.Module):
    def __init__(self, config: CpuWorkConfig, dims: DataDims) -> None:
        super().__init__()
        self.config = config
        self.net, x, y = make_mlp(config.width, config.depth, config.rows)
        self.x_fixed: Tensor
        self.y_fixed: Tensor
        self.register_buffer("x_fixed", x, persistent=False)
        self.register_buffer("y_fixed", y, persistent=False)

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return [torch.optim.SGD(self.parameters(), lr=lr)]

    def training_step(
        self, batch: dict[str, Tensor], optimizers: list[torch.optim.Optimizer], step_fn: StepFn
    ) -> dict[str, float]:
        opt = optimizers[0]
        loss, t0, t1 = work_epoch(
            self.net, self.x_fixed, self.y_fixed, self.config.steps, lambda loss: step_fn(opt, loss)
        )
        return {"loss": loss, "t0": t0, "t1": t1}

    @torch.no_grad()
    def score(self, x: Tensor) -> Tensor:
        """0.5 for every row: the family learns nothing about the data; this only lets the
        winner be published (a bundle logged to MLflow) as every scan's winner is."""
        return torch.full((x.shape[0],), 0.5)

    @torch.no_grad()
    def evaluate(self, data: dict[str, Tensor]) -> dict[str, float]:
        return {
            "val_loss": (self.config.x - 0.3) ** 2
            + 1e-3 * float(F.mse_loss(self.net(self.x_fixed[:64]), self.y_fixed[:64]))
        }


def build(config: CpuWorkConfig, dims: DataDims) -> WorkMLP:
    return WorkMLP(config, dims)


def search_space() -> SearchSpace:
    return {"x": ("uniform", 0.0, 1.0)}


FAMILY = Family(
    name=NAME,
    config_cls=CpuWorkConfig,
    build=build,
    data_spec=data_spec,
    search_space=search_space,
    metrics=("val_loss",),
    metric_modes={"val_loss": "min"},
    description="Fixed CPU work per epoch (benchmarks/scan_overhead.py).",
)


def register() -> Family:
    """Add the family to this process's registry as ``cpu_bench`` (scans use the import string)."""
    return register_family(FAMILY, replace=True)
