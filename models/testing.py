"""The family contract as a test you run on your own model family (hepscan runs it on its five).

In a test file of your project (pytest collects the subclass; ``FamilyContract`` itself is not
collected):

.. code-block:: python

    from models.testing import FamilyContract, tiny_manifest

    class TestMyFamily(FamilyContract):
        family = "mypkg.models:FAMILY"            # or the Family object
        manifest = tiny_manifest()               # optional: a Manifest your data_spec accepts
        params = {"width": 16}                   # optional: model config overrides

.. code-block:: bash

    python -m pytest -q tests/test_my_family.py

or call :func:`check_family` (it raises :class:`ContractViolation`, an ``AssertionError``):

.. code-block:: python

    from models.testing import check_family
    check_family("mypkg.models:FAMILY")

What is checked, on random tensors shaped by the family's own ``data_spec`` (no dataset):

* the static contract (:func:`models.contract.validate_family`);
* ``data_spec``: a :class:`~models.base.DataSpec` whose dims agree with its columns;
* ``build``: an ``nn.Module`` that is a :class:`~models.base.HepModel`;
* gradients: ``training_step`` hands its losses to ``step_fn``, every trainable parameter is in
  an optimizer and receives a finite, non-zero gradient within ``steps`` steps;
* ``evaluate``: floats for ``val_loss`` and every ``family.metrics`` name, train/eval mode
  restored;
* save/load: ``state_dict`` + ``dataclasses.asdict(config)`` (loaded with
  ``weights_only=True``) rebuild a model with identical weights and identical ``evaluate``;
* seeded determinism: the same seeds give the same initial weights, losses and trained
  weights, and training changes the weights;
* optional hooks (:class:`~models.base.Calibratable`, :class:`~models.base.Standardisable`)
  run and keep the model usable.

The conventions of the batches: class targets ``truth_bin``/``reco_bin`` lie in the unfolding
bins, other class targets in ``[0, n_classes)``, everything else is standard normal. Override
:meth:`FamilyContract.make_batch` (or pass ``batch=`` to :func:`check_family`) when your model
needs other inputs.
"""

from __future__ import annotations

import dataclasses
import io
import math
import random
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from models.base import (
    Calibratable,
    DataSpec,
    Family,
    HepModel,
    Standardisable,
    StepFn,
    standardisation_vectors,
)
from models.contract import validate_family
from models.manifest import Manifest
from models.registry import get_family, make_config

__all__ = [
    "ContractViolation",
    "FamilyContract",
    "build_model",
    "check_data_spec",
    "check_determinism",
    "check_evaluate",
    "check_family",
    "check_gradients",
    "check_hooks",
    "check_save_load",
    "make_batch",
    "tiny_manifest",
]

Batch = dict[str, Tensor]


class ContractViolation(AssertionError):
    """A family breaks the contract; the message names the family and what is wrong."""


def _fail(family: Family, what: str) -> ContractViolation:
    return ContractViolation(f"family {family.name!r}: {what}")


def tiny_manifest(n_bins: int = 6, n_res: int = 8) -> Manifest:
    """A small manifest with every section the built-in families read: three features, an
    ``unfold`` binning of ``n_bins`` bins, a ``resolution`` section (pt, eta, phi with ``n_res``
    classes), a ``generative`` section (two condition and two target columns) and a
    ``regression`` section (two target columns)."""
    edges = [float(v) for v in np.linspace(65.0, 115.0, n_bins + 1)]

    def res_edges(half: float) -> list[float]:
        return [float(v) for v in np.linspace(-half, half, n_res + 1)]

    return Manifest.from_dict(
        {
            "sample": "tiny",
            "features": ["m", "pt1", "pt2"],
            "unfold": {"quantity": "m", "edges": edges},
            "resolution": {
                "n_classes": n_res,
                "quantities": {
                    "pt": {"edges": res_edges(0.3), "relative": True},
                    "eta": {"edges": res_edges(0.1)},
                    "phi": {"edges": res_edges(0.1)},
                },
            },
            "generative": {
                "condition": ["truth_pt", "truth_eta"],
                "target": ["reco_pt", "reco_eta"],
            },
            "regression": {"target": ["truth_upar", "truth_uperp"]},
        }
    )


