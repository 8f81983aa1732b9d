"""Train one configuration of one model family from the Parquet shards; data-parallel for real.

.. code-block:: bash

    hepscan train configs/train_unfold_zll.yaml                               # one process
    hepscan train configs/train_unfold_zll.yaml --workers 2 --backend horovod # horovod.runner, gloo
    hepscan train configs/train_unfold_zll.yaml --workers 2 --backend ddp     # torch.multiprocessing
    horovodrun -np 2 --gloo python -m jobs.train configs/train_unfold_zll.yaml --backend horovod

Python: ``train(load_train_config(path), reporter)``. Scans drive :class:`TrainSession` directly,
one per rank (``setup()``, then ``run_epoch()`` + ``save_checkpoint()`` until ``done``).

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

Multi-process ``train()`` reports per-epoch metrics to the reporter as they come for ``ddp``
(a queue from rank 0); for ``horovod`` (``horovod.runner.run`` returns only at the end) the
reporter is called in the parent after training, once per epoch in order.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import importlib
import json
import logging
import math
import os
import pickle
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import click
import numpy as np
import torch
from torch import Tensor

from jobs.backends import BACKENDS, Comm, make_comm
from jobs.manifest import MANIFEST_NAME, Manifest, load_manifest, load_split
from models.errors import ConfigError, HepscanError, InputError, OutputError

log = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
LAST = "last.pt"
BEST = "best.pt"
# TrainConfig keys that may change between a checkpoint and its resumption.
RESUMABLE_CHANGES = frozenset(
    {"epochs", "patience", "checkpoint_dir", "workers", "backend", "device"}
)
MODEL_DIM_KEYS = ("n_bins", "n_classes", "n_inputs", "n_features")


class TrainingDiverged(HepscanError):
    """The loss (or the monitored metric) became NaN/inf; the scan marks the trial FAILED."""


@dataclass
class TrainConfig:
    """One training run; stored in every checkpoint (``dataclasses.asdict``) and MLflow run."""

    dataset: str  # dataset dir or manifest.json path
    family: str  # registry name, or "package.module:ATTR" for a Family defined elsewhere
    model: dict[str, Any] = field(default_factory=dict)  # family config kwargs
    epochs: int = 20
    batch_size: int = 512  # GLOBAL batch; each of N ranks takes batch_size // N
    lr: float = 1e-3
    seed: int = 0
    backend: str = "single"  # "single" | "horovod" | "ddp"
    workers: int = 1
    monitor: str = "val_loss"
    mode: str = "min"  # "min" | "max"
    patience: int = 5  # epochs without improvement before stopping; 0 disables
    checkpoint_dir: str | None = None
    max_rows: int | None = None  # first rows of each split only (tiny runs / scans)
    device: str = "auto"  # "auto" | "cpu" | "cuda" | "cuda:N"
    dtype: str = "float32"  # "float32" | "float64" (model and float tensors)
    # Refit the model's per-class calibration (unfold_bins: logit offsets, so that the summed
    # probabilities match the training truth counts) on all training rows after every epoch,
    # before validation; families without ``calibrate`` ignore it.
    calibrate: bool = True


_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "dataset": (str,),
    "family": (str,),
    "model": (dict,),
    "epochs": (int,),
    "batch_size": (int,),
    "lr": (float, int),
    "seed": (int,),
    "backend": (str,),
    "workers": (int,),
    "monitor": (str,),
    "mode": (str,),
    "patience": (int,),
    "checkpoint_dir": (str, type(None)),
    "max_rows": (int, type(None)),
    "device": (str,),
    "dtype": (str,),
    "calibrate": (bool,),
}


def train_config_from_dict(data: Mapping[str, Any], source: str = "config") -> TrainConfig:
    """Validate a mapping into a :class:`TrainConfig`; errors name ``source`` and the key."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping of TrainConfig keys, got {type(data)}")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) {unknown} (allowed: {', '.join(sorted(known))})"
        )
    for key in ("dataset", "family"):
        if key not in data:
            raise ConfigError(f"{source}: required key {key!r} missing")
    for key, value in data.items():
        types = _FIELD_TYPES[key]
        # bool is an int subclass: accept it only where a bool is meant
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ConfigError(f"{source}: key {key!r} must be {want}, got {value!r}")
    cfg = TrainConfig(**{k: copy.deepcopy(v) for k, v in data.items()})
    cfg.lr = float(cfg.lr)
    checks = [
        ("epochs", cfg.epochs >= 1, ">= 1"),
        ("batch_size", cfg.batch_size >= 1, ">= 1"),
        ("lr", cfg.lr > 0 and math.isfinite(cfg.lr), "> 0"),
        ("workers", cfg.workers >= 1, ">= 1"),
        ("patience", cfg.patience >= 0, ">= 0"),
        ("max_rows", cfg.max_rows is None or cfg.max_rows >= 1, ">= 1 or null"),
        ("backend", cfg.backend in BACKENDS, f"one of {list(BACKENDS)}"),
        ("mode", cfg.mode in ("min", "max"), "'min' or 'max'"),
        ("dtype", cfg.dtype in ("float32", "float64"), "'float32' or 'float64'"),
        (
            "device",
            cfg.device in ("auto", "cpu", "cuda") or cfg.device.startswith("cuda:"),
            "'auto', 'cpu', 'cuda' or 'cuda:N'",
        ),
    ]
    for key, ok, want in checks:
        if not ok:
            raise ConfigError(f"{source}: key {key!r} must be {want}, got {getattr(cfg, key)!r}")
    if cfg.workers > 1 and cfg.backend == "single":
        raise ConfigError(
            f"{source}: key 'workers' is {cfg.workers} but 'backend' is 'single' "
            "(choose 'horovod' or 'ddp')"
        )
    if cfg.batch_size % cfg.workers:
        raise ConfigError(
            f"{source}: key 'batch_size' ({cfg.batch_size}) must be a multiple of "
            f"'workers' ({cfg.workers}): it is the global batch split evenly over ranks"
        )
    return cfg


