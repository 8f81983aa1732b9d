"""The partition worker of ``hepscan preprocess``: one Dask task per entry range of a file.

:func:`process_partition` reads its branches with uproot, checks NaN/inf, applies the selection
(a built-in kind on numpy, or an import-string selection on awkward arrays), computes event
ids, split labels and unfolding bins; the result stays in worker memory. :func:`partition_stats`
reduces it to the small numbers the driver merges (train moments, resolution deltas, bin
counts); :func:`write_partition` writes its standardised Parquet shards.

Splits hash the per-event id with splitmix64, so an event keeps its split when files are added.
"""

from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jobs.manifest import SPLITS
from jobs.preprocess import user
from jobs.preprocess.config import UserSelection
from jobs.preprocess.plan import InputFile, Plan
from jobs.preprocess.select import Jagged, select
from models.errors import InputError, require

__all__ = [
    "PartitionResult",
    "Task",
    "WriteSpec",
    "bin_index",
    "partitions",
    "partition_stats",
    "process_partition",
    "resolution_delta",
    "split_of",
    "splitmix64",
    "write_partition",
]


def splitmix64(x: np.ndarray) -> np.ndarray:
    """The splitmix64 finaliser, vectorised over uint64 (wrap-around arithmetic intended)."""
    z = np.asarray(x, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def split_of(event_id: np.ndarray, train: float, validation: float) -> np.ndarray:
    """Split code per event (0 train, 1 validation, 2 test) from a hash of its id."""
    u = (splitmix64(event_id) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return np.where(u < train, 0, np.where(u < train + validation, 1, 2)).astype(np.int8)


def bin_index(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value in [edges[0], edges[-1]); -1 outside (and for NaN)."""
    idx = np.searchsorted(edges, x, side="right").astype(np.int64) - 1
    inside = (x >= edges[0]) & (x < edges[-1])
    return np.where(inside, idx, -1).astype(np.int32)


def resolution_delta(mode: str, truth: np.ndarray, reco: np.ndarray) -> np.ndarray:
    """(reco - truth), relative to truth for ``relative``, wrapped to [-pi, pi) for ``angle``."""
    if mode == "relative":
        safe = np.where(truth != 0.0, truth, 1.0)
        return np.where(truth != 0.0, (reco - truth) / safe, 0.0)
    d = reco - truth
    if mode == "angle":
        d = (d + np.pi) % (2.0 * np.pi) - np.pi
    return d


def partitions(files: list[InputFile]) -> list[tuple[InputFile, int, int]]:
    """Entry ranges per file: ``step`` entries each (the last one shorter)."""
    parts: list[tuple[InputFile, int, int]] = []
    for f in files:
        for start in range(0, f.entries, f.step):
            parts.append((f, start, min(start + f.step, f.entries)))
    return parts


@dataclass(frozen=True)
class Task:
    index: int
    file: InputFile
    start: int
    stop: int
    file_key: int
    plan: Plan


@dataclass
class PartitionResult:
    index: int
    n_read: int = 0
    n_nan: int = 0
    n_failed: int = 0
    n_outside: int = 0
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    event_id: np.ndarray = field(default_factory=lambda: np.empty(0, np.uint64))
    weight: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    split: np.ndarray = field(default_factory=lambda: np.empty(0, np.int8))
    truth_bin: np.ndarray | None = None
    reco_bin: np.ndarray | None = None


def _to_numpy(arr: Any) -> np.ndarray | Jagged:
    """uproot's awkward output as numpy, zero-copy: flat array or offsets + content."""
    ak = require("awkward")

    layout = ak.to_layout(arr)
    if isinstance(layout, ak.contents.ListOffsetArray) and isinstance(
        layout.content, ak.contents.NumpyArray
    ):
        offsets = np.asarray(layout.offsets.data, dtype=np.int64)
        content = np.asarray(layout.content.data)[offsets[0] : offsets[-1]]
        return Jagged(offsets - offsets[0] if offsets[0] else offsets, content)
    if isinstance(layout, ak.contents.NumpyArray):
        return np.asarray(layout.data)
    flat = ak.flatten(arr, axis=1)  # any other list layout
    counts = np.asarray(ak.to_numpy(ak.num(arr, axis=1)), dtype=np.int64)
    offsets = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(counts, out=offsets[1:])
    return Jagged(offsets, np.asarray(ak.to_numpy(flat)))


def _bad_entries(x: np.ndarray | Jagged) -> np.ndarray | None:
    """Entries holding NaN/inf (None for integer branches or when all are finite)."""
    data = x.content if isinstance(x, Jagged) else x
    if data.dtype.kind != "f":
        return None
    bad = ~np.isfinite(data)
    if not bad.any():
        return None
    if isinstance(x, Jagged):
        return np.unique(np.searchsorted(x.offsets, np.flatnonzero(bad), side="right") - 1)
    return np.flatnonzero(bad)


def _bad_entries_ak(arr: Any) -> np.ndarray | None:
    """Entries holding NaN/inf in any awkward layout (import-string selections read these)."""
    ak = require("awkward")

    try:
        flat = np.asarray(ak.to_numpy(ak.ravel(arr)))
    except Exception:  # records, strings: nothing numeric to check at this level
        return None
    if flat.dtype.kind != "f" or np.isfinite(flat).all():
        return None
    bad = ~np.isfinite(arr)
    while bad.ndim > 1:
        bad = ak.any(bad, axis=-1)
    return np.flatnonzero(np.asarray(ak.to_numpy(ak.fill_none(bad, False))))


def process_partition(task: Task) -> PartitionResult:
    """Read one entry range, check NaN/inf, select, compute ids, splits and unfolding bins."""
    uproot = require("uproot")

    plan, cfg, f = task.plan, task.plan.cfg, task.file
    where = f"{f.display} (entries {task.start}-{task.stop})"
    fn = (
        user.check_source(cfg.selection, plan.selection_source, where)
        if isinstance(cfg.selection, UserSelection)
        else None
    )
    try:
        with uproot.open(f.path) as fobj:
            raw_ak = fobj[cfg.tree].arrays(
                plan.read_branches,
                entry_start=task.start,
                entry_stop=task.stop,
                library="ak",
                how=dict,
            )
        raw = dict(raw_ak) if fn is not None else {b: _to_numpy(v) for b, v in raw_ak.items()}
    except Exception as exc:
        raise InputError(
            f"{f.display}: cannot read entries {task.start}-{task.stop} of tree "
            f"{cfg.tree!r} ({type(exc).__name__}: {exc})"
        ) from None
    n = task.stop - task.start
    res = PartitionResult(index=task.index, n_read=n)
    bad = np.zeros(n, dtype=bool)
    for branch in plan.read_branches:
        idx = _bad_entries(raw[branch]) if fn is None else _bad_entries_ak(raw[branch])
        if idx is None:
            continue
        if cfg.nan_policy == "error":
            raise InputError(
                f"{f.display}: branch {branch!r} holds NaN/inf (first at entry "
                f"{task.start + int(idx[0])}); set 'nan_policy: drop' to drop such events"
            )
        bad[idx] = True
    arrays = {logical: raw[branch] for logical, branch in plan.branches.items()}
    if fn is None:
        cols, rows = select(cfg.selection, arrays, n, plan.columns)
    else:
        ak = require("awkward")
        events = ak.zip(arrays, depth_limit=1)
        cols, rows, bad_out = user.call(
            cfg.selection, fn, events, plan.columns, plan.has_ok, cfg.nan_policy, where
        )
        bad |= bad_out
    if bad.any():
        # the selection ran on every entry (vectorised); rows of bad entries are dropped now
        res.n_nan = int(bad.sum())
        good_rows = ~bad[rows]
        cols = {k: v[good_rows] for k, v in cols.items()}
        rows = rows[good_rows]
    distinct = int(np.count_nonzero(np.diff(rows))) + 1 if rows.size else 0
    res.n_failed = n - res.n_nan - distinct

    if plan.eid_branches:
        ids = [np.asarray(raw[b]).astype(np.uint64) for b in plan.eid_branches]
        eid = (
            ids[0]
            if len(ids) == 1
            else (ids[0] << np.uint64(32)) | (ids[1] & np.uint64(0xFFFFFFFF))
        )
        event_id = eid[rows]
    else:
        entries = (task.start + rows).astype(np.uint64)
        event_id = splitmix64(np.uint64(task.file_key) ^ entries)
    weight = (
        np.asarray(raw[plan.weight_branch], dtype=np.float64)[rows]
        if plan.weight_branch
        else np.ones(rows.size, dtype=np.float64)
    )
    sel: np.ndarray | slice = slice(None)
    if plan.edges is not None and cfg.unfold is not None:
        edges = np.asarray(plan.edges)
        rb = bin_index(cols[cfg.unfold.reco], edges)
        tb = bin_index(cols[cfg.unfold.truth], edges) if cfg.unfold.truth else None
        if cfg.unfold.outside == "drop":
            inside = rb >= 0
            if tb is not None:
                inside &= tb >= 0
            res.n_outside = int((~inside).sum())
            sel = inside
        res.reco_bin = rb[sel]
        res.truth_bin = tb[sel] if tb is not None else None
    res.columns = {c: v[sel] for c, v in cols.items()}
    res.event_id = event_id[sel]
    res.weight = weight[sel]
    res.split = split_of(res.event_id, cfg.split.train, cfg.split.validation)
    return res


def partition_stats(res: PartitionResult, plan: Plan) -> dict[str, Any]:
    cfg = plan.cfg
    train = res.split == 0
    n = int(train.sum())
    mean = np.zeros(len(cfg.features))
    m2 = np.zeros(len(cfg.features))
    if n:
        for k, c in enumerate(cfg.features):  # one column at a time: no (rows x features) copy
            x = np.asarray(res.columns[c][train], dtype=np.float64)
            mean[k] = x.mean()
            x -= mean[k]
            x *= x
            m2[k] = x.sum()  # numpy's pairwise sum, not BLAS: the same bits for any thread count
    deltas: dict[str, np.ndarray] = {}
    if cfg.resolution is not None:
        ok = train & (res.columns["reco_ok"] > 0.5) if plan.has_ok else train
        for q, spec in cfg.resolution.quantities.items():
            deltas[q] = resolution_delta(
                spec.mode, res.columns[spec.truth][ok], res.columns[spec.reco][ok]
            )
    hist: dict[str, np.ndarray] = {}
    if res.reco_bin is not None and plan.edges is not None:
        # the bins process_partition computed (a row exactly on the upper edge is outside, as
        # in reco_bin); np.histogram with an edges array sorts the column: half of this call
        n_bins = len(plan.edges) - 1
        hist["reco"] = np.bincount(res.reco_bin[res.reco_bin >= 0], minlength=n_bins)
        if res.truth_bin is not None:
            hist["truth"] = np.bincount(res.truth_bin[res.truth_bin >= 0], minlength=n_bins)
    return {
        "index": res.index,
        "rows": [int((res.split == k).sum()) for k in range(len(SPLITS))],
        "counts": (res.n_read, res.n_nan, res.n_failed, res.n_outside),
        "n": n,
        "mean": mean,
        "m2": m2,
        "deltas": deltas,
        "hist": hist,
    }


@dataclass(frozen=True)
class WriteSpec:
    root: str
    first_shard: tuple[int, ...]  # per split
    mean: tuple[float, ...]
    std: tuple[float, ...]
    res_edges: dict[str, tuple[float, ...]]


class _HashingWriter(io.RawIOBase):
    """A write-only file object that feeds every block to sha256 on its way to ``fh``."""

    def __init__(self, fh: Any) -> None:
        self.fh = fh
        self.sha = hashlib.sha256()

    def writable(self) -> bool:
        return True

    def write(self, b: Any) -> int:
        self.sha.update(b)
        return self.fh.write(b)  # type: ignore[no-any-return]

    def close(self) -> None:  # the caller's ``with open(...)`` closes the real file
        self.fh.flush()
        super().close()


ROW_GROUP_ROWS = 65536  # rows per Parquet row group: the unit training reads and shuffles


def write_partition(res: PartitionResult, plan: Plan, spec: WriteSpec) -> list[dict[str, Any]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    float_types = (pa.float32(), pa.float64())
    cfg = plan.cfg
    mean, std = np.asarray(spec.mean), np.asarray(spec.std)
    out: list[dict[str, Any]] = []
    for code, split in enumerate(SPLITS):
        idx = np.flatnonzero(res.split == code)
        if idx.size == 0:
            continue
        table = _table(res, idx, plan, mean, std, spec.res_edges)
        shard = spec.first_shard[code]
        for lo in range(0, idx.size, cfg.shard_rows):
            part = table.slice(lo, cfg.shard_rows)
            rel = f"{split}/part-{shard:05d}.parquet"
            floats = [c for c in part.column_names if part.schema.field(c).type in float_types]
            path = os.path.join(spec.root, rel)
            with open(path, "wb") as raw_fh:
                fh = _HashingWriter(raw_fh)  # hash while writing: no copy, no re-read
                pq.write_table(
                    part,
                    fh,
                    compression=None if cfg.compression == "none" else cfg.compression,
                    # measured on zll shards: dictionary pages on float columns cost 8x the
                    # write time for nothing, and on event_id (unique per row) ~40 % of the
                    # whole write for a larger file; min/max statistics double it (the readers
                    # load whole columns), byte-stream-split makes floats compressible (-40 %)
                    use_dictionary=[
                        c for c in part.column_names if c not in floats and c != "event_id"
                    ],
                    use_byte_stream_split=floats,
                    write_statistics=False,
                    # training streams row groups (jobs/train/stream.py): a 1 M-row shard
                    # becomes 16 units that ranks and the per-epoch shuffle can deal out
                    row_group_size=ROW_GROUP_ROWS,
                )
            out.append(
                {
                    "split": split,
                    "path": rel,
                    "rows": part.num_rows,
                    "sha256": fh.sha.hexdigest(),
                }
            )
            shard += 1
    return out


def _table(
    res: PartitionResult,
    idx: np.ndarray,
    plan: Plan,
    mean: np.ndarray,
    std: np.ndarray,
    res_edges: dict[str, tuple[float, ...]],
) -> Any:
    import pyarrow as pa

    cfg = plan.cfg
    cols: dict[str, Any] = {"event_id": res.event_id[idx], "weight": res.weight[idx]}
    for k, f in enumerate(cfg.features):
        cols[f"feat_{f}"] = ((res.columns[f][idx] - mean[k]) / std[k]).astype(np.float32)
    if res.reco_bin is not None:
        rb = res.reco_bin[idx]
        cols["reco_bin"] = rb
        if res.truth_bin is not None:
            tb = res.truth_bin[idx]
            cols["truth_bin"] = tb
            cols["migration"] = np.where((tb >= 0) & (rb >= 0), tb - rb, 0).astype(np.int32)
    if cfg.resolution is not None:
        n_classes = cfg.resolution.n_classes
        ok = res.columns["reco_ok"][idx] > 0.5 if plan.has_ok else np.ones(idx.size, bool)
        for q, qspec in cfg.resolution.quantities.items():
            d = resolution_delta(
                qspec.mode, res.columns[qspec.truth][idx], res.columns[qspec.reco][idx]
            )
            edges = np.asarray(res_edges[q])
            cls = np.clip(np.searchsorted(edges, d, side="right") - 1, 0, n_classes - 1)
            cols[f"res_{q}"] = np.where(ok, cls, n_classes).astype(np.int32)
    for c in plan.written:
        cols[c] = res.columns[c][idx]
    if plan.has_ok:
        cols["reco_ok"] = res.columns["reco_ok"][idx] > 0.5
    return pa.table(cols)
