"""Run a TrainSession to the end: in this process, under ``horovod.runner``, or as DDP processes.

Multi-process ``train()`` reports per-epoch metrics to the reporter as they come for ``ddp``
(a queue from rank 0); for ``horovod`` (``horovod.runner.run`` returns only at the end) the
reporter is called in the parent after training, once per epoch in order.
"""

from __future__ import annotations

import os
import pickle
import sys
import traceback
from pathlib import Path
from typing import Any

import torch

from jobs.backends import horovod_env, make_comm
from jobs.train.config import Reporter, TrainConfig, TrainResult
from jobs.train.data import prepare
from jobs.train.session import TrainSession
from models.errors import ConfigError, HepscanError, require

__all__ = ["RankError", "train"]


def _loop(session: TrainSession, reporter: Reporter | None) -> TrainResult:
    session.setup()
    while not session.done:
        metrics = session.run_epoch()
        path = session.save_checkpoint()
        if reporter is not None and session.rank == 0:
            reporter.report(int(metrics["epoch"]), metrics, path)
    return session.result()


def _share_cores(workers: int) -> None:
    """N ranks on one machine each use 1/N of the cores unless OMP_NUM_THREADS says otherwise;
    torch's default (all cores per rank) oversubscribes and slows every collective."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // max(1, workers)))


class RankError(RuntimeError):
    """An exception of a training rank that could not be sent to the parent as it was (it does
    not pickle): its type, message and traceback as text."""


def _relayable(exc: BaseException, rank: int) -> BaseException:
    """``exc`` ready to cross a process boundary: the rank's traceback attached as a note (so
    the parent's traceback shows where it happened), or a :class:`RankError` with the same text
    when ``exc`` does not survive a pickle round trip.  :class:`HepscanError` messages are
    unchanged: notes are not part of ``str(exc)``."""
    tb = "".join(traceback.format_exception(exc)).rstrip()
    try:
        note = f"raised on rank {rank}:\n{tb}"
        if hasattr(exc, "add_note"):  # Python >= 3.11
            exc.add_note(note)
        else:
            exc.__notes__ = [*getattr(exc, "__notes__", []), note]
        copy = pickle.loads(pickle.dumps(exc))
        if type(copy) is type(exc) and str(copy) == str(exc):
            return exc
    except Exception:  # noqa: BLE001 - anything that does not pickle is sent as text
        pass
    return RankError(f"rank {rank} raised {type(exc).__qualname__}: {exc}\n{tb}")


def _horovod_worker(config: TrainConfig, env: dict[str, str]) -> tuple[str, Any]:
    os.environ.update(env)  # horovod.runner.run overrides these (jobs.backends.horovod_env)
    _share_cores(int(os.environ.get("HOROVOD_LOCAL_SIZE", config.workers)))
    session = TrainSession(config, comm=make_comm("horovod"))
    try:
        result = _loop(session, None)
    except Exception as exc:  # noqa: BLE001 - relayed to the parent, whatever its type
        return ("error", _relayable(exc, session.rank))
    return ("ok", result if session.rank == 0 else None)


def _ddp_worker(rank: int, config: TrainConfig, port: int, queue: Any) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(config.workers),
        LOCAL_RANK=str(rank),
    )
    _share_cores(config.workers)
    session = TrainSession(config, rank=rank, world_size=config.workers)

    class _QueueReporter:
        def report(self, epoch: int, metrics: dict[str, float], path: str | None) -> None:
            queue.put(("epoch", (epoch, metrics, path)))

    try:
        result = _loop(session, _QueueReporter() if rank == 0 else None)
        if rank == 0:
            # Plain pickle bytes: torch's queue reducer would share tensor storage through
            # file descriptors that die with this process.
            queue.put(("ok", pickle.dumps(result)))
    except Exception as exc:  # noqa: BLE001 - rank 0 relays any error to the parent
        if rank == 0:
            queue.put(("error", pickle.dumps(_relayable(exc, rank))))
        if not isinstance(exc, HepscanError):
            raise  # the process fails, so the parent stops the other ranks at once
    finally:
        session.close()
    # The result is in the queue (put() writes the pipe before returning). A spawned process
    # otherwise exits through full interpreter finalisation, where gloo's C++ teardown aborts
    # now and then ("terminate called without an active exception", seen in ~7 % of runs
    # when both ranks stop together); nothing is left to clean up, so skip it.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _project_pythonpath() -> dict[str, str]:
    """PYTHONPATH for child processes so they import this checkout even when not installed."""
    root = str(Path(__file__).resolve().parents[2])
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join([root, *[p for p in parts if p != root]])}


def _launch_horovod(config: TrainConfig, reporter: Reporter | None, np_: int) -> TrainResult:
    runner = require("horovod.runner")

    saved = os.environ.get("PYTHONPATH")
    os.environ.update(_project_pythonpath())
    try:
        results = runner.run(
            _horovod_worker, args=(config, horovod_env()), num_proc=np_, use_gloo=True
        )
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    for status, payload in results:
        if status == "error":
            raise payload
    result: TrainResult = results[0][1]
    if reporter is not None:
        for m in result.history:
            is_last = int(m["epoch"]) == result.epochs_run
            reporter.report(int(m["epoch"]), m, result.checkpoint_path if is_last else None)
    return result


def _launch_ddp(config: TrainConfig, reporter: Reporter | None) -> TrainResult:
    import torch.multiprocessing as mp

    ctx = mp.get_context("spawn")
    q = ctx.SimpleQueue()
    saved = os.environ.get("PYTHONPATH")
    os.environ.update(_project_pythonpath())
    try:
        procs = mp.start_processes(
            _ddp_worker,
            args=(config, _free_port(), q),
            nprocs=config.workers,
            join=False,
            start_method="spawn",
        )
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = saved
    outcome: tuple[str, Any] | None = None

    def drain() -> None:
        nonlocal outcome
        while not q.empty():
            kind, payload = q.get()
            if kind == "epoch" and reporter is not None:
                reporter.report(*payload)
            elif kind in ("ok", "error"):
                outcome = (kind, pickle.loads(payload))

    try:
        while not procs.join(timeout=0.2):
            drain()
    except mp.ProcessRaisedException:
        drain()
        if outcome is None or outcome[0] != "error":
            raise
    drain()
    if outcome is None:
        raise RuntimeError("ddp workers ended without a result from rank 0")
    if outcome[0] == "error":
        raise outcome[1]
    result: TrainResult = outcome[1]
    return result


def train(config: TrainConfig, reporter: Reporter | None = None) -> TrainResult:
    """Train ``config`` to the end (or early stop); resumes from ``checkpoint_dir/last.pt``.

    ``workers == 1`` trains in this process whatever the backend; otherwise ``horovod`` launches
    ``horovod.runner.run(np=workers, use_gloo=True)`` and ``ddp`` spawns ``workers`` processes
    with ``torch.multiprocessing`` (gloo on CPU, nccl on GPU).
    """
    prepare(config)  # bad input fails here, before any process starts
    if config.workers == 1:
        session = TrainSession(config, comm=make_comm("single"))
        return _loop(session, reporter)
    if config.backend == "horovod":
        return _launch_horovod(config, reporter, config.workers)
    if config.backend == "ddp":
        return _launch_ddp(config, reporter)
    raise ConfigError(f"key 'backend': {config.backend!r} cannot run {config.workers} workers")
