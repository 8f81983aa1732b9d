"""Tests of the one manifest writer/reader (jobs/manifest.py) and its version key.

Run: ``python -m pytest tests/test_preprocess_manifest.py`` (no Dask: the datasets come from
``jobs.train_synthetic``, which writes through the same :func:`write_manifest` as preprocess).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jobs.manifest import (
    MANIFEST_VERSION,
    load_manifest,
    load_split,
    manifest_text,
    write_manifest,
)
from jobs.train_synthetic import write_unfold_dataset
from models.errors import InputError


def test_synthetic_dataset_carries_manifest_version(tmp_path: Path) -> None:
    path = write_unfold_dataset(tmp_path / "synth", rows=300)
    raw = json.loads((path / "manifest.json").read_text())
    assert raw["manifest_version"] == MANIFEST_VERSION == 1 and "version" not in raw
    assert (path / "manifest.json").read_text() == manifest_text(raw)  # the one writer's bytes
    m = load_manifest(path)
    assert m.version == 1 and m.rows("train") == load_split(m, "train")["event_id"].size


def _rewrite(path: Path, **changes: object) -> Path:
    p = path / "manifest.json"
    raw = json.loads(p.read_text())
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    p.write_text(json.dumps(raw))
    return p


def test_old_manifests_load_and_unknown_versions_do_not(tmp_path: Path) -> None:
    path = write_unfold_dataset(tmp_path / "synth", rows=200)
    # shards written by preprocess with manifest_version 1: as they are
    assert load_manifest(path).version == 1
    # train_synthetic datasets from before the key was unified: "version": 1
    _rewrite(path, manifest_version=None, version=1)
    assert load_manifest(path).version == 1
    p = _rewrite(path, version=None)
    with pytest.raises(InputError, match=f"{p}: manifest lacks key 'manifest_version'"):
        load_manifest(path)
    _rewrite(path, manifest_version=2)
    with pytest.raises(InputError, match=f"{p}: manifest key 'manifest_version' is 2"):
        load_manifest(p)
    _rewrite(path, manifest_version="1")
    with pytest.raises(InputError, match="'manifest_version': not a version number"):
        load_manifest(p)
    _rewrite(path, manifest_version=None, version=7)
    with pytest.raises(InputError, match=f"{p}: manifest key 'version' is 7"):
        load_manifest(p)


def test_write_manifest_is_atomic_and_checks_the_version(tmp_path: Path) -> None:
    p = write_manifest(tmp_path, {"b": 1, "a": [1.5]})
    assert p == tmp_path / "manifest.json"
    assert p.read_text() == '{\n  "a": [\n    1.5\n  ],\n  "b": 1,\n  "manifest_version": 1\n}\n'
    assert [q.name for q in tmp_path.iterdir()] == ["manifest.json"]  # no temp file left
    before = p.read_text()
    with pytest.raises(ValueError, match="manifest_version"):
        write_manifest(p, {"manifest_version": 2})
    with pytest.raises(TypeError):
        write_manifest(p, {"x": object()})  # not JSON: the old file stays whole
    assert p.read_text() == before
    assert [q.name for q in tmp_path.iterdir()] == ["manifest.json"]
