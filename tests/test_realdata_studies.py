"""Studies 5 and 6 (benchmarks/studies/unfold_cms.py, prior_shift_closure.py) in fast mode, and
the CMS selection that feeds a zll-trained model.

The fast modes run the real chain — simulate, preprocess, a 2-trial Ray scan that registers
its models in a sqlite MLflow store, ``scan.apply`` through the registry — on tiny samples;
the assertions check numbers that must hold even for briefly trained models.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmarks.studies import cms_selection, prior_shift_closure, unfold_cms

REPO = Path(__file__).resolve().parents[1]


def _zmumu() -> dict[str, np.ndarray]:
    import skhep_testdata
    import uproot

    path = skhep_testdata.data_path("uproot-Zmumu.root")
    return uproot.open(path)["events"].arrays(library="np")  # type: ignore[no-any-return]


def test_cms_selection_keeps_one_global_pair_per_event_leading_first() -> None:
    import skhep_testdata
    import uproot

    t = _zmumu()
    branches = ["Type", "M", "Q1", "Q2", "pt1", "pt2", "eta1", "eta2", "phi1", "phi2"]
    path = skhep_testdata.data_path("uproot-Zmumu.root")
    events = uproot.open(path)["events"].arrays(branches, library="ak")
    cols = cms_selection.global_dimuons(events)
    keep = (t["Type"] == "GG") & (t["Q1"] * t["Q2"] < 0)
    keep &= np.abs(t["M"] - 91.1876) < 0.25 * 91.1876
    np.testing.assert_array_equal(cols["entry"], np.flatnonzero(keep))
    assert len(cols["entry"]) == 485
    ids = set(zip(t["Run"][keep], t["Event"][keep], strict=True))
    assert len(ids) == 484  # one candidate per event but one
    assert np.all(cols["reco_l1_pt"] >= cols["reco_l2_pt"])
    hi = np.maximum(t["pt1"], t["pt2"])[keep]
    np.testing.assert_allclose(cols["reco_l1_pt"], hi)
    lead_is_2 = (t["pt2"] > t["pt1"])[keep]
    assert 0.3 < lead_is_2.mean() < 0.7  # the file order is not pT order: the swap matters
    np.testing.assert_allclose(cols["reco_l1_eta"][lead_is_2], t["eta2"][keep][lead_is_2])


def test_cms_and_training_configs_share_features_and_edges() -> None:
    cms = yaml.safe_load((REPO / "configs" / "preprocess_zmumu_cms.yaml").read_text())
    zll = yaml.safe_load((REPO / "configs" / "preprocess_zll_cms.yaml").read_text())
    full = yaml.safe_load((REPO / "configs" / "preprocess_zll.yaml").read_text())
    assert cms["features"] == zll["features"]
    assert set(zll["features"]) < set(full["features"])  # the common subset (no isolation)
    assert cms["unfold"]["edges"] == zll["unfold"]["edges"] == full["unfold"]["edges"]
    assert cms["unfold"]["reco"] == zll["unfold"]["reco"] == "reco_mass"


@pytest.mark.slow  # a 2-trial Ray scan + three applications: ~50 s on a quiet 2-core machine
def test_unfold_cms_fast(tmp_path: Path) -> None:
    out = tmp_path / "cms"
    res = unfold_cms.run(out, fast=True, events=12_000, bootstrap=10, cache_dir=tmp_path / "cache")
    for name in ("table.md", "table_0.csv", "cms_unfolded.png", "apply-v1", "apply-v2"):
        assert (out / name).exists(), name
    assert [m["version"] for m in res["models"][:2]] == ["1", "2"]
    u1 = res["applied"]["v1"].unfolding
    u2 = res["applied"]["v2"].unfolding
    assert u1.reco.sum() == 485  # the GG candidates inside 65-115 GeV
    assert len(u1.iterations) == 3
    for h in u1.iterations:  # the prior update redistributes, it keeps the event count
        assert math.isclose(float(h.sum()), 485.0, rel_tol=1e-6)
    assert np.all(u1.iteration_stderr[0] > 0)
    assert not np.allclose(u1.iterations[0], u2.iterations[0])  # two different models
    assert 85.0 < res["figures"]["mean_v1"] < 95.0
    summary = res["tables"][0]
    labels = [r[0] for r in summary.rows]
    assert "ML v1, prior iteration 2" in labels and any(x.startswith("IBU") for x in labels)


@pytest.mark.slow  # a 2-trial Ray scan + three applications: ~35 s on a quiet 2-core machine
def test_prior_shift_closure_fast(tmp_path: Path) -> None:
    out = tmp_path / "closure"
    res = prior_shift_closure.run(out, fast=True, cache_dir=tmp_path / "cache")
    assert (out / "table.md").exists() and (out / "closure_bias.png").exists()
    truths = res["truths"]
    plus, minus, control = truths["+20%"], truths["-20%"], truths["+0% (control)"]
    assert not np.array_equal(plus, minus)
    edges = np.linspace(65.0, 115.0, 41)
    lo, hi = edges[:-1] < 80.0, edges[1:] > 100.0  # the tilt moves the tails in opposite ways
    assert plus[hi].sum() / plus[lo].sum() > minus[hi].sum() / minus[lo].sum()
    assert control.sum() > 0
    table = res["tables"][0]
    assert [r[0] for r in table.rows] == ["+20%", "-20%", "+0% (control)"]
    for row in table.rows:
        ml = row[3:6]  # ML with 0/1/2 prior iterations
        ibu = row[6]
        assert all(math.isfinite(v) and v > 0 for v in [*ml, ibu]), row
    for label, r in res["results"].items():
        m, u = r.metrics, r.unfolding
        assert {"chi2_ndf_iter0", "chi2_ndf_iter2", "ibu_chi2_ndf"} <= set(m), label
        cov = u.covariance
        np.testing.assert_allclose(cov, cov.T, atol=1e-9)
        w = np.linalg.eigvalsh(cov)
        assert w.min() >= -1e-9 * max(w.max(), 1.0), (label, w.min())
        np.testing.assert_array_equal(u.truth, truths[label])
