"""Tests of import-string selections (``selection: {kind: "module:function", ...}``).

Run: ``python -m pytest tests/test_preprocess_user.py``. The worked example
(``examples/user_selection``) runs through ``hepscan preprocess`` in a subprocess with
``PYTHONPATH`` naming its directory, on the default local Dask cluster; the other tests use
selection modules written into a temp dir that is on ``sys.path`` before the module's Dask
cluster starts (its worker processes are spawned with the driver's ``sys.path``).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import runpy
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot
import yaml

from jobs.manifest import load_manifest, load_split
from jobs.preprocess import preprocess
from models.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "user_selection"
N = 400

CASES = """
import awkward as ak
import numpy as np


def above(events, *, cut=0.5):
    x = ak.to_numpy(events.x)
    keep = np.flatnonzero(x > cut)
    return {"entry": keep, "reco_x": x[keep], "truth_x": ak.to_numpy(events.t)[keep]}


def per_object(events):
    counts = ak.to_numpy(ak.num(events.v))
    entry = np.repeat(np.arange(len(events)), counts)
    flat = ak.to_numpy(ak.flatten(events.v))
    keep = flat > 0
    t = ak.to_numpy(events.t)
    return ak.zip({"entry": entry[keep], "reco_x": flat[keep], "truth_x": t[entry[keep]]})


def nan_out(events):
    out = above(events, cut=-1.0)
    out["reco_x"] = out["reco_x"].copy()
    out["reco_x"][3] = np.nan
    return out


def raises(events):
    raise ValueError("no muons in this chunk")


def wrong_type(events):
    return [1, 2, 3]


def missing(events):
    out = above(events)
    del out["reco_x"]
    return out


def short(events):
    out = above(events, cut=-1.0)
    out["reco_x"] = out["reco_x"][:-1]
    return out


def backwards(events):
    out = above(events, cut=-1.0)
    return {k: v[::-1] for k, v in out.items()}


def jagged(events):
    out = above(events, cut=-1.0)
    out["reco_x"] = events.v
    return out
