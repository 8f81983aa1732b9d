"""``hepscan apply`` end to end on a tiny real scan (Ray Tune + MLflow sqlite store), plus the
unfolding arithmetic (bootstrap covariance, prior iterations) and the generative families.

One module-scoped scan (2 trials, 2 epochs, ``register_top: 2``) serves every test that needs
a registered model; MLflow-model specifics are in tests/test_mlflow_model.py.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jobs.train_synthetic import write_unfold_dataset

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_unfold_dataset(tmp_path_factory.mktemp("ds") / "zll", rows=1500, n_bins=6)


@pytest.fixture(scope="module")
def scan_dir(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A finished 2-trial scan whose two best models are registered as ``apply_e2e`` 1 and 2."""
    import ray

    from scan import launch
    from scan.driver import _init_ray

    os.environ["HEPSCAN_RAY_CPUS"] = "2"
    started = _init_ray(None, REPO, verbose=0)
    d = tmp_path_factory.mktemp("scan") / "scan"
    cfg = {
        "name": "apply_e2e",
        "dataset": str(dataset),
        "family": "unfold_bins",
        "search_space": {"alpha": ["loguniform", 0.5, 4.0]},
        "fixed": {"batch_size": 128, "lr": 0.003, "patience": 0},
        "objective": {"metric": "chi2_ndf", "mode": "min"},
        "scheduler": "none",
        "searcher": "random",
        "num_trials": 2,
        "max_epochs": 2,
        "seed": 1,
        "register_top": 2,
    }
    try:
        launch(cfg, scan_dir=str(d), verbose=0)
    finally:
        if started:
            ray.shutdown()
    yield d


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from scan.cli import main

    code = 0
    try:
        main(args)
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def uri_of(scan_dir: Path) -> str:
    return f"sqlite:///{scan_dir / 'mlflow.db'}"


def apply_runs(scan_dir: Path) -> list[Any]:
    from tracking.store import _client

    client = _client(uri_of(scan_dir))
    exp = client.get_experiment_by_name("apply_e2e-apply")
    return [] if exp is None else list(client.search_runs([exp.experiment_id]))


