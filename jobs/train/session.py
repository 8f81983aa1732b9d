"""One rank's training state (:class:`TrainSession`): data slice, model, optimizers, checkpoints.

Drive it as ``setup()``, then ``run_epoch()`` + ``save_checkpoint()`` until ``done``; scans do so
directly on every rank, :func:`jobs.train.train` through the launchers in ``jobs.train.launch``.

Data (streamed, never a whole split)
------------------------------------
Before the first epoch every rank reads its share of the row groups once
(:mod:`jobs.train.survey`): kept rows per row group, the bad-input checks, the train-split
standardisation, all combined with one all-reduce. Each epoch then streams row groups through a
shuffle buffer (:mod:`jobs.train.stream`: seeded per-epoch row-group order, ``data_parts``
contiguous parts, ``batch_size / data_parts`` rows of every part per global batch), each rank
reading only its own parts, with a background thread reading ahead. N ranks see exactly the
global batches of one process run with ``data_parts: N``. Steps per epoch are
``(rows // data_parts) // (batch_size / data_parts)`` (drop-last); if B exceeds the rows it is
lowered to the largest multiple of ``data_parts`` that fits (logged).

Randomness inside ``training_step`` (dropout, GAN noise) is reseeded at every epoch from
``(seed, epoch, rank)``, which makes resuming from a checkpoint exact without restoring RNG
streams.

Validation and calibration stream too. Each rank passes its contiguous share of the split
(manifest order) to the family's ``evaluate_stream``/``calibrate_stream``
(:mod:`models.streaming`), which all-reduce their sums: all ranks get the metrics and the
calibration of all rows. Families without those hooks are evaluated by ``evaluate`` on rank 0
over the validation split held in memory (metrics broadcast), and calibrated by
``calibrate`` on each rank's share held in memory. Training statistics are summed on the device
(no host sync per step), averaged over steps once per epoch and then over ranks.

Precision (``precision``): ``bf16``/``fp16`` run ``training_step``'s forward under
``torch.autocast`` (backward outside it); ``fp16`` scales the loss with a ``GradScaler``. TF32
matmuls are on for CUDA unless ``tf32: false``; ``compile: true`` compiles the model's forward
(``nn.Module.compile``). Evaluation and calibration run in the model's dtype.

NaN: a non-finite training loss raises :class:`TrainingDiverged` at the end of the epoch (the
losses are read once per epoch); with several ranks the check is collective (a NaN on one rank
reaches all ranks through the gradient average anyway): a rank raising alone would leave the
others blocked in the next allreduce.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from jobs.backends import Comm, make_comm
from jobs.placement import resolve_device
from jobs.train.config import TrainConfig, TrainingDiverged, TrainResult
from jobs.train.data import prepare
from jobs.train.feed import Feed
from models.base import Calibratable
from models.errors import ConfigError, InputError, OutputError
from models.streaming import StreamCalibratable, StreamEvaluable

__all__ = ["BEST", "CHECKPOINT_VERSION", "LAST", "RESUMABLE_CHANGES", "TrainSession"]

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
LAST = "last.pt"
BEST = "best.pt"
# TrainConfig keys that may change between a checkpoint and its resumption.
RESUMABLE_CHANGES = frozenset(
    {
        "epochs",
        "patience",
        "checkpoint_dir",
        "workers",
        "backend",
        "device",
        "data_parts",
        "shuffle_buffer",
        "prefetch",
        "tf32",
        "compile",
    }
)
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _seed_everything(*key: int) -> None:
    seq = np.random.SeedSequence(list(key))
    s = int(seq.generate_state(1, dtype=np.uint64)[0] & 0x7FFF_FFFF_FFFF_FFFF)
    torch.manual_seed(s)
    np.random.seed(s % 2**32)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write checkpoint ({exc})") from None


class TrainSession:
    """State of one rank: its data slice, model, optimizers, epoch counter, early stopping.

    Drive it as::

        s = TrainSession(config, rank=r, world_size=n)   # backend from config.backend
        s.setup()                                        # joins the process group, loads, resumes
        while not s.done:
            metrics = s.run_epoch()                      # identical on every rank
            path = s.save_checkpoint()                   # rank 0 writes; None elsewhere
    """

    def __init__(
        self,
        config: TrainConfig,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        comm: Comm | None = None,
    ) -> None:
        """``rank``/``world_size`` are only needed for ``ddp`` without ``RANK``/``WORLD_SIZE`` in
        the environment; Horovod takes them from ``hvd.init()``, ``single`` is rank 0 of 1."""
        self.config = config
        self.comm = comm if comm is not None else make_comm(config.backend, rank, world_size)
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, float]] = []
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.stopped = False
        self._improved = False
        self._ready = False

    # -- setup
    def setup(self) -> None:
        cfg = self.config
        prep = prepare(cfg)
        self.prep = prep
        cuda = torch.cuda.is_available()
        self.device = resolve_device(
            cfg.device, os.environ, cuda, torch.cuda.device_count() if cuda else 0
        )
        self.comm.init(self.device)
        self.rank, self.world_size = self.comm.rank, self.comm.size
        self.dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        if cfg.batch_size % self.world_size:
            raise ConfigError(
                f"key 'batch_size' ({cfg.batch_size}) must be a multiple of the number of "
                f"ranks ({self.world_size})"
            )
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
            torch.backends.cudnn.allow_tf32 = cfg.tf32
        reduce = self.comm.allreduce_sum if self.world_size > 1 else None
        self.feed = Feed(prep, cfg, self.rank, self.world_size, reduce, self.device, self.dtype)
        self.stats = self.feed.stats
        self.n_train, self.batch = self.feed.n_train, self.feed.batch
        self.local_batch = self.feed.local_batch
        self.steps_per_epoch = self.feed.steps_per_epoch

        _seed_everything(cfg.seed, 0xB01D)
        model = prep.family.build(prep.model_config, prep.spec.dims)
        from models.base import Standardisable, standardisation_vectors

        if isinstance(model, Standardisable):
            # Families that output physical values keep the loop's standardisation as buffers.
            mean = {k: m for k, (m, _) in self.stats.items()}
            std = {k: s for k, (_, s) in self.stats.items()}
            model.set_standardisation(*standardisation_vectors(prep.spec, mean, std))
        self.model = model.to(device=self.device, dtype=self.dtype)
        optimizers = list(self.model.configure_optimizers(cfg.lr))  # type: ignore[operator]
        self.optimizers = self.comm.wrap_optimizers(self.model, optimizers)
        self.autocast = _AUTOCAST.get(cfg.precision)
        self.scaler: Any = (
            torch.amp.GradScaler(self.device.type) if cfg.precision == "fp16" else None
        )

        ckpt = self._read_checkpoint() if self.rank == 0 else None
        ckpt = self.comm.broadcast_object(ckpt) if self.world_size > 1 else ckpt
        if ckpt is not None:
            self._restore(ckpt)
        self.comm.broadcast_model(self.model)
        self.comm.broadcast_optimizers(self.optimizers)
        if cfg.compile:
            self.model.compile()
        self._val_cache: dict[str, Tensor] | None = None
        self._next_stream: Any = None
        self._ready = True

    # -- checkpoints
    def _checkpoint_dir(self) -> Path | None:
        return Path(self.config.checkpoint_dir) if self.config.checkpoint_dir else None

    def _read_checkpoint(self) -> dict[str, Any] | None:
        d = self._checkpoint_dir()
        if d is None or not (d / LAST).exists():
            return None
        path = d / LAST
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
            raise InputError(f"{path}: cannot read checkpoint ({exc})") from None
        if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
            raise InputError(f"{path}: not a hepscan checkpoint (version {CHECKPOINT_VERSION})")
        old, new = ckpt["train_config"], dataclasses.asdict(self.config)
        diff = sorted(k for k in new if k not in RESUMABLE_CHANGES and old.get(k) != new[k])
        if diff:
            k = diff[0]
            raise ConfigError(
                f"{path}: checkpoint was written for a different config: key {k!r} is "
                f"{old.get(k)!r} there and {new[k]!r} now (use another checkpoint_dir)"
            )
        return ckpt

    def _restore(self, ckpt: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(ckpt["model"])
            for opt, state in zip(self.optimizers, ckpt["optimizers"], strict=True):
                opt.load_state_dict(state)
            if self.scaler is not None and ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
        except (RuntimeError, ValueError, KeyError) as exc:
            path = Path(str(self.config.checkpoint_dir)) / LAST
            raise ConfigError(
                f"{path}: checkpoint does not fit this model/dataset (features or bins "
                f"changed?): {str(exc).splitlines()[0]}"
            ) from None
        self.epoch = int(ckpt["epoch"])
        self.history = [dict(h) for h in ckpt["history"]]
        self.best = ckpt["best"]
        self.best_epoch = ckpt["best_epoch"]
        self.bad_epochs = int(ckpt["bad_epochs"])
        self.stopped = bool(ckpt["stopped"])

    def _checkpoint(self) -> dict[str, Any]:
        return {
            "version": CHECKPOINT_VERSION,
            "family": self.prep.family.name,
            "train_config": dataclasses.asdict(self.config),
            "model_config": dataclasses.asdict(self.prep.model_config),
            "epoch": self.epoch,
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "optimizers": [opt.state_dict() for opt in self.optimizers],
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "stopped": self.stopped,
            "history": self.history,
            # Training randomness is reseeded from (seed, epoch, rank) at every epoch; the
            # stream position is kept for inspection only.
            "rng": {"seed": self.config.seed, "torch": torch.get_rng_state()},
            "standardise": {k: list(v) for k, v in self.stats.items()},
            "data": {"n_train": self.n_train, "batch_size": self.batch},
        }

    def save_checkpoint(self) -> str | None:
        """Rank 0 writes ``last.pt`` (and ``best.pt`` when the monitor improved); returns its path."""
        d = self._checkpoint_dir()
        if d is None or self.rank != 0:
            return None
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"{d}: cannot create checkpoint directory ({exc})") from None
        ckpt = self._checkpoint()
        _atomic_save(ckpt, d / LAST)
        if self._improved:
            _atomic_save(ckpt, d / BEST)
        return str(d / LAST)

    # -- training
    @property
    def done(self) -> bool:
        return self.stopped or self.epoch >= self.config.epochs

    def _step_fn(self, optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
        if self.autocast is None:
            self.comm.step(optimizer, loss, self.scaler)
            return
        # backward and the optimizer step outside autocast (as torch.amp recommends)
        with torch.autocast(self.device.type, enabled=False):
            self.comm.step(optimizer, loss, self.scaler)

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch and validate; returns metrics that are identical on every rank."""
        if not self._ready:
            raise RuntimeError("TrainSession.setup() must run first")
        if self.done:
            raise RuntimeError("training is done (epochs exhausted or early-stopped)")
        try:
            metrics = self._run_epoch()
        except BaseException:
            self._drop_prefetch()
            raise
        if self.done:
            self._drop_prefetch()
        return metrics

    def _run_epoch(self) -> dict[str, float]:
        t0 = time.perf_counter()
        _seed_everything(self.config.seed, self.epoch, self.rank)
        self.model.train()
        single = self.world_size == 1
        fsums: dict[str, float] = {}
        tsums: dict[str, Tensor] = {}
        counts: dict[str, int] = {}  # a key may be absent on some steps (GAN generator)
        step = self._step_fn
        autocast = self.autocast
        stream = self._next_stream or self.feed.train_batches(self.epoch)
        self._next_stream = None
        for batch in stream:
            if autocast is None:
                stats = self.model.training_step(batch, self.optimizers, step)  # type: ignore[operator]
            else:
                with torch.autocast(self.device.type, dtype=autocast):
                    stats = self.model.training_step(batch, self.optimizers, step)  # type: ignore[operator]
            for key, v in stats.items():
                if isinstance(v, Tensor):
                    v = v.detach().to(torch.float64)
                    tsums[key] = tsums[key] + v if key in tsums else v
                else:
                    fsums[key] = fsums.get(key, 0.0) + float(v)
                counts[key] = counts.get(key, 0) + 1
        if self.epoch + 1 < self.config.epochs:
            # the next epoch's reader fills its queue during calibration and validation
            self._next_stream = self.feed.train_batches(self.epoch + 1).start()
        self.comm.finish_epoch(self.optimizers)
        if tsums:  # the one host sync of the epoch's training statistics
            keys = sorted(tsums)
            values = torch.stack([tsums[k] for k in keys]).tolist()
            fsums.update(zip(keys, values, strict=True))
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        train_time = time.perf_counter() - t0
        local = {f"train_{k}": v / counts[k] for k, v in fsums.items()}
        if single and not all(math.isfinite(v) for v in local.values()):
            raise TrainingDiverged(
                f"non-finite training loss in epoch {self.epoch + 1}: {local} "
                f"(family {self.config.family!r}, lr {self.config.lr})"
            )
        local["_train_time_s"] = train_time
        avg = self.comm.allreduce_mean(local) if not single else local
        bad = {k: v for k, v in avg.items() if not math.isfinite(v)}
        if bad:
            raise TrainingDiverged(
                f"non-finite training statistics at epoch {self.epoch + 1}: {bad} "
                f"(family {self.config.family!r}, lr {self.config.lr})"
            )

        if self.config.calibrate:
            self._calibrate()
        val = self._evaluate()
        self.epoch += 1
        train_time = avg.pop("_train_time_s")
        metrics: dict[str, float] = {"epoch": float(self.epoch), **avg, **val}
        metrics["train_time_s"] = train_time
        metrics["epoch_time_s"] = time.perf_counter() - t0
        metrics["samples_per_s"] = self.steps_per_epoch * self.batch / max(train_time, 1e-12)
        metrics["step_time_s"] = train_time / max(1, self.steps_per_epoch)
        self._update_early_stopping(metrics)
        self.history.append(metrics)
        return metrics

    def _reduce(self) -> Any:
        return None if self.world_size == 1 else self.comm.allreduce_sum

    def _calibrate(self) -> None:
        """Refit the family's calibration on all training rows (each rank its share)."""
        model: Any = self.model
        # a millionth of an event per bin is plenty, and bounds the cost of every epoch
        if isinstance(model, StreamCalibratable):
            batches = self.feed.share(self.feed.train)
            model.calibrate_stream(batches, tol=1e-6, max_iter=30, reduce=self._reduce())
        elif isinstance(model, Calibratable):
            data = self.feed.load(self.feed.train)
            model.calibrate(data["x"], data["y"], tol=1e-6, max_iter=30, reduce=self._reduce())

    def _evaluate(self) -> dict[str, float]:
        """Validation metrics, identical on every rank."""
        model: Any = self.model
        if isinstance(model, StreamEvaluable):
            self.model.eval()
            with torch.no_grad():
                out = model.evaluate_stream(self.feed.share(self.feed.val), self._reduce())
            return {k: float(v) for k, v in out.items()}
        val: dict[str, float] | None = None
        if self.rank == 0:
            if self._val_cache is None:  # families that need every row at once (KS, AUC)
                self._val_cache = self.feed.load(self.feed.val, everything=True)
            model.eval()
            with torch.no_grad():
                out = model.evaluate(self._val_cache)
            val = {k: float(v) for k, v in out.items()}
        if self.world_size > 1:
            val = self.comm.broadcast_object(val)
        assert val is not None
        return val

    def _update_early_stopping(self, metrics: dict[str, float]) -> None:
        cfg = self.config
        if cfg.monitor not in metrics:
            raise ConfigError(
                f"key 'monitor': {cfg.monitor!r} is not a metric of family {cfg.family!r} "
                f"(have {sorted(metrics)})"
            )
        value = metrics[cfg.monitor]
        if not math.isfinite(value):
            raise TrainingDiverged(
                f"monitored metric {cfg.monitor!r} is {value} at epoch {self.epoch}"
            )
        better = (
            self.best is None
            or (cfg.mode == "min" and value < self.best)
            or (cfg.mode == "max" and value > self.best)
        )
        self._improved = better
        if better:
            self.best, self.best_epoch, self.bad_epochs = value, self.epoch, 0
        else:
            self.bad_epochs += 1
            if cfg.patience > 0 and self.bad_epochs >= cfg.patience:
                self.stopped = True

    def state_dict_for_eval(self) -> dict[str, Tensor]:
        """The current model weights on CPU (what the next epoch would start from)."""
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def result(self) -> TrainResult:
        d = self._checkpoint_dir()
        return TrainResult(
            config=self.config,
            history=list(self.history),
            best_metric=self.best,
            best_epoch=self.best_epoch,
            epochs_run=self.epoch,
            stopped_early=self.stopped,
            checkpoint_path=str(d / LAST) if d and (d / LAST).exists() else None,
            best_checkpoint_path=str(d / BEST) if d and (d / BEST).exists() else None,
            state_dict=self.state_dict_for_eval(),
        )

    def close(self) -> None:
        self._drop_prefetch()
        self.comm.shutdown()

    def _drop_prefetch(self) -> None:
        if getattr(self, "_next_stream", None) is not None:
            self._next_stream.close()
            self._next_stream = None
