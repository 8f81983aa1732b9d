"""``hepscan preprocess``: ROOT files -> selected, standardised Parquet shards + ``manifest.json``.

Launch::

    hepscan preprocess configs/preprocess_zll.yaml --out data/zll-prep
    hepscan preprocess configs/preprocess_zll.yaml --out data/zll-prep \\
        --input 'data/zll/*.root' --workers 2
    hepscan preprocess configs/preprocess_zll.yaml --out data/zll-prep --scheduler tcp://HOST:8786

or from Python: ``preprocess("configs/preprocess_zll.yaml", "data/zll-prep")`` (returns the
manifest path). The config format is documented in :mod:`jobs.preprocess_config`, the output
contract in :mod:`jobs.manifest`.

How it runs:

1. Validate everything that can be validated without Dask: config keys and column names,
   every input file (readable ROOT file, tree, branches, no basket beyond the end of the file),
   the output location. Each failure is one :class:`~models.errors.HepscanError` naming the file
   and key or branch; nothing is written.
2. Partition each file by memory (``step_size``, e.g. ``"100 MB"`` of the branches read), with
   the same entry ranges ``uproot.dask(step_size=...)`` makes (``TTree.num_entries_for``; a
   test checks they agree). Each partition is one task on a Dask cluster (a ``LocalCluster`` of
   single-threaded worker processes, or an existing scheduler): read its branches with uproot,
   check NaN/inf, apply the selection on numpy arrays, compute event ids, split labels and
   unfolding bins. Results stay in worker memory as futures. The tasks call uproot themselves
   instead of going through a ``uproot.dask`` collection: ``library="ak"`` needs dask-awkward,
   whose releases pin an older dask than distributed here, and ``library="np"`` turns jagged
   branches into object arrays and costs seconds of graph building per call.
3. Gather small per-partition statistics in partition order (so they do not depend on
   scheduling): feature mean/std on the train split only, (reco - truth) quantiles of the train
   split for the resolution classes, row counts per split.
4. Each partition task writes its rows into numbered shards (numbers fixed by the driver from
   the counts), standardised with the train scaler; the manifest and a truth-vs-reco PNG are
   written last. Everything goes into a temp dir next to ``--out`` that is renamed at the end
   and removed on any error.

Splits hash the per-event id with splitmix64, so an event keeps its split when files are
added. Rows keep file/entry order. The same inputs and config give a byte-identical manifest
(no timestamps, paths as written, floats from deterministic reductions in partition order).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import click
import numpy as np

from jobs.manifest import MANIFEST_NAME, MANIFEST_VERSION, SPLITS
from jobs.preprocess_config import PreprocessConfig, load_config, step_size_bytes
from jobs.preprocess_select import KINDS, Jagged, select
from models.errors import ConfigError, InputError, OutputError

__all__ = ["preprocess", "preprocess_command", "splitmix64", "split_of"]

log = logging.getLogger(__name__)


def _since(t0: float) -> float:
    return time.perf_counter() - t0


# ---------------------------------------------------------------------------------------------
# small deterministic helpers
# ---------------------------------------------------------------------------------------------


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


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hepscan")
    except PackageNotFoundError:
        return "0.1.0"


# ---------------------------------------------------------------------------------------------
# plan: what to read and which columns to produce
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputFile:
    display: str  # as written in the config / on the command line (stored in the manifest)
    path: str  # what we open
    size: int
    entries: int
    step: int  # entries per partition


@dataclass(frozen=True)
class Plan:
    cfg: PreprocessConfig
    source: str
    branches: dict[str, str]  # logical name -> branch (only those present / required)
    eid_branches: tuple[str, ...]
    weight_branch: str | None
    columns: tuple[str, ...]  # row columns the workers keep
    written: tuple[str, ...]  # continuous truth_/reco_ columns written to the shards
    has_ok: bool
    edges: tuple[float, ...] | None

    @property
    def read_branches(self) -> list[str]:
        names = [*self.branches.values(), *self.eid_branches]
        if self.weight_branch:
            names.append(self.weight_branch)
        return sorted(set(names))


def _check_columns(cfg: PreprocessConfig, source: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    kind = cfg.selection.kind
    have = KINDS[kind].columns

    def need(key: str, name: str | None) -> None:
        if name is not None and name not in have:
            raise ConfigError(
                f"{source}: {key}: unknown column {name!r} for selection {kind!r} "
                f"(have {', '.join(have)})"
            )

    for i, f in enumerate(cfg.features):
        need(f"features[{i}]", f)
    written: list[str] = []
    if cfg.unfold is not None:
        need("unfold.truth", cfg.unfold.truth)
        need("unfold.reco", cfg.unfold.reco)
        written += [c for c in (cfg.unfold.truth, cfg.unfold.reco) if c]
    if cfg.resolution is not None:
        if not cfg.resolution.quantities:
            raise ConfigError(f"{source}: resolution.quantities: needs at least one quantity")
        for q, spec in cfg.resolution.quantities.items():
            need(f"resolution.quantities.{q}.truth", spec.truth)
            need(f"resolution.quantities.{q}.reco", spec.reco)
            written += [spec.truth, spec.reco]
    if cfg.generative is not None:
        for i, c in enumerate(cfg.generative.condition):
            need(f"generative.condition[{i}]", c)
        for i, c in enumerate(cfg.generative.target):
            need(f"generative.target[{i}]", c)
        written += [*cfg.generative.condition, *cfg.generative.target]
    written_t = tuple(dict.fromkeys(c for c in written if c != "reco_ok"))
    used = [*cfg.features, *written_t]
    if "reco_ok" in have:
        used.append("reco_ok")
    return tuple(dict.fromkeys(used)), written_t


def make_plan(cfg: PreprocessConfig, source: str) -> Plan:
    kind = cfg.selection.kind
    spec = KINDS[kind]
    for logical in cfg.branches:
        if logical not in spec.branches:
            raise ConfigError(
                f"{source}: branches.{logical}: unknown logical name for selection {kind!r} "
                f"(have {', '.join(spec.branches)})"
            )
    columns, written = _check_columns(cfg, source)
    if isinstance(cfg.event_id, str):
        eid: tuple[str, ...] = (cfg.event_id,)
    elif isinstance(cfg.event_id, list):
        eid = tuple(cfg.event_id)
    else:
        eid = ()
    needed = spec.needs(kind, columns)
    mapping = {**spec.branches, **cfg.branches}
    return Plan(
        cfg=cfg,
        source=source,
        branches={k: v for k, v in mapping.items() if k in needed},
        eid_branches=eid,
        weight_branch=cfg.weight,
        columns=columns,
        written=written,
        has_ok="reco_ok" in spec.columns,
        edges=tuple(cfg.unfold.edge_values()) if cfg.unfold is not None else None,
    )


_TESTDATA = "skhep_testdata:"


def _testdata_path(pat: str, label: str) -> str:
    """``skhep_testdata:NAME`` -> the bundled scikit-hep-testdata file (kept as written)."""
    try:
        import skhep_testdata
    except ImportError:
        raise InputError(f"{label}: {pat!r} needs the scikit-hep-testdata package") from None
    try:
        return str(skhep_testdata.data_path(pat[len(_TESTDATA) :]))
    except Exception as exc:
        raise InputError(f"{label}: {pat!r} is not a scikit-hep-testdata file ({exc})") from None


def _expand(patterns: list[str], base: Path, what: str) -> list[tuple[str, str]]:
    """(display, openable path) per file, sorted by display, duplicates removed."""
    found: dict[str, str] = {}
    for i, pat in enumerate(patterns):
        if pat.startswith(_TESTDATA):
            found.setdefault(pat, _testdata_path(pat, f"{what}[{i}]" if what == "files" else what))
            continue
        full = pat if os.path.isabs(pat) else str(base / pat)
        hits = sorted(glob.glob(full))
        if not hits:
            label = f"{what}[{i}]" if what == "files" else what
            raise InputError(f"{label}: {pat!r} matches no file")
        for hit in hits:
            display = hit if os.path.isabs(pat) else os.path.relpath(hit, base)
            found.setdefault(display, hit)
    return sorted(found.items())


def validate_inputs(plan: Plan, files: list[tuple[str, str]]) -> tuple[list[InputFile], Plan]:
    """Open every file and check tree, branches and basket extents; raises InputError.

    Returns the files and the plan with the optional branches that are present resolved.
    """
    import uproot

    kind = plan.cfg.selection.kind
    optional = KINDS[kind].optional
    out: list[InputFile] = []
    resolved: dict[str, str] | None = None
    for display, path in files:
        try:
            size = os.path.getsize(path)
        except OSError as exc:
            raise InputError(f"{display}: cannot read file ({exc.strerror or exc})") from None
        try:
            fobj = uproot.open(path)
        except Exception as exc:  # uproot raises many types for garbage and truncated files
            raise InputError(
                f"{display}: not a readable ROOT file ({type(exc).__name__}: {exc})"
            ) from None
        with fobj:
            end = int(getattr(fobj.file, "fEND", 0) or 0)
            if end > size:
                raise InputError(
                    f"{display}: truncated file: the ROOT header says {end} bytes, "
                    f"the file has {size}"
                )
            try:
                tree = fobj[plan.cfg.tree]
            except Exception:
                keys = sorted({k.split(";")[0] for k in fobj.keys(recursive=False)})
                raise InputError(
                    f"{display}: no tree {plan.cfg.tree!r} (tree; file has keys {keys})"
                ) from None
            if not isinstance(tree, uproot.TTree):
                raise InputError(
                    f"{display}: {plan.cfg.tree!r} is a {type(tree).__name__}, not a TTree (tree)"
                )
            present = set(tree.keys())
            mapping: dict[str, str] = {}
            for logical, branch in plan.branches.items():
                if branch in present:
                    mapping[logical] = branch
                elif logical in optional and logical not in plan.cfg.branches:
                    continue
                else:
                    raise InputError(
                        f"{display}: tree {plan.cfg.tree!r} has no branch {branch!r} "
                        f"(selection {kind!r} reads it as {logical!r}; map another branch "
                        f"with 'branches: {{{logical}: NAME}}')"
                    )
            for key, branch in [("event_id", b) for b in plan.eid_branches] + (
                [("weight", plan.weight_branch)] if plan.weight_branch else []
            ):
                if branch not in present:
                    raise InputError(
                        f"{display}: tree {plan.cfg.tree!r} has no branch {branch!r} "
                        f"(config key {key!r})"
                    )
            if resolved is None:
                resolved = mapping
            elif mapping != resolved:
                raise InputError(
                    f"{display}: optional branches differ from the first input "
                    f"({sorted(set(mapping) ^ set(resolved))})"
                )
            needed = sorted(
                set(mapping.values())
                | set(plan.eid_branches)
                | ({plan.weight_branch} if plan.weight_branch else set())
            )
            for name in needed:
                br = tree[name]
                nb = br.num_baskets
                if nb == 0:
                    continue
                seeks = np.asarray(br.member("fBasketSeek"))[:nb]
                nbytes = np.asarray(br.member("fBasketBytes"))[:nb]
                end = int((seeks.astype(np.int64) + nbytes.astype(np.int64)).max())
                if end > size:
                    raise InputError(
                        f"{display}: truncated file: branch {name!r} needs bytes up to {end} "
                        f"but the file has {size}"
                    )
            entries = int(tree.num_entries)
            # uproot.dask's partitioning: the entries that fit the memory step for these branches
            step = step_size_bytes(plan.cfg.step_size)
            per_step = max(1, int(tree.num_entries_for(step, filter_name=needed))) if entries else 1
            out.append(InputFile(display, path, size, entries, per_step))
    assert resolved is not None
    return out, replace(plan, branches=resolved)


# ---------------------------------------------------------------------------------------------
# worker side
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Task:
    index: int
    file: InputFile
    start: int
    stop: int
    file_key: int
    plan: Plan


@dataclass
class _Result:
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
    import awkward as ak

    layout = ak.to_layout(arr)
    if isinstance(layout, ak.contents.ListOffsetArray) and isinstance(
        layout.content, ak.contents.NumpyArray
    ):
        offsets = np.asarray(layout.offsets.data, dtype=np.int64)
        content = np.asarray(layout.content.data)[offsets[0] : offsets[-1]]
        return Jagged(offsets - offsets[0], content)
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


def _process_partition(task: _Task) -> _Result:
    import uproot

    plan, cfg, f = task.plan, task.plan.cfg, task.file
    try:
        with uproot.open(f.path) as fobj:
            raw_ak = fobj[cfg.tree].arrays(
                plan.read_branches,
                entry_start=task.start,
                entry_stop=task.stop,
                library="ak",
                how=dict,
            )
        raw = {b: _to_numpy(v) for b, v in raw_ak.items()}
    except Exception as exc:
        raise InputError(
            f"{f.display}: cannot read entries {task.start}-{task.stop} of tree "
            f"{cfg.tree!r} ({type(exc).__name__}: {exc})"
        ) from None
    n = task.stop - task.start
    res = _Result(index=task.index, n_read=n)
    bad = np.zeros(n, dtype=bool)
    for branch in plan.read_branches:
        idx = _bad_entries(raw[branch])
        if idx is None:
            continue
        if cfg.nan_policy == "error":
            raise InputError(
                f"{f.display}: branch {branch!r} holds NaN/inf (first at entry "
                f"{task.start + int(idx[0])}); set 'nan_policy: drop' to drop such events"
            )
        bad[idx] = True
    arrays = {logical: raw[branch] for logical, branch in plan.branches.items()}
    cols, rows = select(cfg.selection, arrays, n, plan.columns)
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


def _partition_stats(res: _Result, plan: Plan) -> dict[str, Any]:
    cfg = plan.cfg
    train = res.split == 0
    feats = np.stack([res.columns[c][train] for c in cfg.features], axis=1)
    n = int(train.sum())
    mean = feats.mean(axis=0) if n else np.zeros(len(cfg.features))
    m2 = ((feats - mean) ** 2).sum(axis=0) if n else np.zeros(len(cfg.features))
    deltas: dict[str, np.ndarray] = {}
    if cfg.resolution is not None:
        ok = train & (res.columns["reco_ok"] > 0.5) if plan.has_ok else train
        for q, spec in cfg.resolution.quantities.items():
            deltas[q] = resolution_delta(
                spec.mode, res.columns[spec.truth][ok], res.columns[spec.reco][ok]
            )
    hist: dict[str, np.ndarray] = {}
    if cfg.unfold is not None and plan.edges is not None:
        edges = np.asarray(plan.edges)
        hist["reco"] = np.histogram(res.columns[cfg.unfold.reco], bins=edges)[0]
        if cfg.unfold.truth:
            hist["truth"] = np.histogram(res.columns[cfg.unfold.truth], bins=edges)[0]
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
class _WriteSpec:
    root: str
    first_shard: tuple[int, ...]  # per split
    mean: tuple[float, ...]
    std: tuple[float, ...]
    res_edges: dict[str, tuple[float, ...]]


def _write_partition(res: _Result, plan: Plan, spec: _WriteSpec) -> list[dict[str, Any]]:
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
            sink = pa.BufferOutputStream()
            floats = [c for c in part.column_names if part.schema.field(c).type in float_types]
            pq.write_table(
                part,
                sink,
                compression=None if cfg.compression == "none" else cfg.compression,
                # measured on zll shards: dictionary pages on float columns cost 8x the write
                # time for nothing, min/max statistics double it (the readers load whole
                # columns), byte-stream-split makes floats compressible (-40 % size)
                use_dictionary=[c for c in part.column_names if c not in floats],
                use_byte_stream_split=floats,
                write_statistics=False,
            )
            data = sink.getvalue().to_pybytes()
            with open(os.path.join(spec.root, rel), "wb") as fh:
                fh.write(data)
            out.append(
                {
                    "split": split,
                    "path": rel,
                    "rows": part.num_rows,
                    "sha256": hashlib.sha256(data).hexdigest(),
                }
            )
            shard += 1
    return out


def _table(
    res: _Result,
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


def _column_types(plan: Plan) -> dict[str, str]:
    cfg = plan.cfg
    types = {"event_id": "uint64", "weight": "float64"}
    types.update({f"feat_{f}": "float32" for f in cfg.features})
    if cfg.unfold is not None:
        types["reco_bin"] = "int32"
        if cfg.unfold.truth:
            types.update(truth_bin="int32", migration="int32")
    if cfg.resolution is not None:
        types.update({f"res_{q}": "int32" for q in cfg.resolution.quantities})
    types.update({c: "float64" for c in plan.written})
    if plan.has_ok:
        types["reco_ok"] = "bool"
    return types


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------


def _partitions(files: list[InputFile]) -> list[tuple[InputFile, int, int]]:
    """Entry ranges per file: ``step`` entries each (the last one shorter)."""
    parts: list[tuple[InputFile, int, int]] = []
    for f in files:
        for start in range(0, f.entries, f.step):
            parts.append((f, start, min(start + f.step, f.entries)))
    return parts


@contextlib.contextmanager
def _dask_client(scheduler: str | None, workers: int | None, n_parts: int) -> Iterator[Any]:
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            client = Client(scheduler, timeout="15s")
        except (OSError, TimeoutError) as exc:
            raise ConfigError(f"--scheduler {scheduler!r}: cannot connect ({exc})") from None
        try:
            yield client
        finally:
            client.close()
        return
    import dask

    n = workers or max(1, min(os.cpu_count() or 1, n_parts))
    # distributed's default MALLOC_TRIM_THRESHOLD_ also pins glibc's mmap threshold, so every
    # large numpy temporary becomes an mmap + page faults: measured 2x the CPU per partition
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # any free port: 8787 may be taken
            silence_logs=logging.ERROR,
        )
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def _merge_moments(stats: list[dict[str, Any]], n_feat: int) -> tuple[int, np.ndarray, np.ndarray]:
    """Chan's parallel mean/variance merge, in partition order."""
    n_tot, mean, m2 = 0, np.zeros(n_feat), np.zeros(n_feat)
    for s in stats:
        nb = s["n"]
        if nb == 0:
            continue
        delta = s["mean"] - mean
        tot = n_tot + nb
        mean = mean + delta * (nb / tot)
        m2 = m2 + s["m2"] + delta**2 * (n_tot * nb / tot)
        n_tot = tot
    return n_tot, mean, m2


