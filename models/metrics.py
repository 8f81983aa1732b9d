"""Physics metrics used as scan objectives and in the studies (numpy/scipy/sklearn, float64).

Binned comparisons (unfolded vs truth histogram) work on bin contents, which may be
non-integer (the ML unfolding fills each bin with a sum of probabilities):

* :func:`chi2_ndf` — χ² with the Poisson errors of BOTH histograms,
  ``χ² = Σ (a−b)² / (a+b)`` over bins with ``a+b > 0``, ``ndf`` = number of such bins (the
  histograms are compared bin by bin, no normalisation is fitted, so no degree is subtracted).
* :func:`ks_binned` — Kolmogorov–Smirnov on the binned CDFs, as ROOT's ``TH1::KolmogorovTest``:
  ``D = max |C1 − C2|`` of the normalised cumulative contents, p-value from the asymptotic
  Kolmogorov distribution at ``D·sqrt(n1 n2 / (n1 + n2))``. Computed on the histograms
  directly (not by expanding into samples) so non-integer contents are used exactly; binning
  makes the test conservative (p-values biased towards 1), as in ROOT. The unfolding paper
  reports this p-value as the "KS score" (1 = perfect agreement).
* :func:`ad_binned` — two-sample Anderson–Darling for tied (binned) data, the Scholz & Stephens
  (1987) ``A²akN`` statistic that ``scipy.stats.anderson_ksamp`` computes (midrank version),
  evaluated on the bin contents with weights. p-value: ``1 − ADinf(A²)`` (Marsaglia &
  Marsaglia 2004), the asymptotic two-sample null distribution; scipy's own p-value is only
  interpolated within [0.001, 0.25], which cannot express the "AD score ≈ 1" of the paper.

Sample comparisons (generative models): :func:`wasserstein_per_feature`,
:func:`ks_samples`, and :func:`classifier_auc` (a classifier two-sample test: 0.5 means the
classifier cannot tell the samples apart).

Signal vs background (classifiers, anomaly scores; higher score = more signal-like):
:func:`roc_auc` (Mann–Whitney, ties counted half), :func:`rejection_at_efficiency` (background
rejection 1/ε_B at a signal efficiency, e.g. the ``rejection_at_50`` scan objective),
:func:`efficiency_at_rejection` (signal efficiency at a background rejection 1/ε_B).
Recoil (regression of a 2-D vector, e.g. the hadronic recoil): :func:`recoil_scores` —
response ⟨u∥⟩/⟨pT⟩ and the resolutions σ(u∥ − pT), σ(u⊥) of a predicted vector projected on the
true one.

Resolution: :func:`resolution_summary` — mean, RMS (standard deviation, as ROOT's ``GetRMS``)
and RMS90 (RMS of the central 90 % of events: the lowest and highest ``floor(0.05 n)`` values
dropped) in bins of η and pT.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

F64 = NDArray[np.float64]

__all__ = [
    "ADResult",
    "KSResult",
    "ad_binned",
    "ad_pvalue_asymptotic",
    "chi2",
    "chi2_ndf",
    "classifier_auc",
    "efficiency_at_rejection",
    "generative_scores",
    "ks_binned",
    "ks_samples",
    "ratio_with_errors",
    "rejection_at_efficiency",
    "recoil_scores",
    "resolution_summary",
    "roc_auc",
    "rms90",
    "unfolding_scores",
    "wasserstein_per_feature",
]


def _hist(h: ArrayLike, name: str) -> F64:
    a = np.asarray(h, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-d histogram, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError(f"{name} must hold finite, non-negative bin contents")
    return a


def _pair(h1: ArrayLike, h2: ArrayLike) -> tuple[F64, F64]:
    a, b = _hist(h1, "h1"), _hist(h2, "h2")
    if a.shape != b.shape:
        raise ValueError(f"histograms differ in bin count: {a.shape[0]} vs {b.shape[0]}")
    return a, b


def chi2(h1: ArrayLike, h2: ArrayLike) -> tuple[float, int]:
    """``(χ², ndf)``: ``Σ (a−b)²/(a+b)`` over bins with ``a+b > 0``; ndf = number of them."""
    a, b = _pair(h1, h2)
    used = (a + b) > 0
    ndf = int(used.sum())
    if ndf == 0:
        return 0.0, 0
    return float(np.sum((a[used] - b[used]) ** 2 / (a[used] + b[used]))), ndf


def chi2_ndf(h1: ArrayLike, h2: ArrayLike) -> float:
    """χ²/ndf with Poisson errors of both histograms (NaN when both are empty)."""
    value, ndf = chi2(h1, h2)
    return value / ndf if ndf else math.nan


@dataclass(frozen=True)
class KSResult:
    statistic: float  # D = max |C1 - C2|
    pvalue: float


def ks_binned(h1: ArrayLike, h2: ArrayLike) -> KSResult:
    """Binned two-sample Kolmogorov–Smirnov test (see module docstring)."""
    from scipy.special import kolmogorov

    a, b = _pair(h1, h2)
    n1, n2 = a.sum(), b.sum()
    if n1 <= 0 or n2 <= 0:
        raise ValueError("ks_binned needs two non-empty histograms")
    d = float(np.max(np.abs(np.cumsum(a) / n1 - np.cumsum(b) / n2)))
    ne = n1 * n2 / (n1 + n2)
    return KSResult(d, float(kolmogorov(d * math.sqrt(ne))))


def ks_samples(x1: ArrayLike, x2: ArrayLike) -> KSResult:
    """Unbinned two-sample KS (``scipy.stats.ks_2samp``) for 1-d samples."""
    from scipy.stats import ks_2samp

    res = ks_2samp(np.asarray(x1, np.float64), np.asarray(x2, np.float64))
    return KSResult(float(res.statistic), float(res.pvalue))


@dataclass(frozen=True)
class ADResult:
    statistic: float  # A²akN (Scholz & Stephens, ties/midrank version), unstandardised
    standardized: float  # (A² - (k-1)) / sigma_N, what scipy.stats.anderson_ksamp returns
    pvalue: float  # 1 - ADinf(A²), asymptotic


def ad_pvalue_asymptotic(a2: float) -> float:
    """``1 − ADinf(a2)``: Marsaglia & Marsaglia (2004) approximation of the asymptotic CDF."""
    z = float(a2)
    if z <= 0:
        return 1.0
    if z < 2:
        cdf = (
            math.exp(-1.2337141 / z)
            / math.sqrt(z)
            * (
                2.00012
                + (0.247105 - (0.0649821 - (0.0347962 - (0.011672 - 0.00168691 * z) * z) * z) * z)
                * z
            )
        )
    else:
        cdf = math.exp(
            -math.exp(
                1.0776
                - (2.30695 - (0.43424 - (0.082433 - (0.008056 - 0.0003146 * z) * z) * z) * z) * z
            )
        )
    return float(min(1.0, max(0.0, 1.0 - cdf)))


def _ad_sigma(n: F64, big_n: float) -> float:
    """Standard deviation of A²kN under H0 (Scholz & Stephens eq. 4, as in scipy)."""
    k = len(n)
    nn = int(round(big_n))
    if nn < 4:
        return math.nan
    hsum = 1.0 / np.arange(nn - 1, 1, -1, dtype=np.float64)
    hs_cs = np.cumsum(hsum)
    h = hs_cs[-1] + 1.0
    g = float(np.sum(hs_cs / np.arange(2, nn, dtype=np.float64)))
    big_h = float(np.sum(1.0 / n))
    a = (4 * g - 6) * (k - 1) + (10 - 6 * g) * big_h
    b = (2 * g - 4) * k**2 + 8 * h * k + (2 * g - 14 * h - 4) * big_h - 8 * h + 4 * g - 6
    c = (6 * h + 2 * g - 2) * k**2 + (4 * h - 4 * g + 6) * k + (2 * h - 6) * big_h + 4 * h
    d = (2 * h + 6) * k**2 - 4 * h * k
    var = (a * nn**3 + b * nn**2 + c * nn + d) / ((nn - 1.0) * (nn - 2.0) * (nn - 3.0))
    return math.sqrt(var)


def ad_binned(h1: ArrayLike, h2: ArrayLike) -> ADResult:
    """Two-sample Anderson–Darling on binned data (see module docstring)."""
    a, b = _pair(h1, h2)
    f = np.stack([a, b])  # (k, L) counts per sample and bin
    keep = f.sum(axis=0) > 0
    f = f[:, keep]
    n = f.sum(axis=1)
    if np.any(n <= 0):
        raise ValueError("ad_binned needs two non-empty histograms")
    if f.shape[1] < 2:
        raise ValueError("ad_binned needs entries in at least two bins")
    big_n = float(n.sum())
    lj = f.sum(axis=0)
    b_a = np.cumsum(lj) - lj / 2.0  # midrank cumulative count, B_aj
    m_a = np.cumsum(f, axis=1) - f / 2.0  # per-sample midrank cumulative, M_aij
    denom = b_a * (big_n - b_a) - big_n * lj / 4.0
    inner = (lj / big_n) * (big_n * m_a - n[:, None] * b_a) ** 2 / denom
    a2 = float((big_n - 1) / big_n * np.sum(inner.sum(axis=1) / n))
    k = f.shape[0]
    sigma = _ad_sigma(n, big_n)
    return ADResult(a2, (a2 - (k - 1)) / sigma, ad_pvalue_asymptotic(a2))


def unfolding_scores(unfolded: ArrayLike, truth: ArrayLike) -> dict[str, float]:
    """``chi2_ndf``, ``ks`` (p-value), ``ad`` (p-value) of an unfolded vs a truth histogram —
    the three scores of the unfolding paper's Tables III–V."""
    u, t = _pair(unfolded, truth)
    out = {"chi2_ndf": chi2_ndf(u, t), "ks": math.nan, "ad": math.nan}
    if u.sum() > 0 and t.sum() > 0:
        out["ks"] = ks_binned(u, t).pvalue
        if np.count_nonzero(u + t) >= 2:
            out["ad"] = ad_binned(u, t).pvalue
    return out


