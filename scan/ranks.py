"""A trial's rank group: the processes that train one trial, kept alive between trials.

* ``workers == 1``: :class:`_LocalGroup`, the rank in the trainable's own process;
* ``backend: horovod``: :class:`_HorovodGroup`, a ``horovod.ray.RayExecutor`` group placed in
  the trial's placement group, Gloo rendezvous set up by the executor;
* ``backend: ddp``: :class:`_DdpGroup`, N Ray actors in the same placement group, joined with
  ``torch.distributed`` (gloo on CPU, nccl on GPU) from ``MASTER_ADDR``/``MASTER_PORT``.

Each rank is a :class:`RankWorker` (a ``TrainSession`` and its private checkpoint directory).
This module imports neither Ray Tune nor torch at import time: every rank process imports it
(the Horovod executable and DDP actor class live here), and Tune (``ray.tune``, ~1.5 s per
process on 2 cores) is the trainable's business, not the ranks' (:mod:`scan.trainable`).
Fault handling and GPU placement: see :mod:`scan.trainable`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from models.errors import require

__all__ = [
    "CKPT_FILES",
    "GROUP_KEYS",
    "RankGroupLost",
    "RankWorker",
    "gather_ranks",
    "make_group",
    "group_shape",
]

CKPT_FILES = ("last.pt", "best.pt")


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


def make_group(static: dict[str, Any]) -> Any:
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


def group_shape(static: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(static.get(k) for k in GROUP_KEYS)
