"""The ``ttbar`` sample, the ``classify`` preprocessing, the ROC metrics, the ``vae`` family's
background-only loss, and studies 7 and 8 (benchmarks/studies/param_classifier.py,
vae_anomaly.py) in fast mode on real simulated samples.

Run: ``.venv/bin/python -m pytest tests/test_ttbar_studies.py -q``
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import uproot

from jobs.simulate import TTBAR_MASSES, simulate
from models.errors import ConfigError
from models.metrics import efficiency_at_rejection, rejection_at_efficiency, roc_auc

TRAINED = (500.0, 1000.0, 1500.0, 2500.0, 3000.0)


def _read(path: Path) -> dict[str, np.ndarray]:
    with uproot.open(path) as f:
        return f["events"].arrays(library="np")  # type: ignore[no-any-return]


def test_ttbar_sample_physics(tmp_path: Path) -> None:
    (path,) = simulate("ttbar", 60_000, 1, 3, tmp_path, progress=False)
    d = _read(path)
    label, mass = d["truth_label"], d["truth_mass"]
    assert label.dtype == np.int32 and abs(label.mean() - 0.5) < 0.01
    assert set(np.unique(mass)) == set(TTBAR_MASSES)  # background masses drawn from the list
    sig, bkg = label == 1, label == 0
    for m in (500.0, 1500.0, 3000.0):  # the reco peak sits at the Z' mass (8 % resolution)
        peak = np.median(d["reco_mtt"][sig & (mass == m)])
        assert abs(peak / m - 1.0) < 0.03, (m, peak)
    mtt_b = d["reco_mtt"][bkg]
    assert np.median(mtt_b) < 600.0 and 0.01 < np.mean(mtt_b > 1000.0) < 0.06  # falling
    # the background's mass parameter carries no information: same spectrum for every value
    med = [np.median(mtt_b[mass[bkg] == m]) for m in (500.0, 3000.0)]
    assert abs(med[0] / med[1] - 1.0) < 0.05
    # spin-1 signal is central, t-channel background forward: at the same m_tt, |dy| is
    # smaller for the signal
    window = bkg & (d["truth_mtt"] > 900.0) & (d["truth_mtt"] < 1100.0)
    assert window.sum() > 100
    dy_s = np.median(d["reco_abs_dy"][sig & (mass == 1000.0)])
    assert dy_s < np.median(d["reco_abs_dy"][window]) - 0.2
    assert (d["reco_top1_pt"] >= d["reco_top2_pt"]).all()
    assert ((d["reco_btag1"] >= d["reco_btag2"]) & (d["reco_btag1"] <= 1.0)).all()


def test_ttbar_masses_option(tmp_path: Path) -> None:
    from scan.cli import main

    out = tmp_path / "tt"
    args = ["simulate", "ttbar", "-n", "4000", "--masses", "750,1.25TeV", "-o", str(out)]
    main([*args, "--no-progress"])
    d = _read(out / "ttbar_0000.root")
    assert set(np.unique(d["truth_mass"])) == {750.0, 1250.0}
    with pytest.raises(ConfigError, match="option 'masses'"):
        simulate("ttbar", 10, 1, 1, tmp_path / "bad", masses=(100.0,), progress=False)
    with pytest.raises(ConfigError, match="applies to sample 'ttbar' only"):
        simulate("dijet", 10, 1, 1, tmp_path / "bad", masses=(1000.0,), progress=False)


def test_preprocess_carries_label_and_mass(tmp_path: Path) -> None:
    from jobs.manifest import load_manifest, load_split
    from jobs.preprocess import preprocess
    from models.registry import get_family

    files = simulate("ttbar", 5000, 1, 5, tmp_path / "root", progress=False)
    config = Path(__file__).resolve().parents[1] / "configs" / "preprocess_ttbar.yaml"
    preprocess(config, tmp_path / "data", inputs=[str(f) for f in files], workers=1)
    raw = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert raw["classify"] == {"label": "truth_label", "mass": "truth_mass"}
    man = load_manifest(tmp_path / "data")
    d = load_split(man, "train", ["truth_label", "truth_mass", "feat_reco_mtt"])
    assert set(np.unique(d["truth_label"])) == {0.0, 1.0}
    assert set(np.unique(d["truth_mass"])) <= set(TTBAR_MASSES)
    spec = get_family("param_classifier").data_spec(man)
    assert spec.x_columns[-1] == "truth_mass" and spec.y_columns == ("truth_label",)
    assert spec.standardise == ("truth_mass",)
    assert get_family("vae").data_spec(man).x_columns == tuple(f"feat_{f}" for f in man.features)
    bad = dict(raw["config"], classify={"label": "truth_lable"})
    with pytest.raises(ConfigError, match="classify.label: unknown column 'truth_lable'"):
        preprocess(bad, tmp_path / "bad", inputs=[str(f) for f in files], workers=1)


def test_roc_metrics() -> None:
    y = np.r_[np.ones(4), np.zeros(4)]
    assert roc_auc(np.r_[5, 6, 7, 8, 1, 2, 3, 4], y) == 1.0
    assert roc_auc(np.r_[1, 2, 3, 4, 5, 6, 7, 8], y) == 0.0
    assert roc_auc(np.ones(8), y) == 0.5  # ties count half
    assert roc_auc(np.r_[1, 3, 5, 7, 2, 4, 6, 8], y) == pytest.approx(6 / 16)
    assert math.isnan(roc_auc(np.ones(3), np.zeros(3)))
    rng = np.random.default_rng(0)
    s, b = rng.normal(1.0, 1.0, 200_000), rng.normal(0.0, 1.0, 200_000)
    scores, labels = np.r_[s, b], np.r_[np.ones_like(s), np.zeros_like(b)]
    # unit Gaussians one sigma apart: AUC = Phi(1/sqrt 2) = 0.7602; at 50 % signal
    # efficiency the cut is at 1, background efficiency 1 - Phi(1) = 0.1587
    assert roc_auc(scores, labels) == pytest.approx(0.7602, abs=0.003)
    assert rejection_at_efficiency(scores, labels, 0.5) == pytest.approx(1 / 0.1587, rel=0.02)
    # at eps_B = 1 % the cut is at 2.326: eps_S = 1 - Phi(1.326) = 0.0924
    assert efficiency_at_rejection(scores, labels, 100.0) == pytest.approx(0.0924, abs=0.004)
    # no background passes: rejection bounded by the number of background events
    assert rejection_at_efficiency(np.r_[10.0, 11.0, 1.0, 2.0], np.r_[1, 1, 0, 0], 0.5) == 2.0


def test_vae_loss_ignores_signal_rows() -> None:
    from models.registry import get_family

    family = get_family("vae")
    dims = family.data_spec(
        __import__("models.manifest", fromlist=["Manifest"]).Manifest.from_dict(
            {"features": ["a", "b", "c"], "classify": {"label": "y"}}
        )
    ).dims
    torch.manual_seed(0)
    model = family.build(family.config_cls(), dims)
    x = torch.randn(64, 3)
    y = torch.randint(0, 2, (64,))
    x2 = x.clone()
    x2[y == 1] += 100.0  # wildly different signal rows
    opt = model.configure_optimizers(0.0)  # type: ignore[operator]
    losses = []
    for xx in (x, x2):
        torch.manual_seed(1)
        step = model.training_step({"x": xx, "y": y}, opt, lambda o, loss: None)  # type: ignore[operator]
        losses.append(step["loss"])
    assert float(losses[0]) == float(losses[1])
    scores = model.score(x2)  # type: ignore[operator]
    assert scores[y == 1].min() > scores[y == 0].max()  # far-away rows reconstruct badly
    with pytest.raises(ValueError, match="score must be one of recon, kl"):
        family.config_cls(score="mse")


@pytest.mark.slow  # 4 small trainings: ~25 s on a quiet 2-core machine
def test_param_classifier_fast(tmp_path: Path) -> None:
    from benchmarks.studies import common, param_classifier

    out = tmp_path / "s7"
    res = param_classifier.run(out, fast=True, cache_dir=tmp_path / "cache")
    rows = {int(r["mass [GeV]"]): r for r in common.read_csv(out / "table_0.csv")}
    assert sorted(rows) == [int(m) for m in TTBAR_MASSES]
    for m in param_classifier.LEFT_OUT:  # interpolated masses: never seen in training
        r = rows[int(m)]
        assert r["in training"] == "no (interpolated)"
        auc_p, auc_ref = float(r["AUC param"]), float(r["AUC per-mass"])
        assert auc_p > 0.8, (m, auc_p)
        assert abs(auc_p - auc_ref) < 0.05, (m, auc_p, auc_ref)
        assert 0.0 < float(r["ε_S@ε_B=1% param"]) <= 1.0
    for m in TRAINED:
        assert rows[int(m)]["AUC per-mass"] == "nan"  # fast mode: references at left-out only
    # separation grows with the mass: far above the background's bulk
    assert float(rows[3000]["AUC param"]) > float(rows[500]["AUC param"]) + 0.1
    assert res["headline"]["auc_param_left_out"] > 0.8
    assert (out / "auc_vs_mass.png").exists() and (out / "table.md").exists()


@pytest.mark.slow  # a 2-trial Ray scan + one small supervised training: ~60 s
def test_vae_anomaly_fast(tmp_path: Path) -> None:
    from benchmarks.studies import common, vae_anomaly

    out = tmp_path / "s8"
    res = vae_anomaly.run(out, fast=True, cache_dir=tmp_path / "cache")
    assert len(res["scored"]) == 2  # both trials scored from their checkpoints
    rows = {int(r["mass [GeV]"]): r for r in common.read_csv(out / "table_0.csv")}
    assert sorted(rows) == [int(m) for m in TTBAR_MASSES]
    # a high-mass resonance is anomalous for a background-trained VAE; the supervised
    # classifier, which saw the signal, separates better at every mass
    assert float(rows[3000]["AUC VAE recon"]) > 0.7
    for r in rows.values():
        assert float(r["AUC supervised"]) > float(r["AUC VAE recon"])
        assert math.isfinite(float(r["AUC VAE KL"]))
    trials = common.read_csv(out / "table_1.csv")
    assert len(trials) == 2 and all(0.0 < float(t["test AUC recon"]) < 1.0 for t in trials)
    assert res["headline"]["auc_supervised"] > res["headline"]["auc_vae"]
    assert (out / "vae_vs_supervised.png").exists()
    # the scan logged and registered its best VAE as an MLflow model (a "score" bundle)
    from scan.publish import published_models

    models = published_models(res["scan"].scan_dir)
    assert len(models) == 1 and models[0]["model_uri"].startswith("models:/")
    # hepscan apply on the scan: one score per test row and, the rows being labelled, the AUC
    # and background rejection at 50 % signal efficiency of the registered VAE
    import pyarrow.parquet as pq

    from scan import apply

    applied = apply(str(res["scan"].scan_dir), tmp_path / "applied", split="test", track=False)
    m = applied.metrics
    table = pq.read_table(tmp_path / "applied" / "generated.parquet")
    assert table.num_rows == int(m["events"]) > 0 and "score" in table.column_names
    assert 0 < m["signal_events"] < m["events"]
    # the same numbers as the study's own scoring of the best trial on the test split
    best = res["scored"][0]
    want = best["all"][best["config"].score]
    assert m["auc"] == pytest.approx(want["auc"], abs=1e-6), (m, want)
    assert m["rejection_at_50"] == pytest.approx(want["rej50"], rel=1e-6), (m, want)


def test_param_classifier_bundle_scores_physical_mass() -> None:
    """A bundle (what ``hepscan apply`` and the MLflow model load) takes raw columns — the
    features before preprocess standardised them and the mass in GeV — and gives the same
    score as the network on the loop's standardised inputs."""
    import dataclasses

    from models.base import standardisation_vectors
    from models.bundle import ModelBundle
    from models.manifest import Manifest
    from models.registry import get_family

    raw = {
        "features": ["mtt", "dy"],
        "scaler": {"mean": [800.0, 1.0], "std": [400.0, 0.5]},
        "classify": {"label": "truth_label", "mass": "truth_mass"},
    }
    family = get_family("param_classifier")
    spec = family.data_spec(Manifest.from_dict(raw))
    torch.manual_seed(0)
    model = family.build(family.config_cls(), spec.dims)
    model.set_standardisation(  # type: ignore[operator]
        *standardisation_vectors(spec, {"truth_mass": 1500.0}, {"truth_mass": 800.0})
    )
    bundle = ModelBundle(
        "param_classifier",
        dataclasses.asdict(family.config_cls()),
        raw,
        {},
        model.state_dict(),
    )
    assert bundle.kind == "score" and bundle.output_columns() == ["score"]
    frame = {"mtt": np.array([700.0, 2000.0]), "dy": np.array([0.5, 2.0])}
    frame["truth_mass"] = np.array([750.0, 2000.0])
    got = bundle.predict(frame)["score"]
    x = torch.tensor(
        [
            [(700 - 800) / 400, (0.5 - 1) / 0.5, (750 - 1500) / 800],
            [(2000 - 800) / 400, (2 - 1) / 0.5, (2000 - 1500) / 800],
        ],
        dtype=torch.float32,
    )
    model.eval()
    with torch.no_grad():
        want = torch.sigmoid(model(x)).double().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_param_classifier_auc_mean_evaluates_background_at_each_mass() -> None:
    from models.manifest import Manifest
    from models.registry import get_family

    family = get_family("param_classifier")
    spec = family.data_spec(
        Manifest.from_dict(
            {"features": ["a"], "classify": {"label": "truth_label", "mass": "truth_mass"}}
        )
    )
    torch.manual_seed(0)
    model = family.build(family.config_cls(hidden=8, depth=1), spec.dims)
    g = torch.Generator().manual_seed(3)
    n = 600
    y = (torch.rand(n, generator=g) < 0.5).long()
    grid = torch.tensor([-1.0, 0.0, 1.0])
    mass = grid[torch.randint(0, 3, (n,), generator=g)]
    x = torch.stack([torch.randn(n, generator=g) + y, mass], dim=1)
    out = model.evaluate({"x": x, "y": y})  # type: ignore[operator]
    want = []
    for m in grid:
        sig = x[(y == 1) & (mass == m)]
        bkg = x[y == 0].clone()
        bkg[:, 1] = m
        with torch.no_grad():
            s = torch.cat([model(sig), model(bkg)]).numpy()  # type: ignore[operator]
        want.append(roc_auc(s, np.r_[np.ones(len(sig)), np.zeros(len(bkg))]))
    assert out["auc_mean"] == pytest.approx(float(np.mean(want)), abs=1e-12)
    with torch.no_grad():
        overall = roc_auc(model(x).numpy(), y.numpy())  # type: ignore[operator]
    assert out["auc"] == pytest.approx(overall, abs=1e-12)
    # no mass grid (continuous masses): auc_mean falls back to the overall AUC
    x[:, 1] = torch.randn(n, generator=g)
    out = model.evaluate({"x": x, "y": y})  # type: ignore[operator]
    assert out["auc_mean"] == out["auc"]


@pytest.mark.parametrize(
    ("name", "family", "metric"),
    [("param_classifier_ttbar", "param_classifier", "auc_mean"), ("vae_ttbar", "vae", "auc")],
)
def test_scan_configs_validate(name: str, family: str, metric: str) -> None:
    from scan.config import load_scan_config

    cfg = load_scan_config(Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml")
    assert cfg.family == family and cfg.objective_list[0].metric == metric
    assert cfg.objective_list[0].mode == "max" and cfg.space
