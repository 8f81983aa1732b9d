"""Study 10 (benchmarks/studies/generative_jets.py): the jets_tail detector, the study's metrics
and its fast mode (real simulate → preprocess → three 2-trial Ray scans → metrics)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from benchmarks.studies import common, generative_jets
from benchmarks.studies.generative_refs import GaussianSmearing, load_objects
from jobs.simulate.jets import crystal_ball
from jobs.simulate.samples import SAMPLES, sample_config
from models import metrics


def test_crystal_ball_matches_scipy() -> None:
    from scipy.stats import crystalball

    x = crystal_ball(np.random.default_rng(1), 200_000, 1.5, 3.0)
    for q in (0.01, 0.05, 0.12, 0.5, 0.9):  # the sample's quantile sits at CDF q (±3 σ)
        cdf = crystalball.cdf(np.quantile(x, q), 1.5, 3.0)
        assert cdf == pytest.approx(q, abs=3 * math.sqrt(q * (1 - q) / len(x))), q
    with pytest.raises(ValueError):
        crystal_ball(np.random.default_rng(1), 10, 1.5, 1.0)


def test_jets_tail_has_a_low_tail_and_the_jets_core() -> None:
    from jobs.simulate.samples import _GENERATORS

    assert "jets_tail" in SAMPLES
    out = {}
    for sample in ("jets", "jets_tail"):
        a = _GENERATORS[sample](np.random.default_rng(3), 100_000, sample_config(sample))
        ok = a["reco_ok"]
        sel = ok & (a["truth_pt"] > 100) & (np.abs(a["truth_eta"]) < 2.5)
        out[sample] = (a["reco_pt"][sel] / a["truth_pt"][sel]).astype(np.float64)
        assert 0.97 < ok[np.abs(a["truth_eta"]) < 2.5].mean() < 1.0
    # far below the core (> 4 σ of ~5 % low): none for Gaussian jets, the power-law tail for
    # jets_tail; the cores (median) agree
    assert np.mean(out["jets"] < 0.75) < 1e-3
    assert np.mean(out["jets_tail"] < 0.75) > 0.01
    assert np.median(out["jets_tail"]) == pytest.approx(np.median(out["jets"]), abs=0.01)


def test_response_agreement_and_efficiency() -> None:
    rng = np.random.default_rng(0)
    n = 40_000
    pt = rng.uniform(20, 100, n)
    eta = rng.uniform(0, 4, n)
    r1 = 1 + 0.1 * rng.standard_normal(n)
    r2 = 1 + 0.13 * rng.standard_normal(n)  # 30 % wider: every bin fails
    same = metrics.response_agreement(
        r1, eta, pt, r1, eta, pt, [0, 2, 4], [20, 60, 100], min_count=100
    )
    wide = metrics.response_agreement(
        r1, eta, pt, r2, eta, pt, [0, 2, 4], [20, 60, 100], min_count=100
    )
    assert same["frac_rms90"] == 1.0 and same["n_bins"] == 4.0
    assert wide["frac_rms90"] == 0.0 and wide["frac_mean"] == 1.0
    none = metrics.response_agreement(r1, eta, pt, r1, eta, pt, [0, 4], [20, 100], min_count=10**6)
    assert math.isnan(none["frac_rms90"])
    eff = metrics.efficiency_vs(eta, eta < 2.5, [0, 2.5, 4])
    np.testing.assert_allclose(eff, [1.0, 0.0])


def test_gaussian_baseline_reproduces_a_gaussian_detector(tmp_path: Path) -> None:
    train = load_objects("jets", 30_000, 1, tmp_path)
    ev = load_objects("jets", 30_000, 2, tmp_path)
    g = GaussianSmearing().fit(train)
    reco, ok = g.smear(ev.truth, 0)
    fwd = np.abs(ev.truth[:, 1]) > 2.5
    assert ok[fwd].mean() == pytest.approx(0.80, abs=0.02)
    auc = metrics.detector_auc(ev.truth[ev.ok], ev.reco[ev.ok], ev.truth[ok], reco[ok])
    assert auc < 0.56  # per-bin Gaussians describe the Gaussian jets detector well


@pytest.mark.slow  # three 2-trial Ray scans: ~60-80 s on a quiet 2-core machine
def test_generative_study_fast(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "s7"
    res = generative_jets.run(out, fast=True, cache_dir=tmp_path / "cache")
    printed = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"flow_auc=\d\.\d{4}", printed[-1]), printed[-1]
    for name in ("table.md", "table_0.csv", "response_jets.png", "rms90_jets.png"):
        assert (out / name).exists(), name
    assert (out / "efficiency_jets_tail.png").exists()
    rows = common.read_csv(out / "table_0.csv")
    jets = {r["contender"]: r for r in rows if r["sample"] == "jets"}
    assert set(jets) == {"simulator (reseed)", "Gaussian per |η| bin", "flow", "gan", "resolution"}
    tail = {r["contender"]: r for r in rows if r["sample"] == "jets_tail"}
    scans = {(r["sample"], r["family"]): r for r in common.read_csv(out / "table_1.csv")}
    for fam in ("flow", "gan", "resolution"):
        assert re.fullmatch(r"[0-9a-f]{32}", jets[fam]["scan parent run"]), jets[fam]
        assert int(jets[fam]["trials"]) == 2
        # jets_tail: the jets scan's best configuration, trained again on the tail sample
        assert tail[fam]["scan parent run"] == jets[fam]["scan parent run"]
        assert scans[("jets_tail", fam)]["scanned on"] == "jets"
        assert float(scans[("jets", fam)]["final training s"]) > 0
    r = res["results"]
    for sample in ("jets", "jets_tail"):
        floor = r[sample]["simulator (reseed)"]
        assert abs(floor["auc"] - 0.5) < 0.03, (sample, floor["auc"])
        assert floor["n_bins"] >= 10 and floor["frac_rms90"] >= 0.5  # ≥ 1000 jets: ~3 % stat.
        for name, m in r[sample].items():
            if name == "simulator":
                continue
            for key in ("frac_rms90", "frac_mean"):
                assert math.isnan(m[key]) or 0.0 <= m[key] <= 1.0, (sample, name, key)
            assert 0.0 <= m["auc"] <= 1.0
            assert m["speed"] > 0
    # the Gaussian baseline cannot make the Crystal Ball tail: measurably above the floor
    tail_gauss = r["jets_tail"]["Gaussian per |η| bin"]["auc"]
    assert tail_gauss > r["jets_tail"]["simulator (reseed)"]["auc"] + 0.02
    assert tail_gauss > r["jets"]["Gaussian per |η| bin"]["auc"] + 0.01
    assert res["flow_auc"] == pytest.approx(r["jets"]["flow"]["auc"])


@pytest.mark.parametrize("family", ["flow", "gan"])
def test_efficiency_head_learns_the_lost_fraction(family: str) -> None:
    import torch

    from models.base import DataDims
    from models.flow import FlowConfig, FlowNet
    from models.gan import GANConfig, GANNet

    torch.manual_seed(0)
    dims = DataDims(n_inputs=2, n_targets=2)
    model: FlowNet | GANNet
    if family == "flow":
        model = FlowNet(FlowConfig(efficiency_head=True, transforms=1, hidden_features=16), dims)
    else:
        model = GANNet(
            GANConfig(efficiency_head=True, ema=0.9, spectral_norm=True, n_critic=1), dims
        )
    y_mean, y_std = torch.tensor([1.0, 2.0]), torch.tensor([2.0, 1.0])
    model.set_standardisation(torch.zeros(2), torch.ones(2), y_mean, y_std)
    x = torch.randn(4000, 2)
    lost = x[:, 0] > 0.5  # lost objects: all-zero physical targets
    raw = torch.randn(4000, 2) + 3.0
    raw[lost] = 0.0
    y = (raw - y_mean) / y_std
    assert torch.equal(model.reconstructed(y), ~lost)
    opt = model.configure_optimizers(1e-2)

    def step(o: torch.optim.Optimizer, loss: torch.Tensor) -> None:
        o.zero_grad()
        loss.backward()
        o.step()

    for i in range(100):
        j = (i % 4) * 1000
        model.training_step({"x": x[j : j + 1000], "y": y[j : j + 1000]}, opt, step)
    assert math.isfinite(model.evaluate({"x": x[:300], "y": y[:300]})["val_loss"])
    s = model.sample(x, torch.Generator().manual_seed(0))
    sampled_lost = s.abs().amax(dim=1) == 0
    assert float(sampled_lost[lost].float().mean()) > 0.9  # the head follows the condition
    assert float(sampled_lost[~lost].float().mean()) < 0.1
