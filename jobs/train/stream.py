"""Training data as a stream of record batches per rank: nothing loads a whole split.

A split is read as *pieces*: the Parquet row groups of its shards in manifest order (shard, then
row group), the last one cut short at ``max_rows`` (the first ``max_rows`` rows of the split are
used and nothing after them is read). *Kept* rows are those the family trains on (``y >= 0``
when it drops negative targets, e.g. ``unfold_bins``' ``truth_bin = -1``); the survey
(:mod:`jobs.train.survey`) counts them per piece before the first epoch.

Epoch order (training), for global batch ``B``, ``P = data_parts`` (default: the number of ranks),
shuffle buffer ``S`` rows (``shuffle_buffer``):

1. the pieces are permuted with a generator seeded by ``(seed, epoch)``;
2. the kept rows of the permuted pieces form a line of ``T`` rows, cut into ``P`` contiguous
   parts of ``T // P`` or ``T // P + 1`` rows (a piece on a boundary is read by both neighbours,
   each keeping its share);
3. each part streams its rows through a shuffle buffer seeded by ``(seed, epoch, part)``: rows
   are pooled piece by piece; whenever the pool holds ``2 S`` rows or more it is permuted and
   all but ``S`` rows are emitted (so each permutation of the pool emits at least ``S`` rows:
   at most ~2 row copies per row); the end of the part emits the permuted rest. ``S = 0`` only
   permutes within a piece; a row can move up to about ``2 S`` rows (plus one piece) from its
   place in the permuted piece order;
4. global batch ``k`` is the concatenation over parts of rows ``[k B/P, (k+1) B/P)`` of each
   part's shuffled stream; an epoch has ``(T // P) // (B/P)`` steps (drop-last: each part's
   tail, a different random set every epoch, is not trained on that epoch);
5. rank ``r`` of ``N`` owns parts ``[r P/N, (r+1) P/N)``: it reads only their pieces, and its
   local batch is its contiguous slice of every global batch.

Global batches therefore depend on ``(seed, epoch, P, S, B)`` and not on ``N``: ``N`` ranks see
exactly the batches of one process run with ``data_parts: N`` (tests/test_train_stream.py
checks this row for row).

Validation and calibration read the line in manifest order (no shuffle) cut into ``N``
contiguous parts, one per rank (:func:`rank_ranges`), piece by piece.

A background thread reads, shuffles and assembles blocks of steps (about
``BLOCK_ROWS`` rows per rank) into a bounded queue (``prefetch`` blocks); on CUDA the blocks
are pinned and copied with ``non_blocking=True``. Memory per rank: twice the shuffle buffer,
one piece, and ``prefetch + 2`` blocks, whatever the size of the split.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from models.errors import InputError

__all__ = [
    "BLOCK_ROWS",
    "ROWS_READ",
    "BatchStream",
    "Chunk",
    "Piece",
    "Range",
    "RowCounter",
    "assemble_parts",
    "epoch_parts",
    "pieces_of",
    "rank_ranges",
    "read_piece",
    "shuffled",
]

BLOCK_ROWS = 65536  # rows per rank and prefetched block (a multiple of the local batch)


@dataclass(frozen=True)
class Piece:
    """One readable unit: row group ``row_group`` of ``path``, its first ``rows`` rows."""

    path: Path
    row_group: int
    rows: int


# (piece index, first kept row, end kept row) within that piece's kept rows
Range = tuple[int, int, int]


class RowCounter:
    """Rows decoded from Parquet by :func:`read_piece` in this process (tests check
    that ``max_rows`` reads only what it keeps)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.rows = 0
        self.pieces: set[Piece] = set()  # every piece decoded so far

    def add(self, piece: Piece, n: int) -> None:
        with self._lock:
            self.rows += n
            self.pieces.add(piece)


ROWS_READ = RowCounter()


