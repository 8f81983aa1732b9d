"""Unfolding baselines recover a known truth through a known response.

Run: ``.venv/bin/python -m pytest tests/test_baselines.py -q``
"""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from scipy.stats import norm

from models.baselines import (
    curvature_matrix,
    lcurve,
    response_matrix,
    unfold_ibu,
    unfold_inversion,
    unfold_tikhonov,
)

N = 20


@pytest.fixture(scope="module")
def setup() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gaussian smearing (σ = 0.8 bins, 90 % efficiency) of a tilted peak."""
    centres, edges = np.arange(N) + 0.5, np.arange(N + 1.0)
    r = (
        np.array(
            [
                [
                    norm.cdf(edges[j + 1], centres[i], 0.8) - norm.cdf(edges[j], centres[i], 0.8)
                    for i in range(N)
                ]
                for j in range(N)
            ]
        )
        * 0.9
    )
    truth = 1e5 * norm.pdf(centres, 10, 3) * (1 + 0.02 * centres)
    return r, truth, r @ truth


def test_response_matrix_hand_computed() -> None:
    # truth bin 0: 3 events, reco (0, 1, 0); truth bin 1: 3 events, reco (1, -1, 1);
    # one event with truth outside is ignored.
    resp = response_matrix([0, 0, 1, 1, 1, 0, -1], [0, 1, 1, -1, 1, 0, 0], n_truth=2)
    np.testing.assert_allclose(resp.matrix, [[2 / 3, 0.0], [1 / 3, 2 / 3]], rtol=1e-12)
    np.testing.assert_allclose(resp.truth, [3, 3])
    np.testing.assert_allclose(resp.matrix.sum(axis=0), [1.0, 2 / 3])  # efficiencies
    with pytest.raises(ValueError, match="beyond n_truth"):
        response_matrix([2], [0], n_truth=2)


def test_inversion_exact_on_expected_counts(setup: tuple[np.ndarray, ...]) -> None:
    r, truth, y = setup
    np.testing.assert_allclose(unfold_inversion(r, y), truth, rtol=1e-9)


def test_ibu_truth_prior_is_exact_and_flat_prior_converges(setup: tuple[np.ndarray, ...]) -> None:
    r, truth, y = setup
    np.testing.assert_allclose(
        unfold_ibu(r, y, n_iterations=1, prior="truth", truth_mc=truth), truth, rtol=1e-12
    )
    errors = [np.abs(unfold_ibu(r, y, n) / truth - 1).max() for n in (1, 4, 20, 200, 1000)]
    assert all(b < a for a, b in pairwise(errors)), errors
    assert errors[-1] < 2e-3
    with pytest.raises(ValueError, match="truth_mc"):
        unfold_ibu(r, y, prior="truth")


def test_tikhonov_zero_tau_equals_inversion(setup: tuple[np.ndarray, ...]) -> None:
    r, truth, y = setup
    np.testing.assert_allclose(unfold_tikhonov(r, y, 1e-9), unfold_inversion(r, y), rtol=1e-6)
    # With the truth as bias and exact data both terms vanish at x = truth, for any tau.
    for tau in (1.0, 100.0):
        np.testing.assert_allclose(unfold_tikhonov(r, y, tau, bias=truth), truth, rtol=1e-6)
    # Without a bias a large tau pulls the peak down (the curvature penalty at work).
    assert unfold_tikhonov(r, y, 100.0)[10] < 0.9 * truth[10]


def test_curvature_matrix() -> None:
    lm = curvature_matrix(4)
    np.testing.assert_array_equal(lm, [[1, -2, 1, 0], [0, 1, -2, 1]])
    assert np.allclose(lm @ np.array([1.0, 2.0, 3.0, 4.0]), 0)  # a line has no curvature


def test_lcurve_picks_a_sane_tau(setup: tuple[np.ndarray, ...]) -> None:
    r, truth, y = setup
    noisy = np.random.default_rng(0).poisson(y).astype(np.float64)
    best = lcurve(r, noisy)
    assert best.taus[0] < best.tau < best.taus[-1]
    assert np.all(np.diff(best.log_residual) >= -1e-9)  # residual grows with tau
    assert np.all(np.diff(best.log_regularisation) <= 1e-9)  # curvature shrinks with tau
    x_inv = unfold_inversion(r, noisy)
    x_tik = unfold_tikhonov(r, noisy, best.tau)
    err_inv = np.sum((x_inv - truth) ** 2 / truth)
    err_tik = np.sum((x_tik - truth) ** 2 / truth)
    assert err_tik < 0.5 * err_inv  # regularisation tames the inversion's oscillations
    assert abs(x_tik.sum() / truth.sum() - 1) < 0.01