def ratio_with_errors(num: ArrayLike, den: ArrayLike) -> tuple[F64, F64]:
    """Per-bin ``num/den`` and its error from independent Poisson errors of both:
    ``r·sqrt(1/num + 1/den)``; NaN where ``den == 0`` (and error NaN where ``num == 0``)."""
    a, b = _pair(num, den)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.where(b > 0, a / np.where(b > 0, b, 1.0), np.nan)
        err = np.where(
            (a > 0) & (b > 0),
            r * np.sqrt(1.0 / np.where(a > 0, a, 1.0) + 1.0 / np.where(b > 0, b, 1.0)),
            np.nan,
        )
    return r, err


def wasserstein_per_feature(x1: ArrayLike, x2: ArrayLike) -> F64:
    """Wasserstein-1 distance of each column (``scipy.stats.wasserstein_distance``)."""
    from scipy.stats import wasserstein_distance

    a = np.asarray(x1, dtype=np.float64)
    b = np.asarray(x2, dtype=np.float64)
    if a.ndim == 1:
        a, b = a[:, None], b[:, None]
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature counts differ: {a.shape[1]} vs {b.shape[1]}")
    return np.array([wasserstein_distance(a[:, i], b[:, i]) for i in range(a.shape[1])])


def classifier_auc(
    x1: ArrayLike,
    x2: ArrayLike,
    *,
    seed: int = 0,
    max_per_sample: int = 20000,
    model: str = "hgb",
    n_threads: int = 1,
) -> float:
    """Classifier two-sample test: train on half, ROC AUC on the other half.

    ``model``: ``"hgb"`` (HistGradientBoosting, picks up non-linear differences) or
    ``"logreg"``. 0.5 = indistinguishable; values below 0.5 are statistical fluctuations.
    ``n_threads`` caps OpenMP/BLAS threads: a trial shares its CPUs with the training workers,
    and an oversubscribed OpenMP pool is ~40× slower than one thread on a busy node.
    """
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    a = np.asarray(x1, dtype=np.float64)
    b = np.asarray(x2, dtype=np.float64)
    if a.ndim == 1:
        a, b = a[:, None], b[:, None]
    a = a[rng.permutation(len(a))[:max_per_sample]]
    b = b[rng.permutation(len(b))[:max_per_sample]]
    x = np.concatenate([a, b])
    y = np.concatenate([np.zeros(len(a)), np.ones(len(b))])
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    half = len(x) // 2
    if half < 2 or len(np.unique(y[:half])) < 2 or len(np.unique(y[half:])) < 2:
        raise ValueError("classifier_auc needs at least a few events of each sample")
    clf: HistGradientBoostingClassifier | LogisticRegression
    if model == "hgb":
        clf = HistGradientBoostingClassifier(max_iter=100, random_state=seed)
    elif model == "logreg":
        clf = LogisticRegression(max_iter=1000)
    else:
        raise ValueError(f"unknown classifier {model!r} (use 'hgb' or 'logreg')")
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n_threads):
        clf.fit(x[:half], y[:half])
        scores = clf.predict_proba(x[half:])[:, 1]
    return float(roc_auc_score(y[half:], scores))


