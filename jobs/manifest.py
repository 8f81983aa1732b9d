"""The dataset contract between jobs/preprocess (writer) and jobs/train, scan/ (readers).

A dataset directory holds Parquet shards per split and a ``manifest.json``:

.. code-block:: text

    DIR/manifest.json
    DIR/train/part-00000.parquet ...
    DIR/validation/part-00000.parquet ...
    DIR/test/part-00000.parquet ...

Shard columns (all optional except ``event_id``; the manifest lists which exist):

* ``event_id`` (uint64): stable per-event id; the split is a hash of it.
* ``feat_<name>`` (float32): standardised input features, in ``Manifest.features`` order.
* ``truth_bin`` / ``reco_bin`` (int32): bin index of the unfolding quantity with
  ``Manifest.unfold["edges"]``; -1 when outside the edges. ``migration`` = truth_bin - reco_bin.
* ``res_<q>`` (int32): resolution class of quantity q; ``n_classes`` (the last index) is the
  inefficiency class (object not reconstructed).
* ``truth_<q>`` / ``reco_<q>`` (float64): continuous values for generative models and studies.
* ``weight`` (float64): per-event weight (1 unless the config reweights).

``manifest.json`` carries ``manifest_version`` (:data:`MANIFEST_VERSION`). One writer,
:func:`write_manifest` (sorted keys, temp file + rename), serves ``hepscan preprocess`` and
:mod:`jobs.train_synthetic`; :func:`load_manifest` refuses a manifest without a version or with
one it does not know (newer hepscan). Datasets from before the key was unified, written by
``jobs.train_synthetic`` with ``"version": 1``, still load.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from models.errors import ConfigError, InputError
from models.manifest import MANIFEST_NAME, MANIFEST_VERSION, SPLITS, Manifest

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_VERSION",
    "SPLITS",
    "Manifest",
    "feature_matrix",
    "load_manifest",
    "load_split",
    "manifest_version",
    "sha256_file",
    "write_manifest",
]

VERSION_KEY = "manifest_version"
_LEGACY_VERSION_KEY = "version"  # jobs.train_synthetic before the key was unified


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file's bytes (inputs, shards and selection modules in the manifest)."""
    h = hashlib.sha256()
    # one reused buffer (what hashlib.file_digest does on 3.11): ~25 % less CPU than read() +
    # update(); the inputs' checksums run beside the partition tasks, on the same cores
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()


def manifest_text(data: dict[str, Any]) -> str:
    """The bytes :func:`write_manifest` writes: sorted keys, 2-space indent, final newline."""
    return json.dumps(data, sort_keys=True, indent=2) + "\n"


def write_manifest(path: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Write ``data`` as ``manifest.json`` at ``path`` (a file or a directory), atomically.

    ``manifest_version`` is set to :data:`MANIFEST_VERSION` (a different value is a bug of the
    caller: ``ValueError``). The text goes to a temp file next to the target, renamed over it.
    """
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    if data.get(VERSION_KEY, MANIFEST_VERSION) != MANIFEST_VERSION or _LEGACY_VERSION_KEY in data:
        raise ValueError(
            f"write_manifest: data carries {VERSION_KEY}={data.get(VERSION_KEY)!r} / "
            f"{_LEGACY_VERSION_KEY}; this writer writes {VERSION_KEY}={MANIFEST_VERSION}"
        )
    text = manifest_text({**data, VERSION_KEY: MANIFEST_VERSION})
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, p)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def manifest_version(raw: dict[str, Any], where: str | os.PathLike[str]) -> int:
    """The checked version of a parsed manifest; :class:`InputError` naming file and key."""
    if VERSION_KEY in raw:
        key, version = VERSION_KEY, raw[VERSION_KEY]
    elif _LEGACY_VERSION_KEY in raw:
        key, version = _LEGACY_VERSION_KEY, raw[_LEGACY_VERSION_KEY]
    else:
        raise InputError(
            f"{where}: manifest lacks key {VERSION_KEY!r} (not written by hepscan, or by a "
            f"version before manifests were versioned; re-run 'hepscan preprocess')"
        )
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InputError(f"{where}: manifest key {key!r}: not a version number: {version!r}")
    if version > MANIFEST_VERSION:
        raise InputError(
            f"{where}: manifest key {key!r} is {version}, this hepscan reads up to "
            f"{MANIFEST_VERSION} (written by a newer hepscan: upgrade)"
        )
    return version


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read ``manifest.json`` (or the directory holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    try:
        raw = json.loads(p.read_text())
    except FileNotFoundError:
        raise InputError(f"{p}: manifest not found (run 'hepscan preprocess' first)") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{p}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict):
        raise InputError(f"{p}: manifest is not a JSON object")
    version = manifest_version(raw, p)
    for key in ("sample", "features", "scaler", "splits", "columns"):
        if key not in raw:
            raise InputError(f"{p}: manifest lacks key {key!r}")
    return dataclasses.replace(Manifest.from_dict(raw, root=p.parent), version=version)


def load_split(
    manifest: Manifest, split: str, columns: list[str] | None = None
) -> dict[str, np.ndarray]:
    """All rows of one split as numpy arrays, shards concatenated in manifest order."""
    import pyarrow.parquet as pq

    wanted = list(manifest.columns) if columns is None else columns
    missing = [c for c in wanted if c not in manifest.columns]
    if missing:
        raise ConfigError(
            f"{manifest.root / MANIFEST_NAME}: columns {missing} not in dataset "
            f"(have {sorted(manifest.columns)})"
        )
    parts: dict[str, list[np.ndarray]] = {c: [] for c in wanted}
    for shard in manifest.shard_paths(split):
        try:
            table = pq.read_table(shard, columns=wanted)
        except (OSError, ValueError) as exc:
            raise InputError(f"{shard}: cannot read shard ({exc})") from None
        for c in wanted:
            parts[c].append(table.column(c).to_numpy())
    return {
        c: (np.concatenate(v) if v else np.empty(0, dtype=manifest.columns[c]))
        for c, v in parts.items()
    }


def feature_matrix(manifest: Manifest, data: dict[str, np.ndarray]) -> np.ndarray:
    """Stack the standardised feature columns into an (N, F) float32 matrix."""
    return np.stack([data[f"feat_{f}"] for f in manifest.features], axis=1).astype(np.float32)