def load_train_config(path: str | os.PathLike[str]) -> TrainConfig:
    """Read a YAML TrainConfig; unknown keys and bad values raise :class:`ConfigError`."""
    import yaml

    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML ({exc})") from None
    return train_config_from_dict(data if data is not None else {}, str(p))


class Reporter(Protocol):
    """Called on rank 0 after every epoch (and its checkpoint)."""

    def report(
        self, epoch: int, metrics: dict[str, float], checkpoint_path: str | None
    ) -> None: ...


@dataclass
class TrainResult:
    config: TrainConfig
    history: list[dict[str, float]]  # per-epoch metrics, epochs of a resumed run included
    best_metric: float | None
    best_epoch: int | None
    epochs_run: int  # epochs completed in total (a resumed run counts earlier ones)
    stopped_early: bool
    checkpoint_path: str | None  # last.pt
    best_checkpoint_path: str | None
    state_dict: dict[str, Tensor] = field(repr=False, default_factory=dict)  # final, CPU

    @property
    def final_metrics(self) -> dict[str, float]:
        return self.history[-1] if self.history else {}


# --------------------------------------------------------------------------- families / data


def resolve_family(name: str) -> Any:
    """A registered :class:`models.base.Family`, or ``"pkg.module:ATTR"`` for one defined elsewhere."""
    if ":" in name:
        module_name, attr = name.split(":", 1)
        try:
            family = getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"key 'family': cannot import {name!r} ({exc})") from None
        return family
    from models.registry import get_family

    try:
        return get_family(name)
    except ConfigError as exc:
        raise ConfigError(f"key 'family': {exc}") from None


@dataclass
class Prepared:
    """Everything checked before any data row is read: manifest, family, spec, model config."""

    manifest: Manifest
    family: Any
    spec: Any
    model_config: Any


