"""The events a model is applied to, as raw columns: shards, Parquet files or ROOT files.

``--input`` of ``hepscan apply`` is one of

* a dataset directory (``manifest.json`` + shards, from ``hepscan preprocess``): its
  standardised ``feat_*`` columns are turned back into raw feature columns with *that*
  dataset's scaler (the model standardises them again with its own); ``--split`` picks
  ``train``/``validation``/``test`` (default ``test``) or ``all``;
* Parquet files of raw columns (the model's :meth:`~models.bundle.ModelBundle.input_columns`,
  plus truth columns when known);
* ROOT files: they go through the model's preprocessing config (the one stored in its
  manifest, or ``--config``) into a temporary dataset — same selection and features — which
  is then read as above (default ``--split all``).

Without ``--input``, the model's own dataset (the path it was trained from). Each input file's
sha256 is recorded (:attr:`Inputs.checksums`).
"""

from __future__ import annotations

import glob
import hashlib
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.bundle import ModelBundle
from models.errors import ConfigError, InputError

__all__ = ["SPLIT_ALL", "Inputs", "load_inputs", "sha256_of"]

SPLIT_ALL = "all"
SPLITS = ("train", "validation", "test")


@dataclass
class Inputs:
    """Raw columns of the events to apply a model to, and where they came from."""

    columns: dict[str, np.ndarray]
    source: str
    kind: str  # "dataset" | "parquet" | "root"
    split: str | None = None
    checksums: dict[str, str] = field(default_factory=dict)

    @property
    def rows(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def has(self, name: str) -> bool:
        return name in self.columns


def sha256_of(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _expand(patterns: Sequence[str]) -> list[Path]:
    out: list[Path] = []
    for pat in patterns:
        hits = sorted(glob.glob(os.path.expanduser(pat)))
        if not hits:
            raise InputError(f"--input {pat!r}: no such file or directory")
        out += [Path(h) for h in hits]
    return list(dict.fromkeys(out))


def _from_dataset(bundle: ModelBundle, root: Path, split: str | None) -> Inputs:
    from jobs.manifest import load_manifest, load_split

    manifest = load_manifest(root)
    split = split or "test"
    splits = list(SPLITS) if split == SPLIT_ALL else [split]
    for s in splits:
        if s not in manifest.splits:
            raise ConfigError(
                f"--split {split!r}: {manifest.root / 'manifest.json'} has no split {s!r} "
                f"(have {sorted(manifest.splits)}, or 'all')"
            )
    parts = [load_split(manifest, s) for s in splits if manifest.splits[s].get("files")]
    cols = {c: np.concatenate([p[c] for p in parts]) for c in manifest.columns} if parts else {}
    if not cols or len(next(iter(cols.values()))) == 0:
        raise InputError(f"{manifest.root}: split {split!r} has no rows")
    mean = manifest.scaler.get("mean", [])
    std = manifest.scaler.get("std", [])
    for i, f in enumerate(manifest.features):
        std_i = float(std[i]) if float(std[i]) > 0 else 1.0
        raw = cols.pop(f"feat_{f}").astype(np.float64) * std_i + float(mean[i])
        cols.setdefault(f, raw)  # a raw column of that name (e.g. reco_mass) is exact
    if bundle.kind == "unfold":
        theirs = (manifest.unfold or {}).get("edges")
        if theirs is None or not np.array_equal(np.asarray(theirs, float), bundle.edges):
            # bins of another binning: recomputed from the raw truth/reco columns instead
            for c in ("truth_bin", "reco_bin", "migration"):
                cols.pop(c, None)
    checksums = {}
    for s in splits:
        for f in manifest.splits[s].get("files", []):
            p = manifest.root / f["path"]
            checksums[str(p)] = str(f.get("sha256") or sha256_of(p))
    return Inputs(cols, str(manifest.root), "dataset", split, checksums)


def _from_parquet(files: list[Path]) -> Inputs:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        tables = [pq.read_table(f) for f in files]
        table = pa.concat_tables(tables, promote_options="default")
    except (OSError, ValueError, pa.ArrowInvalid) as exc:
        raise InputError(f"{files[0]}: cannot read Parquet input ({exc})") from None
    cols = {name: table.column(name).to_numpy() for name in table.column_names}
    if table.num_rows == 0:
        raise InputError(f"{files[0]}: no rows")
    source = str(files[0]) if len(files) == 1 else f"{files[0]} (+{len(files) - 1} files)"
    return Inputs(cols, source, "parquet", None, {str(f): sha256_of(f) for f in files})


def _from_root(
    bundle: ModelBundle,
    files: list[Path],
    split: str | None,
    config: str | os.PathLike[str] | None,
    workers: int | None,
) -> Inputs:
    from jobs.preprocess import preprocess

    cfg: Any = config
    if cfg is None:
        cfg = bundle.manifest.get("config")
        if not isinstance(cfg, dict):
            raise ConfigError(
                "ROOT inputs need a preprocessing config: the model's manifest has none, "
                "pass --config PREPROCESS_CFG"
            )
        cfg = dict(cfg)
    with tempfile.TemporaryDirectory(prefix="hepscan-apply-") as tmp:
        out = Path(tmp) / "data"
        preprocess(cfg, out, inputs=[str(f) for f in files], workers=workers or 1)
        inputs = _from_dataset(bundle, out, split or SPLIT_ALL)
    inputs.kind = "root"
    inputs.source = str(files[0]) if len(files) == 1 else f"{files[0]} (+{len(files) - 1} files)"
    inputs.checksums = {str(f): sha256_of(f) for f in files}
    return inputs


def load_inputs(
    bundle: ModelBundle,
    inputs: Sequence[str] | None = None,
    *,
    split: str | None = None,
    config: str | os.PathLike[str] | None = None,
    workers: int | None = None,
) -> Inputs:
    """Read the events to apply ``bundle`` to (see the module docstring)."""
    if split is not None and split not in (*SPLITS, SPLIT_ALL):
        raise ConfigError(f"--split {split!r}: choose from {[*SPLITS, SPLIT_ALL]}")
    if not inputs:
        ds = bundle.info.get("dataset") or bundle.train_config.get("dataset")
        if not ds or not Path(str(ds)).exists():
            raise InputError(
                f"the model's dataset {ds!r} is not on this machine: pass --input "
                "(a dataset directory, Parquet or ROOT files)"
            )
        return _from_dataset(bundle, Path(str(ds)), split)
    paths = _expand(inputs)
    dirs = [p for p in paths if p.is_dir()]
    if dirs:
        if len(paths) > 1:
            raise ConfigError("--input: give one dataset directory, or files (not both)")
        if not (dirs[0] / "manifest.json").exists():
            raise InputError(f"{dirs[0]}: not a dataset directory (no manifest.json)")
        return _from_dataset(bundle, dirs[0], split)
    suffixes = {p.suffix.lower() for p in paths}
    if suffixes <= {".parquet", ".pq"}:
        if split is not None:
            raise ConfigError("--split applies to dataset directories and ROOT inputs")
        return _from_parquet(paths)
    if suffixes == {".root"}:
        return _from_root(bundle, paths, split, config, workers)
    raise InputError(
        f"--input: {[str(p) for p in paths]}: expected one dataset directory, Parquet files "
        "(.parquet) or ROOT files (.root), not a mix"
    )
