"""Unfold events with one or more models: central value, bootstrap and ensemble covariance,
iterative prior update, classical baselines and closure metrics.

Per event, a model gives probabilities over the truth bins (:meth:`ModelBundle.truth_probabilities`);
the unfolded histogram is their (weighted) sum. Rows outside the edges — in reco, and in truth
when it is known — are dropped first, as ``hepscan preprocess`` does with ``outside: drop``
and the training loop does with its targets.

Uncertainties:

* statistical: a bootstrap over events with Poisson(1) weights (``bootstrap`` replicas, seeded
  by ``seed``); every replica goes through the whole chain (all models, every prior iteration),
  so the covariance is that of the reported result. ``poisson_stderr`` (``sqrt(content)``) is
  reported beside it for comparison.
* ensemble (``len(bundles) > 1``): the sample covariance of the models' unfolded histograms
  (the central value is their mean); added to the statistical one in ``covariance``.

Closure metrics (when truth is known): χ²/ndf with the full covariance,
``(u − t)ᵀ C⁺ (u − t) / rank(C)`` with ``C`` = the unfolded result's covariance plus the Poisson
variance of the truth histogram, ``diag((u + t)/2)`` (its expectation estimated by the mean of
the two, so that neither an empty truth bin nor an empty unfolded bin gets zero variance) —
the full-covariance version of the trial metric ``chi2_ndf_poisson`` (Poisson errors of both
histograms, :func:`models.metrics.chi2_ndf`), reported beside it; KS and AD p-values. IBU (4 iterations, MC-truth
prior) and Tikhonov (curvature, τ from the L-curve, MC truth as bias) unfold the reco histogram
with the training sample's response matrix stored in the bundle, bootstrapped alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from jobs.apply.inputs import Inputs
from models.bundle import ModelBundle, bin_index
from models.errors import ConfigError, InputError

__all__ = ["IBU_ITERATIONS", "UnfoldResult", "covariance_chi2", "unfold_events"]

IBU_ITERATIONS = 4
TAU_GRID = np.logspace(-4.0, 2.0, 61)  # τ / (largest singular value of W·R), as the studies


@dataclass
class UnfoldResult:
    edges: np.ndarray
    quantity: str
    unfolded: np.ndarray  # central value (last prior iteration, ensemble mean)
    cov_stat: np.ndarray
    cov_ensemble: np.ndarray
    reco: np.ndarray  # (weighted) events per reco bin
    truth: np.ndarray | None
    truth_variance: np.ndarray | None  # Poisson variance of the truth histogram, (u + t)/2
    iterations: list[np.ndarray]  # central value of prior iterations 0..N
    iteration_stderr: list[np.ndarray]
    members: list[np.ndarray]  # each model's unfolded histogram (last iteration)
    baselines: dict[str, np.ndarray] = field(default_factory=dict)
    baseline_cov: dict[str, np.ndarray] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def covariance(self) -> np.ndarray:
        return self.cov_stat + self.cov_ensemble

    @property
    def stderr(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.covariance), 0.0, None))

    @property
    def stderr_stat(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.cov_stat), 0.0, None))

    @property
    def stderr_ensemble(self) -> np.ndarray:
        return np.sqrt(np.clip(np.diag(self.cov_ensemble), 0.0, None))

    @property
    def poisson_stderr(self) -> np.ndarray:
        return np.sqrt(np.clip(self.unfolded, 0.0, None))


def covariance_chi2(values: np.ndarray, truth: np.ndarray, cov: np.ndarray) -> tuple[float, int]:
    """``(χ², ndf)`` with the pseudo-inverse of ``cov`` (ndf = its numerical rank)."""
    d = np.asarray(values, np.float64) - np.asarray(truth, np.float64)
    c = 0.5 * (cov + cov.T)
    w, v = np.linalg.eigh(c)
    keep = w > max(float(w.max(initial=0.0)), 1e-300) * 1e-10
    if not keep.any():
        return math.nan, 0
    proj = v[:, keep].T @ d
    return float(np.sum(proj**2 / w[keep])), int(keep.sum())


def _truth_bins(bundle: ModelBundle, inputs: Inputs) -> np.ndarray | None:
    if inputs.has("truth_bin"):
        return np.asarray(inputs.columns["truth_bin"], np.int64)
    name = bundle.unfold_column("truth")
    if inputs.has(name):
        t = np.asarray(inputs.columns[name], np.float64)
        if not np.isfinite(t).all():
            raise InputError(f"{inputs.source}: column {name!r} holds NaN/inf values")
        return bin_index(t, bundle.edges)
    return None


def _baselines(
    bundle: ModelBundle, reco_hists: np.ndarray
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, float]]:
    """IBU and Tikhonov of the central reco histogram (row 0) and of every replica."""
    from models import baselines

    resp = bundle.response
    assert resp is not None
    counts = np.asarray(resp["counts"], np.float64)
    truth_mc = np.asarray(resp["truth"], np.float64)
    matrix = np.where(truth_mc > 0, counts / np.where(truth_mc > 0, truth_mc, 1.0), 0.0)
    measured = reco_hists[0]
    eff = float(counts.sum() / max(truth_mc.sum(), 1.0))

    def bias(m: np.ndarray) -> np.ndarray:
        return truth_mc * m.sum() / max(truth_mc.sum(), 1.0) / max(eff, 1e-12)

    w = 1.0 / np.sqrt(np.maximum(measured, 1.0))
    smax = float(np.linalg.svd(matrix * w[:, None], compute_uv=False)[0])
    tau = baselines.lcurve(matrix, measured, taus=smax * TAU_GRID, bias=bias(measured)).tau
    ibu = [
        baselines.unfold_ibu(matrix, m, IBU_ITERATIONS, prior="truth", truth_mc=truth_mc)
        for m in reco_hists
    ]
    tik = [baselines.unfold_tikhonov(matrix, m, tau, bias=bias(m)) for m in reco_hists]
    central = {"ibu": ibu[0], "tikhonov": tik[0]}
    n = len(measured)
    covs = {"ibu": _cov(np.asarray(ibu[1:]), n), "tikhonov": _cov(np.asarray(tik[1:]), n)}
    return central, covs, {"tikhonov_tau": float(tau), "ibu_iterations": float(IBU_ITERATIONS)}


def _cov(reps: np.ndarray, n: int) -> np.ndarray:
    """Sample covariance of the rows of ``reps`` (zeros with fewer than two rows)."""
    if len(reps) < 2:
        return np.zeros((n, n))
    return np.atleast_2d(np.cov(reps, rowvar=False, ddof=1))


def _scores(values: np.ndarray, truth: np.ndarray, cov: np.ndarray) -> dict[str, float]:
    from models.metrics import chi2_ndf, unfolding_scores

    chi2, ndf = covariance_chi2(values, truth, cov)
    clipped = np.clip(values, 0.0, None)  # KS/AD need non-negative contents (Tikhonov may dip)
    scores = unfolding_scores(clipped, truth)
    return {
        "chi2": chi2,
        "ndf": float(ndf),
        "chi2_ndf": chi2 / ndf if ndf else math.nan,
        "chi2_ndf_poisson": chi2_ndf(clipped, truth),
        "ks": scores["ks"],
        "ad": scores["ad"],
    }


def unfold_events(
    bundles: list[ModelBundle],
    inputs: Inputs,
    *,
    bootstrap: int = 100,
    seed: int = 0,
    prior_iterations: int = 0,
) -> UnfoldResult:
    """Unfold ``inputs`` with ``bundles`` (one model, or an ensemble); see the module docstring."""
    if not bundles:
        raise ConfigError("no model to unfold with")
    if bootstrap < 0 or prior_iterations < 0:
        raise ConfigError("--bootstrap and --prior-iterations must be >= 0")
    first = bundles[0]
    edges = first.edges
    for b in bundles[1:]:
        if not np.array_equal(b.edges, edges):
            raise ConfigError("ensemble members unfold into different bins: cannot combine them")
    n = len(edges) - 1
    where = inputs.source
    reco_bin = first.reco_bin(inputs.columns, where)
    truth_bin = _truth_bins(first, inputs)
    keep = reco_bin >= 0
    if truth_bin is not None:
        keep &= truth_bin >= 0
    counts = {"rows_read": inputs.rows, "rows_outside_edges": int((~keep).sum())}
    if not keep.any():
        raise InputError(f"{where}: no event inside the model's edges {edges[0]}..{edges[-1]}")
    cols = {c: np.asarray(v)[keep] for c, v in inputs.columns.items()}
    reco_bin = reco_bin[keep]
    truth_bin = truth_bin[keep] if truth_bin is not None else None
    weight = np.asarray(cols.get("weight", np.ones(len(reco_bin))), np.float64)
    counts["rows_unfolded"] = len(reco_bin)

    probs = [b.truth_probabilities(cols, where) for b in bundles]
    priors = []
    for b in bundles:
        if prior_iterations and b.response is None:
            raise ConfigError(
                f"--prior-iterations needs the training truth histogram, which the model "
                f"{b.info.get('name') or b.family} lacks (bundle without a response matrix)"
            )
        priors.append(np.asarray(b.response["truth"], np.float64) if b.response else np.ones(n))

    from models.prior import iterative_prior_update

    def chain(w: np.ndarray) -> list[np.ndarray]:
        """Per model, (iterations + 1, bins): every prior iteration for event weights ``w``."""
        return [
            np.asarray(iterative_prior_update(p, pi0, prior_iterations, weights=w))
            for p, pi0 in zip(probs, priors, strict=True)
        ]

    per_model = chain(weight)
    central = np.mean(per_model, axis=0)
    rng = np.random.default_rng(seed)
    reps = np.zeros((bootstrap, prior_iterations + 1, n))
    reco_reps = [np.bincount(reco_bin, weights=weight, minlength=n)[:n]]
    for i in range(bootstrap):
        w = weight * rng.poisson(1.0, len(weight))
        reps[i] = np.mean(chain(w), axis=0)
        reco_reps.append(np.bincount(reco_bin, weights=w, minlength=n)[:n])
    cov_it = [_cov(reps[:, k, :], n) for k in range(prior_iterations + 1)]
    members = [m[-1] for m in per_model]
    cov_ens = _cov(np.asarray(members), n)
    truth = truth_var = None
    if truth_bin is not None:
        truth = np.bincount(truth_bin, weights=weight, minlength=n)[:n]
        w2_per_w = float((weight**2).sum() / max(weight.sum(), 1e-300))  # 1 for unit weights
        truth_var = 0.5 * (np.clip(central[-1], 0.0, None) + truth) * w2_per_w
    result = UnfoldResult(
        edges=edges,
        quantity=first.quantity,
        unfolded=central[-1],
        cov_stat=cov_it[-1],
        cov_ensemble=cov_ens,
        reco=reco_reps[0],
        truth=truth,
        truth_variance=truth_var,
        iterations=list(central),
        iteration_stderr=[np.sqrt(np.clip(np.diag(c), 0.0, None)) for c in cov_it],
        members=members,
        counts=counts,
        settings={
            "bootstrap": bootstrap,
            "seed": seed,
            "prior_iterations": prior_iterations,
            "ensemble": len(bundles),
            "truth_variance_scale": float((weight**2).sum() / max(weight.sum(), 1e-300)),
        },
    )
    if first.response is not None:
        result.baselines, result.baseline_cov, extra = _baselines(first, np.asarray(reco_reps))
        result.settings.update(extra)
    result.metrics = _metrics(result, cov_it)
    return result


def _metrics(r: UnfoldResult, cov_it: list[np.ndarray]) -> dict[str, float]:
    out: dict[str, float] = {
        "events": float(r.counts["rows_unfolded"]),
        "unfolded_total": float(r.unfolded.sum()),
        "reco_total": float(r.reco.sum()),
        "stderr_total": float(math.sqrt(max(float(r.covariance.sum()), 0.0))),
        "mean_rel_stderr_bootstrap": _mean_ratio(r.stderr_stat, r.unfolded),
        "mean_rel_stderr_poisson": _mean_ratio(r.poisson_stderr, r.unfolded),
        "mean_rel_stderr_ensemble": _mean_ratio(r.stderr_ensemble, r.unfolded),
    }
    if r.truth is None:
        return out
    out["truth_total"] = float(r.truth.sum())
    assert r.truth_variance is not None
    scale = float(r.settings.get("truth_variance_scale", 1.0))

    def c_truth(h: np.ndarray) -> np.ndarray:
        """Poisson variance of the truth histogram at the expectation (h + t) / 2."""
        assert r.truth is not None
        return np.diag(0.5 * (np.clip(h, 0.0, None) + r.truth) * scale)

    out.update(_scores(r.unfolded, r.truth, r.covariance + c_truth(r.unfolded)))
    for k, (h, c) in enumerate(zip(r.iterations, cov_it, strict=True)):
        if len(r.iterations) > 1:
            cov = c + r.cov_ensemble + c_truth(h)
            out[f"chi2_ndf_iter{k}"] = _scores(h, r.truth, cov)["chi2_ndf"]
    for name, h in r.baselines.items():
        for key, v in _scores(h, r.truth, r.baseline_cov[name] + c_truth(h)).items():
            out[f"{name}_{key}"] = v
    return out


def _mean_ratio(a: np.ndarray, b: np.ndarray) -> float:
    """Mean of a/b over bins holding at least one event."""
    ok = b >= 1.0
    return float(np.mean(a[ok] / b[ok])) if ok.any() else math.nan