def prepare(config: TrainConfig) -> Prepared:
    """Resolve and cross-check manifest, family and model config; raises before training starts."""
    manifest = load_manifest(config.dataset)
    mpath = manifest.root / MANIFEST_NAME
    family = resolve_family(config.family)
    spec = family.data_spec(manifest.raw)
    wanted = list(dict.fromkeys([*spec.x_columns, *spec.y_columns]))
    missing = [c for c in wanted if c not in manifest.columns]
    if missing:
        raise ConfigError(
            f"{mpath}: family {config.family!r} needs column(s) {missing} that the dataset "
            f"lacks (have {sorted(manifest.columns)})"
        )
    for split in ("train", "validation"):
        manifest.shard_paths(split)  # raises naming the split when absent
    if spec.dims.n_inputs != len(spec.x_columns):
        raise ConfigError(
            f"{mpath}: family {config.family!r} expects {spec.dims.n_inputs} input features "
            f"but its columns {list(spec.x_columns)} give {len(spec.x_columns)}"
        )
    # Dimension keys (n_bins, n_inputs, ...) come from the dataset; a config that pins one must
    # agree with the shards. Families that take them from DataDims do not list them as fields,
    # so a matching value is accepted and dropped.
    dims = {
        "n_inputs": spec.dims.n_inputs,
        "n_features": spec.dims.n_inputs,
        "n_bins": spec.dims.n_classes[0] if spec.dims.n_classes else None,
        "n_classes": spec.dims.n_classes[0] if len(spec.dims.n_classes) == 1 else None,
    }
    for key in MODEL_DIM_KEYS:
        given = config.model.get(key)
        if given is not None and dims[key] is not None and given != dims[key]:
            what = "bin edges" if key in ("n_bins", "n_classes") else "features"
            raise ConfigError(
                f"key 'model.{key}' is {given!r} but the dataset {mpath} has {dims[key]} "
                f"(from its {what}); drop the key or preprocess with matching {what}"
            )
    field_names = {f.name for f in dataclasses.fields(family.config_cls)}
    params = {k: v for k, v in config.model.items() if k in field_names or k not in MODEL_DIM_KEYS}
    unknown = sorted(set(params) - field_names)
    if unknown:
        raise ConfigError(
            f"key 'model': unknown parameter(s) {unknown} for family {config.family!r} "
            f"(allowed: {', '.join(sorted(field_names))})"
        )
    try:
        model_config = family.config_cls(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"key 'model': invalid parameters for {config.family!r}: {exc}") from None
    allowed = {"val_loss", "train_loss", *family.metrics}
    if config.monitor not in allowed and not config.monitor.startswith("train_"):
        raise ConfigError(
            f"key 'monitor': {config.monitor!r} is not reported by family {config.family!r} "
            f"(choose from {', '.join(sorted(allowed))})"
        )
    modes = getattr(family, "metric_modes", {}) or {}
    if modes.get(config.monitor, config.mode) != config.mode:
        raise ConfigError(
            f"key 'mode': {config.monitor!r} should be {modes[config.monitor]!r}imised, "
            f"not {config.mode!r}imised"
        )
    return Prepared(manifest, family, spec, model_config)