"""


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("selmods")
    (d / "hs_user_cases.py").write_text(CASES)
    sys.path.insert(0, str(d))
    try:
        yield d
    finally:
        sys.path.remove(str(d))
        sys.modules.pop("hs_user_cases", None)


@pytest.fixture(scope="module")
def scheduler(cases: Path) -> Iterator[str]:
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=1,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


def _flat_file(path: Path, nan_t: tuple[int, ...] = ()) -> dict[str, Any]:
    rng = np.random.default_rng(21)
    x, t = rng.uniform(0, 1, N), rng.normal(0, 1, N)
    t[list(nan_t)] = np.nan
    counts = rng.integers(0, 4, N)
    v = ak.unflatten(rng.normal(0, 1, int(counts.sum())), counts)
    data = {"event_id": np.arange(N, dtype=np.uint64) + 1000, "x": x, "t": t, "v": v}
    with uproot.recreate(path) as out:
        out.mktree(
            "events", {"event_id": np.uint64, "x": np.float64, "t": np.float64, "v": v.type.content}
        )
        out["events"].extend(data)
    return data


def _cfg(f: Path, kind: str, **changes: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "sample": "user",
        "files": [str(f)],
        "tree": "events",
        "event_id": "event_id",
        "selection": {"kind": f"hs_user_cases:{kind}", "branches": ["x", "t", "v"]},
        "features": ["reco_x"],
        "generative": {"condition": ["truth_x"], "target": ["reco_x"]},
        "nan_policy": "drop",
        "step_size": 1000,  # several partitions: chunks, not files, are what the function sees
    }
    cfg.update(changes)
    return cfg


def _all(path: Path) -> dict[str, np.ndarray]:
    m = load_manifest(path)
    parts = [load_split(m, s) for s in ("train", "validation", "test")]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# --- the worked example through `hepscan preprocess` --------------------------------------------


def _example_expectation(path: Path) -> tuple[int, np.ndarray]:
    """Rows and reco masses of examples/user_selection by a per-event loop."""
    t = ak.to_list(uproot.open(path)["Events"].arrays())
    masses = {"Electron": 0.00051099895, "Muon": 0.1056583755}
    kept: list[float] = []
    for ev in t:
        best: tuple[float, float, int, int] | None = None
        for coll in ("Electron", "Muon"):
            good = [
                k for k in range(len(ev[f"{coll}_pt"])) if ev[f"{coll}_pfRelIso03_all"][k] < 0.15
            ]
            for a, b in itertools.combinations(good, 2):
                if ev[f"{coll}_charge"][a] * ev[f"{coll}_charge"][b] >= 0:
                    continue
                p = np.zeros(4)
                for k in (a, b):
                    pt, eta, phi = ev[f"{coll}_pt"][k], ev[f"{coll}_eta"][k], ev[f"{coll}_phi"][k]
                    v = np.array([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), 0.0])
                    v[3] = np.sqrt(v[0] ** 2 + v[1] ** 2 + v[2] ** 2 + masses[coll] ** 2)
                    p += v
                m = float(np.sqrt(max(p[3] ** 2 - p[0] ** 2 - p[1] ** 2 - p[2] ** 2, 0.0)))
                if best is None or abs(m - 91.1876) < abs(best[0] - 91.1876):
                    gidx = ev[f"{coll}_genPartIdx"]
                    best = (m, 0.0, gidx[a], gidx[b])
        if best is None or not abs(best[0] - 91.1876) < 0.25 * 91.1876:
            continue
        n_gen = len(ev["GenPart_pt"])
        if 0 <= best[2] < n_gen and 0 <= best[3] < n_gen:
            kept.append(best[0])
    return len(kept), np.sort(np.array(kept))


def test_example_through_hepscan_preprocess(tmp_path: Path) -> None:
    sample = runpy.run_path(str(EXAMPLE / "make_sample.py"))["write_sample"]
    f = sample(tmp_path / "nano_ll.root", events=600, seed=3)
    n_rows, masses = _example_expectation(f)
    assert 300 < n_rows < 600
    hepscan = Path(sys.executable).parent / "hepscan"
    cmd = [str(hepscan)] if hepscan.exists() else [sys.executable, "-m", "scan.cli"]
    out = tmp_path / "ll-shards"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(EXAMPLE)])}
    proc = subprocess.run(
        [*cmd, "preprocess", str(EXAMPLE / "config.yaml"), "--input", str(f), "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    raw = json.loads((out / "manifest.json").read_text())
    assert raw["selection"] == "dilepton_selection:select_dileptons"
    source = (EXAMPLE / "dilepton_selection.py").read_bytes()
    assert raw["selection_source"] == {
        "import": "dilepton_selection:select_dileptons",
        "file": "dilepton_selection.py",
        "sha256": hashlib.sha256(source).hexdigest(),
    }
    assert raw["manifest_version"] == 1
    assert raw["counts"]["rows"] == n_rows and raw["counts"]["entries_read"] == 600
    assert sum(raw["splits"][s]["rows"] for s in ("train", "validation", "test")) == n_rows
    d = _all(out / "manifest.json")
    np.testing.assert_allclose(np.sort(d["reco_mass"]), masses, rtol=1e-6)
    assert np.unique(d["feat_reco_flavour"]).size == 2  # electrons and muons
    assert (out / "truth_vs_reco_mass.png").stat().st_size > 1000


# --- rows, entries and NaN ---------------------------------------------------------------------


def test_rows_follow_the_entry_column(cases: Path, scheduler: str, tmp_path: Path) -> None:
    f = tmp_path / "flat.root"
    data = _flat_file(f, nan_t=(5, 17, 300))
    path = preprocess(_cfg(f, "above"), tmp_path / "above", scheduler=scheduler)
    m = load_manifest(path)
    assert len(m.raw["inputs"]) == 1 and m.raw["config"]["step_size"] == 1000
    keep = (data["x"] > 0.5) & np.isfinite(data["t"])
    c = m.raw["counts"]
    assert c == {
        "entries_read": N,
        "nan_dropped": 3,
        "failed_selection": N - 3 - int(keep.sum()),
        "outside_edges": 0,
        "rows": int(keep.sum()),
    }
    d = _all(path)
    order = np.argsort(d["event_id"])
    np.testing.assert_array_equal(d["event_id"][order], data["event_id"][keep])
    np.testing.assert_array_equal(d["reco_x"][order], data["x"][keep])
    np.testing.assert_array_equal(d["truth_x"][order], data["t"][keep])
    assert m.raw["selection_source"]["file"] == "hs_user_cases.py"

    # several rows per entry, returned as an awkward record array
    path = preprocess(_cfg(f, "per_object"), tmp_path / "objects", scheduler=scheduler)
    v = data["v"]
    ok_entry = np.isfinite(data["t"])
    per_entry = ak.to_numpy(ak.sum(v > 0, axis=1))
    m = load_manifest(path)
    assert m.raw["counts"]["rows"] == int(per_entry[ok_entry].sum())
    assert m.raw["counts"]["failed_selection"] == int(((per_entry == 0) & ok_entry).sum())
    d = _all(path)
    np.testing.assert_allclose(
        np.sort(d["reco_x"]), np.sort(ak.to_numpy(ak.flatten(v[v > 0][ok_entry])))
    )
    # rows of one event share its id, hence its split
    ids, n_ids = np.unique(d["event_id"], return_counts=True)
    assert n_ids.max() > 1 and ids.size == int(((per_entry > 0) & ok_entry).sum())

    # NaN in a returned column drops its entry under nan_policy: drop; nan_out poisons row 3
    # of every chunk (all entries are rows), i.e. entry start + 3 of every partition
    from jobs.preprocess import expand, make_plan, partitions, validate_inputs
    from jobs.preprocess.config import parse_config

    cfg = _cfg(f, "nan_out")
    files, _ = validate_inputs(
        make_plan(parse_config(cfg, "cfg"), "cfg"), expand([str(f)], Path.cwd(), "--input")
    )
    starts = [a for _, a, b in partitions(files) if b - a > 3]
    assert len(starts) > 3
    bad = {a + 3 for a in starts} | {5, 17, 300}
    path = preprocess(cfg, tmp_path / "nan_out", scheduler=scheduler)
    c = load_manifest(path).raw["counts"]
    assert c["nan_dropped"] == len(bad) and c["rows"] == N - len(bad)
    ids = _all(path)["event_id"] - 1000
    assert not np.isin(ids, sorted(bad)).any()


# --- bad selections: one message, exit 2, no output ---------------------------------------------


def _fails(args: list[str], out: Path, capsys: pytest.CaptureFixture[str], *needles: str) -> None:
    from scan.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("hepscan: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]


@pytest.mark.parametrize(
    ("kind", "needles"),
    [
        ("raises", ["raised ValueError at hs_user_cases.py:", "no muons in this chunk"]),
        ("wrong_type", ["returned a list", "'entry' column"]),
        ("missing", ["returned no column 'reco_x'", "returned: entry, truth_x"]),
        ("short", ["column 'reco_x' has", "but column 'entry' has"]),
        ("backwards", ["column 'entry' must be non-decreasing"]),
        ("jagged", ["column 'reco_x' must be one number per row"]),
    ],
)
def test_bad_function_output(
    kind: str,
    needles: list[str],
    cases: Path,
    scheduler: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    f = tmp_path / "flat.root"
    _flat_file(f)
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(_cfg(f, kind)))
    out = tmp_path / "out"
    args = ["preprocess", str(cfg), "--out", str(out), "--scheduler", scheduler]
    _fails(args, out, capsys, f"selection 'hs_user_cases:{kind}'", str(f), *needles)


def test_bad_selection_config(
    cases: Path, scheduler: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = tmp_path / "flat.root"
    _flat_file(f)
    out = tmp_path / "out"

    def run(name: str, data: dict[str, Any], *needles: str) -> None:
        cfg = tmp_path / f"{name}.yaml"
        cfg.write_text(yaml.safe_dump(data))
        _fails(
            ["preprocess", str(cfg), "--out", str(out), "--scheduler", scheduler],
            out,
            capsys,
            str(cfg),
            *needles,
        )

    data = _cfg(f, "above")
    data["selection"]["kind"] = "hs_no_such_module:select"
    run(
        "nomod",
        data,
        "selection 'hs_no_such_module:select' does not import",
        "ModuleNotFoundError",
        "PYTHONPATH",
    )
    run(
        "nofunc",
        _cfg(f, "nope"),
        "selection 'hs_user_cases:nope' does not import",
        "AttributeError",
    )
    data = _cfg(f, "above")
    data["selection"]["kind"] = "hs_user_cases.above"  # no colon: not an import string
    run("nocolon", data, "selection", "kind must be one of", "import string")
    run("reserved", _cfg(f, "above", features=["weight"]), "features[0]", "'weight' is reserved")
    data = _cfg(f, "above")
    data["selection"]["branches"] = ["x", "nope"]
    cfg = tmp_path / "nobranch.yaml"
    cfg.write_text(yaml.safe_dump(data))
    _fails(["preprocess", str(cfg), "--out", str(out)], out, capsys, str(f), "no branch 'nope'")
    # NaN in a returned column under nan_policy: error names the column
    cfg = tmp_path / "nan.yaml"
    cfg.write_text(yaml.safe_dump(_cfg(f, "nan_out", nan_policy="error")))
    _fails(
        ["preprocess", str(cfg), "--out", str(out), "--scheduler", scheduler],
        out,
        capsys,
        str(f),
        "selection 'hs_user_cases:nan_out' returned NaN/inf in column 'reco_x'",
    )


# --- where the module must be importable ------------------------------------------------------


def test_workers_need_the_module(
    scheduler: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A runtime sys.path entry reaches a fresh local cluster but not running workers."""
    f = tmp_path / "flat.root"
    data = _flat_file(f)
    late = tmp_path / "late"
    late.mkdir()
    (late / "hs_user_late.py").write_text(CASES)
    monkeypatch.syspath_prepend(str(late))
    cfg = _cfg(f, "above")
    cfg["selection"]["kind"] = "hs_user_late:above"
    # the module fixture's workers were spawned before this directory was on sys.path
    with pytest.raises(InputError, match="does not import on Dask worker.*PYTHONPATH"):
        preprocess(cfg, tmp_path / "a", scheduler=scheduler)
    assert not (tmp_path / "a").exists()
    # the pipeline's own LocalCluster spawns its workers with the driver's sys.path
    path = preprocess(cfg, tmp_path / "b", workers=1)
    assert load_manifest(path).raw["counts"]["rows"] == int((data["x"] > 0.5).sum())
    sys.modules.pop("hs_user_late", None)
