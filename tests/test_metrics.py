"""models.metrics against hand-computed values.

Run: ``.venv/bin/python -m pytest tests/test_metrics.py -q``
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.stats import anderson_ksamp, ks_2samp

from models.metrics import (
    ad_binned,
    ad_pvalue_asymptotic,
    chi2,
    chi2_ndf,
    classifier_auc,
    ks_binned,
    ratio_with_errors,
    resolution_summary,
    rms90,
    unfolding_scores,
    wasserstein_per_feature,
)


def test_chi2_poisson_errors_of_both() -> None:
    # bins: (10-12)^2/22 = 0.181818..., (20-16)^2/36 = 0.444444..., (0, 0) skipped
    # chi2 = 0.626262..., ndf = 2, chi2/ndf = 0.313131...
    value, ndf = chi2([10, 20, 0], [12, 16, 0])
    assert ndf == 2
    assert value == pytest.approx(4 / 22 + 16 / 36, rel=1e-12)
    assert chi2_ndf([10, 20, 0], [12, 16, 0]) == pytest.approx(0.3131313131313131, rel=1e-12)
    assert chi2_ndf([5.5, 0.5], [5.5, 0.5]) == 0.0
    assert math.isnan(chi2_ndf([0, 0], [0, 0]))
    with pytest.raises(ValueError, match="bin count"):
        chi2([1, 2], [1, 2, 3])


def test_ks_binned_hand_computed() -> None:
    # C1 = [2, 3, 4]/4 = [0.5, 0.75, 1], C2 = [1, 2, 4]/4 = [0.25, 0.5, 1] -> D = 0.25
    # n_e = 4*4/8 = 2, lambda = 0.25*sqrt(2); p = 2 sum_k (-1)^(k-1) exp(-2 k^2 lambda^2)
    res = ks_binned([2, 1, 1], [1, 1, 2])
    assert res.statistic == pytest.approx(0.25, abs=1e-15)
    lam2 = 0.125
    series = 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * lam2) for k in range(1, 200))
    assert res.pvalue == pytest.approx(series, rel=1e-9)
    assert 0.99 < res.pvalue < 1.0  # the series is 0.998..


def test_ks_binned_statistic_matches_unbinned_on_integer_histograms() -> None:
    rng = np.random.default_rng(1)
    h1, h2 = rng.integers(0, 30, 12), rng.integers(0, 30, 12)
    s1, s2 = np.repeat(np.arange(12), h1), np.repeat(np.arange(12), h2)
    assert ks_binned(h1, h2).statistic == pytest.approx(ks_2samp(s1, s2).statistic, rel=1e-12)
    # Non-integer contents (sum of probabilities) are used as they are.
    assert ks_binned([0.5, 0.5], [0.25, 0.75]).statistic == pytest.approx(0.25)


def test_ad_binned_hand_computed() -> None:
    # h1 = [1, 0], h2 = [0, 1]: N = 2, l = [1, 1], B_a = [0.5, 1.5],
    # M_a(1) = [0.5, 1], M_a(2) = [0, 0.5]; every denominator B_a (N - B_a) - N l / 4 = 0.25,
    # every numerator (N M_a - n B_a)^2 = 0.25, weights l/N = 0.5 ->
    # A2 = (N-1)/N * sum_i (1/n_i) * (0.5 + 0.5) = 0.5 * 2 = 1.0
    res = ad_binned([1, 0], [0, 1])
    assert res.statistic == pytest.approx(1.0, rel=1e-12)
    # Identical histograms: every numerator vanishes.
    assert ad_binned([3, 5, 2], [3, 5, 2]).statistic == pytest.approx(0.0, abs=1e-12)


def test_ad_binned_matches_scipy_midrank_statistic() -> None:
    rng = np.random.default_rng(2)
    h1, h2 = rng.integers(0, 25, 9), rng.integers(5, 25, 9)
    s1, s2 = np.repeat(np.arange(9.0), h1), np.repeat(np.arange(9.0), h2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns that its p-value is capped
        ref = anderson_ksamp([s1, s2], midrank=True)
    assert ad_binned(h1, h2).standardized == pytest.approx(ref.statistic, rel=1e-9)


def test_ad_asymptotic_pvalue_critical_points() -> None:
    # Anderson & Darling (1954) asymptotic critical values: 5 % at 2.492, 1 % at 3.857.
    assert ad_pvalue_asymptotic(2.492) == pytest.approx(0.05, abs=5e-4)
    assert ad_pvalue_asymptotic(3.857) == pytest.approx(0.01, abs=5e-4)
    assert ad_pvalue_asymptotic(0.0) == 1.0


def test_unfolding_scores_identical_and_different() -> None:
    same = unfolding_scores([100, 200, 150], [100, 200, 150])
    assert same["chi2_ndf"] == 0.0 and same["ks"] == 1.0 and same["ad"] > 0.99
    diff = unfolding_scores([1000, 100, 10], [10, 100, 1000])
    assert diff["chi2_ndf"] > 100 and diff["ks"] < 1e-6 and diff["ad"] < 1e-3


def test_ratio_with_errors_hand_computed() -> None:
    # 4/1 = 4 +- 4 sqrt(1/4 + 1) = 4.47214; 9/4 = 2.25 +- 2.25 sqrt(1/9 + 1/4) = 1.35208
    r, e = ratio_with_errors([4, 9, 3, 0], [1, 4, 0, 2])
    np.testing.assert_allclose(r[:2], [4.0, 2.25], rtol=1e-12)
    np.testing.assert_allclose(
        e[:2], [4 * math.sqrt(1.25), 2.25 * math.sqrt(1 / 9 + 1 / 4)], rtol=1e-12
    )
    assert math.isnan(r[2]) and math.isnan(e[2])  # empty denominator
    assert r[3] == 0.0 and math.isnan(e[3])


def test_wasserstein_per_feature_hand_computed() -> None:
    # feature 0: every point shifted by 5 -> W1 = 5; feature 1: one of three points moves 1 -> 1/3
    a = np.array([[0.0, 0.0], [1.0, 0.0], [3.0, 1.0]])
    b = np.array([[5.0, 0.0], [6.0, 1.0], [8.0, 1.0]])
    np.testing.assert_allclose(wasserstein_per_feature(a, b), [5.0, 1 / 3], rtol=1e-12)


@pytest.mark.parametrize("model", ["hgb", "logreg"])
def test_classifier_auc(model: str) -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(1500, 2)), rng.normal(size=(1500, 2))
    assert abs(classifier_auc(a, b, model=model) - 0.5) < 0.06
    assert classifier_auc(a, b + 3.0, model=model) > 0.95
    with pytest.raises(ValueError, match="unknown classifier"):
        classifier_auc(a, b, model="svm")


def test_rms90_hand_computed() -> None:
    # 1..20: floor(0.05*20) = 1 value dropped per side -> 2..19, std = sqrt((18^2-1)/12)
    assert rms90(np.arange(1.0, 21.0)) == pytest.approx(math.sqrt(323 / 12), rel=1e-12)
    # An outlier drops out of RMS90 but not RMS.
    v = np.r_[np.zeros(19), 100.0]
    assert rms90(v) == 0.0 and np.std(v) > 20


def test_resolution_summary_hand_computed() -> None:
    delta = [1, 2, 3, 4, -1, 1, 7, 9]
    eta = [0.1, 0.2, 0.3, 0.1, 1.0, 1.5, 0.5, 3.0]  # the last is outside the eta edges
    pt = [30, 30, 30, 30, 30, 30, 80, 30]
    out = resolution_summary(delta, eta, pt, eta_edges=[0, 0.8, 2.5], pt_edges=[20, 50, 100])
    assert out["count"].tolist() == [[4, 1], [2, 0]]
    # bin (0, 0): [1, 2, 3, 4] -> mean 2.5, RMS sqrt(1.25), RMS90 the same (nothing dropped)
    assert out["mean"][0, 0] == pytest.approx(2.5)
    assert out["rms"][0, 0] == pytest.approx(math.sqrt(1.25))
    assert out["rms90"][0, 0] == pytest.approx(math.sqrt(1.25))
    # bin (1, 0): [-1, 1] -> mean 0, RMS 1
    assert out["mean"][1, 0] == pytest.approx(0.0) and out["rms"][1, 0] == pytest.approx(1.0)
    assert np.isnan(out["mean"][0, 1]) and np.isnan(out["rms"][1, 1])  # < min_count events