def rms90(values: ArrayLike) -> float:
    """RMS of the central 90 %: drop the ``floor(0.05 n)`` lowest and highest values."""
    v = np.sort(np.asarray(values, dtype=np.float64))
    k = int(math.floor(0.05 * len(v)))
    core = v[k : len(v) - k]
    return float(np.std(core)) if len(core) else math.nan


def resolution_summary(
    delta: ArrayLike,
    eta: ArrayLike,
    pt: ArrayLike,
    eta_edges: ArrayLike,
    pt_edges: ArrayLike,
    *,
    min_count: int = 2,
) -> dict[str, F64]:
    """Mean, RMS, RMS90 and count of ``delta`` in bins of (η, pT).

    Returns arrays of shape ``(n_eta_bins, n_pt_bins)``; statistics are NaN where a bin holds
    fewer than ``min_count`` events. Pass ``abs(eta)`` for |η| bins.
    """
    d = np.asarray(delta, dtype=np.float64)
    e = np.asarray(eta, dtype=np.float64)
    p = np.asarray(pt, dtype=np.float64)
    ee = np.asarray(eta_edges, dtype=np.float64)
    pe = np.asarray(pt_edges, dtype=np.float64)
    ie = np.searchsorted(ee, e, side="right") - 1
    ip = np.searchsorted(pe, p, side="right") - 1
    shape = (len(ee) - 1, len(pe) - 1)
    out = {k: np.full(shape, np.nan) for k in ("mean", "rms", "rms90")}
    out["count"] = np.zeros(shape)
    inside = (ie >= 0) & (ie < shape[0]) & (ip >= 0) & (ip < shape[1]) & np.isfinite(d)
    for i in range(shape[0]):
        for j in range(shape[1]):
            v = d[inside & (ie == i) & (ip == j)]
            out["count"][i, j] = len(v)
            if len(v) >= min_count:
                out["mean"][i, j] = v.mean()
                out["rms"][i, j] = v.std()
                out["rms90"][i, j] = rms90(v)
    return out


