"""Tests of jobs/preprocess: simulated samples and the real scikit-hep-testdata files end to end.

Run: ``.venv/bin/python -m pytest tests/test_preprocess.py``. One Dask LocalCluster serves the
module (through ``--scheduler`` / ``scheduler=``); one test runs the default local cluster.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import awkward as ak
import numpy as np
import pytest
import uproot
import yaml

from jobs.manifest import load_manifest, load_split
from jobs.preprocess import bin_index, preprocess, resolution_delta, split_of, splitmix64
from jobs.preprocess.config import load_config
from jobs.simulate import simulate

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


@pytest.fixture(scope="module")
def scheduler() -> Iterator[str]:
    from distributed import LocalCluster

    cluster = LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        silence_logs=logging.ERROR,
    )
    try:
        yield cluster.scheduler_address
    finally:
        cluster.close()


@pytest.fixture(scope="module")
def sim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("sim")
    simulate("zll", 9000, 3, 11, base / "zll", workers=1, progress=False)
    simulate("jets", 4000, 2, 12, base / "jets", workers=1, progress=False)
    simulate("dijet", 3000, 1, 13, base / "dijet", workers=1, progress=False)
    return base


def _cfg(name: str, **changes: Any) -> dict[str, Any]:
    data = yaml.safe_load((CONFIGS / f"preprocess_{name}.yaml").read_text())
    for key, value in changes.items():
        data[key] = value
    return data


def _write_cfg(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path


def _tree(out: Any, data: dict[str, Any]) -> None:
    """A TTree (assigning a dict would write an RNTuple with this uproot)."""
    types = {
        k: ("var * float64" if isinstance(v, ak.Array) and v.ndim == 2 else np.asarray(v).dtype)
        for k, v in data.items()
    }
    out.mktree("events", types)
    out["events"].extend(data)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _all(manifest: Any) -> dict[str, np.ndarray]:
    parts = [load_split(manifest, s) for s in ("train", "validation", "test")]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


# ---------------------------------------------------------------------------------------------


def test_shipped_configs_validate() -> None:
    for name in ("zll", "jets", "dijet", "hzz", "zmumu"):
        cfg, base, _ = load_config(CONFIGS / f"preprocess_{name}.yaml")
        assert base == CONFIGS
        assert cfg.split.train == 0.8
    assert load_config(CONFIGS / "preprocess_dijet.yaml")[0].unfold.edge_values()[1] == 1525.0  # type: ignore[union-attr]


def test_split_hash_is_deterministic_and_balanced() -> None:
    ids = np.arange(200_000, dtype=np.uint64)
    codes = split_of(ids, 0.8, 0.1)
    frac = np.bincount(codes, minlength=3) / ids.size
    np.testing.assert_allclose(frac, [0.8, 0.1, 0.1], atol=0.005)
    # a fixed value pins the hash across numpy versions/platforms
    assert int(splitmix64(np.array([0], dtype=np.uint64))[0]) == 0xE220A8397B1DCDAF


def test_zll_pipeline(sim: Path, scheduler: str, tmp_path: Path) -> None:
    files = sorted(str(p) for p in (sim / "zll").glob("*.root"))[:2]
    path = preprocess(
        CONFIGS / "preprocess_zll.yaml", tmp_path / "out", inputs=files, scheduler=scheduler
    )
    m = load_manifest(path)
    raw = json.loads(path.read_text())

    # shards: row counts and checksums as the manifest says
    for split in ("train", "validation", "test"):
        total = 0
        for shard in raw["splits"][split]["files"]:
            p = m.root / shard["path"]
            assert _sha(p) == shard["sha256"]
            import pyarrow.parquet as pq

            assert pq.read_metadata(p).num_rows == shard["rows"]
            total += shard["rows"]
        assert total == m.rows(split) > 0
    counts = raw["counts"]
    assert counts["entries_read"] == 6000
    assert (
        counts["rows"]
        + counts["failed_selection"]
        + counts["outside_edges"]
        + counts["nan_dropped"]
        == counts["entries_read"]
    )
    assert [i["path"] for i in raw["inputs"]] == files
    assert raw["inputs"][0]["sha256"] == _sha(Path(files[0]))
    assert (m.root / "truth_vs_reco_mass.png").stat().st_size > 1000

    d = _all(m)
    assert d["event_id"].dtype == np.uint64 and d["feat_reco_mass"].dtype == np.float32
    # selection: the pair is within +-25 % of mZ; unfold bins and migration agree with the values
    assert np.all(np.abs(d["reco_mass"] - 91.1876) < 0.25 * 91.1876)
    edges = m.unfold_edges
    assert edges.size == 41 and edges[0] == 65.0 and edges[-1] == 115.0
    np.testing.assert_array_equal(d["truth_bin"], bin_index(d["truth_mass"], edges))
    np.testing.assert_array_equal(d["reco_bin"], bin_index(d["reco_mass"], edges))
    np.testing.assert_array_equal(d["migration"], d["truth_bin"] - d["reco_bin"])
    assert d["truth_bin"].min() >= 0 and d["reco_bin"].min() >= 0
    assert np.mean(np.abs(d["migration"]) <= 1) > 0.7  # resolution ~ 1-2 GeV vs 1.25 GeV bins
    assert raw["unfold"]["truth_counts"] == np.bincount(d["truth_bin"], minlength=40).tolist()
    # truth lepton 1 is the one matched to reco lepton 1
    assert np.median(np.abs(d["reco_l1_pt"] / d["truth_l1_pt"] - 1)) < 0.05

    # scaler fitted on the train split only
    train = load_split(m, "train")
    mean, std = np.asarray(m.scaler["mean"]), np.asarray(m.scaler["std"])
    np.testing.assert_allclose(mean[0], train["reco_mass"].mean(), rtol=1e-12)
    np.testing.assert_allclose(std[0], train["reco_mass"].std(), rtol=1e-10)
    np.testing.assert_allclose(train["feat_reco_mass"].mean(), 0.0, atol=1e-5)
    np.testing.assert_allclose(train["feat_reco_mass"].std(), 1.0, atol=1e-5)
    val = load_split(m, "validation")
    np.testing.assert_allclose(
        val["feat_reco_mass"], (val["reco_mass"] - mean[0]) / std[0], rtol=1e-6, atol=1e-6
    )
    assert val["feat_reco_mass"].mean() != pytest.approx(0.0, abs=1e-6)
    # the split is the hash of the event id
    for split, code in (("train", 0), ("validation", 1), ("test", 2)):
        ids = load_split(m, split, ["event_id"])["event_id"]
        assert np.all(split_of(ids, 0.8, 0.1) == code)


def test_rerun_is_byte_identical_and_splits_are_stable(
    sim: Path, scheduler: str, tmp_path: Path
) -> None:
    files = sorted(str(p) for p in (sim / "zll").glob("*.root"))
    a = preprocess(
        CONFIGS / "preprocess_zll.yaml", tmp_path / "a", inputs=files[:2], scheduler=scheduler
    )
    # default path: a fresh LocalCluster with one worker schedules differently, same bytes
    b = preprocess(CONFIGS / "preprocess_zll.yaml", tmp_path / "b", inputs=files[:2], workers=1)
    assert a.read_bytes() == b.read_bytes()
    for shard in json.loads(a.read_text())["splits"]["train"]["files"]:
        assert (a.parent / shard["path"]).read_bytes() == (b.parent / shard["path"]).read_bytes()
    assert not list(tmp_path.glob(".*tmp"))

    # a file added: every event of the original files keeps its split
    c = preprocess(
        CONFIGS / "preprocess_zll.yaml", tmp_path / "c", inputs=files, scheduler=scheduler
    )
    ma, mc = load_manifest(a), load_manifest(c)
    assert mc.raw["counts"]["entries_read"] == 9000
    for split in ("train", "validation", "test"):
        ids_a = load_split(ma, split, ["event_id"])["event_id"]
        ids_c = load_split(mc, split, ["event_id"])["event_id"]
        assert np.isin(ids_a, ids_c).all()
        assert ids_c.size > ids_a.size


def test_jets_resolution_classes(sim: Path, scheduler: str, tmp_path: Path) -> None:
    path = preprocess(
        CONFIGS / "preprocess_jets.yaml",
        tmp_path / "jets",
        inputs=[str(sim / "jets" / "*.root")],
        scheduler=scheduler,
    )
    m = load_manifest(path)
    res = m.resolution
    assert res is not None and res["n_classes"] == 100 and res["inefficiency_class"] == 100
    d = _all(m)
    assert d["res_pt"].size == 4000  # one row per jet, unreconstructed ones included
    ok = d["reco_ok"]
    assert 0 < (~ok).sum() < 1000
    for q in ("pt", "eta", "phi", "m"):
        cls = d[f"res_{q}"]
        assert np.all(cls[~ok] == 100) and np.all((cls[ok] >= 0) & (cls[ok] < 100))
    # class edges span the 1-99 % quantiles of the train split's matched deltas
    train = load_split(m, "train")
    t_ok = train["reco_ok"]
    for q, mode in (("pt", "relative"), ("phi", "angle")):
        delta = resolution_delta(mode, train[f"truth_{q}"][t_ok], train[f"reco_{q}"][t_ok])
        lo, hi = np.quantile(delta, [0.01, 0.99])
        edges = res["quantities"][q]["edges"]
        assert len(edges) == 101
        assert edges[0] == pytest.approx(lo, rel=1e-12) and edges[-1] == pytest.approx(
            hi, rel=1e-12
        )
        cls = train[f"res_{q}"][t_ok]
        # 1 % of the deltas lie below the lowest edge and are folded into class 0
        assert 0.01 <= np.mean(cls == 0) < 0.04
    # the pT class grows with the relative pT shift
    delta = resolution_delta("relative", d["truth_pt"][ok], d["reco_pt"][ok])
    assert np.corrcoef(delta, d["res_pt"][ok])[0, 1] > 0.9


def test_dijet_unfold_bins(sim: Path, scheduler: str, tmp_path: Path) -> None:
    path = preprocess(
        CONFIGS / "preprocess_dijet.yaml",
        tmp_path / "dijet",
        inputs=[str(sim / "dijet" / "*.root")],
        scheduler=scheduler,
    )
    m = load_manifest(path)
    assert m.unfold is not None and m.unfold["n_bins"] == 60
    d = _all(m)
    assert d["truth_bin"].max() <= 59 and d["reco_bin"].min() >= 0
    # steeply falling: the first bin holds far more than the last
    counts = np.bincount(d["truth_bin"], minlength=60)
    assert counts[0] > 10 * max(counts[-1], 1)
    assert m.raw["counts"]["outside_edges"] > 0  # reco smeared out of [1.5, 3] TeV is dropped


def test_hzz_real_file(scheduler: str, tmp_path: Path) -> None:
    import skhep_testdata

    path = preprocess(CONFIGS / "preprocess_hzz.yaml", tmp_path / "hzz", scheduler=scheduler)
    m = load_manifest(path)
    raw = m.raw
    assert raw["inputs"][0]["path"] == "skhep_testdata:uproot-HZZ.root"
    tree = uproot.open(skhep_testdata.data_path("uproot-HZZ.root"))["events"]
    n_muons = int(tree["NMuon"].array(library="np").sum())
    d = _all(m)
    assert d["event_id"].size == n_muons == raw["counts"]["rows"]
    px = ak.flatten(tree["Muon_Px"].array())
    py = ak.flatten(tree["Muon_Py"].array())
    np.testing.assert_allclose(np.sort(d["reco_pt"]), np.sort(np.hypot(px, py)), rtol=1e-6)
    # the file's MC truth lepton branches are all zero: no muon matches, all in class n_classes
    assert raw["resolution"]["matched_train_rows"] == 0
    assert np.all(d["res_pt"] == 100) and not d["reco_ok"].any()
    # muons of one event share an id, so they share a split
    ids = np.concatenate(
        [load_split(m, s, ["event_id"])["event_id"] for s in ("train", "validation", "test")]
    )
    codes = np.concatenate(
        [np.full(m.rows(s), k) for k, s in enumerate(("train", "validation", "test"))]
    )
    for uid in np.unique(ids)[:200]:
        assert np.unique(codes[ids == uid]).size == 1
    assert (
        np.unique(d["event_id"]).size
        == raw["counts"]["entries_read"] - raw["counts"]["failed_selection"]
    )
    assert np.sum(d["weight"] != 1.0) > 0  # EventWeight carried through


def test_hzz_matching_with_filled_truth(scheduler: str, tmp_path: Path) -> None:
    """Same branch names as uproot-HZZ.root, with a truth lepton that the first muon matches."""
    rng = np.random.default_rng(5)
    n = 400
    tpt = rng.uniform(20, 80, n)
    teta = rng.uniform(-2, 2, n)
    tphi = rng.uniform(-np.pi, np.pi, n)
    rpt = tpt * (1 + 0.02 * rng.standard_normal(n))
    reta, rphi = teta + 0.001 * rng.standard_normal(n), tphi + 0.001 * rng.standard_normal(n)
    # second muon per event far away from the truth lepton (a non-matching muon)
    opt, oeta, ophi = rng.uniform(10, 30, n), -teta, tphi + np.pi
    mu_pt = ak.Array(np.stack([rpt, opt], axis=1).tolist())
    mu_eta = ak.Array(np.stack([reta, oeta], axis=1).tolist())
    mu_phi = ak.Array(np.stack([rphi, ophi], axis=1).tolist())
    f = tmp_path / "hzz_like.root"
    with uproot.recreate(f) as out:
        _tree(
            out,
            {
                "Muon_Px": mu_pt * np.cos(mu_phi),
                "Muon_Py": mu_pt * np.sin(mu_phi),
                "Muon_Pz": mu_pt * np.sinh(mu_eta),
                "Muon_E": mu_pt * np.cosh(mu_eta),
                "Muon_Charge": ak.values_astype(ak.ones_like(mu_pt), np.int32),
                "Muon_Iso": ak.zeros_like(mu_pt),
                "MClepton_px": tpt * np.cos(tphi),
                "MClepton_py": tpt * np.sin(tphi),
                "MClepton_pz": tpt * np.sinh(teta),
                "MCleptonPDGid": np.full(n, 13, dtype=np.int32),
                "EventWeight": np.ones(n),
            },
        )
    cfg = _cfg("hzz")
    for spec in cfg["resolution"]["quantities"].values():
        spec.pop("range")  # fit edges from the train split now that muons match
    path = preprocess(cfg, tmp_path / "out", inputs=[str(f)], scheduler=scheduler)
    m = load_manifest(path)
    d = _all(m)
    assert d["reco_ok"].sum() == n and (~d["reco_ok"]).sum() == n
    matched = d["reco_ok"]
    np.testing.assert_allclose(np.sort(d["truth_pt"][matched]), np.sort(tpt), rtol=1e-5)
    assert np.all(d["res_pt"][~matched] == 100)
    edges = m.resolution["quantities"]["pt"]["edges"]  # type: ignore[index]
    assert -0.08 < edges[0] < -0.02 and 0.02 < edges[-1] < 0.08  # central 98 % of a 2 % Gaussian


def test_zmumu_real_file(scheduler: str, tmp_path: Path) -> None:
    import skhep_testdata

    path = preprocess(CONFIGS / "preprocess_zmumu.yaml", tmp_path / "zmumu", scheduler=scheduler)
    m = load_manifest(path)
    assert m.unfold is not None and m.unfold["has_truth"] is False
    assert "truth_bin" not in m.columns and "migration" not in m.columns and "reco_bin" in m.columns
    t = uproot.open(skhep_testdata.data_path("uproot-Zmumu.root"))["events"].arrays(library="np")
    keep = (t["Q1"] * t["Q2"] < 0) & (np.abs(t["M"] - 91.1876) < 0.25 * 91.1876)
    keep &= (t["M"] >= 65) & (t["M"] < 115)
    assert m.raw["counts"]["rows"] == int(keep.sum())
    d = _all(m)
    np.testing.assert_array_equal(d["reco_bin"], bin_index(d["reco_mass"], m.unfold_edges))
    expected = (t["Run"][keep].astype(np.uint64) << np.uint64(32)) | t["Event"][keep].astype(
        np.uint64
    )
    np.testing.assert_array_equal(np.sort(d["event_id"]), np.sort(expected))
    assert m.raw["plots"] == []


def test_scheduler_option_through_cli(
    sim: Path, scheduler: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scan.cli import main

    out = tmp_path / "cli"
    main(
        [
            "preprocess",
            str(CONFIGS / "preprocess_dijet.yaml"),
            "--out",
            str(out),
            "--input",
            str(sim / "dijet" / "*.root"),
            "--scheduler",
            scheduler,
        ]
    )
    assert (out / "manifest.json").exists()
    assert "rows" in capsys.readouterr().out


# --- bad input: one clear message naming file and branch/key, exit code 2, no output ----------


def _expect_error(
    args: list[str], out: Path, capsys: pytest.CaptureFixture[str], *needles: str
) -> str:
    from scan.cli import main

    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("hepscan: error: ")
    for needle in needles:
        assert needle in err, (needle, err)
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
    return err


def test_bad_truncated_and_non_root_files(
    sim: Path, scheduler: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = sim / "dijet" / "dijet_0000.root"
    cut = tmp_path / "cut.root"
    data = good.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    out = tmp_path / "out"
    cfg = str(CONFIGS / "preprocess_dijet.yaml")
    err = _expect_error(
        ["preprocess", cfg, "--out", str(out), "--input", str(cut)], out, capsys, str(cut)
    )
    assert "truncated" in err
    cut.write_bytes(data[: len(data) * 9 // 10])  # all baskets intact, the file's end missing
    err = _expect_error(
        ["preprocess", cfg, "--out", str(out), "--input", str(cut)], out, capsys, str(cut)
    )
    assert "truncated" in err
    text = tmp_path / "notes.root"
    text.write_text("this is not a ROOT file\n" * 20)
    err = _expect_error(
        ["preprocess", cfg, "--out", str(out), "--input", str(text)], out, capsys, str(text)
    )
    assert "not a readable ROOT file" in err
    # baskets cut off while the header and directory survive
    tail = tmp_path / "tail.root"
    keep = bytearray(data)
    tree = uproot.open(good)["events"]
    seek = int(np.asarray(tree["reco_mjj"].member("fBasketSeek"))[0])
    keep[seek : seek + 64] = b"\0" * 64
    tail.write_bytes(bytes(keep))
    _expect_error(
        ["preprocess", cfg, "--out", str(out), "--input", str(tail), "--scheduler", scheduler],
        out,
        capsys,
        str(tail),
    )
    _expect_error(
        ["preprocess", cfg, "--out", str(out), "--input", str(tmp_path / "none*.root")],
        out,
        capsys,
        "none*.root",
        "matches no file",
    )


def test_bad_missing_tree_and_branch(
    sim: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = str(sim / "dijet" / "dijet_0000.root")
    out = tmp_path / "out"
    cfg = _write_cfg(tmp_path / "tree.yaml", _cfg("dijet", tree="nope"))
    _expect_error(
        ["preprocess", str(cfg), "--out", str(out), "--input", f], out, capsys, f, "'nope'", "tree"
    )
    cfg = _write_cfg(tmp_path / "branch.yaml", _cfg("dijet", branches={"reco_mjj": "mjj_reco"}))
    _expect_error(
        ["preprocess", str(cfg), "--out", str(out), "--input", f], out, capsys, f, "'mjj_reco'"
    )
    # a jets config on a dijet file: the first jets branch is missing
    _expect_error(
        ["preprocess", str(CONFIGS / "preprocess_jets.yaml"), "--out", str(out), "--input", f],
        out,
        capsys,
        f,
        "no branch 'truth_pt'",
    )


def _nan_file(path: Path) -> Path:
    rng = np.random.default_rng(3)
    truth = rng.uniform(1600, 2900, 500)
    reco = truth * (1 + 0.03 * rng.standard_normal(500))
    reco[[10, 20, 30]] = [np.nan, np.inf, np.nan]
    with uproot.recreate(path) as out:
        _tree(
            out, {"event_id": np.arange(500, dtype=np.uint64), "truth_mjj": truth, "reco_mjj": reco}
        )
    return path


def test_bad_nan_values(scheduler: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = str(_nan_file(tmp_path / "nan.root"))
    out = tmp_path / "out"
    cfg = str(CONFIGS / "preprocess_dijet.yaml")
    _expect_error(
        ["preprocess", cfg, "--out", str(out), "--input", f, "--scheduler", scheduler],
        out,
        capsys,
        f,
        "'reco_mjj'",
        "entry 10",
    )
    drop = _write_cfg(tmp_path / "drop.yaml", _cfg("dijet", nan_policy="drop"))
    path = preprocess(drop, out, inputs=[f], scheduler=scheduler)
    m = load_manifest(path)
    assert m.raw["counts"]["nan_dropped"] == 3
    assert m.raw["counts"]["rows"] == 497 - m.raw["counts"]["outside_edges"]
    assert not np.isin(np.array([10, 20, 30], dtype=np.uint64), _all(m)["event_id"]).any()


def test_bad_empty_selection(
    sim: Path, scheduler: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _cfg("zll")
    data["selection"]["iso_max"] = -1.0
    cfg = _write_cfg(tmp_path / "empty.yaml", data)
    f = str(sim / "zll" / "zll_0000.root")
    out = tmp_path / "out"
    _expect_error(
        ["preprocess", str(cfg), "--out", str(out), "--input", f, "--scheduler", scheduler],
        out,
        capsys,
        f,
        "'zll_pair' kept no events",
    )


def test_bad_output_dir(sim: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    out = blocker / "sub" / "out"
    from scan.cli import main

    with pytest.raises(SystemExit) as exc:
        main(
            [
                "preprocess",
                str(CONFIGS / "preprocess_dijet.yaml"),
                "--out",
                str(out),
                "--input",
                str(sim / "dijet" / "*.root"),
            ]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert str(out) in err and "cannot write" in err
    assert blocker.read_text() == "x"
    # an existing non-empty output is not clobbered
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(SystemExit):
        main(["preprocess", str(CONFIGS / "preprocess_dijet.yaml"), "--out", str(taken)])
    assert "exists" in capsys.readouterr().err and (taken / "keep.txt").read_text() == "mine"


def test_bad_config_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    cfg = _write_cfg(tmp_path / "extra.yaml", _cfg("zll", shards=3))
    _expect_error(
        ["preprocess", str(cfg), "--out", str(out)], out, capsys, str(cfg), "shards: unknown key"
    )
    data = _cfg("zll")
    data["selection"]["isolation"] = 0.2
    cfg = _write_cfg(tmp_path / "nested.yaml", data)
    _expect_error(
        ["preprocess", str(cfg), "--out", str(out)],
        out,
        capsys,
        str(cfg),
        "selection.isolation: unknown key",
    )
    data = _cfg("zll")
    data["unfold"]["edges"] = {"start": 65, "stop": 115, "bins": 0}
    cfg = _write_cfg(tmp_path / "bins.yaml", data)
    _expect_error(
        ["preprocess", str(cfg), "--out", str(out)], out, capsys, str(cfg), "unfold.edges.bins"
    )
    cfg = _write_cfg(tmp_path / "feat.yaml", _cfg("zll", features=["reco_mass", "reco_bogus"]))
    _expect_error(
        ["preprocess", str(cfg), "--out", str(out)],
        out,
        capsys,
        str(cfg),
        "features[1]",
        "reco_bogus",
    )
    _expect_error(
        ["preprocess", str(tmp_path / "missing.yaml"), "--out", str(out)],
        out,
        capsys,
        "missing.yaml",
    )


def test_partitions_match_uproot_dask(sim: Path) -> None:
    """Entry ranges per step size are the ones uproot.dask makes for the same branches."""
    from jobs.preprocess import expand, make_plan, partitions, validate_inputs
    from jobs.preprocess.config import parse_config

    data = _cfg("zll", step_size="200 kB")
    plan = make_plan(parse_config(data, "cfg"), "cfg")
    f = str(sim / "zll" / "zll_0000.root")
    files, plan = validate_inputs(plan, expand([f], Path.cwd(), "--input"))
    ours = [(a, b) for _, a, b in partitions(files)]
    assert len(ours) > 1
    arrays = uproot.dask(
        {f: "events"}, library="np", filter_name=plan.read_branches, step_size="200 kB"
    )
    chunks = np.cumsum((0, *next(iter(arrays.values())).chunks[0]))
    assert ours == [(int(a), int(b)) for a, b in zip(chunks[:-1], chunks[1:], strict=True)]


def test_zll_selection_matches_a_per_event_loop(sim: Path) -> None:
    import itertools

    from jobs.preprocess.config import ZllPairSelection
    from jobs.preprocess.select import ELECTRON_MASS, MUON_MASS, Jagged, select

    t = uproot.open(sim / "zll" / "zll_0000.root")["events"].arrays(entry_stop=400)
    n = len(t)

    def jagged(x: Any) -> Jagged:
        off = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(ak.to_numpy(ak.num(x)), out=off[1:])
        return Jagged(off, ak.to_numpy(ak.flatten(x)))

    names = ("pt", "eta", "phi", "charge", "flavour", "iso", "truth_index")
    arrays: dict[str, Any] = {f"lep_{v}": jagged(t[f"lep_{v}"]) for v in names}
    cols, rows = select(ZllPairSelection(kind="zll_pair"), arrays, n, ("reco_mass",))
    expect_rows, expect_mass = [], []
    for e in range(n):
        ev = t[e]
        best: tuple[float, float] | None = None
        for a, b in itertools.combinations(range(len(ev.lep_pt)), 2):
            if not (ev.lep_iso[a] < 0.1 and ev.lep_iso[b] < 0.1):
                continue
            if ev.lep_charge[a] * ev.lep_charge[b] >= 0 or ev.lep_flavour[a] != ev.lep_flavour[b]:
                continue
            p = np.zeros(4)
            for k in (a, b):
                pt, eta, phi = float(ev.lep_pt[k]), float(ev.lep_eta[k]), float(ev.lep_phi[k])
                mass = ELECTRON_MASS if abs(ev.lep_flavour[k]) == 11 else MUON_MASS
                v = np.array([pt * np.cos(phi), pt * np.sin(phi), pt * np.sinh(eta), 0.0])
                v[3] = np.sqrt(v[0] ** 2 + v[1] ** 2 + v[2] ** 2 + mass**2)
                p += v
            m = float(np.sqrt(max(p[3] ** 2 - p[0] ** 2 - p[1] ** 2 - p[2] ** 2, 0.0)))
            if best is None or abs(m - 91.1876) < best[0]:
                best = (abs(m - 91.1876), m)
        if best is not None and best[0] < 0.25 * 91.1876:
            expect_rows.append(e)
            expect_mass.append(best[1])
    assert len(expect_rows) > 50
    np.testing.assert_array_equal(rows, expect_rows)
    np.testing.assert_allclose(cols["reco_mass"], expect_mass, rtol=1e-12)