def make_batch(spec: DataSpec, n: int = 32, seed: int = 0) -> Batch:
    """Random ``{"x": (n, n_inputs) float32, "y": ...}`` shaped like the loop's batches:
    ``y`` is (n,) int64 for ``class``, (n, heads) int64 for ``multiclass``, (n, targets) float32
    for ``continuous``."""
    g = torch.Generator().manual_seed(seed)
    edges = spec.dims.edges[0] if spec.dims.edges else spec.extra.get("edges", ())
    n_bins = len(edges) - 1 if len(edges) > 1 else None

    def column(name: str, classes: int | None) -> Tensor:
        if name in ("truth_bin", "reco_bin") and n_bins:
            return torch.randint(0, n_bins, (n,), generator=g)
        if classes is not None:
            return torch.randint(0, classes, (n,), generator=g)
        return torch.randn(n, generator=g)

    x = torch.stack([column(c, None).float() for c in spec.x_columns], dim=1)
    if spec.target_kind == "continuous":
        y = torch.stack([column(c, None) for c in spec.y_columns], dim=1).float()
    else:
        heads = spec.dims.n_classes
        ys = [column(c, heads[min(i, len(heads) - 1)]) for i, c in enumerate(spec.y_columns)]
        y = ys[0] if spec.target_kind == "class" else torch.stack(ys, dim=1)
    return {"x": x, "y": y.long() if spec.target_kind != "continuous" else y}