def _load_xy(prep: Prepared, split: str, max_rows: int | None) -> tuple[np.ndarray, np.ndarray]:
    spec, manifest = prep.spec, prep.manifest
    cols = list(dict.fromkeys([*spec.x_columns, *spec.y_columns]))
    data = load_split(manifest, split, cols)
    n = len(data[cols[0]]) if cols else 0
    if max_rows is not None:
        data = {c: v[:max_rows] for c, v in data.items()}
        n = min(n, max_rows)
    where = f"{manifest.root / split}"
    if n == 0:
        raise InputError(f"{where}: split {split!r} has no rows")
    x = np.stack([np.asarray(data[c], dtype=np.float64) for c in spec.x_columns], axis=1)
    bad = [c for i, c in enumerate(spec.x_columns) if not np.isfinite(x[:, i]).all()]
    if bad:
        raise InputError(f"{where}: column(s) {bad} hold NaN/inf values")
    if spec.target_kind == "continuous":
        y = np.stack([np.asarray(data[c], dtype=np.float64) for c in spec.y_columns], axis=1)
        bad = [c for i, c in enumerate(spec.y_columns) if not np.isfinite(y[:, i]).all()]
        if bad:
            raise InputError(f"{where}: column(s) {bad} hold NaN/inf values")
    else:
        y = np.stack([np.asarray(data[c], dtype=np.int64) for c in spec.y_columns], axis=1)
    if spec.drop_negative_y:
        keep = (y >= 0).all(axis=1)
        x, y = x[keep], y[keep]
        if len(x) == 0:
            raise InputError(f"{where}: no rows with {list(spec.y_columns)} >= 0")
    if spec.target_kind != "continuous":
        n_classes = spec.dims.n_classes
        for i, c in enumerate(spec.y_columns):
            k = n_classes[i] if i < len(n_classes) else n_classes[-1]
            lo, hi = int(y[:, i].min()), int(y[:, i].max())
            if lo < 0 or hi >= k:
                raise InputError(
                    f"{where}: column {c!r} holds class indices {lo}..{hi} but the manifest "
                    f"{manifest.root / MANIFEST_NAME} gives {k} classes (bins that disagree "
                    "with the shards: re-run preprocessing)"
                )
    return x, y


def _standardise_stats(
    prep: Prepared, x: np.ndarray, y: np.ndarray
) -> dict[str, tuple[float, float]]:
    stats = {}
    for name in prep.spec.standardise:
        if name in prep.spec.x_columns:
            v = x[:, prep.spec.x_columns.index(name)]
        elif name in prep.spec.y_columns and prep.spec.target_kind == "continuous":
            v = y[:, prep.spec.y_columns.index(name)]
        else:
            raise ConfigError(f"family {prep.family.name!r}: cannot standardise column {name!r}")
        std = float(v.std())
        stats[name] = (float(v.mean()), std if std > 0 else 1.0)
    return stats


def _apply_stats(
    prep: Prepared, x: np.ndarray, y: np.ndarray, stats: Mapping[str, tuple[float, float]]
) -> None:
    for name, (mean, std) in stats.items():
        if name in prep.spec.x_columns:
            i = prep.spec.x_columns.index(name)
            x[:, i] = (x[:, i] - mean) / std
        else:
            i = prep.spec.y_columns.index(name)
            y[:, i] = (y[:, i] - mean) / std


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


