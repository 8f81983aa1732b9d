"""Fast modes of the four physics studies (benchmarks/studies) on tiny simulated samples.

Each study runs end to end (simulate → ROOT → train through the family API → baselines →
tables + PNGs); the assertions check the table layout, finite numbers and physics that must
hold even for tiny, briefly trained models.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from benchmarks.studies import (
    common,
    falling_spectrum,
    prior_dependence,
    resolution_jets,
    unfolding_table,
)
from models import baselines
from models.manifest import Manifest


def _finite(x: object) -> bool:
    return isinstance(x, float) and math.isfinite(x)


def _long_value(table: common.Table, score: str, method: str, config: str) -> float:
    for row in table.rows:
        if row[0] == score and row[1] == method and row[2] == config:
            return float(row[3])
    raise AssertionError(f"no row {score}/{method}/{config}")


@pytest.mark.slow  # ~10 s alone, several times that on a busy 2-core machine
def test_unfolding_table_fast(tmp_path: Path) -> None:
    out = tmp_path / "u1"
    res = unfolding_table.run(
        out, fast=True, folds=2, bins=(20, 40), events=16_000, epochs=3, cache_dir=tmp_path
    )
    tables = res["tables"]
    assert isinstance(tables, list)
    ks_t, chi2_t, ad_t = (t for t in tables[:3])
    for t in (ks_t, chi2_t, ad_t):
        assert t.columns == ["Method", "20 bins", "40 bins"]
        assert [r[0] for r in t.rows] == list(common.METHODS)
    long = tables[-1]
    assert len(long.rows) == len(common.SCORES) * len(common.METHODS) * 2
    for config in ("20 bins", "40 bins"):
        for m in ("ML", "IBU", "Tikhonov", "Reco (no unfolding)"):
            assert _finite(_long_value(long, "chi2_ndf", m, config))
        # unfolding must beat comparing the measured histogram with the truth as-is
        ibu = _long_value(long, "chi2_ndf", "IBU", config)
        reco = _long_value(long, "chi2_ndf", "Reco (no unfolding)", config)
        assert ibu < 0.5 * reco
        # the calibrated classifier unfolds too, even briefly trained on tiny data
        # (χ²/ndf 0.84 and 0.66 here; 107 and 34 without calibration)
        ml = _long_value(long, "chi2_ndf", "ML", config)
        assert ml < 0.5 * reco
        assert ml < 2.0
        assert _long_value(long, "ks", "Reco (no unfolding)", config) < 0.01
    assert (out / "table.md").read_text().startswith("# Study 1")
    assert (out / "unfolded_20bins.png").stat().st_size > 10_000
    assert len(common.read_csv(out / "table_0.csv")) == len(common.METHODS)
    assert not list(tmp_path.glob(".u1.tmp-*"))


def test_inversion_closes_on_expected_counts(tmp_path: Path) -> None:
    """Folding the truth with the response and inverting gives the truth back (χ² ~ 0)."""
    d = common.zll_events(common.simulate_cached("zll", 16_000, 3, tmp_path))
    edges = np.linspace(65.0, 115.0, 21)
    inside = (d["truth_mass"] >= 65) & (d["truth_mass"] < 115)
    inside &= (d["reco_mass"] >= 65) & (d["reco_mass"] < 115)
    tb = common.bin_index(d["truth_mass"][inside], edges)
    rb = common.bin_index(d["reco_mass"][inside], edges)
    resp = baselines.response_matrix(tb, rb, 20)
    expected = resp.matrix @ resp.truth
    hists, _ = common.baseline_unfold(tb, rb, expected, 20, ibu_iterations=4)
    assert common.scores(hists["Inversion"], resp.truth)["chi2_ndf"] < 1e-12
    # IBU with the right prior is already at the answer too
    assert common.scores(hists["IBU"], resp.truth)["chi2_ndf"] < 1e-6


def test_falling_spectrum_fast(tmp_path: Path) -> None:
    out = tmp_path / "s2"
    res = falling_spectrum.run(out, fast=True, folds=2, events=16_000, epochs=3, cache_dir=tmp_path)
    tables = res["tables"]
    assert isinstance(tables, list)
    assert tables[0].columns == ["Method", "σ = 0.03", "σ = 0.1"]
    long = tables[-1]
    # at 10 % smearing the reco spectrum is visibly distorted; IBU must undo most of it
    ibu = _long_value(long, "chi2_ndf", "IBU", "σ = 0.1")
    reco = _long_value(long, "chi2_ndf", "Reco (no unfolding)", "σ = 0.1")
    assert ibu < reco
    assert _finite(_long_value(long, "chi2_ndf", "ML", "σ = 0.03"))
    assert (out / "unfolded_sigma0.1.png").exists()


def test_iterative_prior_update_recovers_shifted_truth() -> None:
    """Exact likelihoods: the EM prior update moves the unfolded result from the training
    prior towards the (tilted) truth of the data."""
    rng = np.random.default_rng(0)
    n_t = 12
    centres = np.arange(n_t, dtype=np.float64)
    # p(x | t): Gaussian smearing by 1.5 bins, x on a fine grid
    xs = np.linspace(-3, n_t + 2, 200)
    like = np.exp(-0.5 * ((xs[:, None] - centres[None, :]) / 1.5) ** 2)
    like /= like.sum(axis=0, keepdims=True)
    pi0 = np.exp(-0.5 * ((centres - 6) / 3.0) ** 2)
    pi1 = pi0 * (1 + 0.4 * (centres / (n_t - 1) - 0.5) * 2)
    t = rng.choice(n_t, size=100_000, p=pi1 / pi1.sum())
    cdf = np.cumsum(like, axis=0)
    # inverse-CDF draw of x for each event's truth bin
    x_idx = np.minimum((cdf[:, t] < rng.random(len(t))[None, :]).sum(axis=0), len(xs) - 1)
    post = like[x_idx] * (pi0 / pi0.sum())[None, :]
    post /= post.sum(axis=1, keepdims=True)
    truth = np.bincount(t, minlength=n_t).astype(np.float64)
    hists = prior_dependence.iterative_prior_update(post, pi0, 5)
    assert len(hists) == 6
    assert np.allclose([h.sum() for h in hists], len(t))
    b = [float(np.mean(np.abs(prior_dependence.bias_in_sigma(h, truth)))) for h in hists]
    assert b[0] > 3.0  # the training prior shows through
    # the first iterations remove most of it (later ones amplify noise, as in IBU)
    assert b[2] < 0.5 * b[0]
    with pytest.raises(ValueError, match="does not match"):
        prior_dependence.iterative_prior_update(post[:, :-1], pi0, 1)


def test_prior_dependence_fast(tmp_path: Path) -> None:
    out = tmp_path / "s3"
    res = prior_dependence.run(
        out,
        fast=True,
        n_bins=20,
        train_events=16_000,
        test_events=16_000,
        iterations=3,
        retrain_iterations=1,
        epochs=3,
        cache_dir=tmp_path,
    )
    iter_table, per_bin = res["tables"]
    methods = [r[0] for r in iter_table.rows]
    assert methods.count("reweight") == 4 and methods.count("retrain") == 2
    assert iter_table.columns == ["method", "iteration", "mean |bias|/σ", "max |bias|/σ", "χ²/ndf"]
    assert all(_finite(r[2]) and _finite(r[4]) for r in iter_table.rows)
    assert len(per_bin.rows) == 20
    # the unfolded result keeps the number of events (probabilities sum to one per event)
    tilted = res["per_sample"]["tilted"]
    assert all(abs(h.sum() - tilted["truth"].sum()) < 1e-6 * h.sum() for h in tilted["reweight"])
    assert (out / "bias_per_bin.png").exists() and (out / "bias_vs_iteration.png").exists()


def test_resolution_jets_fast(tmp_path: Path) -> None:
    out = tmp_path / "s4"
    resolution_jets.main(
        [
            "--fast",
            "--out",
            str(out),
            "--train-events",
            "8000",
            "--test-events",
            "8000",
            "--epochs",
            "2",
            "--hidden",
            "32",
            "--depth",
            "2",
        ]
    )
    agree = common.read_csv(out / "table_0.csv")
    assert [r["quantity"] for r in agree] == ["pt", "eta", "phi", "m", "all"]
    for r in agree:
        assert int(r["bins used"]) > 0
        assert 0.0 <= float(r["fraction within 5 %"]) <= float(r["fraction within 15 %"]) <= 1.0
    eta = {r["region"]: r for r in common.read_csv(out / "table_1.csv")}
    assert set(eta) == {label for label, _, _ in resolution_jets.ETA_REGIONS}
    # the simulator's forward region: 3x worse resolution and ~80 % efficiency
    fwd, central = eta["|η| > 2.5"], eta["|η| < 0.4"]
    assert float(fwd["RMS90 simulator"]) > 2 * float(central["RMS90 simulator"])
    assert abs(float(fwd["efficiency simulator"]) - 0.80) < 0.05
    assert all(math.isfinite(float(v)) for r in eta.values() for k, v in r.items() if k != "region")
    assert (out / "histograms.png").exists() and (out / "resolution_vs_eta.png").exists()


def test_resolution_class_targets_cover_inefficiency() -> None:
    rng = np.random.default_rng(1)
    n = 5000
    truth = {
        "pt": rng.uniform(20, 200, n),
        "eta": rng.uniform(-3, 3, n),
        "phi": rng.uniform(-np.pi, np.pi, n),
        "m": rng.uniform(1, 20, n),
    }
    reco = {q: v * (1 + 0.05 * rng.standard_normal(n)) for q, v in truth.items()}
    reco["phi"] = np.remainder(reco["phi"] + np.pi, 2 * np.pi) - np.pi
    ok = rng.random(n) < 0.9
    manifest, y = resolution_jets.class_targets(truth, reco, ok, 50, (0.01, 0.99))
    assert y.shape == (n, 4)
    assert np.all(y[~ok] == 50) and np.all((y[ok] >= 0) & (y[ok] < 50))
    assert len(manifest["resolution"]["quantities"]["pt"]["edges"]) == 51
    # accepted by the family's own manifest validation
    spec = common.registry_family("resolution").data_spec(Manifest.from_dict(manifest))
    assert spec.dims.n_classes == (51,) * 4


def test_output_dir_leaves_nothing_on_failure(tmp_path: Path) -> None:
    out = tmp_path / "study"
    with pytest.raises(RuntimeError), common.output_dir(out) as tmp:
        (tmp / "table.md").write_text("partial")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with common.output_dir(out) as tmp:
        (tmp / "table.md").write_text("done")
    assert (out / "table.md").read_text() == "done"


def test_kfold_partitions_rows() -> None:
    folds = common.kfold(103, 10, seed=5)
    assert len(folds) == 10
    allrows = np.concatenate(folds)
    assert sorted(allrows.tolist()) == list(range(103))
    assert {len(f) for f in folds} <= {10, 11}
    with pytest.raises(ValueError):
        common.kfold(10, 1, seed=0)


@pytest.mark.slow  # two spawned processes import torch
def test_parallel_folds_match_serial_folds() -> None:
    rng = np.random.default_rng(11)
    truth = rng.normal(90.0, 6.0, 2400)
    reco = truth + rng.normal(0.0, 3.0, truth.size)
    x = np.stack([reco, rng.normal(size=truth.size)], axis=1)
    edges = np.linspace(75.0, 105.0, 7)
    inside = (truth > edges[0]) & (truth < edges[-1]) & (reco > edges[0]) & (reco < edges[-1])
    x, truth, reco = x[inside], truth[inside], reco[inside]
    cfg = common.UnfoldConfig(train=common.TrainSettings(epochs=2, batch_size=256))
    args = (
        x,
        common.bin_index(truth, edges),
        common.bin_index(reco, edges),
        edges,
        ("reco_mass", "noise"),
        3,
        cfg,
        5,
    )
    with common.torch_threads(1):
        serial = common.unfolding_kfold(*args, log=lambda _: None)
        parallel = common.unfolding_kfold(*args, log=lambda _: None, jobs=2)
    assert len(parallel) == 3
    for a, b in zip(serial, parallel, strict=True):
        np.testing.assert_array_equal(a.hists["Truth"], b.hists["Truth"])
        # Same seeds and one thread on both sides: bit-identical, not merely close.
        np.testing.assert_array_equal(a.hists["ML"], b.hists["ML"])
        assert a.scores == b.scores
