"""Iterative prior update of unfolding-as-classification (the reweighting of study 3).

A classifier trained on truth proportions π₀ gives p₀(t | x) ∝ p(x | t) π₀(t). Iteration k
replaces π₀ by the normalised unfolded result of iteration k − 1 through Bayes' theorem,
``p_k(t | x) ∝ p₀(t | x) · π_{k−1}(t) / π₀(t)``, renormalised per event: the EM update of the
truth proportions (Saerens et al. 2002), with the same fixed point as D'Agostini's IBU.

.. code-block:: python

    from models.prior import iterative_prior_update
    hists = iterative_prior_update(probs, train_truth_counts, 2)   # [it 0, it 1, it 2]
    hists = iterative_prior_update(probs, pi0, 2, weights=w)       # per-event weights (bootstrap)
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["iterative_prior_update"]


def iterative_prior_update(
    probs: ArrayLike,
    train_prior: ArrayLike,
    n_iterations: int,
    weights: ArrayLike | None = None,
) -> list[NDArray[np.float64]]:
    """Unfolded histograms of iterations ``0..n_iterations``.

    ``probs`` (events, bins): the classifier's p₀(t | x); ``train_prior``: the truth histogram
    (or fractions) it was trained on; ``weights`` (events,): per-event weights (1 by default),
    e.g. Poisson bootstrap weights. Iteration 0 is the weighted sum of probabilities. Rows whose
    probabilities are all zero (events that cannot be unfolded) stay zero.
    """
    p0 = np.asarray(probs, np.float64)
    pi0 = np.asarray(train_prior, np.float64)
    if p0.ndim != 2 or p0.shape[1] != len(pi0):
        raise ValueError(f"probs shape {p0.shape} does not match {len(pi0)} prior bins")
    if n_iterations < 0:
        raise ValueError("n_iterations must be >= 0")
    w = np.ones(len(p0)) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    if len(w) != len(p0):
        raise ValueError(f"{len(w)} weights for {len(p0)} events")
    pi0 = pi0 / pi0.sum()
    hists = [w @ p0]
    for _ in range(n_iterations):
        total = hists[-1].sum()
        pi = hists[-1] / total if total > 0 else pi0
        ratio = np.where(pi0 > 0, pi / np.where(pi0 > 0, pi0, 1.0), 0.0)
        q = p0 * ratio[None, :]
        norm = q.sum(axis=1, keepdims=True)
        q = np.where(norm > 0, q / np.where(norm > 0, norm, 1.0), 0.0)
        hists.append(w @ q)
    return hists
