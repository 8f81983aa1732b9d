"""One contract for every registered model family (models.testing, the same check users run on
their own family), plus unfolding- and smearing-specific checks.

Run: ``.venv/bin/python -m pytest tests/test_models_contract.py -q``
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from models import REGISTRY, UnknownFamilyError, get_family, make_config
from models.base import Calibratable, DataSpec, HepModel, Standardisable, standardisation_vectors
from models.errors import ConfigError
from models.manifest import Manifest
from models.testing import check_family, make_batch

N_BINS = 6
N_RES = 8
EDGES = [float(v) for v in np.linspace(65.0, 115.0, N_BINS + 1)]
RAW: dict[str, Any] = {
    "sample": "toy",
    "features": ["m", "pt1", "pt2"],
    "unfold": {"quantity": "m", "edges": EDGES},
    "resolution": {
        "n_classes": N_RES,
        "quantities": {
            "pt": {"edges": list(np.linspace(-0.3, 0.3, N_RES + 1)), "relative": True},
            "eta": {"edges": list(np.linspace(-0.1, 0.1, N_RES + 1))},
            "phi": {"edges": list(np.linspace(-0.1, 0.1, N_RES + 1))},
        },
    },
    "generative": {"condition": ["truth_pt", "truth_eta"], "target": ["reco_pt", "reco_eta"]},
    "classify": {"label": "truth_label", "mass": "truth_mass"},
    "regression": {"target": ["truth_upar", "truth_uperp"]},
}
MANIFEST = Manifest.from_dict(RAW)
BATCH = 32


def build(name: str, seed: int = 0) -> tuple[Any, DataSpec]:
    family = get_family(name)
    spec = family.data_spec(MANIFEST)
    torch.manual_seed(seed)
    return family.build(family.config_cls(), spec.dims), spec


def outputs(name: str, model: Any, batch: dict[str, Tensor]) -> Tensor:
    """A deterministic output of each family (eval mode, fixed noise)."""
    model.eval()
    with torch.no_grad():
        if name == "gan":
            noise = torch.randn(len(batch["x"]), model.config.latent_dim, generator=_g(7))
            return model(batch["x"], noise)  # type: ignore[no-any-return]
        if name == "flow":
            return model.log_prob(batch["y"], batch["x"])  # type: ignore[no-any-return]
        return model(batch["x"])  # type: ignore[no-any-return]


def _g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


EXPECTED_SHAPE: dict[str, Callable[[int], tuple[int, ...]]] = {
    "unfold_bins": lambda n: (n, N_BINS),
    "unfold_migration": lambda n: (n, 2 * 3 + 1),  # default migration_range 3
    "resolution": lambda n: (n, 3, N_RES + 1),
    "gan": lambda n: (n, 2),
    "flow": lambda n: (n,),
    "param_classifier": lambda n: (n,),  # the logit
    "vae": lambda n: (n,),  # the anomaly score
    "regression": lambda n: (n, 2),
}


def test_registry_names() -> None:
    assert sorted(REGISTRY) == [
        "flow",
        "gan",
        "param_classifier",
        "regression",
        "resolution",
        "unfold_bins",
        "unfold_migration",
        "vae",
    ]
    with pytest.raises(
        UnknownFamilyError,
        match="valid families: flow, gan, param_classifier, regression, resolution",
    ):
        get_family("bdt")
    assert issubclass(UnknownFamilyError, ValueError)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_family_contract(name: str) -> None:
    """The contract users run on their own family (models.testing), on every built-in."""
    family = REGISTRY[name]
    assert family.name == name
    assert "val_loss" in family.metrics
    assert set(family.metric_modes) == set(family.metrics)
    check_family(family, MANIFEST)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_output_shapes(name: str) -> None:
    model, spec = build(name)
    batch = make_batch(spec)
    assert batch["x"].shape == (BATCH, spec.dims.n_inputs)
    assert tuple(outputs(name, model, batch).shape) == EXPECTED_SHAPE[name](BATCH)
    assert all(isinstance(o, torch.optim.Adam) for o in model.configure_optimizers(1e-3))  # type: ignore[operator]
    assert isinstance(model, HepModel)
    assert isinstance(model, Calibratable) == (name == "unfold_bins")
    assert isinstance(model, Standardisable) == (
        name in ("resolution", "gan", "flow", "param_classifier", "regression")
    )


@pytest.mark.parametrize("name", ["resolution", "gan", "flow"])
def test_sampling_is_stochastic_and_seedable(name: str) -> None:
    model, spec = build(name)
    truth = torch.randn(200, spec.dims.n_inputs, generator=_g(1)).abs() + 1.0
    draw = model.smear if name == "resolution" else model.sample  # type: ignore[union-attr]

    def one(gen: torch.Generator | None) -> Tensor:
        out = draw(truth, generator=gen)
        return (out[0] if isinstance(out, tuple) else out).nan_to_num(-999.0)

    assert not torch.equal(one(None), one(None))
    assert torch.equal(one(_g(42)), one(_g(42)))
    assert not torch.equal(one(_g(42)), one(_g(43)))


def test_sample_uses_standardisation() -> None:
    model, spec = build("gan")
    stats_mean = {c: 100.0 for c in spec.standardise}
    stats_std = {c: 10.0 for c in spec.standardise}
    model.set_standardisation(*standardisation_vectors(spec, stats_mean, stats_std))  # type: ignore[operator]
    cond = torch.full((50, 2), 100.0)
    direct = model.sample_standardised(torch.zeros(50, 2), _g(0))  # type: ignore[operator]
    physical = model.sample(cond, generator=_g(0))  # type: ignore[operator]
    torch.testing.assert_close(physical, direct * 10.0 + 100.0)


# --- resolution ---------------------------------------------------------------------------


def test_smear_maps_classes_into_their_bins() -> None:
    model, spec = build("resolution")
    head_bias = model.heads  # type: ignore[union-attr]
    with torch.no_grad():  # force class 2 for every head, never inefficient
        for head in head_bias:
            head.weight.zero_()
            head.bias.fill_(-50.0)
            head.bias[2] = 50.0
    truth = torch.tensor([[50.0, 0.5, 3.1], [20.0, -1.0, -3.1]])
    reco, ok = model.smear(truth, generator=_g(0))  # type: ignore[operator]
    assert ok.all()
    e = [
        torch.tensor(q["edges"], dtype=torch.float32)
        for q in RAW["resolution"]["quantities"].values()
    ]
    rel = (reco[:, 0] - truth[:, 0]) / truth[:, 0]  # relative pt
    assert ((rel >= e[0][2] - 1e-6) & (rel <= e[0][3] + 1e-6)).all()
    d_eta = reco[:, 1] - truth[:, 1]
    assert ((d_eta >= e[1][2] - 1e-6) & (d_eta <= e[1][3] + 1e-6)).all()
    assert (reco[:, 2].abs() <= math.pi).all()  # phi wrapped: 3.1 - 0.0625.. stays, -3.1 wraps
    d_phi = torch.remainder(reco[:, 2] - truth[:, 2] + math.pi, 2 * math.pi) - math.pi
    assert ((d_phi >= e[2][2] - 1e-5) & (d_phi <= e[2][3] + 1e-5)).all()


def test_resolution_reads_the_mode_that_preprocess_writes() -> None:
    """jobs/preprocess writes ``mode`` per quantity, not the ``relative``/``periodic`` flags:
    the family must take pT as relative and φ as an angle from it (smearing used to add the
    relative class edges to pT in GeV)."""
    from models.manifest import Manifest
    from models.resolution import data_spec

    edges = [-0.1, 0.0, 0.1]
    quantities = {
        q: {
            "column": f"res_{q}",
            "truth": f"truth_{q}",
            "reco": f"reco_{q}",
            "mode": m,
            "edges": edges,
        }
        for q, m in (("eta", "absolute"), ("phi", "angle"), ("pt", "relative"))
    }
    spec = data_spec(Manifest.from_dict({"resolution": {"n_classes": 2, "quantities": quantities}}))
    assert spec.dims.relative == (False, False, True)
    assert spec.dims.periodic == (False, True, False)


def test_smear_inefficiency_class_means_not_reconstructed() -> None:
    model, _ = build("resolution")
    with torch.no_grad():
        for head in model.heads:  # type: ignore[union-attr]
            head.weight.zero_()
            head.bias.zero_()
            head.bias[-1] = math.log(N_RES)  # P(ineff) = N/(N + N) = 0.5 per head
    truth = torch.ones(4000, 3)
    reco, ok = model.smear(truth, generator=_g(0))  # type: ignore[operator]
    assert abs(float((~ok).float().mean()) - 0.5) < 0.04  # binomial sigma ~ 0.008
    assert torch.isnan(reco[~ok]).all() and torch.isfinite(reco[ok]).all()


# --- unfolding ----------------------------------------------------------------------------


def test_unfold_bins_histogram_is_sum_of_softmax() -> None:
    model, spec = build("unfold_bins")
    x = make_batch(spec, n=100)["x"]
    hist = model.unfold(x)  # type: ignore[operator]
    model.eval()
    with torch.no_grad():
        expected = F.softmax(model(x), dim=1).double().sum(dim=0)
    assert hist.dtype == torch.float64 and hist.shape == (N_BINS,)
    torch.testing.assert_close(hist, expected)
    assert abs(float(hist.sum()) - 100.0) < 1e-6
    # Not the argmax histogram (would be integers).
    assert not torch.equal(hist, hist.round())


@pytest.mark.parametrize("outside", ["cut", "clip"])
def test_unfold_migration_histogram(outside: str) -> None:
    family = get_family("unfold_migration")
    spec = family.data_spec(MANIFEST)
    torch.manual_seed(0)
    model = family.build(make_config(family, {"outside": outside, "migration_range": 1}), spec.dims)
    x = make_batch(spec, n=50)["x"]
    x[:5, -1] = -1  # reco outside the binning: not unfoldable
    hist = model.unfold(x)  # type: ignore[operator]
    assert abs(float(hist.sum()) - 45.0) < 1e-6  # every unfoldable event lands inside
    probs = model.predict_proba(x)  # type: ignore[operator]
    expected = torch.zeros(N_BINS, dtype=torch.float64)
    for row, r in zip(probs, x[:, -1].long(), strict=True):
        if r < 0:
            continue
        for k, m in enumerate((-1, 0, 1)):
            if 0 <= r + m < N_BINS:
                expected[r + m] += float(row[k])
            else:
                assert row[k] == 0  # impossible migrations are masked
    torch.testing.assert_close(hist, expected)


def test_unfold_migration_cut_vs_clip_targets() -> None:
    family = get_family("unfold_migration")
    spec = family.data_spec(MANIFEST)
    x = torch.zeros(3, spec.dims.n_inputs)
    x[:, -1] = torch.tensor([0.0, 2.0, 5.0])
    y = torch.tensor([3, 2, 1])  # migrations +3, 0, -4
    for outside, used in (("cut", [False, True, False]), ("clip", [True, True, True])):
        model = family.build(
            make_config(family, {"outside": outside, "migration_range": 2}), spec.dims
        )
        cls, train, in_range = model._targets(x, y)  # type: ignore[operator]
        assert train.tolist() == used
        assert in_range.tolist() == [False, True, False]
        if outside == "clip":
            assert cls.tolist() == [4, 2, 0]  # +3 -> +2 (class 4), 0 -> 2, -4 -> -2 (class 0)


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "missing"),
    [
        ("unfold_bins", "unfold"),
        ("unfold_migration", "unfold"),
        ("resolution", "resolution"),
        ("gan", "generative"),
        ("flow", "generative"),
        ("param_classifier", "classify"),
        ("vae", "classify"),
        ("regression", "regression"),
    ],
)
def test_data_spec_names_missing_manifest_key(name: str, missing: str) -> None:
    manifest = Manifest.from_dict({k: v for k, v in RAW.items() if k != missing})
    with pytest.raises(ValueError, match=f"needs the '{missing}' section"):
        get_family(name).data_spec(manifest)


def test_bad_edges_and_unknown_params() -> None:
    bad = Manifest.from_dict(dict(RAW, unfold={"edges": [1.0, 3.0, 2.0]}))
    with pytest.raises(ConfigError, match="strictly increasing"):
        get_family("unfold_bins").data_spec(bad)
    bad_res = Manifest.from_dict(
        dict(RAW, resolution={"n_classes": 4, "quantities": {"pt": {"edges": [0, 1]}}})
    )
    with pytest.raises(ConfigError, match="resolution.quantities.pt.edges"):
        get_family("resolution").data_spec(bad_res)
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) \['widht'\]"):
        make_config(get_family("unfold_bins"), {"widht": 3})
    with pytest.raises(ConfigError, match="kind must be one of"):
        make_config(get_family("flow"), {"kind": "glow"})
