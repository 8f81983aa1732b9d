"""One rank's data: the surveyed train/validation splits as streams of tensors.

:class:`Feed` ties :mod:`jobs.train.survey` (counts, checks, standardisation) to
:mod:`jobs.train.stream` (epoch order, shuffle buffer, prefetch): training batches per epoch,
this rank's share of a split for evaluation and calibration, and (for families that cannot
evaluate a stream) a whole split in memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor

from jobs.train.config import TrainConfig
from jobs.train.stream import (
    BLOCK_ROWS,
    BatchStream,
    Chunk,
    Range,
    assemble_parts,
    epoch_parts,
    rank_ranges,
    read_piece,
    shuffled,
)
from jobs.train.survey import Reduce, Survey, piece_xy, survey_split
from models.errors import ConfigError, InputError

__all__ = ["Feed"]

log = logging.getLogger(__name__)


class Feed:
    """Training and validation data of rank ``rank`` of ``world_size`` (streams, see
    :mod:`jobs.train.stream`). ``batch``, ``local_batch`` and ``steps_per_epoch`` are fixed
    by the survey; ``n_train`` counts the kept training rows (after ``max_rows``)."""

    def __init__(
        self,
        prep: Any,
        cfg: TrainConfig,
        rank: int,
        world_size: int,
        reduce: Reduce | None,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        self.prep, self.cfg = prep, cfg
        self.rank, self.world_size = rank, world_size
        self.device = device
        self.np_dtype = np.float64 if dtype == torch.float64 else np.float32
        parts = cfg.data_parts or world_size
        if parts % world_size:
            raise ConfigError(
                f"key 'data_parts' ({parts}) must be a multiple of the number of ranks "
                f"({world_size})"
            )
        self.parts = parts
        self.train = survey_split(prep, "train", cfg.max_rows, rank, world_size, reduce)
        self.stats = self.train.stats
        self.val = survey_split(
            prep, "validation", cfg.max_rows, rank, world_size, reduce, standardise=False
        )
        n = self.train.rows
        batch = cfg.batch_size
        if batch % parts:
            raise ConfigError(
                f"key 'batch_size' ({batch}) must be a multiple of 'data_parts' ({parts}): "
                "every global batch takes the same number of rows from each part"
            )
        if batch > n:
            batch = n - n % parts
            if batch < parts:
                raise InputError(
                    f"{prep.manifest.root / 'train'}: {n} training rows for {parts} data parts"
                )
            log.warning("batch_size %d > %d training rows: using %d", cfg.batch_size, n, batch)
        self.n_train, self.batch = n, batch
        self.local_batch = batch // world_size
        self.part_batch = batch // parts
        self.steps_per_epoch = (n // parts) // self.part_batch

    # -- rows
    def chunks(self, survey: Survey, ranges: list[Range]) -> Iterator[Chunk]:
        """Standardised (x, y) numpy rows of ``ranges``, piece by piece."""
        cols = list(dict.fromkeys([*self.prep.spec.x_columns, *self.prep.spec.y_columns]))
        for g, lo, hi in ranges:
            x, y, keep = piece_xy(self.prep, read_piece(survey.pieces[g], cols))
            if not keep.all():
                x, y = x[keep], y[keep]
            yield self._finish(x[lo:hi], y[lo:hi])

    def _finish(self, x: np.ndarray, y: np.ndarray) -> Chunk:
        spec = self.prep.spec
        cont = spec.target_kind == "continuous"
        for name, (mean, std) in self.stats.items():
            if name in spec.x_columns:
                i = spec.x_columns.index(name)
                x[:, i] = (x[:, i] - mean) / std
            else:
                i = spec.y_columns.index(name)
                y[:, i] = (y[:, i] - mean) / std
        xo = x.astype(self.np_dtype)
        if cont:
            yo = y.astype(self.np_dtype)
        elif spec.target_kind == "class":
            yo = np.ascontiguousarray(y[:, 0])
        else:
            yo = y
        return xo, yo

    @staticmethod
    def to_tensors(chunk: Chunk) -> tuple[Tensor, Tensor]:
        return torch.from_numpy(chunk[0]), torch.from_numpy(chunk[1])

    # -- training
    def part_streams(self, epoch: int) -> list[Iterator[Chunk]]:
        """The shuffled row streams of this rank's parts for ``epoch``."""
        cfg = self.cfg
        plan = epoch_parts(self.train.kept, self.parts, cfg.seed, epoch)
        per_rank = self.parts // self.world_size
        mine = range(self.rank * per_rank, (self.rank + 1) * per_rank)
        return [
            shuffled(
                self.chunks(self.train, plan[p]),
                cfg.shuffle_buffer,
                np.random.default_rng([cfg.seed, epoch, p, 0x5F1E]),
            )
            for p in mine
        ]

    def blocks(self, epoch: int) -> Iterator[Chunk]:
        """Numpy blocks of whole local batches for ``epoch`` (in the calling thread)."""
        block_steps = max(1, BLOCK_ROWS // self.local_batch)
        return assemble_parts(
            self.part_streams(epoch), self.part_batch, self.steps_per_epoch, block_steps
        )

    def train_batches(self, epoch: int) -> BatchStream:
        """``{"x", "y"}`` of every step of ``epoch`` on the device, read ahead by a thread."""
        return BatchStream(
            lambda: self.blocks(epoch),
            self.to_tensors,
            self.local_batch,
            self.device,
            self.cfg.prefetch,
        )

    # -- evaluation / calibration
    def share(self, survey: Survey) -> Callable[[], Iterator[dict[str, Tensor]]]:
        """A fresh pass over this rank's share of ``survey``'s split per call (manifest order)."""
        ranges = rank_ranges(survey.kept, self.world_size, self.rank)
        cuda = self.device.type == "cuda"

        def batches() -> Iterator[dict[str, Tensor]]:
            for chunk in self.chunks(survey, ranges):
                x, y = self.to_tensors(chunk)
                yield {
                    "x": x.to(self.device, non_blocking=cuda),
                    "y": y.to(self.device, non_blocking=cuda),
                }

        return batches

    def load(self, survey: Survey, everything: bool = False) -> dict[str, Tensor]:
        """This rank's share (or, ``everything``, the whole split) in memory, for families
        without the streaming hooks."""
        ranges = (
            rank_ranges(survey.kept, 1, 0)
            if everything
            else rank_ranges(survey.kept, self.world_size, self.rank)
        )
        chunks = list(self.chunks(survey, ranges))
        if not chunks:
            spec = self.prep.spec
            ydt = self.np_dtype if spec.target_kind == "continuous" else np.int64
            ny = () if spec.target_kind == "class" else (len(spec.y_columns),)
            chunks = [(np.zeros((0, len(spec.x_columns)), self.np_dtype), np.zeros((0, *ny), ydt))]
        xt, yt = self.to_tensors(
            (np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks]))
        )
        return {"x": xt.to(self.device), "y": yt.to(self.device)}