def pieces_of(shards: Sequence[Path], max_rows: int | None = None) -> list[Piece]:
    """The pieces of a split from the shards' Parquet footers (no data is read)."""
    import pyarrow.parquet as pq

    out: list[Piece] = []
    left = max_rows if max_rows is not None else None
    for shard in shards:
        try:
            meta = pq.ParquetFile(shard).metadata
        except (OSError, ValueError) as exc:
            raise InputError(f"{shard}: cannot read shard ({exc})") from None
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if left is not None:
                n = min(n, left)
                left -= n
            if n > 0:
                out.append(Piece(Path(shard), g, n))
            if left == 0:
                return out
    return out


def read_piece(piece: Piece, columns: Sequence[str]) -> dict[str, np.ndarray]:
    """The ``columns`` of one piece as numpy arrays; decodes only ``piece.rows`` rows."""
    import pyarrow.parquet as pq

    try:
        f = pq.ParquetFile(piece.path)
        batch = next(
            f.iter_batches(
                batch_size=piece.rows,
                row_groups=[piece.row_group],
                columns=list(columns),
                use_threads=False,  # the reader thread must not compete with training
            )
        )
    except (OSError, ValueError, StopIteration) as exc:
        raise InputError(f"{piece.path}: cannot read row group {piece.row_group} ({exc})") from None
    ROWS_READ.add(piece, batch.num_rows)
    return {c: batch.column(c).to_numpy(zero_copy_only=False) for c in columns}


