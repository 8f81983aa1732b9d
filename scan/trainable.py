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
:func:`scan.resources.node_gpu_plan`; :meth:`RankWorker.place_gpu` then names the rank's own
GPU in ``HEPSCAN_CUDA_DEVICE`` (read by :mod:`jobs.placement`), so concurrent trials never share
a GPU by accident and ranks of one trial can use NCCL peer-to-peer.

Worker start-up (processes, imports, rendezvous) costs seconds while a tiny trial trains in
fractions of one, so the trainable is reused between trials (``reuse_actors=True``,
:meth:`ScanTrainable.reset_config`) and keeps its rank group alive: a new trial only builds a new
``TrainSession`` on the same ranks (Horovod stays initialised, the DDP process group stays up);
only the group settings (:data:`GROUP_KEYS`) must match, so trials of other families or
training settings reuse the same ranks too.

Faults: a rank that raises or dies (its process killed, its node lost) fails the trial at once
instead of leaving the other ranks blocked: the groups collect the ranks' futures with
:func:`gather_ranks` (``ray.wait``, one at a time), and on the first failure kill the whole
group (:class:`RankGroupLost` names the rank) so the trainable can be torn down and Tune can
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
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from models.errors import require
from scan.state import FINISHED_KEY, STATIC_KEY

require("ray.tune")  # an EngineMissingError naming the extra, rather than a bare ImportError
from ray import tune  # noqa: E402

CKPT_FILES = ("last.pt", "best.pt")
STATE_FILE = "trainable.json"


class RankGroupLost(RuntimeError):
    """A rank of a trial's group died (its process or node is gone); the group was torn down."""