def generative_scores(
    condition: ArrayLike,
    real: ArrayLike,
    generated: ArrayLike,
    *,
    seed: int = 0,
    max_per_sample: int = 5000,
) -> dict[str, float]:
    """``wasserstein`` (mean over target features) and ``auc`` (classifier two-sample test on
    (condition, target) pairs, so a generator that ignores its condition is caught)."""
    c = np.asarray(condition, dtype=np.float64)
    r = np.asarray(real, dtype=np.float64)
    g = np.asarray(generated, dtype=np.float64)
    out = {"wasserstein": float(np.mean(wasserstein_per_feature(r, g))), "auc": math.nan}
    if len(r) >= 8:
        out["auc"] = classifier_auc(
            np.concatenate([c, r], axis=1),
            np.concatenate([c, g], axis=1),
            seed=seed,
            max_per_sample=max_per_sample,
        )
    return out


# --------------------------------------------------------------------------------------------
# signal vs background


def _scores(scores: ArrayLike, labels: ArrayLike) -> tuple[F64, F64]:
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels).ravel()
    if s.shape != y.shape:
        raise ValueError(f"scores ({s.shape[0]}) and labels ({y.shape[0]}) differ in length")
    sig = y > 0.5
    return s[sig], s[~sig]


def roc_auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """ROC AUC of ``scores`` for ``labels`` (1 signal, 0 background): the probability that a
    random signal event scores above a random background event, ties counted half (the
    Mann–Whitney U / (n_s n_b)). NaN when either class is empty."""
    from scipy.stats import rankdata

    sig, bkg = _scores(scores, labels)
    if len(sig) == 0 or len(bkg) == 0:
        return math.nan
    ranks = rankdata(np.concatenate([sig, bkg]))
    u = ranks[: len(sig)].sum() - len(sig) * (len(sig) + 1) / 2.0
    return float(u / (len(sig) * len(bkg)))