def _plot_name(plan: Plan) -> str | None:
    u = plan.cfg.unfold
    return f"truth_vs_reco_{u.quantity}.png" if u is not None and u.truth else None


def _plot(path: Path, plan: Plan, edges: np.ndarray, truth: np.ndarray, reco: np.ndarray) -> None:
    """Truth and reco histograms of the unfolding quantity (no pyplot: runs in a thread)."""
    import matplotlib.style
    import mplhep
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cfg = plan.cfg
    assert cfg.unfold is not None
    with matplotlib.style.context(mplhep.style.CMS):
        fig = Figure(figsize=(8, 6), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        mplhep.histplot(truth, edges, ax=ax, label=f"truth ({cfg.unfold.truth})")
        mplhep.histplot(reco, edges, ax=ax, label=f"reco ({cfg.unfold.reco})")
        ax.set_xlabel(cfg.unfold.quantity)
        ax.set_ylabel("rows / bin")
        ax.set_title(f"{cfg.sample}: truth vs reco", fontsize=14)
        ax.legend(loc="upper right", fontsize=14)
        fig.savefig(path, dpi=80)


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise OutputError(f"{out}: output exists and is not empty (use --overwrite to replace it)")


def _prepare_out(out: Path) -> tuple[Path, list[Path]]:
    """Create the temp dir next to ``out``; returns it and the parents we created."""
    created: list[Path] = []
    parent = out.parent
    probe = parent
    while not probe.exists() and probe != probe.parent:
        created.append(probe)
        probe = probe.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the dataset is not
    except OSError as exc:
        _remove_created(created)
        raise OutputError(
            f"{out}: cannot write the output directory ({exc.strerror or exc})"
        ) from None
    return tmp, created


def _remove_created(created: list[Path]) -> None:
    for d in created:  # innermost first
        with contextlib.suppress(OSError):
            d.rmdir()


def preprocess(
    config: str | os.PathLike[str] | dict[str, Any],
    out: str | os.PathLike[str],
    *,
    inputs: list[str] | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Run the pipeline described in the module docstring; returns ``out/manifest.json``.

    ``inputs`` (glob patterns, relative to the current directory) replace the config's
    ``files``; ``scheduler`` is the address of a running Dask scheduler (otherwise a local
    cluster of ``workers`` single-threaded processes runs for the call); ``overwrite`` replaces
    an existing ``out`` once the new output is complete.
    """
    cfg, base, source = load_config(config)
    if workers is not None and workers < 1:
        raise ConfigError(f"option 'workers' must be >= 1, got {workers}")
    plan = make_plan(cfg, source)
    out_path = Path(out)
    _check_out(out_path, overwrite)
    if inputs:
        pairs = [p for pat in inputs for p in _expand([pat], Path.cwd(), f"--input {pat!r}")]
        files = sorted(dict(pairs).items())
        patterns = list(inputs)
    else:
        files = _expand(cfg.files, base, "files")
        patterns = list(cfg.files)
    input_files, plan = validate_inputs(plan, files)
    if sum(f.entries for f in input_files) == 0:
        raise InputError(f"{input_files[0].display}: tree {cfg.tree!r} has no entries")

    tmp, created = _prepare_out(out_path)
    try:
        manifest = _run(plan, input_files, patterns, tmp, scheduler, workers)
        text = json.dumps(manifest, sort_keys=True, indent=2) + "\n"
        (tmp / MANIFEST_NAME).write_text(text)
        _install(tmp, out_path)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_created(created)
        if isinstance(exc, OSError):
            raise OutputError(f"{out_path}: writing the output failed ({exc})") from exc
        raise
    return out_path / MANIFEST_NAME


def _install(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.with_name(f".{out.name}.old-{tmp.name}")
        os.replace(out, old)
        os.replace(tmp, out)
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)
    else:
        os.replace(tmp, out)


def _run(
    plan: Plan,
    files: list[InputFile],
    patterns: list[str],
    tmp: Path,
    scheduler: str | None,
    workers: int | None,
) -> dict[str, Any]:
    from concurrent.futures import ThreadPoolExecutor

    cfg = plan.cfg
    t0 = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=min(2, len(files)))
    try:
        # checksums overlap the Dask work unless the event ids need them
        digest_futures = [pool.submit(_sha256, f.path) for f in files]
        keys = [0] * len(files)
        if not plan.eid_branches:
            keys = [int(d.result()[:16], 16) for d in digest_futures]
        parts = _partitions(files)
        index = {f.path: k for k, f in enumerate(files)}
        tasks = [_Task(i, f, a, b, keys[index[f.path]], plan) for i, (f, a, b) in enumerate(parts)]
        for split in SPLITS:
            (tmp / split).mkdir()

        with _dask_client(scheduler, workers, len(tasks)) as client:
            log.info(
                "preprocess: %d partitions, cluster ready after %.2f s", len(tasks), _since(t0)
            )
            futures = [client.submit(_process_partition, t, pure=False) for t in tasks]
            try:
                stats = client.gather(
                    [client.submit(_partition_stats, fu, plan, pure=False) for fu in futures]
                )
                log.info("preprocess: read + select done after %.2f s", _since(t0))
                fit = _fit(plan, stats, files)
                plot = _plot_name(plan)
                plot_future = (
                    pool.submit(
                        _plot,
                        tmp / plot,
                        plan,
                        np.asarray(plan.edges),
                        fit["hist"]["truth"],
                        fit["hist"]["reco"],
                    )
                    if plot
                    else None
                )
                first: list[list[int]] = []
                nxt = [0] * len(SPLITS)
                for s in stats:
                    first.append(list(nxt))
                    for k, rows in enumerate(s["rows"]):
                        nxt[k] += -(-rows // cfg.shard_rows)
                written = client.gather(
                    [
                        client.submit(
                            _write_partition,
                            fu,
                            plan,
                            _WriteSpec(
                                root=str(tmp),
                                first_shard=tuple(first[i]),
                                mean=tuple(fit["mean"]),
                                std=tuple(fit["std"]),
                                res_edges=fit["res_edges"],
                            ),
                            pure=False,
                        )
                        for i, fu in enumerate(futures)
                    ]
                )
                log.info("preprocess: shards written after %.2f s", _since(t0))
            finally:
                client.cancel(futures)
        log.info("preprocess: client closed after %.2f s", _since(t0))
        digests = [d.result() for d in digest_futures]
        if plot_future is not None:
            plot_future.result()
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    log.info("preprocess: checksums done after %.2f s", _since(t0))

    splits: dict[str, dict[str, Any]] = {s: {"rows": 0, "files": []} for s in SPLITS}
    for shard_list in written:
        for sh in shard_list:
            entry = splits[sh.pop("split")]
            entry["files"].append(sh)
            entry["rows"] += sh["rows"]
    for s in SPLITS:
        splits[s]["files"].sort(key=lambda d: d["path"])

    counts = np.sum([s["counts"] for s in stats], axis=0)
    rows_total = sum(splits[s]["rows"] for s in SPLITS)
    norm_cfg = cfg.model_dump(mode="json")
    norm_cfg["files"] = patterns
    manifest: dict[str, Any] = {
        "manifest_version": MANIFEST_VERSION,
        "hepscan_version": _version(),
        "sample": cfg.sample,
        "selection": cfg.selection.kind,
        "tree": cfg.tree,
        "branches": dict(sorted(plan.branches.items())),
        "features": list(cfg.features),
        "scaler": {"mean": fit["mean"], "std": fit["std"], "fitted_on": "train"},
        "columns": _column_types(plan),
        "splits": splits,
        "split": {
            "fractions": cfg.split.model_dump(),
            "method": "splitmix64(event_id) >> 11 as a uniform in [0, 1)",
            "event_id": (
                list(plan.eid_branches)
                if plan.eid_branches
                else "splitmix64(sha256(file)[:16] ^ entry)"
            ),
        },
        "counts": {
            "entries_read": int(counts[0]),
            "nan_dropped": int(counts[1]),
            "failed_selection": int(counts[2]),
            "outside_edges": int(counts[3]),
            "rows": rows_total,
        },
        "inputs": [
            {"path": f.display, "size": f.size, "sha256": d, "entries": f.entries}
            for f, d in zip(files, digests, strict=True)
        ],
        "config": norm_cfg,
        "unfold": None,
        "resolution": None,
        "generative": None,
        "plots": [],
    }
    if cfg.unfold is not None:
        edges = [float(e) for e in np.asarray(plan.edges)]
        manifest["unfold"] = {
            "quantity": cfg.unfold.quantity,
            "truth": cfg.unfold.truth,
            "reco": cfg.unfold.reco,
            "edges": edges,
            "n_bins": len(edges) - 1,
            "has_truth": cfg.unfold.truth is not None,
            "outside": cfg.unfold.outside,
            "reco_counts": [int(x) for x in fit["hist"]["reco"]],
            "truth_counts": (
                [int(x) for x in fit["hist"]["truth"]] if "truth" in fit["hist"] else None
            ),
        }
        if plot:
            manifest["plots"] = [plot]
    if cfg.resolution is not None:
        manifest["resolution"] = {
            "n_classes": cfg.resolution.n_classes,
            "inefficiency_class": cfg.resolution.n_classes,
            "quantiles": list(cfg.resolution.quantile_range),
            "matched_train_rows": fit["res_rows"],
            "quantities": {
                q: {
                    "column": f"res_{q}",
                    "truth": spec.truth,
                    "reco": spec.reco,
                    "mode": spec.mode,
                    "edges": list(fit["res_edges"][q]),
                }
                for q, spec in cfg.resolution.quantities.items()
            },
        }
    if cfg.generative is not None:
        manifest["generative"] = cfg.generative.model_dump()
    return manifest


def _fit(plan: Plan, stats: list[dict[str, Any]], files: list[InputFile]) -> dict[str, Any]:
    cfg = plan.cfg
    where = files[0].display if len(files) == 1 else f"{files[0].display} (+{len(files) - 1} more)"
    total = sum(sum(s["rows"]) for s in stats)
    read = sum(s["counts"][0] for s in stats)
    if total == 0:
        raise InputError(
            f"{where}: selection {cfg.selection.kind!r} kept no events of {read} read "
            f"(check the selection parameters, branches and unfold edges)"
        )
    n, mean, m2 = _merge_moments(stats, len(cfg.features))
    if n == 0:
        raise InputError(f"{where}: no rows fall into the train split; cannot fit the scaler")
    std = np.sqrt(m2 / n)
    std = np.where(std > 0, std, 1.0)
    res_edges: dict[str, tuple[float, ...]] = {}
    res_rows = 0
    if cfg.resolution is not None:
        lo_q, hi_q = cfg.resolution.quantile_range
        for q, spec in cfg.resolution.quantities.items():
            deltas = np.concatenate([s["deltas"][q] for s in stats])
            res_rows = int(deltas.size)
            if spec.range is not None:
                lo, hi = spec.range
            elif deltas.size < 2:
                raise InputError(
                    f"{where}: resolution.quantities.{q}: fewer than 2 reconstructed/matched "
                    f"train rows to fit the class edges; set 'range: [low, high]' for it"
                )
            else:
                lo, hi = (float(x) for x in np.quantile(deltas, [lo_q, hi_q]))
                if not hi > lo:
                    hi = lo + 1e-12
            res_edges[q] = tuple(
                float(x) for x in np.linspace(lo, hi, cfg.resolution.n_classes + 1)
            )
    hist: dict[str, np.ndarray] = {}
    for key in ("reco", "truth"):
        parts = [s["hist"][key] for s in stats if key in s["hist"]]
        if parts:
            hist[key] = np.sum(parts, axis=0)
    return {
        "mean": [float(x) for x in mean],
        "std": [float(x) for x in std],
        "res_edges": res_edges,
        "res_rows": res_rows,
        "hist": hist,
    }


# ---------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------


@click.command("preprocess")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(), help="Output dataset directory.")
@click.option(
    "--input",
    "inputs",
    multiple=True,
    help="ROOT file or glob (repeatable); replaces the config's 'files'.",
)
@click.option("--scheduler", default=None, help="Address of a running Dask scheduler.")
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Local Dask workers.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out when done.")
def preprocess_command(
    config: str,
    out: str,
    inputs: tuple[str, ...],
    scheduler: str | None,
    workers: int | None,
    overwrite: bool,
) -> None:
    """Select events from ROOT files into Parquet shards + manifest.json."""
    path = preprocess(
        config,
        out,
        inputs=list(inputs) or None,
        scheduler=scheduler,
        workers=workers,
        overwrite=overwrite,
    )
    man = json.loads(path.read_text())
    rows = " / ".join(f"{s} {man['splits'][s]['rows']}" for s in SPLITS)
    click.echo(f"preprocess: {man['counts']['rows']} rows ({rows}) -> {path}")
    for plot in man.get("plots", []):
        click.echo(f"preprocess: plot {path.parent / plot}")