def gather_ranks(refs: list[Any], what: str) -> list[Any]:
    """``ray.get(refs)`` of one call on every rank, failing at the first rank that fails.

    A plain ``ray.get`` of the list would wait on rank 0 first, which may be blocked in a
    collective with a dead rank until the collective timeout. Raises :class:`RankGroupLost`
    for a dead rank and the rank's own exception otherwise."""
    import ray
    from ray.exceptions import RayActorError, WorkerCrashedError

    index = {ref: i for i, ref in enumerate(refs)}
    pending = list(refs)
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        try:
            ray.get(done[0])
        except (RayActorError, WorkerCrashedError) as exc:
            raise RankGroupLost(
                f"rank {index[done[0]]} of {len(refs)} died during {what}: "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from exc
    return list(ray.get(list(refs)))


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


class RankWorker:
    """One rank: a TrainSession and its private checkpoint directory.

    Used in-process, as the ``executable_cls`` of a Horovod ``RayExecutor`` and as a DDP actor.
    """

    def __init__(self, rank: int = 0, world_size: int = 1) -> None:
        self.rank = rank
        self.world_size = world_size
        self.session: Any = None
        self.ckpt_dir: str | None = None

    def set_env(self, env: dict[str, str]) -> None:
        os.environ.update(env)

    def environment(self, keys: list[str]) -> dict[str, str | None]:
        """The values of ``keys`` in this rank's environment (placement checks)."""
        return {k: os.environ.get(k) for k in keys}

    def gpu_ids(self) -> tuple[str, list[str]]:
        """(node id, the GPU ids Ray assigned to this rank)."""
        import ray

        ctx = ray.get_runtime_context()
        ids = ctx.get_accelerator_ids().get("GPU", [])
        return ctx.get_node_id(), [str(i) for i in ids]

    def place_gpu(self, env: dict[str, str] | None = None) -> dict[str, str]:
        """Set this rank's GPU environment: ``env`` when given (DDP: from the group's plan),
        else its own Ray GPU among those already visible (Horovod, single rank)."""
        from scan.resources import rank_gpu_env

        if env is None:
            _, own = self.gpu_ids()
            visible = [v for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v]
            env = rank_gpu_env(own, visible or own)
        os.environ.update(env)
        return env

    def address(self) -> tuple[str, int]:
        import socket

        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind(("", 0))
            port = int(s.getsockname()[1])
        return ip, port

    def start(self, config: dict[str, Any], files: dict[str, bytes] | None) -> None:
        """Build and set up a session for ``config``, resuming from ``files`` when given."""
        from jobs.train import TrainSession, train_config_from_dict

        self._drop()
        self.ckpt_dir = tempfile.mkdtemp(prefix="hepscan-trial-")
        for name, blob in (files or {}).items():
            Path(self.ckpt_dir, name).write_bytes(blob)
        cfg = train_config_from_dict({**config, "checkpoint_dir": self.ckpt_dir}, "trial config")
        self.session = TrainSession(cfg, rank=self.rank, world_size=self.world_size)
        self.session.setup()

    def run_epoch(self) -> tuple[dict[str, float], bool]:
        metrics = self.session.run_epoch()
        self.session.save_checkpoint()
        return metrics, bool(self.session.done)

    def checkpoint_files(self) -> dict[str, bytes]:
        if self.ckpt_dir is None:
            return {}
        out = {}
        for name in CKPT_FILES:
            p = Path(self.ckpt_dir, name)
            if p.exists():
                out[name] = p.read_bytes()
        return out

    def _drop(self) -> None:
        # The session is dropped, not closed: closing would tear down the process group that
        # the next trial on these ranks reuses.
        self.session = None
        if self.ckpt_dir is not None:
            shutil.rmtree(self.ckpt_dir, ignore_errors=True)
            self.ckpt_dir = None

    def stop(self) -> None:
        if self.session is not None:
            with contextlib.suppress(Exception):  # best effort at shutdown
                self.session.close()
        self._drop()


class _LocalGroup:
    def __init__(self, gpus: float = 0.0) -> None:
        self.worker = RankWorker()
        if gpus:
            self.worker.place_gpu()

    def start(self, config: dict[str, Any], files: dict[str, bytes] | None) -> None:
        self.worker.start(config, files)

    def run_epoch(self) -> tuple[dict[str, float], bool]:
        return self.worker.run_epoch()

    def checkpoint_files(self) -> dict[str, bytes]:
        return self.worker.checkpoint_files()

    def shutdown(self) -> None:
        self.worker.stop()


class _HorovodGroup:
    def __init__(self, workers: int, cpus: float, gpus: float, timeout_s: float) -> None:
        from jobs.backends import collective_timeout_env

        RayExecutor = require("horovod.ray").RayExecutor

        settings = RayExecutor.create_settings(timeout_s=60)
        self.executor = RayExecutor(
            settings,
            num_workers=workers,
            cpus_per_worker=cpus,
            use_gpu=gpus > 0,
            # whole GPUs only (scan.resources.check_gpu_request): the bundle holds what the
            # ranks request
            gpus_per_worker=int(gpus) if gpus > 0 else None,
            use_current_placement_group=True,
        )
        self.executor.start(
            executable_cls=RankWorker, extra_env_vars=collective_timeout_env(timeout_s)
        )
        if gpus:
            self._all(lambda w: w.place_gpu(), "GPU placement")

    def _all(self, fn: Any, what: str) -> list[Any]:
        workers = self.executor.adapter.workers
        try:
            return gather_ranks([w.execute.remote(fn) for w in workers], what)
        except BaseException:
            self.kill()
            raise

    def start(self, config: dict[str, Any], files: dict[str, bytes] | None) -> None:
        self._all(lambda w: w.start(config, files), "set-up")

    def run_epoch(self) -> tuple[dict[str, float], bool]:
        result: tuple[dict[str, float], bool] = self._all(lambda w: w.run_epoch(), "an epoch")[0]
        return result

    def checkpoint_files(self) -> dict[str, bytes]:
        return self.executor.execute_single(lambda w: w.checkpoint_files())

    def kill(self) -> None:
        """Tear the group down at once (a rank failed: the others may be stuck in a collective)."""
        import ray

        adapter = getattr(self.executor, "adapter", None)
        for w in getattr(adapter, "workers", None) or []:
            with contextlib.suppress(Exception):
                ray.kill(w)
        with contextlib.suppress(Exception):
            self.executor.shutdown()

    def shutdown(self) -> None:
        try:
            self.executor.execute(lambda w: w.stop())
        finally:
            self.executor.shutdown()


class _DdpGroup:
    def __init__(self, workers: int, cpus: float, gpus: float, timeout_s: float) -> None:
        import ray
        from ray.util.placement_group import get_current_placement_group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        from jobs.backends import collective_timeout_env

        pg = get_current_placement_group()
        strategy = (
            PlacementGroupSchedulingStrategy(pg, placement_group_capture_child_tasks=False)
            if pg is not None
            else None
        )
        remote: Any = ray.remote(RankWorker)
        self.actors: list[Any] = [
            remote.options(num_cpus=cpus, num_gpus=gpus, scheduling_strategy=strategy).remote(
                rank, workers
            )
            for rank in range(workers)
        ]
        ip, port = ray.get(self.actors[0].address.remote())
        if gpus:
            from scan.resources import node_gpu_plan

            plan = node_gpu_plan(ray.get([a.gpu_ids.remote() for a in self.actors]))
            ray.get([a.place_gpu.remote(env) for a, env in zip(self.actors, plan, strict=True)])
        ray.get(
            [
                a.set_env.remote(
                    {
                        "MASTER_ADDR": ip,
                        "MASTER_PORT": str(port),
                        "RANK": str(rank),
                        "WORLD_SIZE": str(workers),
                        "LOCAL_RANK": str(rank),
                        **collective_timeout_env(timeout_s),
                    }
                )
                for rank, a in enumerate(self.actors)
            ]
        )

    def _all(self, refs: list[Any], what: str) -> list[Any]:
        try:
            return gather_ranks(refs, what)
        except BaseException:
            self.kill()
            raise

    def start(self, config: dict[str, Any], files: dict[str, bytes] | None) -> None:
        self._all([a.start.remote(config, files) for a in self.actors], "set-up")

    def run_epoch(self) -> tuple[dict[str, float], bool]:
        refs = [a.run_epoch.remote() for a in self.actors]
        result: tuple[dict[str, float], bool] = self._all(refs, "an epoch")[0]
        return result

    def kill(self) -> None:
        """Tear the group down at once (a rank failed: the others may be stuck in a collective)."""
        import ray

        for a in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(a)

    def checkpoint_files(self) -> dict[str, bytes]:
        import ray

        return ray.get(self.actors[0].checkpoint_files.remote())

    def shutdown(self) -> None:
        import ray

        with contextlib.suppress(Exception):  # the actors are killed next anyway
            ray.get([a.stop.remote() for a in self.actors], timeout=30)
        for a in self.actors:
            ray.kill(a)


def _make_group(static: dict[str, Any]) -> Any:
    from jobs.backends import DEFAULT_COLLECTIVE_TIMEOUT_S

    workers = int(static["workers"])
    cpus, gpus = float(static["cpus_per_worker"]), float(static["gpus_per_worker"])
    timeout = float(static.get("collective_timeout_s", DEFAULT_COLLECTIVE_TIMEOUT_S))
    if workers == 1:
        return _LocalGroup(gpus)
    if static["backend"] == "horovod":
        return _HorovodGroup(workers, cpus, gpus, timeout)
    return _DdpGroup(workers, cpus, gpus, timeout)


# The settings a rank group is made for; any other setting (family, dataset, fixed training
# settings) is the trial's and goes to the session each trial builds on the group's ranks.
GROUP_KEYS = ("workers", "cpus_per_worker", "gpus_per_worker", "backend", "collective_timeout_s")


def _group_shape(static: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(static.get(k) for k in GROUP_KEYS)


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
                self._group = _make_group(self._static)
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
        if _group_shape(new_config[STATIC_KEY]) != _group_shape(self._static):
            return False
        self._configure(new_config)
        return True

    def cleanup(self) -> None:
        if self._group is not None:
            try:
                self._group.shutdown()
            finally:
                self._group = None