def rejection_at_efficiency(scores: ArrayLike, labels: ArrayLike, efficiency: float) -> float:
    """Background rejection 1/ε_B at the cut keeping a fraction ``efficiency`` of the signal
    (score ≥ the signal's (1 − efficiency) quantile). When no background event passes, ε_B is
    bounded by one event: the rejection is the number of background events (a lower limit).
    NaN when either class is empty."""
    if not 0.0 < efficiency <= 1.0:
        raise ValueError(f"efficiency must lie in (0, 1], got {efficiency}")
    sig, bkg = _scores(scores, labels)
    if len(sig) == 0 or len(bkg) == 0:
        return math.nan
    cut = np.quantile(sig, 1.0 - efficiency)
    eff_b = max(float(np.mean(bkg >= cut)), 1.0 / len(bkg))
    return 1.0 / eff_b


def efficiency_at_rejection(scores: ArrayLike, labels: ArrayLike, rejection: float) -> float:
    """Signal efficiency at the cut keeping a fraction 1/``rejection`` of the background
    (score > the background's 1 − 1/rejection quantile). NaN when either class is empty."""
    if not rejection >= 1.0:
        raise ValueError(f"rejection must be >= 1, got {rejection}")
    sig, bkg = _scores(scores, labels)
    if len(sig) == 0 or len(bkg) == 0:
        return math.nan
    cut = np.quantile(bkg, 1.0 - 1.0 / rejection)
    return float(np.mean(sig > cut))


