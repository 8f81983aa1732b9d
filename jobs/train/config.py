"""TrainConfig and its validation, the Reporter protocol and TrainResult: the train job's contract.

.. code-block:: python

    from jobs.train import load_train_config, train_config_from_dict
    cfg = load_train_config("configs/train_unfold_zll.yaml")    # ConfigError names file and key
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from torch import Tensor

from jobs.backends import BACKENDS
from models.errors import ConfigError, HepscanError

__all__ = [
    "PRECISIONS",
    "Reporter",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "load_train_config",
    "train_config_from_dict",
]


PRECISIONS = ("fp32", "bf16", "fp16")


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
    # Streaming (jobs/train/stream.py): the global batch draws batch_size / data_parts rows from
    # each of data_parts contiguous parts of the epoch's shuffled row groups (null: one part
    # per rank). N ranks see exactly the global batches of one process with data_parts = N.
    data_parts: int | None = None
    shuffle_buffer: int = 65536  # rows pooled and permuted per part (bounded shuffle)
    prefetch: int = 2  # blocks (~65k rows per rank) read ahead by a background thread
    # GPU efficiency: autocast precision (fp16 adds a GradScaler), TF32 matmuls on CUDA,
    # torch.compile of the model's forward.
    precision: str = "fp32"  # "fp32" | "bf16" | "fp16"
    tf32: bool = True
    compile: bool = False


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
    "data_parts": (int, type(None)),
    "shuffle_buffer": (int,),
    "prefetch": (int,),
    "precision": (str,),
    "tf32": (bool,),
    "compile": (bool,),
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
        ("data_parts", cfg.data_parts is None or cfg.data_parts >= 1, ">= 1 or null"),
        ("shuffle_buffer", cfg.shuffle_buffer >= 0, ">= 0"),
        ("prefetch", cfg.prefetch >= 1, ">= 1"),
        ("precision", cfg.precision in PRECISIONS, f"one of {list(PRECISIONS)}"),
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
    parts = cfg.data_parts if cfg.data_parts is not None else cfg.workers
    if parts % cfg.workers:
        raise ConfigError(
            f"{source}: key 'data_parts' ({parts}) must be a multiple of 'workers' "
            f"({cfg.workers}): each rank reads whole parts"
        )
    if cfg.batch_size % parts:
        raise ConfigError(
            f"{source}: key 'batch_size' ({cfg.batch_size}) must be a multiple of "
            f"'data_parts' ({parts}): every global batch takes as many rows from each part"
        )
    if cfg.precision != "fp32" and cfg.dtype == "float64":
        raise ConfigError(
            f"{source}: key 'precision' is {cfg.precision!r} but 'dtype' is 'float64' "
            "(mixed precision applies to float32 models)"
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