def test_apply_scan_dir_writes_histograms_and_an_mlflow_run(
    scan_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from jobs.apply import read_unfolded
    from tracking.store import _client

    out = tmp_path / "out"
    code, stdout, err = run_cli(
        ["apply", str(scan_dir), "--split", "test", "--out", str(out), "--bootstrap", "40"],
        capsys,
    )
    assert code == 0, err
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("chi2_ndf=")
    chi2 = float(last.split("=", 1)[1])
    assert 0 < chi2 < 50
    names = {p.name for p in out.iterdir()}
    assert {
        "unfolded.json",
        "unfolded.csv",
        "covariance.csv",
        "metrics.json",
        "unfolded.png",
    } <= names
    assert not list(tmp_path.glob("out.tmp-*"))
    doc = read_unfolded(out)
    h = doc["unfolded"]
    assert h.axes[0].edges[0] == 65.0 and len(h.values()) == 6
    cov = doc["covariance"]
    assert cov.shape == (6, 6) and np.allclose(cov, cov.T)
    assert np.allclose(np.sqrt(np.diag(cov)), np.sqrt(h.variances()))
    assert doc["truth"].values().sum() == pytest.approx(h.values().sum(), rel=1e-6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["chi2_ndf"] == pytest.approx(chi2, rel=1e-5)
    assert {"ks", "ad", "ibu_chi2_ndf", "tikhonov_chi2_ndf", "chi2_ndf_poisson"} <= set(metrics)
    csv_head = (out / "unfolded.csv").read_text().splitlines()[0].split(",")
    assert csv_head[:4] == ["lo", "hi", "unfolded", "stderr"] and "ibu" in csv_head
    assert np.loadtxt(out / "covariance.csv", delimiter=",") == pytest.approx(cov, rel=1e-8)

    runs = apply_runs(scan_dir)
    run = next(r for r in runs if r.data.tags.get("hepscan.out") == str(out))
    assert run.info.status == "FINISHED"
    assert run.data.tags["hepscan.model_uri"] == "models:/apply_e2e/1"
    assert run.data.tags["hepscan.model_version"] == "1"
    assert run.data.metrics["chi2_ndf"] == pytest.approx(chi2, rel=1e-5)
    assert any(k.startswith("sha256.part-") for k in run.data.params)
    arts = {a.path for a in _client(uri_of(scan_dir)).list_artifacts(run.info.run_id)}
    assert {"unfolded.png", "unfolded.json", "metrics.json"} <= arts
    assert [d.dataset.name for d in run.inputs.dataset_inputs] == ["zll"]


def test_every_source_kind_gives_the_same_unfolding(scan_dir: Path, tmp_path: Path) -> None:
    import time

    from scan import apply
    from scan.publish import published_models
    from tracking.model import _registry_client

    env_before, t_before = os.environ.get("MLFLOW_TRACKING_URI"), time.time()
    best = published_models(scan_dir)[0]
    _registry_client(uri_of(scan_dir)).set_registered_model_alias("apply_e2e", "champion", "1")
    sources = {
        "scan": str(scan_dir),
        "version": "models:/apply_e2e/1",
        "alias": "models:/apply_e2e@champion",
        "run": f"runs:/{best['run_id']}/model",
        "checkpoint": str(Path(best["checkpoint"]).parent),
    }
    values = {}
    for key, src in sources.items():
        r = apply(
            src,
            tmp_path / key,
            split="test",
            bootstrap=5,
            tracking_uri=None if key in ("scan", "checkpoint") else uri_of(scan_dir),
        )
        values[key] = r.unfolding.unfolded
        assert (tmp_path / key / "unfolded.json").exists()
    for key in sources:
        np.testing.assert_allclose(values[key], values["scan"], rtol=1e-6, err_msg=key)
    # the fluent MLflow API was pointed at the scan's store only while it was used
    assert os.environ.get("MLFLOW_TRACKING_URI") == env_before
    assert not Path("mlflow.db").exists() or Path("mlflow.db").stat().st_mtime < t_before


def test_ensemble_spread_is_reported_separately(scan_dir: Path, tmp_path: Path) -> None:
    from jobs.apply import read_unfolded
    from scan import apply

    r = apply(
        "models:/apply_e2e/1",
        tmp_path / "ens",
        ensemble=2,
        bootstrap=10,
        tracking_uri=uri_of(scan_dir),
        split="test",
    )
    u = r.unfolding
    assert len(u.members) == 2 and not np.allclose(u.members[0], u.members[1])
    np.testing.assert_allclose(u.unfolded, np.mean(u.members, axis=0))
    assert np.trace(u.cov_ensemble) > 0
    doc = read_unfolded(tmp_path / "ens")
    np.testing.assert_allclose(
        doc["covariance"], doc["covariance_stat"] + doc["covariance_ensemble"], rtol=1e-9
    )
    assert r.metrics["mean_rel_stderr_ensemble"] > 0


def test_prior_iterations_and_scan_apply_from_python(scan_dir: Path, tmp_path: Path) -> None:
    from scan import apply

    r = apply(
        str(scan_dir), tmp_path / "it", prior_iterations=2, bootstrap=10, split="all", track=False
    )
    assert len(r.unfolding.iterations) == 3
    assert {"chi2_ndf_iter0", "chi2_ndf_iter1", "chi2_ndf_iter2"} <= set(r.metrics)
    assert (tmp_path / "it" / "iterations.png").stat().st_size > 0
    # iteration 0 is the plain sum of probabilities: the same as no iteration at all
    r0 = apply(str(scan_dir), tmp_path / "it0", bootstrap=0, split="all", track=False)
    np.testing.assert_allclose(r.unfolding.iterations[0], r0.unfolding.unfolded, rtol=1e-9)


BAD = [
    ("unknown version", ["models:/apply_e2e/99"], "models:/apply_e2e/99: no such model version"),
    ("unknown model", ["models:/nope/1"], "models:/nope/1: no such model version"),
    ("not a source", ["/no/such/thing"], "not a scan directory, checkpoint"),
]


@pytest.mark.parametrize(("label", "args", "message"), BAD, ids=[b[0] for b in BAD])
def test_bad_sources_fail_cleanly(
    scan_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    label: str,
    args: list[str],
    message: str,
) -> None:
    out = tmp_path / "out"
    before = len(apply_runs(scan_dir))
    code, _, err = run_cli(
        ["apply", *args, "--tracking-uri", uri_of(scan_dir), "--out", str(out)], capsys
    )
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not list(tmp_path.glob("out.tmp-*"))
    assert len(apply_runs(scan_dir)) == before


def _bad_parquet(tmp_path: Path, dataset: Path, mutate: str) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.manifest import load_manifest, load_split

    m = load_manifest(dataset)
    data = load_split(m, "test")
    cols = {}
    for i, f in enumerate(m.features):
        cols[f] = data[f"feat_{f}"] * m.scaler["std"][i] + m.scaler["mean"][i]
    cols["truth_m"] = data["truth_m"]
    cols["reco_m"] = data["reco_m"]
    if mutate == "missing":
        del cols["f2"]
    elif mutate == "nan":
        cols["f1"] = cols["f1"].copy()
        cols["f1"][3] = np.nan
    path = tmp_path / f"{mutate}.parquet"
    pq.write_table(pa.table(cols), path)
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [("missing", "column 'f2' missing"), ("nan", "column 'f1' holds 1 NaN/inf value(s)")],
)
def test_bad_inputs_fail_before_any_run(
    scan_dir: Path,
    dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mutate: str,
    message: str,
) -> None:
    path = _bad_parquet(tmp_path, dataset, mutate)
    out = tmp_path / "out"
    before = len(apply_runs(scan_dir))
    code, _, err = run_cli(
        ["apply", str(scan_dir), "--input", str(path), "--out", str(out)], capsys
    )
    assert code == 2 and message in err and str(path) in err, err
    assert not out.exists() and not list(tmp_path.glob("out.tmp-*"))
    assert len(apply_runs(scan_dir)) == before


def test_raw_parquet_input_matches_the_shards(
    scan_dir: Path, dataset: Path, tmp_path: Path
) -> None:
    from scan import apply

    path = _bad_parquet(tmp_path, dataset, "none")
    a = apply(str(scan_dir), tmp_path / "pq", inputs=[str(path)], bootstrap=0, track=False)
    b = apply(str(scan_dir), tmp_path / "sh", split="test", bootstrap=0, track=False)
    np.testing.assert_allclose(a.unfolding.unfolded, b.unfolding.unfolded, rtol=1e-5)


def test_scan_without_finished_trial_and_unimportable_family(
    scan_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    from models.bundle import ModelBundle
    from scan.publish import published_models

    empty = tmp_path / "empty_scan"
    empty.mkdir()
    shutil.copy(scan_dir / "scan.json", empty / "scan.json")
    code, _, err = run_cli(["apply", str(empty), "--out", str(tmp_path / "o1")], capsys)
    assert code == 2 and "no finished trial" in err and str(empty) in err, err
    assert not (tmp_path / "o1").exists()

    from jobs.apply import bundle_from_checkpoint

    bundle = bundle_from_checkpoint(published_models(scan_dir)[0]["checkpoint"])
    bundle.family = "no_such_pkg.families:FAMILY"
    bad = bundle.save(tmp_path / "bad_bundle")
    assert ModelBundle.load(bad).family == "no_such_pkg.families:FAMILY"
    code, _, err = run_cli(["apply", str(bad), "--out", str(tmp_path / "o2")], capsys)
    assert code == 2 and "no_such_pkg.families:FAMILY" in err and "cannot import" in err, err
    assert not (tmp_path / "o2").exists()


def test_failure_after_the_run_started_ends_it_failed(
    scan_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jobs.apply.outputs
    from scan import apply

    def broken(*a: Any, **k: Any) -> Any:
        raise OSError("disk full")

    monkeypatch.setattr(jobs.apply.outputs, "write_unfolding", broken)
    with pytest.raises(OSError, match="disk full"):
        apply(str(scan_dir), tmp_path / "o", bootstrap=2, split="test")
    assert not (tmp_path / "o").exists() and not list(tmp_path.glob("o.tmp-*"))
    statuses = [r.info.status for r in apply_runs(scan_dir)]
    assert "RUNNING" not in statuses and "FAILED" in statuses


# ------------------------------------------------------------------ no scan needed


def _untrained_bundle(dataset: Path, seed: int = 0) -> Any:
    import torch

    from jobs.apply.bundle import training_response
    from jobs.manifest import load_manifest
    from models.bundle import ModelBundle, manifest_subset

    m = load_manifest(dataset)
    b = ModelBundle("unfold_bins", {"alpha": 2.0}, manifest_subset(m.raw), {}, {})
    torch.manual_seed(seed)
    net = b.family_obj.build(b.family_obj.config_cls(alpha=2.0), b.spec.dims)
    b.state_dict = net.state_dict()
    b.response = training_response(m, b.n_bins)
    return b


def test_a_model_without_the_method_of_its_kind_gets_one_clear_error(dataset: Path) -> None:
    import torch

    from models.errors import ConfigError

    b = _untrained_bundle(dataset)
    frame = {c: np.zeros(3) for c in b.input_columns()}
    assert b.predict(frame)["p_0"].shape == (3,)  # the real module has predict_proba
    b._model = torch.nn.Linear(1, 1)  # a user's module that lacks it
    with pytest.raises(ConfigError, match=r"'unfold_bins' \(unfold kind.* no method predict_proba"):
        b.predict(frame)


def test_bootstrap_covariance_is_the_poisson_covariance(dataset: Path) -> None:
    """Poisson(1) weights: Cov(Σ w_i p_i) = Σ p_i p_iᵀ exactly; the bootstrap estimates it with
    relative error ~ sqrt(2/B) = 3 % for B = 2000 (seeded, so the test is deterministic)."""
    from jobs.apply import load_inputs, unfold_events

    b = _untrained_bundle(dataset)
    inputs = load_inputs(b, [str(dataset)], split="all")
    r = unfold_events([b], inputs, bootstrap=2000, seed=3)
    keep = (inputs.columns["truth_bin"] >= 0) & (inputs.columns["reco_bin"] >= 0)
    p = b.truth_probabilities({c: v[keep] for c, v in inputs.columns.items()})
    analytic = p.T @ p
    cov = r.cov_stat
    np.testing.assert_allclose(cov, cov.T, atol=1e-9)
    assert np.linalg.eigvalsh(cov).min() > -1e-9 * np.abs(cov).max()
    np.testing.assert_allclose(np.diag(cov), np.diag(analytic), rtol=0.12)
    assert np.linalg.norm(cov - analytic) / np.linalg.norm(analytic) < 0.1
    # bootstrap error below the Poisson-only error sqrt(content): Σ p² <= Σ p
    assert np.all(np.diag(analytic) <= r.unfolded + 1e-9)
    again = unfold_events([b], inputs, bootstrap=2000, seed=3)
    np.testing.assert_array_equal(again.cov_stat, cov)
    # one-hot probabilities: the bootstrap variance is the Poisson variance of the counts
    counts = np.bincount(inputs.columns["reco_bin"][keep], minlength=b.n_bins).astype(float)
    reco_cov = np.cov(
        np.asarray(
            [
                np.bincount(inputs.columns["reco_bin"][keep], weights=w, minlength=b.n_bins)
                for w in np.random.default_rng(5).poisson(1.0, (2000, int(keep.sum())))
            ]
        ),
        rowvar=False,
    )
    np.testing.assert_allclose(np.diag(reco_cov), counts, rtol=0.12)


def test_prior_update_matches_the_study_and_recovers_a_shifted_truth() -> None:
    from benchmarks.studies.prior_dependence import iterative_prior_update as study
    from models.prior import iterative_prior_update

    rng = np.random.default_rng(0)
    n = 5
    resp = 0.6 * np.eye(n) + 0.2 * (np.eye(n, k=1) + np.eye(n, k=-1))
    resp /= resp.sum(axis=0, keepdims=True)  # P(reco | truth)
    pi0 = np.full(n, 1.0 / n)
    truth = rng.choice(n, 40000, p=np.linspace(1, 2, n) / np.linspace(1, 2, n).sum())
    reco = np.array([rng.choice(n, p=resp[:, t]) for t in truth[:4000]])
    post = resp[reco] * pi0 / (resp[reco] * pi0).sum(axis=1, keepdims=True)  # p0(t | reco)
    ours = iterative_prior_update(post, pi0, 3)
    np.testing.assert_allclose(ours, study(post, pi0, 3), rtol=1e-12)
    t_hist = np.bincount(truth[:4000], minlength=n)
    assert np.abs(ours[3] - t_hist).sum() < np.abs(ours[0] - t_hist).sum()
    w = rng.poisson(1.0, len(post)).astype(float)
    np.testing.assert_allclose(iterative_prior_update(post, pi0, 0, weights=w)[0], w @ post)


@pytest.mark.parametrize(("family", "fmt"), [("gan", "root"), ("flow", "parquet")])
def test_generative_fast_simulation(dataset: Path, tmp_path: Path, family: str, fmt: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.apply import bundle_from_checkpoint
    from jobs.manifest import load_manifest, load_split
    from jobs.train import train, train_config_from_dict
    from scan import apply

    ck = tmp_path / "ck"
    train(
        train_config_from_dict(
            {
                "dataset": str(dataset),
                "family": family,
                "epochs": 1,
                "batch_size": 128,
                "checkpoint_dir": str(ck),
            }
        )
    )
    bundle_from_checkpoint(ck).save(tmp_path / "bundle")
    test = load_split(load_manifest(dataset), "test", ["event_id", "truth_m", "reco_m"])
    pq.write_table(pa.table(test), tmp_path / "truth.parquet")
    out = tmp_path / "sim"
    r = apply(
        str(tmp_path / "bundle"),
        out,
        inputs=[str(tmp_path / "truth.parquet")],
        fmt=fmt,
        seed=4,
        track=False,
    )
    assert {"w1_reco_m", "w1_mean", "auc"} <= set(r.metrics)
    assert 0.0 <= r.metrics["auc"] <= 1.0 and r.metrics["w1_reco_m"] > 0
    if fmt == "root":
        import uproot

        with uproot.open(out / "generated.root") as f:
            arrays = f["events"].arrays(library="np")
    else:
        arrays = pq.read_table(out / "generated.parquet").to_pydict()
    assert set(arrays) == {"event_id", "truth_m", "reco_m"}
    np.testing.assert_array_equal(np.asarray(arrays["event_id"]), test["event_id"])
    np.testing.assert_allclose(np.asarray(arrays["truth_m"]), test["truth_m"])
    assert not np.allclose(np.asarray(arrays["reco_m"]), test["reco_m"])
    assert (out / "generated.png").stat().st_size > 0


def test_resolution_bundle_gives_probabilities_and_samples() -> None:
    import torch

    from models.bundle import ModelBundle

    edges = list(np.linspace(-0.2, 0.2, 5))
    manifest = {
        "features": [],
        "resolution": {
            "n_classes": 4,
            "quantities": {"pt": {"edges": edges, "relative": True}, "eta": {"edges": edges}},
        },
    }
    b = ModelBundle("resolution", {"hidden": 8, "depth": 1}, manifest, {}, {})
    torch.manual_seed(0)
    b.state_dict = b.family_obj.build(
        b.family_obj.config_cls(hidden=8, depth=1), b.spec.dims
    ).state_dict()
    assert b.input_columns() == ["truth_pt", "truth_eta"]
    frame = {"truth_pt": np.linspace(20, 80, 50), "truth_eta": np.linspace(-2, 2, 50)}
    proba = b.predict(frame)
    assert len(proba) == 2 * 5 and b.output_columns() == list(proba)
    np.testing.assert_allclose(sum(proba[f"p_pt_{k}"] for k in range(5)), 1.0, rtol=1e-6)
    s1 = b.predict(frame, output="sample", seed=1)
    s2 = b.predict(frame, output="sample", seed=1)
    assert set(s1) == {"reco_pt", "reco_eta", "reconstructed"}
    np.testing.assert_array_equal(s1["reco_pt"], s2["reco_pt"])
    ok = s1["reconstructed"]
    rel = s1["reco_pt"][ok] / frame["truth_pt"][ok] - 1
    assert np.all(np.abs(rel) <= 0.2 + 1e-6) and np.all(np.isnan(s1["reco_pt"][~ok]))


def test_root_inputs_go_through_the_training_preprocessing(tmp_path: Path) -> None:
    """ROOT files are selected and turned into features by the model's own preprocessing config
    and standardised with the model's scaler: the same events as a dataset directory (with its
    own, different scaler) give the same unfolding."""
    from jobs.apply import bundle_from_checkpoint, load_inputs
    from jobs.apply.inputs import sha256_of
    from jobs.preprocess import preprocess
    from jobs.simulate import simulate
    from jobs.train import train, train_config_from_dict
    from scan import apply

    train_files = simulate("zll", 3000, 1, 0, tmp_path / "root_train", progress=False)
    data_files = simulate("zll", 1500, 1, 7, tmp_path / "root_data", progress=False)
    cfg = REPO / "configs" / "preprocess_zll.yaml"
    preprocess(cfg, tmp_path / "train", inputs=[str(f) for f in train_files], workers=1)
    preprocess(cfg, tmp_path / "data", inputs=[str(f) for f in data_files], workers=1)
    ck = tmp_path / "ck"
    train(
        train_config_from_dict(
            {
                "dataset": str(tmp_path / "train"),
                "family": "unfold_bins",
                "epochs": 1,
                "batch_size": 256,
                "checkpoint_dir": str(ck),
            }
        )
    )
    bundle = bundle_from_checkpoint(ck)
    root = load_inputs(bundle, [str(f) for f in data_files])
    assert root.kind == "root" and root.split == "all"
    assert root.checksums == {str(data_files[0]): sha256_of(data_files[0])}
    shards = load_inputs(bundle, [str(tmp_path / "data")], split="all")
    assert root.rows == shards.rows > 100
    a = apply(
        str(ck),
        tmp_path / "from_root",
        inputs=[str(f) for f in data_files],
        config=str(cfg),
        bootstrap=0,
        track=False,
    )
    b = apply(
        str(ck),
        tmp_path / "from_shards",
        inputs=[str(tmp_path / "data")],
        split="all",
        bootstrap=0,
        track=False,
    )
    np.testing.assert_allclose(a.unfolding.unfolded, b.unfolding.unfolded, rtol=1e-4)
    assert a.unfolding.truth is not None and a.metrics["chi2_ndf"] > 0