def recoil_scores(predicted: ArrayLike, truth: ArrayLike) -> dict[str, float]:
    """Response and resolution of predicted 2-D vectors (n, 2) against the true ones (n, 2).

    Each prediction is projected on its true vector's direction: ``u_par`` along it,
    ``u_perp`` across it (events with a zero true vector are skipped), ``pt`` = |truth|. For the
    hadronic recoil (truth = −boson pT) a perfect measurement has ``u_par = pt``, ``u_perp = 0``.

    ``response`` = ⟨u_par⟩ / ⟨pt⟩ (ratio of means: ⟨u_par/pt⟩ diverges as pt → 0),
    ``response_bias`` = |response − 1|, ``resolution_par`` = std(u_par − pt),
    ``resolution_perp`` = std(u_perp), and ``resolution_{par,perp}_corr`` = those divided by the
    response (the convention of the ATLAS/CMS recoil papers, which compares resolutions of
    methods with different responses: scaling a vector by 0.5 halves its σ but not its
    information). NaN for fewer than two usable events.
    """
    p = np.asarray(predicted, dtype=np.float64).reshape(-1, 2)
    t = np.asarray(truth, dtype=np.float64).reshape(-1, 2)
    pt = np.hypot(t[:, 0], t[:, 1])
    ok = pt > 0
    p, t, pt = p[ok], t[ok], pt[ok]
    names = ("response", "response_bias", "resolution_par", "resolution_perp")
    if len(pt) < 2:
        return {k: math.nan for k in (*names, "resolution_par_corr", "resolution_perp_corr")}
    ux, uy = t[:, 0] / pt, t[:, 1] / pt
    u_par = p[:, 0] * ux + p[:, 1] * uy
    u_perp = p[:, 1] * ux - p[:, 0] * uy
    response = float(u_par.mean() / pt.mean())
    s_par, s_perp = float(np.std(u_par - pt)), float(np.std(u_perp))
    r = response if response > 0 else math.nan
    return {
        "response": response,
        "response_bias": abs(response - 1.0),
        "resolution_par": s_par,
        "resolution_perp": s_perp,
        "resolution_par_corr": s_par / r,
        "resolution_perp_corr": s_perp / r,
    }


# --------------------------------------------------------------------------------------------
# Fast detector simulation (benchmarks/studies/generative_jets.py, issue 12). Objects are rows
# of (truth, reco) with columns (pt, eta, phi, m); only reconstructed objects enter the
# response, distance and AUC metrics, the efficiency is measured on its own.

DETECTOR_AUC_MAX_PER_SAMPLE = 50_000


def detector_features(truth: ArrayLike, reco: ArrayLike) -> F64:
    """The 8 columns the detector two-sample test sees: ``log pT``, ``η``, ``φ``, ``log m`` of
    the truth object and the response ``reco pT / truth pT``, ``Δη``, ``Δφ`` (wrapped into
    (−π, π]) and ``reco m / truth m``."""
    t = np.asarray(truth, dtype=np.float64)
    r = np.asarray(reco, dtype=np.float64)
    if t.ndim != 2 or t.shape[1] != 4 or r.shape != t.shape:
        raise ValueError(f"truth and reco must both be (N, 4) (pt, eta, phi, m), got {t.shape}")
    dphi = np.remainder(r[:, 2] - t[:, 2] + math.pi, 2 * math.pi) - math.pi
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.stack(
            [
                np.log(t[:, 0]),
                t[:, 1],
                t[:, 2],
                np.log(np.maximum(t[:, 3], 1e-6)),
                r[:, 0] / t[:, 0],
                r[:, 1] - t[:, 1],
                dphi,
                r[:, 3] / np.maximum(t[:, 3], 1e-6),
            ],
            axis=1,
        )


def detector_auc(
    truth_a: ArrayLike,
    reco_a: ArrayLike,
    truth_b: ArrayLike,
    reco_b: ArrayLike,
    *,
    seed: int = 0,
    max_per_sample: int = DETECTOR_AUC_MAX_PER_SAMPLE,
) -> float:
    """The study's fixed two-sample classifier AUC between two detector samples.

    Classifier: ``classifier_auc(model="hgb")`` — scikit-learn HistGradientBoosting, 100
    iterations, default depth/learning rate, one thread — on :func:`detector_features` of at
    most ``max_per_sample`` (50 000) reconstructed objects of each sample, trained on half of
    the union and scored (ROC AUC) on the other half. 0.5: indistinguishable; the simulator
    re-run with another seed measures the floor (≈ 0.5 ± 0.005 at 20k objects per sample)."""
    fa = detector_features(truth_a, reco_a)
    fb = detector_features(truth_b, reco_b)
    keep_a = np.all(np.isfinite(fa), axis=1)
    keep_b = np.all(np.isfinite(fb), axis=1)
    return classifier_auc(fa[keep_a], fb[keep_b], seed=seed, max_per_sample=max_per_sample)


