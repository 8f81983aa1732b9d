"""The Ray Tune trainable of a scan: one trial = jobs/train's :class:`TrainSession` on N ranks.

One Tune iteration is one epoch, so ASHA can stop a trial after any epoch. Ranks live

* ``workers == 1``: in the trainable's own process;
* ``backend: horovod``: in a ``horovod.ray.RayExecutor`` group placed in the trial's placement
  group (the trainable requests ``[{"CPU": 0}] + [{"CPU": c, "GPU": g}] * N``, see
  :func:`trial_resources`), Gloo rendezvous set up by the executor;
* ``backend: ddp``: in N Ray actors in the same placement group, joined with
  ``torch.distributed`` (gloo on CPU, nccl on GPU) from ``MASTER_ADDR``/``MASTER_PORT``.

GPUs (``resources.gpus_per_worker``, validated by :func:`scan.resources.check_gpu_request`):
every rank trains on the GPU Ray assigned to it. Horovod's executor makes the node's GPUs of
the group visible to each of its ranks; DDP actors get the same from
:func:`scan.resources.node_gpu_plan`; :meth:`scan.ranks.RankWorker.place_gpu` then names the rank's own
GPU in ``HEPSCAN_CUDA_DEVICE`` (read by :mod:`jobs.placement`), so concurrent trials never share
a GPU by accident and ranks of one trial can use NCCL peer-to-peer.

Worker start-up (processes, imports, rendezvous) costs seconds while a tiny trial trains in
fractions of one, so the trainable is reused between trials (``reuse_actors=True``,
:meth:`ScanTrainable.reset_config`) and keeps its rank group alive: a new trial only builds a new
``TrainSession`` on the same ranks (Horovod stays initialised, the DDP process group stays up);
only the group settings (:data:`scan.ranks.GROUP_KEYS`) must match, so trials of other families or
training settings reuse the same ranks too.

Faults: a rank that raises or dies (its process killed, its node lost) fails the trial at once
instead of leaving the other ranks blocked: the groups collect the ranks' futures with
:func:`scan.ranks.gather_ranks` (``ray.wait``, one at a time), and on the first failure kill the whole
group (:class:`scan.ranks.RankGroupLost` names the rank) so the trainable can be torn down and Tune can
retry the trial from its last checkpoint (``max_failures``). Ranks whose peer vanished without
a trace (a network partition) give up after the collective timeout
(``resources.collective_timeout_s``, :func:`jobs.backends.collective_timeout`).

Checkpoints: rank 0 writes ``last.pt``/``best.pt`` into a private directory after every epoch;
:meth:`ScanTrainable.save_checkpoint` copies them into Tune's checkpoint so a trial resumes
(``hepscan resume``, retries after a failure) from its last epoch on any node.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path
from typing import Any

from models.errors import require
from scan.ranks import CKPT_FILES, group_shape, make_group
from scan.state import FINISHED_KEY, STATIC_KEY

require("ray.tune")  # an EngineMissingError naming the extra, rather than a bare ImportError
from ray import tune  # noqa: E402

STATE_FILE = "trainable.json"


def trial_resources(workers: int, cpus_per_worker: float, gpus_per_worker: float) -> Any:
    """Placement-group request of one trial: an empty bundle for the trainable (it only
    coordinates) plus one bundle per rank; a single rank trains inside the trainable."""
    worker: dict[str, float] = {"CPU": cpus_per_worker}
    if gpus_per_worker:
        worker["GPU"] = gpus_per_worker
    if workers == 1:
        return tune.PlacementGroupFactory([worker])
    head: dict[str, float] = {"CPU": 0}
    return tune.PlacementGroupFactory([head] + [dict(worker) for _ in range(workers)])


def trial_dirname(trial: Any) -> str:
    """Short trial directory names (Tune's default embeds the whole config)."""
    return f"trial_{trial.trial_id}"


def split_params(params: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(TrainConfig overrides, model config) from a flat trial config."""
    from scan.config import TRAIN_PARAMS

    train = {k: v for k, v in params.items() if k in TRAIN_PARAMS}
    model = {k: v for k, v in params.items() if k not in TRAIN_PARAMS}
    return train, model


def build_train_config(static: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """The TrainConfig mapping (``checkpoint_dir`` unset) of one trial."""
    merged = {**static.get("fixed", {}), **{k: v for k, v in params.items() if v is not None}}
    train, model = split_params(merged)
    workers = int(static["workers"])
    cfg: dict[str, Any] = {
        "dataset": static["dataset"],
        "family": static["family"],
        "model": model,
        "epochs": int(static["max_epochs"]),
        "backend": static["backend"] if workers > 1 else "single",
        "workers": workers,
        "monitor": static["monitor"],
        "mode": static["mode"],
        "seed": int(static["seed"]),
    }
    cfg.update(train)
    if "lr" in cfg:
        cfg["lr"] = float(cfg["lr"])
    if "batch_size" in cfg:
        # The global batch must split evenly over the ranks.
        b = int(cfg["batch_size"])
        cfg["batch_size"] = max(workers, b - b % workers)
    return cfg


class ScanTrainable(tune.Trainable):
    """One trial; reused for the next trial through :meth:`reset_config`."""

    _group: Any = None

    def setup(self, config: dict[str, Any]) -> None:
        self._configure(config)

    def _configure(self, config: dict[str, Any]) -> None:
        static = config[STATIC_KEY]
        params = {k: v for k, v in config.items() if k != STATIC_KEY}
        self._static = static
        self._train_cfg = build_train_config(static, params)
        self._resume: dict[str, bytes] | None = None
        self._started = False
        self._train_time_total = 0.0
        self._best: dict[str, float] = {}

    def step(self) -> dict[str, Any]:
        try:
            if self._group is None:
                self._group = make_group(self._static)
            if not self._started:
                self._group.start(self._train_cfg, self._resume)
                self._started = True
            t0 = time.perf_counter()
            metrics, done = self._group.run_epoch()
        except BaseException:
            # A rank group killed its ranks already (gather_ranks); drop it so that cleanup()
            # does not wait on them. Tune retries the trial from its last checkpoint
            # (max_failures) with a new group.
            group, self._group = self._group, None
            if group is not None and not hasattr(group, "kill"):
                with contextlib.suppress(Exception):
                    group.shutdown()
            raise
        self._train_time_total += float(metrics.get("train_time_s", time.perf_counter() - t0))
        out: dict[str, Any] = dict(metrics)
        out["train_time_total_s"] = self._train_time_total
        # Running best of each objective: the trial's final figure of merit in MLflow.
        for metric, mode in self._static.get("objectives", []):
            v = out.get(metric)
            if isinstance(v, int | float) and math.isfinite(v):
                old = self._best.get(metric)
                better = old is None or (v < old if mode == "min" else v > old)
                self._best[metric] = float(v) if better else old  # type: ignore[assignment]
            if metric in self._best:
                out[f"best_{metric}"] = self._best[metric]
        out[FINISHED_KEY] = bool(done)
        if done:
            out["done"] = True
        return out

    def save_checkpoint(self, checkpoint_dir: str) -> None:
        files = self._group.checkpoint_files() if self._group is not None else {}
        for name, blob in files.items():
            Path(checkpoint_dir, name).write_bytes(blob)
        Path(checkpoint_dir, STATE_FILE).write_text(
            json.dumps({"train_time_total_s": self._train_time_total, "best": self._best})
        )

    def load_checkpoint(self, checkpoint: Any) -> None:
        d = Path(checkpoint)
        self._resume = {n: (d / n).read_bytes() for n in CKPT_FILES if (d / n).exists()}
        state = d / STATE_FILE
        if state.exists():
            saved = json.loads(state.read_text())
            self._train_time_total = float(saved["train_time_total_s"])
            self._best = {k: float(v) for k, v in saved.get("best", {}).items()}
        self._started = False  # the next step sets the session up from these files

    def reset_config(self, new_config: dict[str, Any]) -> bool:
        if group_shape(new_config[STATIC_KEY]) != group_shape(self._static):
            return False
        self._configure(new_config)
        return True

    def cleanup(self) -> None:
        if self._group is not None:
            try:
                self._group.shutdown()
            finally:
                self._group = None