def _seed(seed: int) -> None:
    """What the training loop seeds before building and at every epoch."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def check_data_spec(family: Family, manifest: Manifest) -> DataSpec:
    """``family.data_spec(manifest)``, checked for internal consistency."""
    spec = family.data_spec(manifest)
    if not isinstance(spec, DataSpec):
        raise _fail(family, f"data_spec() returned {type(spec).__name__}, not a DataSpec")
    dims, problems = spec.dims, []
    if not spec.x_columns or dims.n_inputs != len(spec.x_columns):
        problems.append(
            f"dims.n_inputs={dims.n_inputs} but x_columns has {len(spec.x_columns)} column(s)"
        )
    if not spec.y_columns:
        problems.append("y_columns is empty")
    kind = spec.target_kind
    if kind == "class" and (len(spec.y_columns) != 1 or len(dims.n_classes) != 1):
        problems.append("target_kind 'class' needs one y column and one n_classes entry")
    elif kind == "multiclass" and len(dims.n_classes) != len(spec.y_columns):
        problems.append(f"multiclass: n_classes {dims.n_classes} vs y_columns {spec.y_columns}")
    elif kind == "continuous" and dims.n_targets != len(spec.y_columns):
        problems.append(f"continuous: n_targets={dims.n_targets} vs y_columns {spec.y_columns}")
    elif kind not in ("class", "multiclass", "continuous"):
        problems.append(f"target_kind {kind!r} is not class | multiclass | continuous")
    if kind != "continuous" and any(k < 2 for k in dims.n_classes):
        problems.append(f"n_classes {dims.n_classes}: every head needs >= 2 classes")
    stray = sorted(set(spec.standardise) - set(spec.x_columns) - set(spec.y_columns))
    if stray:
        problems.append(f"standardise lists {stray}, which are neither x nor y columns")
    if problems:
        raise _fail(family, "data_spec(): " + "; ".join(problems))
    return spec


def build_model(family: Family, spec: DataSpec, config: Any, seed: int = 0) -> nn.Module:
    """``family.build(config, spec.dims)`` after seeding, checked to be an ``nn.Module`` that is
    a :class:`HepModel`; a :class:`Standardisable` model gets the identity standardisation."""
    _seed(seed)
    model = family.build(config, spec.dims)
    if not isinstance(model, nn.Module):
        raise _fail(family, f"build() returned {type(model).__name__}, not a torch nn.Module")
    if not isinstance(model, HepModel):
        missing = [
            m
            for m in ("configure_optimizers", "training_step", "evaluate")
            if not callable(getattr(model, m, None))
        ]
        raise _fail(family, f"build() returned a model without HepModel method(s) {missing}")
    if isinstance(model, Standardisable):
        zero = {c: 0.0 for c in spec.standardise}
        one = {c: 1.0 for c in spec.standardise}
        model.set_standardisation(*standardisation_vectors(spec, zero, one))
    return model


def _optimizers(family: Family, model: nn.Module, lr: float) -> list[torch.optim.Optimizer]:
    assert isinstance(model, HepModel)
    optimizers = list(model.configure_optimizers(lr))
    if not optimizers or not all(isinstance(o, torch.optim.Optimizer) for o in optimizers):
        raise _fail(
            family,
            f"configure_optimizers() must return a non-empty list of "
            f"torch optimizers, got {optimizers!r}",
        )
    return optimizers


def _scalar(v: Any) -> bool:
    return isinstance(v, float) or (isinstance(v, torch.Tensor) and v.numel() == 1)


def _floats(stats: Any) -> Any:
    """training_step's losses as floats (0-d tensors are allowed: the loop reads them once per
    epoch instead of syncing every step)."""
    if not isinstance(stats, Mapping) or not all(_scalar(v) for v in stats.values()):
        return stats
    return {k: float(v) for k, v in stats.items()}


def _stats(family: Family, stats: Any) -> dict[str, float]:
    if not isinstance(stats, Mapping) or not all(_scalar(v) for v in stats.values()):
        raise _fail(
            family, f"training_step() must return {{name: float or 0-d tensor}}, got {stats!r}"
        )
    stats = _floats(stats)
    bad = {k: v for k, v in stats.items() if not math.isfinite(v)}
    if bad:
        raise _fail(family, f"training_step() returned non-finite losses {bad}")
    return dict(stats)


def check_gradients(
    family: Family, model: nn.Module, batch: Batch, *, lr: float = 1e-3, steps: int = 2
) -> list[dict[str, float]]:
    """``steps`` training steps; every trainable parameter is in an optimizer and gets a finite,
    non-zero gradient in at least one ``step_fn`` call. Returns the steps' statistics."""
    assert isinstance(model, HepModel)
    names = {id(p): n for n, p in model.named_parameters()}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    model.train()
    optimizers = _optimizers(family, model, lr)
    in_opt = {
        names.get(id(p), "?") for o in optimizers for g in o.param_groups for p in g["params"]
    }
    outside = sorted(trainable - in_opt)
    if outside:
        raise _fail(family, f"parameter(s) {outside} are in no optimizer: they never train")
    good: set[str] = set()
    bad: dict[str, str] = {}
    calls = [0]

    def step_fn(opt: torch.optim.Optimizer, loss: Tensor) -> None:
        calls[0] += 1
        opt.zero_grad()
        loss.backward()
        for group in opt.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not torch.isfinite(p.grad).all():
                    bad[names.get(id(p), "?")] = "non-finite gradient"
                elif p.grad.abs().sum() > 0:
                    good.add(names.get(id(p), "?"))
        opt.step()

    stats = [_stats(family, model.training_step(batch, optimizers, step_fn)) for _ in range(steps)]
    if calls[0] == 0:
        raise _fail(family, "training_step() never called step_fn(optimizer, loss)")
    if bad:
        raise _fail(family, f"non-finite gradients: {bad}")
    none = sorted(in_opt - good)
    if none:
        raise _fail(
            family,
            f"parameter(s) {none} got no (or only zero) gradient in {steps} training step(s): "
            "the loss does not depend on them",
        )
    return stats


def check_evaluate(family: Family, model: nn.Module, data: Batch) -> dict[str, float]:
    """``evaluate`` from train and from eval mode: mode restored, ``val_loss`` and every
    ``family.metrics`` name present as a float, ``val_loss`` finite."""
    assert isinstance(model, HepModel)
    metrics: Any = {}
    for mode in (True, False):
        model.train(mode)
        metrics = model.evaluate(data)
        if model.training != mode:
            was = "train" if mode else "eval"
            raise _fail(family, f"evaluate() must restore the previous mode ({was})")
    model.train()
    if not isinstance(metrics, Mapping):
        raise _fail(family, f"evaluate() must return {{name: float}}, got {type(metrics)}")
    missing = [m for m in ("val_loss", *family.metrics) if m not in metrics]
    if missing:
        raise _fail(family, f"evaluate() lacks metric(s) {missing} (it returned {sorted(metrics)})")
    not_float = sorted(k for k, v in metrics.items() if not isinstance(v, float))
    if not_float:
        raise _fail(family, f"evaluate(): values of {not_float} are not Python floats")
    if not math.isfinite(metrics["val_loss"]):
        raise _fail(family, f"evaluate(): val_loss is {metrics['val_loss']}")
    return dict(metrics)


