"""Per-class calibration of the ``unfold_bins`` classifier (``UnfoldBinsNet.calibrate``).

Synthetic data with a known posterior: truth bin t ~ π, feature x = t + N(0, 1.5) (in bin
units). A network whose raw logits are the exact log-likelihood log N(x; t, σ) but WITHOUT the
log-prior (equivalently, a posterior under a flat prior) sums to the wrong histogram; the
per-class offset fitted on a calibration sample must restore log π and make the summed
probabilities on an independent sample match its truth within statistical error.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models.base import DataDims
from models.unfold_bins import UnfoldBinsConfig, UnfoldBinsNet

N_BINS = 8
SIGMA = 1.5


def sample(n: int, seed: int, prior: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    rng = np.random.default_rng(seed)
    t = rng.choice(N_BINS, size=n, p=prior)
    x = t + rng.normal(0.0, SIGMA, size=n)
    return torch.as_tensor(x[:, None], dtype=torch.float64), torch.as_tensor(t)


class ExactLikelihood(nn.Module):
    """Logits log N(x; t, σ) up to a constant: the exact likelihood, no prior."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centres = torch.arange(N_BINS, dtype=x.dtype)
        return -0.5 * ((x - centres[None, :]) / SIGMA) ** 2  # type: ignore[no-any-return]


def exact_model() -> UnfoldBinsNet:
    model = UnfoldBinsNet(UnfoldBinsConfig(), DataDims(n_inputs=1, n_classes=(N_BINS,)))
    model.net = ExactLikelihood()  # type: ignore[assignment]
    return model.double()


def chi2(hist: np.ndarray, truth: np.ndarray) -> float:
    return float(np.sum((hist - truth) ** 2 / truth) / len(truth))


def test_calibration_restores_prior_and_closes_on_independent_sample() -> None:
    prior = np.array([0.30, 0.22, 0.16, 0.11, 0.08, 0.06, 0.04, 0.03])
    model = exact_model()
    x_cal, y_cal = sample(200_000, 1, prior)
    x_test, y_test = sample(50_000, 2, prior)
    truth = np.bincount(y_test.numpy(), minlength=N_BINS).astype(np.float64)

    raw = model.unfold(x_test).numpy()
    # Without the prior the falling spectrum is flattened: far outside statistical error.
    assert chi2(raw, truth) > 50.0

    info = model.calibrate(x_cal, y_cal)
    assert info["max_rel_mismatch"] < 1e-8
    # The fitted offsets are the log prior up to a constant.
    off = model.logit_offset.numpy()
    np.testing.assert_allclose(off - off.mean(), np.log(prior) - np.log(prior).mean(), atol=0.03)
    # On the calibration rows the summed probabilities equal the truth counts exactly.
    cal_truth = np.bincount(y_cal.numpy(), minlength=N_BINS)
    np.testing.assert_allclose(model.unfold(x_cal).numpy(), cal_truth, rtol=1e-7)
    # Independent sample: agreement within statistics (χ²/ndf ~ O(1), not O(50)).
    assert chi2(model.unfold(x_test).numpy(), truth) < 3.0


def test_weighted_calibration_matches_weighted_counts_and_survives_state_dict() -> None:
    prior = np.full(N_BINS, 1.0 / N_BINS)
    model = exact_model()
    x, y = sample(40_000, 3, prior)
    w = torch.linspace(0.5, 1.5, N_BINS, dtype=torch.float64)[y]
    model.calibrate(x, y, w)
    sums = (model.predict_proba(x) * w[:, None]).sum(dim=0).numpy()
    np.testing.assert_allclose(sums, np.bincount(y.numpy(), weights=w.numpy()), rtol=1e-7)

    other = exact_model()
    other.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(other.logit_offset.numpy(), model.logit_offset.numpy())
    # Checkpoints from before calibration existed (no offset key) still load, offset zero.
    old = {k: v for k, v in model.state_dict().items() if k != "logit_offset"}
    other.load_state_dict(old)
    assert float(other.logit_offset.abs().sum()) == 0.0


def test_empty_class_gets_finite_offset() -> None:
    prior = np.array([0.2, 0.2, 0.2, 0.0, 0.2, 0.1, 0.05, 0.05])
    model = exact_model()
    x, y = sample(20_000, 4, prior)
    model.calibrate(x, y)
    off = model.logit_offset.numpy()
    assert np.all(np.isfinite(off))
    assert model.unfold(x).numpy()[3] < 0.01  # pseudo-count 1e-9·Σw/N


def test_streamed_calibration_runs_the_network_once_when_the_logits_fit_in_memory() -> None:
    prior = np.array([0.30, 0.22, 0.16, 0.11, 0.08, 0.06, 0.04, 0.03])
    x, y = sample(20_000, 3, prior)
    reads = {"n": 0}

    def batches() -> list[dict[str, torch.Tensor]]:
        reads["n"] += 1
        return [{"x": x[i : i + 4096], "y": y[i : i + 4096]} for i in range(0, len(x), 4096)]

    cached, streamed = exact_model(), exact_model()
    info = cached.calibrate_stream(batches)
    assert reads["n"] == 1  # one pass of the network; every Newton step reuses its logits
    reads["n"] = 0
    streamed.calibrate_stream(batches, cache_bytes=0)  # over budget: re-read on every pass
    assert reads["n"] > 3
    assert info["max_rel_mismatch"] < 1e-8
    np.testing.assert_allclose(
        cached.logit_offset.numpy(), streamed.logit_offset.numpy(), rtol=0, atol=1e-12
    )
