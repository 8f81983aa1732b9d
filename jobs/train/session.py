"""One rank's training state (:class:`TrainSession`): data slice, model, optimizers, checkpoints.

Drive it as ``setup()``, then ``run_epoch()`` + ``save_checkpoint()`` until ``done``; scans do so
directly on every rank, :func:`jobs.train.train` through the launchers in ``jobs.train.launch``.

Batching (why the layout is unusual)
------------------------------------
Two requirements pull apart: N ranks with global batch B must see exactly the same global batches
as one process with batch B (so their weights agree), and each rank keeps only its own slice of
the training rows. Rows are therefore dealt once (seeded by ``seed``) into B *lanes*; lane j
always feeds position j of every global batch and rank r owns lanes ``[r*B/N, (r+1)*B/N)``, i.e.
its contiguous slice of each global batch. Each epoch, every lane is shuffled with keys drawn
from ``(seed, epoch)`` and global batch k takes the k-th row of every lane. The set of rows in a
global batch is thus independent of N; the only restriction compared to a free shuffle is that
two rows of the same lane never share a batch (stratified sampling). Steps per epoch are
``rows // B`` (drop-last, so every rank takes equally many equal-sized steps); each epoch drops
a different random ``rows % B`` rows. If B exceeds the rows available it is lowered to the
largest multiple of N that fits (logged).

Randomness inside ``training_step`` (dropout, GAN noise) is reseeded at every epoch from
``(seed, epoch, rank)``, which makes resuming from a checkpoint exact without restoring RNG
streams.

Validation runs on rank 0 over the whole validation split (metrics such as chi2/ndf are not
averages over events, so slice-and-average would be wrong) and the metrics are broadcast, so
every rank holds the same numbers. Training statistics are averaged over steps and then over
ranks with allreduce.

Calibration (``calibrate: true``, the default): after each epoch's training steps, families with
a ``calibrate`` method (``unfold_bins``) refit it on all training rows before validation; the
ranks all-reduce its sums, so the result equals one process holding every row.

NaN: with one process the first non-finite loss raises :class:`TrainingDiverged`. With several
ranks the check is collective at the end of the epoch (a NaN on one rank reaches all ranks
through the gradient average anyway): a rank raising alone would leave the others blocked in
the next allreduce.
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
from jobs.train.config import TrainConfig, TrainingDiverged, TrainResult
from jobs.train.data import _apply_stats, _load_xy, _standardise_stats, prepare
from models.errors import ConfigError, InputError, OutputError

__all__ = ["BEST", "CHECKPOINT_VERSION", "LAST", "RESUMABLE_CHANGES", "TrainSession"]

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
LAST = "last.pt"
BEST = "best.pt"
# TrainConfig keys that may change between a checkpoint and its resumption.
RESUMABLE_CHANGES = frozenset(
    {"epochs", "patience", "checkpoint_dir", "workers", "backend", "device"}
)


def _resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))
    return torch.device(name)


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
        device = _resolve_device(cfg.device, 0)
        self.comm.init(device.type)
        self.rank, self.world_size = self.comm.rank, self.comm.size
        self.device = _resolve_device(cfg.device, self.comm.local_rank)
        self.dtype = torch.float64 if cfg.dtype == "float64" else torch.float32
        if cfg.batch_size % self.world_size:
            raise ConfigError(
                f"key 'batch_size' ({cfg.batch_size}) must be a multiple of the number of "
                f"ranks ({self.world_size})"
            )

        # Every rank reads the split (cheap columns) so that standardisation and the lane
        # deal are identical everywhere, then keeps only its own lanes.
        x, y = _load_xy(prep, "train", cfg.max_rows)
        self.stats = _standardise_stats(prep, x, y)
        _apply_stats(prep, x, y, self.stats)
        n = len(x)
        batch = cfg.batch_size
        if batch > n:
            batch = max(self.world_size, n - n % self.world_size)
            if batch > n:
                raise InputError(
                    f"{prep.manifest.root / 'train'}: {n} training rows for {self.world_size} ranks"
                )
            log.warning("batch_size %d > %d training rows: using %d", cfg.batch_size, n, batch)
        self.n_train, self.batch = n, batch
        self.local_batch = batch // self.world_size
        self.steps_per_epoch = n // batch
        q, rem = divmod(n, batch)
        deal = np.random.default_rng([cfg.seed, 0x1A7E]).permutation(n)
        lanes = np.full((batch, q + 1), -1, dtype=np.int64)
        lanes[:, :q] = deal[: q * batch].reshape(q, batch).T
        lanes[:rem, q] = deal[q * batch :]
        mine = lanes[self.rank * self.local_batch : (self.rank + 1) * self.local_batch]
        self._lanes = mine  # (local_batch, q+1) global row ids, -1 = padding
        rows = np.where(mine >= 0, mine, 0).ravel()
        self.x_train = self._to_x(x[rows])
        self.y_train = self._to_y(y[rows])
        del x, y

        if self.rank == 0:
            xv, yv = _load_xy(prep, "validation", cfg.max_rows)
            _apply_stats(prep, xv, yv, self.stats)
            self.x_val: Tensor | None = self._to_x(xv)
            self.y_val: Tensor | None = self._to_y(yv)
        else:
            self.x_val = self.y_val = None

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

        ckpt = self._read_checkpoint() if self.rank == 0 else None
        ckpt = self.comm.broadcast_object(ckpt) if self.world_size > 1 else ckpt
        if ckpt is not None:
            self._restore(ckpt)
        self.comm.broadcast_model(self.model)
        self.comm.broadcast_optimizers(self.optimizers)
        self._ready = True

    def _to_x(self, a: np.ndarray) -> Tensor:
        return torch.as_tensor(a, dtype=self.dtype).to(self.device)

    def _to_y(self, a: np.ndarray) -> Tensor:
        kind = self.prep.spec.target_kind
        if kind == "continuous":
            return torch.as_tensor(a, dtype=self.dtype).to(self.device)
        t = torch.as_tensor(a, dtype=torch.int64)
        return (t[:, 0] if kind == "class" else t).contiguous().to(self.device)

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

    def _epoch_index(self) -> Tensor:
        cfg, lanes = self.config, self._lanes
        keys = np.random.default_rng([cfg.seed, self.epoch, 0xDA7A]).random(self.n_train)
        k = np.where(lanes >= 0, keys[np.maximum(lanes, 0)], np.inf)
        order = np.argsort(k, axis=1, kind="stable")[:, : self.steps_per_epoch]
        width = lanes.shape[1]
        local = np.arange(lanes.shape[0])[:, None] * width + order  # (local_batch, steps)
        return torch.as_tensor(local.T.ravel(), device=self.device)

    def run_epoch(self) -> dict[str, float]:
        """Train one epoch and validate; returns metrics that are identical on every rank."""
        if not self._ready:
            raise RuntimeError("TrainSession.setup() must run first")
        if self.done:
            raise RuntimeError("training is done (epochs exhausted or early-stopped)")
        t0 = time.perf_counter()
        _seed_everything(self.config.seed, self.epoch, self.rank)
        idx = self._epoch_index()
        x_ep, y_ep = self.x_train[idx], self.y_train[idx]
        self.model.train()
        b, single = self.local_batch, self.world_size == 1
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}  # a key may be absent on some steps (GAN generator)
        step = self.comm.step
        for k in range(self.steps_per_epoch):
            batch = {"x": x_ep[k * b : (k + 1) * b], "y": y_ep[k * b : (k + 1) * b]}
            stats = self.model.training_step(batch, self.optimizers, step)  # type: ignore[operator]
            for key, v in stats.items():
                sums[key] = sums.get(key, 0.0) + float(v)
                counts[key] = counts.get(key, 0) + 1
            if single and not all(math.isfinite(float(v)) for v in stats.values()):
                raise TrainingDiverged(
                    f"non-finite training loss at epoch {self.epoch + 1}, step {k + 1}: {stats} "
                    f"(family {self.config.family!r}, lr {self.config.lr})"
                )
        self.comm.finish_epoch(self.optimizers)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        train_time = time.perf_counter() - t0
        local = {f"train_{k}": v / counts[k] for k, v in sums.items()}
        local["_train_time_s"] = train_time
        avg = self.comm.allreduce_mean(local) if not single else local
        bad = {k: v for k, v in avg.items() if not math.isfinite(v)}
        if bad:
            raise TrainingDiverged(
                f"non-finite training statistics at epoch {self.epoch + 1}: {bad} "
                f"(family {self.config.family!r}, lr {self.config.lr})"
            )

        from models.base import Calibratable

        if self.config.calibrate and isinstance(self.model, Calibratable):
            # a millionth of an event per bin is plenty, and bounds the cost of every epoch
            self.model.calibrate(
                self.x_train,
                self.y_train,
                tol=1e-6,
                max_iter=30,
                reduce=None if single else self.comm.allreduce_sum,
            )
        val = self._evaluate() if self.rank == 0 else None
        if not single:
            val = self.comm.broadcast_object(val)
        assert val is not None
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

    def _evaluate(self) -> dict[str, float]:
        assert self.x_val is not None and self.y_val is not None
        self.model.eval()
        with torch.no_grad():
            out = self.model.evaluate({"x": self.x_val, "y": self.y_val})  # type: ignore[operator]
        return {k: float(v) for k, v in out.items()}

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
        self.comm.shutdown()