def _same(a: float, b: float) -> bool:
    return a == b or (math.isnan(a) and math.isnan(b))


def check_save_load(
    family: Family, model: nn.Module, config: Any, spec: DataSpec, data: Batch
) -> None:
    """A checkpoint (state_dict + asdict(config), ``weights_only`` load) rebuilds the same model:
    identical tensors and identical ``evaluate``."""
    assert isinstance(model, HepModel)
    buf = io.BytesIO()
    torch.save({"state_dict": model.state_dict(), "config": dataclasses.asdict(config)}, buf)
    buf.seek(0)
    try:
        ckpt = torch.load(buf, weights_only=True)
    except Exception as exc:
        raise _fail(family, f"checkpoint does not load with weights_only=True: {exc}") from exc
    clone = family.build(make_config(family, ckpt["config"]), spec.dims)
    try:
        clone.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        raise _fail(family, f"load_state_dict of a rebuilt model failed: {exc}") from exc
    assert isinstance(clone, HepModel)
    a, b = model.state_dict(), clone.state_dict()
    differ = sorted(k for k in a if not torch.equal(a[k], b[k]))
    if differ:
        raise _fail(family, f"tensors {differ} differ after save/load")
    results = []
    for m in (model, clone):
        _seed(0)
        results.append(m.evaluate(data))  # type: ignore[operator]
    diff = {
        k: (results[0][k], results[1].get(k, math.nan))
        for k in results[0]
        if not _same(results[0][k], results[1].get(k, math.nan))
    }
    if diff:
        raise _fail(
            family,
            f"evaluate() differs after save/load {diff}: state outside the state_dict "
            "(keep it in buffers) or unseeded randomness in evaluate()",
        )


def check_determinism(
    family: Family,
    spec: DataSpec,
    config: Any,
    batch: Batch,
    *,
    seed: int = 0,
    steps: int = 2,
    lr: float = 1e-3,
) -> None:
    """Same seeds, same model: initial weights, step losses and trained weights agree between
    two runs, and training changed the weights."""
    runs = []
    for _ in range(2):
        model = build_model(family, spec, config, seed)
        before = {k: v.detach().clone() for k, v in model.state_dict().items()}
        model.train()
        optimizers = _optimizers(family, model, lr)
        _seed(seed + 1)
        plain: StepFn = _plain_step
        stats = [_floats(model.training_step(batch, optimizers, plain)) for _ in range(steps)]  # type: ignore[operator]
        runs.append((before, stats, model.state_dict()))
    (b0, s0, a0), (b1, s1, a1) = runs
    differ = sorted(k for k in b0 if not torch.equal(b0[k], b1[k]))
    if differ:
        raise _fail(family, f"the same torch seed built different initial tensors {differ}")
    if s0 != s1:
        raise _fail(family, f"the same seeds gave different training losses {s0} vs {s1}")
    differ = sorted(k for k in a0 if not torch.equal(a0[k], a1[k]))
    if differ:
        raise _fail(family, f"the same seeds trained different tensors {differ}")
    if all(torch.equal(b0[k], a0[k]) for k in b0 if b0[k].is_floating_point()):
        raise _fail(family, f"{steps} training step(s) changed no weight")


def _plain_step(opt: torch.optim.Optimizer, loss: Tensor) -> None:
    opt.zero_grad()
    loss.backward()
    opt.step()