def wrapped_delta(reco: ArrayLike, truth: ArrayLike) -> F64:
    """reco − truth wrapped into (−π, π] (φ)."""
    d = np.asarray(reco, np.float64) - np.asarray(truth, np.float64)
    return np.asarray(np.remainder(d + math.pi, 2 * math.pi) - math.pi)


def response_agreement(
    ratio_ref: ArrayLike,
    abseta_ref: ArrayLike,
    pt_ref: ArrayLike,
    ratio: ArrayLike,
    abseta: ArrayLike,
    pt: ArrayLike,
    eta_edges: ArrayLike,
    pt_edges: ArrayLike,
    *,
    min_count: int = 2000,
    tolerance: float = 0.05,
) -> dict[str, float | F64]:
    """Response (reco/truth pT) mean and RMS90 in (|η|, truth pT) bins of a sample against a
    reference: the fraction of well-populated bins (≥ ``min_count`` reference AND sample
    objects) whose mean and RMS90 are within ``tolerance`` (relative) of the reference's.

    Returns ``frac_rms90``, ``frac_mean``, ``n_bins`` (NaN fractions when no bin is well
    populated), ``max_rms90_dev``, and the (η, pT) arrays ``ref``/``sample`` summaries."""
    ref = resolution_summary(ratio_ref, abseta_ref, pt_ref, eta_edges, pt_edges)
    smp = resolution_summary(ratio, abseta, pt, eta_edges, pt_edges)
    used = (ref["count"] >= min_count) & (smp["count"] >= min_count)
    dev_rms = np.abs(smp["rms90"] / ref["rms90"] - 1.0)
    dev_mean = np.abs(smp["mean"] / ref["mean"] - 1.0)
    n = int(used.sum())
    return {
        "n_bins": float(n),
        "frac_rms90": float(np.mean(dev_rms[used] < tolerance)) if n else math.nan,
        "frac_mean": float(np.mean(dev_mean[used] < tolerance)) if n else math.nan,
        "max_rms90_dev": float(dev_rms[used].max()) if n else math.nan,
        "used": used.astype(np.float64),
        "rms90_ref": ref["rms90"],
        "rms90": smp["rms90"],
        "mean_ref": ref["mean"],
        "mean": smp["mean"],
    }


def efficiency_vs(values: ArrayLike, reconstructed: ArrayLike, edges: ArrayLike) -> F64:
    """Fraction of reconstructed objects in bins of ``values`` (NaN in empty bins)."""
    v = np.asarray(values, np.float64)
    ok = np.asarray(reconstructed, bool)
    e = np.asarray(edges, np.float64)
    total = np.histogram(v, e)[0].astype(np.float64)
    passed = np.histogram(v[ok], e)[0].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(total > 0, passed / np.where(total > 0, total, 1.0), np.nan)


def correlation_difference(x_ref: ArrayLike, x: ArrayLike) -> float:
    """Largest |ρ_ij(sample) − ρ_ij(reference)| over the off-diagonal Pearson correlations
    of the columns."""
    a = np.atleast_2d(np.corrcoef(np.asarray(x_ref, np.float64), rowvar=False))
    b = np.atleast_2d(np.corrcoef(np.asarray(x, np.float64), rowvar=False))
    off = np.eye(a.shape[0]) == 0
    return float(np.nanmax(np.abs(a - b)[off]))


__all__ += [
    "correlation_difference",
    "detector_auc",
    "detector_features",
    "efficiency_vs",
    "response_agreement",
    "wrapped_delta",
]