# --------------------------------------------------------------------------- session


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
        if hasattr(model, "set_standardisation"):
            # Families that output physical values keep the loop's standardisation as buffers.
            from models.base import standardisation_vectors

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

        calibrate = getattr(self.model, "calibrate", None) if self.config.calibrate else None
        if calibrate is not None:
            # a millionth of an event per bin is plenty, and bounds the cost of every epoch
            calibrate(
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


# --------------------------------------------------------------------------- per-process cache

_WORKER_SESSIONS: dict[str, TrainSession] = {}


def config_key(config: TrainConfig) -> str:
    """A stable id of a TrainConfig (for caching sessions in reused workers/actors)."""
    blob = json.dumps(dataclasses.asdict(config), sort_keys=True, default=str)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def worker_session(
    config: TrainConfig, *, rank: int | None = None, world_size: int | None = None
) -> TrainSession:
    """This process's set-up session for ``config`` (created on first call).

    For launchers that call a function on long-lived workers once per epoch
    (``horovod.ray.RayExecutor.run``, Ray actors): the session survives between calls.
    """
    key = config_key(config)
    s = _WORKER_SESSIONS.get(key)
    if s is None:
        s = TrainSession(config, rank=rank, world_size=world_size)
        s.setup()
        _WORKER_SESSIONS[key] = s
    return s


def drop_worker_session(config: TrainConfig) -> None:
    """Forget the cached session (keeps the process group for the next trial)."""
    _WORKER_SESSIONS.pop(config_key(config), None)


# --------------------------------------------------------------------------- launchers


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


def _horovod_worker(config: TrainConfig) -> tuple[str, Any]:
    _share_cores(int(os.environ.get("HOROVOD_LOCAL_SIZE", config.workers)))
    session = TrainSession(config, comm=make_comm("horovod"))
    try:
        result = _loop(session, None)
    except HepscanError as exc:
        return ("error", exc)
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
    except HepscanError as exc:
        if rank == 0:
            queue.put(("error", pickle.dumps(exc)))
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
    root = str(Path(__file__).resolve().parents[1])
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {"PYTHONPATH": os.pathsep.join([root, *[p for p in parts if p != root]])}


def _launch_horovod(config: TrainConfig, reporter: Reporter | None, np_: int) -> TrainResult:
    import horovod.runner

    saved = os.environ.get("PYTHONPATH")
    os.environ.update(_project_pythonpath())
    try:
        results = horovod.runner.run(_horovod_worker, args=(config,), num_proc=np_, use_gloo=True)
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


# --------------------------------------------------------------------------- CLI


class PrintReporter:
    """One line per epoch on stdout."""

    def __init__(self, monitor: str) -> None:
        self.monitor = monitor

    def report(self, epoch: int, metrics: dict[str, float], checkpoint_path: str | None) -> None:
        shown = {
            k: v
            for k, v in metrics.items()
            if k in ("train_loss", self.monitor, "samples_per_s", "epoch_time_s")
        }
        text = " ".join(f"{k}={v:.5g}" for k, v in shown.items())
        click.echo(f"epoch {epoch}: {text}")


@click.command("train")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--workers", type=int, default=None, help="data-parallel ranks (overrides config)")
@click.option("--backend", type=click.Choice(BACKENDS), default=None, help="overrides config")
@click.option("--epochs", type=int, default=None, help="overrides config")
@click.option("--checkpoint-dir", default=None, help="overrides config; resumes from last.pt")
@click.option("--max-rows", type=int, default=None, help="cap rows per split")
@click.option("--device", default=None, help="auto | cpu | cuda | cuda:N")
def train_command(
    config_path: str,
    workers: int | None,
    backend: str | None,
    epochs: int | None,
    checkpoint_dir: str | None,
    max_rows: int | None,
    device: str | None,
) -> None:
    """Train one configuration (YAML TrainConfig) from the dataset's shards."""
    import yaml

    base = dataclasses.asdict(load_train_config(config_path))
    overrides = {
        "workers": workers,
        "backend": backend,
        "epochs": epochs,
        "checkpoint_dir": checkpoint_dir,
        "max_rows": max_rows,
        "device": device,
    }
    base.update({k: v for k, v in overrides.items() if v is not None})
    if workers is not None and workers > 1 and backend is None and base["backend"] == "single":
        base["backend"] = "horovod"
    source = f"{config_path} (with command-line options)"
    config = train_config_from_dict({k: v for k, v in base.items() if k in _FIELD_TYPES}, source)
    if "OMPI_COMM_WORLD_RANK" in os.environ or "HOROVOD_RANK" in os.environ:
        # Already inside horovodrun: this process is one rank.
        _share_cores(int(os.environ.get("HOROVOD_LOCAL_SIZE", "1")))
        session = TrainSession(config, comm=make_comm("horovod"))
        result = _loop(session, PrintReporter(config.monitor))
        if session.rank != 0:
            return
    else:
        result = train(config, PrintReporter(config.monitor))
    summary = {
        "epochs_run": result.epochs_run,
        "stopped_early": result.stopped_early,
        "best_epoch": result.best_epoch,
        f"best_{config.monitor}": result.best_metric,
        "checkpoint": result.checkpoint_path,
    }
    click.echo(yaml.safe_dump(summary, sort_keys=False).rstrip())


if __name__ == "__main__":
    from models.errors import HepscanError as _E

    try:
        train_command.main(standalone_mode=False)
    except _E as _exc:
        click.echo(f"hepscan: error: {_exc}", err=True)
        raise SystemExit(2) from None