def _cut(order: Sequence[int], kept: np.ndarray, parts: int) -> list[list[Range]]:
    """The kept rows of ``order``'s pieces laid end to end, cut into ``parts`` equal runs."""
    lengths = kept[np.asarray(order, dtype=np.int64)] if len(order) else np.zeros(0, np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)])
    total = int(starts[-1])
    bounds = [p * total // parts for p in range(parts + 1)]
    out: list[list[Range]] = []
    for p in range(parts):
        lo, hi = bounds[p], bounds[p + 1]
        ranges: list[Range] = []
        first = int(np.searchsorted(starts, lo, side="right")) - 1
        for j in range(max(first, 0), len(order)):
            a, b = int(starts[j]), int(starts[j + 1])
            if a >= hi:
                break
            s, e = max(lo, a) - a, min(hi, b) - a
            if e > s:
                ranges.append((int(order[j]), s, e))
        out.append(ranges)
    return out


def epoch_parts(kept: np.ndarray, parts: int, seed: int, epoch: int) -> list[list[Range]]:
    """Steps 1-2 of the module docstring: each part's piece ranges for ``epoch``."""
    order = np.random.default_rng([seed, epoch, 0xDA7A]).permutation(len(kept))
    return _cut(order.tolist(), kept, parts)


def rank_ranges(kept: np.ndarray, world_size: int, rank: int) -> list[Range]:
    """Rank ``rank``'s contiguous share of the kept rows in manifest order (evaluation)."""
    return _cut(list(range(len(kept))), kept, world_size)[rank]


Chunk = tuple[np.ndarray, np.ndarray]  # (x, y) rows


def shuffled(chunks: Iterator[Chunk], buffer: int, rng: np.random.Generator) -> Iterator[Chunk]:
    """Step 3 of the module docstring: a bounded shuffle buffer of ``buffer`` rows."""
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    pooled = 0
    for x, y in chunks:
        xs.append(x)
        ys.append(y)
        pooled += len(x)
        if pooled >= max(2 * buffer, 1):  # >= buffer rows out per permutation of the pool
            px, py = np.concatenate(xs), np.concatenate(ys)
            perm = rng.permutation(pooled)
            out, keep = perm[: pooled - buffer], perm[pooled - buffer :]
            yield px[out], py[out]
            xs, ys, pooled = [px[keep]], [py[keep]], buffer
    if pooled:
        px, py = np.concatenate(xs), np.concatenate(ys)
        perm = rng.permutation(pooled)
        yield px[perm], py[perm]


class _Taker:
    """Exactly ``n`` rows at a time from a stream of chunks."""

    def __init__(self, chunks: Iterator[Chunk]) -> None:
        self.chunks = chunks
        self.xs: list[np.ndarray] = []
        self.ys: list[np.ndarray] = []
        self.have = 0

    def take(self, n: int) -> Chunk:
        while self.have < n:
            x, y = next(self.chunks)  # the plan guarantees enough rows
            self.xs.append(x)
            self.ys.append(y)
            self.have += len(x)
        x = np.concatenate(self.xs) if len(self.xs) > 1 else self.xs[0]
        y = np.concatenate(self.ys) if len(self.ys) > 1 else self.ys[0]
        self.xs, self.ys = ([x[n:]], [y[n:]]) if len(x) > n else ([], [])
        self.have = len(x) - n
        return x[:n], y[:n]


def assemble_parts(
    streams: Sequence[Iterator[Chunk]], rows_per_part: int, steps: int, block_steps: int
) -> Iterator[Chunk]:
    """Blocks of ``block_steps`` local batches: step k of a block is the concatenation of the
    next ``rows_per_part`` rows of every stream (step 4-5 of the module docstring)."""
    takers = [_Taker(s) for s in streams]
    done = 0
    while done < steps:
        k = min(block_steps, steps - done)
        xs, ys = [], []
        for t in takers:
            x, y = t.take(k * rows_per_part)
            xs.append(x.reshape(k, rows_per_part, *x.shape[1:]))
            ys.append(y.reshape(k, rows_per_part, *y.shape[1:]))
        x = np.concatenate(xs, axis=1)
        y = np.concatenate(ys, axis=1)
        yield (
            np.ascontiguousarray(x.reshape(k * x.shape[1], *x.shape[2:])),
            np.ascontiguousarray(y.reshape(k * y.shape[1], *y.shape[2:])),
        )
        done += k


_END = object()


class BatchStream:
    """Iterate ``(x, y)`` tensors of one local batch per step, read ahead by a thread.

    ``blocks`` yields numpy blocks of whole steps (``local_batch`` rows each); ``convert`` turns
    a block into host tensors. The thread keeps at most ``prefetch`` blocks ready; an error in
    it is raised in the consumer; leaving the loop early (or :meth:`close`) stops it.
    """

    def __init__(
        self,
        blocks: Callable[[], Iterator[Chunk]],
        convert: Callable[[Chunk], tuple[Tensor, Tensor]],
        local_batch: int,
        device: torch.device,
        prefetch: int = 2,
    ) -> None:
        self.blocks = blocks
        self.convert = convert
        self.local_batch = local_batch
        self.device = device
        self.prefetch = max(1, prefetch)
        self._thread: threading.Thread | None = None
        self._queue: queue.Queue[Any] = queue.Queue()
        self._stop = threading.Event()

    def _produce(self, q: queue.Queue[Any], stop: threading.Event) -> None:
        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            for block in self.blocks():
                x, y = self.convert(block)
                if self.device.type == "cuda":
                    x, y = x.pin_memory(), y.pin_memory()
                if not put((x, y)):
                    return
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            put(exc)
            return
        put(_END)

    def start(self) -> BatchStream:
        """Start reading ahead now (e.g. the next epoch's data while this one validates)."""
        if self._thread is None:
            self._queue = queue.Queue(maxsize=self.prefetch)
            self._stop = threading.Event()
            self._thread = threading.Thread(
                target=self._produce, args=(self._queue, self._stop), daemon=True
            )
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the reader thread (also when the stream was never iterated)."""
        if self._thread is not None:
            self._stop.set()
            self._thread.join()

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        self.start()
        q = self._queue
        b = self.local_batch
        cuda = self.device.type == "cuda"
        try:
            while True:
                item = q.get()
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                x, y = item
                x = x.to(self.device, non_blocking=cuda)
                y = y.to(self.device, non_blocking=cuda)
                for k in range(len(x) // b):
                    yield {"x": x[k * b : (k + 1) * b], "y": y[k * b : (k + 1) * b]}
        finally:
            self.close()
