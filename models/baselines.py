"""Classical unfolding baselines (numpy/scipy, float64, no training).

Conventions: ``R[j, i] = P(reco bin j | truth bin i)``; a column sums to the efficiency of
truth bin i (events whose reco falls outside the binning count in the denominator). Unfolded
results are efficiency-corrected truth counts.

.. code-block:: python

    resp = response_matrix(truth_bin, reco_bin, n_truth=20, n_reco=20)
    x_inv = unfold_inversion(resp.matrix, reco_hist)
    x_ibu = unfold_ibu(resp.matrix, reco_hist, n_iterations=4, prior="truth", truth_mc=resp.truth)
    best = lcurve(resp.matrix, reco_hist)            # τ at the L-curve's maximum curvature
    x_tik = unfold_tikhonov(resp.matrix, reco_hist, best.tau)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

F64 = NDArray[np.float64]

__all__ = [
    "LCurve",
    "Response",
    "curvature_matrix",
    "lcurve",
    "response_matrix",
    "unfold_ibu",
    "unfold_inversion",
    "unfold_tikhonov",
]


@dataclass(frozen=True)
class Response:
    matrix: F64  # (n_reco, n_truth) P(reco j | truth i)
    counts: F64  # (n_reco, n_truth) (weighted) events with both bins inside
    truth: F64  # (n_truth,) all events per truth bin, reconstructed or not (the MC truth)
    reco: F64  # (n_reco,) reconstructed events per reco bin with truth inside


def response_matrix(
    truth_bin: ArrayLike,
    reco_bin: ArrayLike,
    n_truth: int,
    n_reco: int | None = None,
    weights: ArrayLike | None = None,
) -> Response:
    """Response from (truth_bin, reco_bin) pairs; ``-1`` marks outside the binning.

    Events with truth outside are ignored (they are fakes/background for the truth binning);
    events with reco outside lower the efficiency of their truth bin.
    """
    n_reco = n_truth if n_reco is None else n_reco
    t = np.asarray(truth_bin, dtype=np.int64)
    r = np.asarray(reco_bin, dtype=np.int64)
    w = np.ones(len(t)) if weights is None else np.asarray(weights, dtype=np.float64)
    if not (len(t) == len(r) == len(w)):
        raise ValueError("truth_bin, reco_bin and weights must have the same length")
    if np.any(t >= n_truth) or np.any(r >= n_reco):
        raise ValueError(f"bin index beyond n_truth={n_truth} / n_reco={n_reco}")
    has_t = t >= 0
    truth = np.bincount(t[has_t], weights=w[has_t], minlength=n_truth).astype(np.float64)
    both = has_t & (r >= 0)
    counts = np.zeros((n_reco, n_truth))
    np.add.at(counts, (r[both], t[both]), w[both])
    with np.errstate(invalid="ignore", divide="ignore"):
        matrix = np.where(truth > 0, counts / np.where(truth > 0, truth, 1.0), 0.0)
    return Response(matrix, counts, truth, counts.sum(axis=1))


def unfold_inversion(matrix: ArrayLike, measured: ArrayLike) -> F64:
    """``R⁻¹ y`` (least squares via the pseudo-inverse when R is not square)."""
    a = np.asarray(matrix, dtype=np.float64)
    y = np.asarray(measured, dtype=np.float64)
    if a.shape[0] == a.shape[1]:
        return np.asarray(np.linalg.solve(a, y))
    return np.asarray(np.linalg.lstsq(a, y, rcond=None)[0])


def unfold_ibu(
    matrix: ArrayLike,
    measured: ArrayLike,
    n_iterations: int = 4,
    prior: str | ArrayLike = "flat",
    truth_mc: ArrayLike | None = None,
) -> F64:
    """Iterative Bayesian unfolding (D'Agostini 1995).

    Each iteration: ``P(t_i | r_j) = R_ji p_i / Σ_k R_jk p_k``;
    ``x_i = (1/ε_i) Σ_j P(t_i | r_j) y_j``; the prior becomes ``x / Σ x``.
    ``prior``: ``"flat"``, ``"truth"`` (the MC truth ``truth_mc``), or an explicit array.
    """
    a = np.asarray(matrix, dtype=np.float64)
    y = np.asarray(measured, dtype=np.float64)
    n_truth = a.shape[1]
    if n_iterations < 1:
        raise ValueError("n_iterations must be >= 1")
    if isinstance(prior, str):
        if prior == "flat":
            p = np.full(n_truth, 1.0 / n_truth)
        elif prior == "truth":
            if truth_mc is None:
                raise ValueError("prior='truth' needs truth_mc")
            p = np.asarray(truth_mc, dtype=np.float64)
        else:
            raise ValueError(f"unknown prior {prior!r} (use 'flat', 'truth' or an array)")
    else:
        p = np.asarray(prior, dtype=np.float64)
    p = p / p.sum()
    eff = a.sum(axis=0)
    x = p * y.sum()
    for _ in range(n_iterations):
        folded = a @ p  # Σ_k R_jk p_k
        with np.errstate(invalid="ignore", divide="ignore"):
            post = np.where(folded[:, None] > 0, a * p[None, :] / folded[:, None], 0.0)
            x = np.where(eff > 0, (post * y[:, None]).sum(axis=0) / np.where(eff > 0, eff, 1), 0)
        total = x.sum()
        if total <= 0:
            break
        p = x / total
    return np.asarray(x, dtype=np.float64)


def curvature_matrix(n: int) -> F64:
    """Second-derivative operator L, shape (n−2, n), rows ``[…, 1, −2, 1, …]``."""
    if n < 3:
        raise ValueError("curvature regularisation needs at least 3 bins")
    lm = np.zeros((n - 2, n))
    for i in range(n - 2):
        lm[i, i : i + 3] = (1.0, -2.0, 1.0)
    return lm


def _weights(y: F64, errors: ArrayLike | None) -> F64:
    # Poisson errors of the measurement, floored at 1 so empty bins keep a finite weight.
    err = np.sqrt(np.maximum(y, 1.0)) if errors is None else np.asarray(errors, np.float64)
    return 1.0 / err


def unfold_tikhonov(
    matrix: ArrayLike,
    measured: ArrayLike,
    tau: float,
    *,
    errors: ArrayLike | None = None,
    bias: ArrayLike | None = None,
    regularisation: ArrayLike | None = None,
) -> F64:
    """TUnfold-like least squares with curvature regularisation.

    Minimises ``||W (R x − y)||² + τ² ||L (x − x0)||²`` with ``W = diag(1/σ_y)``
    (σ_y Poisson unless ``errors`` given), L the second derivative (or ``regularisation``),
    and x0 = ``bias`` (0 by default; the MC truth is the usual choice).
    """
    a = np.asarray(matrix, dtype=np.float64)
    y = np.asarray(measured, dtype=np.float64)
    w = _weights(y, errors)
    lm = curvature_matrix(a.shape[1]) if regularisation is None else np.asarray(regularisation)
    x0 = np.zeros(a.shape[1]) if bias is None else np.asarray(bias, dtype=np.float64)
    aw = a * w[:, None]
    lhs = aw.T @ aw + tau**2 * (lm.T @ lm)
    rhs = aw.T @ (w * y) + tau**2 * (lm.T @ (lm @ x0))
    return np.asarray(np.linalg.solve(lhs, rhs))


@dataclass(frozen=True)
class LCurve:
    tau: float  # τ at maximum curvature
    taus: F64
    log_residual: F64  # log ||W (R x_τ − y)||
    log_regularisation: F64  # log ||L (x_τ − x0)||
    curvature: F64


def lcurve(
    matrix: ArrayLike,
    measured: ArrayLike,
    taus: ArrayLike | None = None,
    *,
    errors: ArrayLike | None = None,
    bias: ArrayLike | None = None,
) -> LCurve:
    """Scan τ and pick the point of maximum curvature of (log residual, log regularisation).

    The default grid is log-spaced over six decades below the largest singular value of
    ``W R`` (so it is invariant under rescaling the data). Curvature of the parametric curve
    (ρ(t), η(t)), t = log τ: ``κ = (ρ' η'' − ρ'' η') / (ρ'² + η'²)^{3/2}``; the two end points
    of the grid are never chosen.
    """
    a = np.asarray(matrix, dtype=np.float64)
    y = np.asarray(measured, dtype=np.float64)
    w = _weights(y, errors)
    lm = curvature_matrix(a.shape[1])
    x0 = np.zeros(a.shape[1]) if bias is None else np.asarray(bias, dtype=np.float64)
    if taus is None:
        smax = float(np.linalg.svd(a * w[:, None], compute_uv=False)[0])
        grid = smax * np.logspace(-6, 0, 61)
    else:
        grid = np.asarray(taus, dtype=np.float64)
    if len(grid) < 5:
        raise ValueError("lcurve needs at least 5 values of tau")
    rho = np.empty(len(grid))
    eta = np.empty(len(grid))
    for k, tau in enumerate(grid):
        x = unfold_tikhonov(a, y, float(tau), errors=errors, bias=x0)
        rho[k] = np.log(max(float(np.linalg.norm(w * (a @ x - y))), 1e-300))
        eta[k] = np.log(max(float(np.linalg.norm(lm @ (x - x0))), 1e-300))
    t = np.log(grid)
    d_rho, d_eta = np.gradient(rho, t), np.gradient(eta, t)
    dd_rho, dd_eta = np.gradient(d_rho, t), np.gradient(d_eta, t)
    with np.errstate(invalid="ignore", divide="ignore"):
        kappa = (d_rho * dd_eta - dd_rho * d_eta) / (d_rho**2 + d_eta**2) ** 1.5
    kappa = np.where(np.isfinite(kappa), kappa, -np.inf)
    best = int(np.argmax(kappa[1:-1])) + 1
    return LCurve(float(grid[best]), grid, rho, eta, kappa)
