"""One distributed pass over a split before training: kept rows, checks, standardisation.

Each rank reads the pieces ``g`` with ``g % N == rank`` (see :mod:`jobs.train.stream`) and fills
row ``g`` of a per-piece table: kept rows, non-finite counts per x (and continuous y) column,
min/max class index per y column over the kept rows, and per-piece sum and centred sum of
squares of every ``spec.standardise`` column. One ``allreduce_sum`` of the table (each row is
written by exactly one rank, so the sum is exact) gives every rank the same table, from which
the checks and the train-split mean/std are computed in piece order: identical numbers on every
rank for any number of ranks, and the same bad-input error everywhere (no rank blocks in a
collective while another raises).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from jobs.manifest import MANIFEST_NAME
from jobs.train.stream import Piece, pieces_of, read_piece
from models.errors import ConfigError, InputError

__all__ = ["Survey", "piece_xy", "survey_split"]

Reduce = Callable[[Tensor], Tensor]


def piece_xy(prep: Any, data: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x float64 (n, F), y (n, Y) int64 or float64, kept mask) of one piece's columns."""
    spec = prep.spec
    n = len(data[spec.x_columns[0]]) if spec.x_columns else 0
    x = np.empty((n, len(spec.x_columns)), dtype=np.float64)
    for i, c in enumerate(spec.x_columns):
        x[:, i] = data[c]
    ydt = np.float64 if spec.target_kind == "continuous" else np.int64
    y: np.ndarray = np.empty((n, len(spec.y_columns)), dtype=ydt)
    for i, c in enumerate(spec.y_columns):
        y[:, i] = data[c]
    keep = np.asarray((y >= 0).all(axis=1)) if spec.drop_negative_y else np.ones(n, dtype=bool)
    return x, y, keep


@dataclass
class Survey:
    """What one pass learnt about a split: its pieces and the kept rows of each."""

    split: str
    pieces: list[Piece]
    kept: np.ndarray  # (G,) int64
    stats: dict[str, tuple[float, float]]  # standardise column -> (mean, std); train only

    @property
    def rows(self) -> int:
        return int(self.kept.sum())


def survey_split(
    prep: Any,
    split: str,
    max_rows: int | None,
    rank: int = 0,
    world_size: int = 1,
    reduce: Reduce | None = None,
    standardise: bool = True,
) -> Survey:
    """Survey ``split`` (module docstring); raises :class:`InputError` on every rank alike."""
    spec, manifest = prep.spec, prep.manifest
    where = f"{manifest.root / split}"
    pieces = pieces_of(manifest.shard_paths(split), max_rows)
    cols = list(dict.fromkeys([*spec.x_columns, *spec.y_columns]))
    nx, ny = len(spec.x_columns), len(spec.y_columns)
    cont = spec.target_kind == "continuous"
    std_cols = list(spec.standardise) if standardise else []
    for name in std_cols:
        if name not in spec.x_columns and not (cont and name in spec.y_columns):
            raise ConfigError(f"family {prep.family.name!r}: cannot standardise column {name!r}")
    # layout of a row: kept, bad_x[nx], bad_y[ny] | (ymin[ny], ymax[ny]), (sum, m2)[len(std)]
    width = 1 + nx + 2 * ny + 2 * len(std_cols)
    table = np.zeros((len(pieces), width), dtype=np.float64)
    for g in range(rank, len(pieces), world_size):
        x, y, keep = piece_xy(prep, read_piece(pieces[g], cols))
        row = table[g]
        row[0] = int(keep.sum())
        row[1 : 1 + nx] = (~np.isfinite(x)).sum(axis=0)
        off = 1 + nx
        if cont:
            row[off : off + ny] = (~np.isfinite(y)).sum(axis=0)
        elif keep.any():
            yk = y[keep]
            row[off : off + ny] = yk.min(axis=0)
            row[off + ny : off + 2 * ny] = yk.max(axis=0)
        off += 2 * ny
        for j, name in enumerate(std_cols):
            v = x[keep, spec.x_columns.index(name)] if name in spec.x_columns else None
            if v is None:
                v = y[keep, spec.y_columns.index(name)].astype(np.float64)
            if len(v):
                row[off + 2 * j] = v.sum()
                row[off + 2 * j + 1] = ((v - v.mean()) ** 2).sum()
    if reduce is not None and world_size > 1:
        table = reduce(torch.from_numpy(table)).cpu().numpy()
    kept = table[:, 0].astype(np.int64)
    total = int(kept.sum())
    if sum(p.rows for p in pieces) == 0:
        raise InputError(f"{where}: split {split!r} has no rows")
    bad = [c for i, c in enumerate(spec.x_columns) if table[:, 1 + i].sum() > 0]
    if cont:
        bad += [c for i, c in enumerate(spec.y_columns) if table[:, 1 + nx + i].sum() > 0]
    if bad:
        raise InputError(f"{where}: column(s) {bad} hold NaN/inf values")
    if total == 0:
        raise InputError(f"{where}: no rows with {list(spec.y_columns)} >= 0")
    if not cont:
        has = kept > 0
        n_classes = spec.dims.n_classes
        for i, c in enumerate(spec.y_columns):
            k = n_classes[i] if i < len(n_classes) else n_classes[-1]
            lo = int(table[has, 1 + nx + i].min())
            hi = int(table[has, 1 + nx + ny + i].max())
            if lo < 0 or hi >= k:
                raise InputError(
                    f"{where}: column {c!r} holds class indices {lo}..{hi} but the manifest "
                    f"{manifest.root / MANIFEST_NAME} gives {k} classes (bins that disagree "
                    "with the shards: re-run preprocessing)"
                )
    stats: dict[str, tuple[float, float]] = {}
    off = 1 + nx + 2 * ny
    for j, name in enumerate(std_cols):
        sums, m2s = table[:, off + 2 * j], table[:, off + 2 * j + 1]
        mean = float(sums.sum() / total)
        piece_means = np.divide(sums, kept, out=np.zeros_like(sums), where=kept > 0)
        m2 = float((m2s + kept * (piece_means - mean) ** 2).sum())
        std = math.sqrt(m2 / total)
        stats[name] = (mean, std if std > 0 else 1.0)
    return Survey(split, pieces, kept, stats)