def check_hooks(family: Family, model: nn.Module, batch: Batch, data: Batch) -> None:
    """Optional hooks the loop uses: a :class:`Calibratable` model calibrates on ``batch``
    (returning ``{name: float}``) and still evaluates to a finite ``val_loss``."""
    if isinstance(model, Calibratable):
        out = model.calibrate(batch["x"], batch["y"])
        if not isinstance(out, Mapping) or not all(isinstance(v, float) for v in out.values()):
            raise _fail(family, f"calibrate() must return {{name: float}}, got {out!r}")
        check_evaluate(family, model, data)


def check_family(
    family: Family | str,
    manifest: Manifest | Mapping[str, Any] | None = None,
    *,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    steps: int = 2,
    batch: Callable[[DataSpec, int, int], Batch] = make_batch,
) -> None:
    """Every check of this module in order; raises :class:`ContractViolation` (or
    :class:`models.contract.InvalidFamilyError` for the static part) on the first failure.

    ``manifest`` defaults to :func:`tiny_manifest`; ``params`` are model config overrides;
    ``batch(spec, n, seed)`` makes the random batches."""
    fam = _resolve(family)
    man = _manifest(manifest)
    spec = check_data_spec(fam, man)
    config = make_config(fam, params)
    train, val = batch(spec, 32, seed), batch(spec, 64, seed + 1)
    model = build_model(fam, spec, config, seed)
    check_gradients(fam, model, train, steps=steps)
    check_evaluate(fam, model, val)
    check_save_load(fam, model, config, spec, val)
    check_determinism(fam, spec, config, train, seed=seed, steps=steps)
    check_hooks(fam, model, train, val)


def _resolve(family: Family | str) -> Family:
    return get_family(family) if isinstance(family, str) else validate_family(family)


def _manifest(manifest: Manifest | Mapping[str, Any] | None) -> Manifest:
    if manifest is None:
        return tiny_manifest()
    return manifest if isinstance(manifest, Manifest) else Manifest.from_dict(manifest)


class FamilyContract:
    """Subclass as ``Test...`` and set :attr:`family`; each ``test_*`` method is one check."""

    family: ClassVar[Family | str]
    manifest: ClassVar[Manifest | Mapping[str, Any] | None] = None
    params: ClassVar[Mapping[str, Any]] = {}
    seed: ClassVar[int] = 0
    steps: ClassVar[int] = 2
    batch_size: ClassVar[int] = 32

    def make_batch(self, spec: DataSpec, n: int, seed: int) -> Batch:
        """Random inputs for the model; override when it needs other values."""
        return make_batch(spec, n, seed)

    def _setup(self) -> tuple[Family, DataSpec, Any, Batch, Batch]:
        fam = _resolve(self.family)
        spec = check_data_spec(fam, _manifest(self.manifest))
        config = make_config(fam, self.params)
        train = self.make_batch(spec, self.batch_size, self.seed)
        val = self.make_batch(spec, 2 * self.batch_size, self.seed + 1)
        return fam, spec, config, train, val

    def _trained(self) -> tuple[Family, DataSpec, Any, nn.Module, Batch, Batch]:
        fam, spec, config, train, val = self._setup()
        model = build_model(fam, spec, config, self.seed)
        check_gradients(fam, model, train, steps=self.steps)
        return fam, spec, config, model, train, val

    def test_family_is_valid(self) -> None:
        validate_family(_resolve(self.family), f"family {self.family!r}")

    def test_data_spec_and_build(self) -> None:
        fam, spec, config, _, _ = self._setup()
        build_model(fam, spec, config, self.seed)

    def test_gradients_reach_every_parameter(self) -> None:
        self._trained()

    def test_evaluate_reports_every_metric(self) -> None:
        fam, _, _, model, _, val = self._trained()
        check_evaluate(fam, model, val)

    def test_save_load_round_trip(self) -> None:
        fam, spec, config, model, _, val = self._trained()
        check_save_load(fam, model, config, spec, val)

    def test_seeded_determinism(self) -> None:
        fam, spec, config, train, _ = self._setup()
        check_determinism(fam, spec, config, train, seed=self.seed, steps=self.steps)

    def test_optional_hooks(self) -> None:
        fam, _, _, model, train, val = self._trained()
        check_hooks(fam, model, train, val)
