"""Train one configuration of one model family from the Parquet shards; data-parallel for real.

.. code-block:: bash

    hepscan train configs/train_unfold_zll.yaml                               # one process
    hepscan train configs/train_unfold_zll.yaml --workers 2 --backend horovod # horovod.runner, gloo
    hepscan train configs/train_unfold_zll.yaml --workers 2 --backend ddp     # torch.multiprocessing
    horovodrun -np 2 --gloo python -m jobs.train configs/train_unfold_zll.yaml --backend horovod

Python: ``train(load_train_config(path), reporter)``. Scans drive :class:`TrainSession` directly,
one per rank (``setup()``, then ``run_epoch()`` + ``save_checkpoint()`` until ``done``).

Modules: ``config`` (TrainConfig, validation, Reporter, TrainResult), ``data`` (prepare: manifest
+ family + model config cross-checks, loading a split), ``session`` (TrainSession: one rank's
loop, checkpoints, early stopping; the batching scheme is described there), ``launch`` (train():
one process, ``horovod.runner`` or DDP processes), ``cli`` (``hepscan train``).
"""

from __future__ import annotations

from jobs.train.config import (
    Reporter,
    TrainConfig,
    TrainingDiverged,
    TrainResult,
    load_train_config,
    train_config_from_dict,
)
from jobs.train.data import MODEL_DIM_KEYS, Prepared, prepare, resolve_family
from jobs.train.launch import _launch_ddp as _launch_ddp  # benchmarks/train.py
from jobs.train.launch import _launch_horovod as _launch_horovod
from jobs.train.launch import train
from jobs.train.session import BEST, CHECKPOINT_VERSION, LAST, RESUMABLE_CHANGES, TrainSession

__all__ = [
    "BEST",
    "CHECKPOINT_VERSION",
    "LAST",
    "MODEL_DIM_KEYS",
    "RESUMABLE_CHANGES",
    "Prepared",
    "Reporter",
    "TrainConfig",
    "TrainResult",
    "TrainSession",
    "TrainingDiverged",
    "load_train_config",
    "prepare",
    "resolve_family",
    "train",
    "train_config_from_dict",
]
