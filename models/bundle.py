"""A trained model that applies itself to *raw* inputs: net, config, scaler, bins, provenance.

A :class:`ModelBundle` is what leaves a scan: the family (registry name or
``"pkg.module:ATTR"``), the family's model config, the weights, the part of the dataset
manifest needed to turn raw columns into the network's inputs (feature names, the manifest's
scaler — never refitted —, unfolding edges, resolution classes, generative columns), the
training config, the training sample's response matrix (unfolding families, for the IBU and
Tikhonov baselines) and provenance (scan, trial, metrics, git sha). It is a directory::

    BUNDLE/bundle.json     everything but the weights (bundle_version, family, configs, manifest)
    BUNDLE/weights.pt      the state dict (torch.save; loaded with weights_only=True)

.. code-block:: python

    from models.bundle import ModelBundle
    bundle = ModelBundle.load("bundle_dir")
    out = bundle.predict({"reco_mass": m, "reco_l1_pt": pt1, ...})   # dict of numpy columns
    # unfolding families: out["p_0"] .. out["p_{N-1}"], per-event truth-bin probabilities
    probs = bundle.truth_probabilities(frame)                        # (events, bins) float64
    # resolution: output="proba" (p_<q>_<k>) or output="sample" (reco_<q>, reconstructed)
    # gan / flow: one smeared reco row per truth row, columns = generative targets
    # param_classifier / vae: out["score"] (signal probability; anomaly score)

Input columns (:meth:`ModelBundle.input_columns`): for a network input ``feat_<f>`` the raw
column ``<f>`` (standardised here with the manifest's mean/std); for ``reco_bin``
(``unfold_migration``) a ``reco_bin`` column or the unfolding's raw reco column (binned with
the bundle's edges); every other input (``truth_*`` of the resolution and generative
families) as is — those families standardise inside the network. A missing column or a
NaN/inf value raises :class:`models.errors.InputError` naming the column.

No MLflow here: ``tracking.model`` wraps a bundle as an MLflow pyfunc model.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from models.errors import ConfigError, InputError

__all__ = [
    "BUNDLE_FILE",
    "BUNDLE_VERSION",
    "KINDS",
    "WEIGHTS_FILE",
    "ModelBundle",
    "family_kind",
    "manifest_digest",
    "manifest_subset",
]

BUNDLE_VERSION = 1
BUNDLE_FILE = "bundle.json"
WEIGHTS_FILE = "weights.pt"
KINDS = ("unfold", "resolution", "generative", "score")
# Manifest keys a bundle keeps: what data_spec and the raw-input transformation read.
MANIFEST_KEYS = (
    "sample",
    "features",
    "scaler",
    "columns",
    "unfold",
    "resolution",
    "generative",
    "classify",
    "regression",
    "config",  # the preprocessing config: ROOT inputs of `hepscan apply` go through it again
)
OUTPUTS = {
    "unfold": ("proba",),
    "resolution": ("proba", "sample"),
    "generative": ("sample",),
    "score": ("score",),  # classify families (param_classifier, vae): one score per event
}


def manifest_subset(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The keys of a dataset manifest a bundle needs (no shard lists, no input paths)."""
    return {k: json.loads(json.dumps(raw[k])) for k in MANIFEST_KEYS if k in raw}


def manifest_digest(raw: Mapping[str, Any]) -> str:
    """16 hex digits identifying a dataset: sha256 over the manifest's checksums (shards and
    inputs) when it has them, else over its splits, features and scaler."""
    import hashlib

    sums: list[str] = []
    for split in sorted(raw.get("splits") or {}):
        for f in raw["splits"][split].get("files", []):
            sums.append(f"{f.get('path')}:{f.get('sha256') or f.get('rows')}")
    sums += [str(i.get("sha256")) for i in raw.get("inputs") or [] if isinstance(i, Mapping)]
    sums.append(json.dumps([raw.get("features"), raw.get("scaler")], sort_keys=True))
    return hashlib.sha256("\n".join(sums).encode()).hexdigest()[:16]


def _resolve_family(name: str) -> Any:
    """A registered family, or ``"pkg.module:ATTR"`` (:func:`models.registry.get_family`)."""
    from models.registry import get_family

    return get_family(name)


def _data_spec(family: Any, manifest: Mapping[str, Any]) -> Any:
    from models.manifest import Manifest

    return family.data_spec(Manifest.from_dict(manifest))


def family_kind(spec: Any) -> str:
    """``unfold`` (class target with edges), ``resolution`` (one class head per quantity) or
    ``generative`` (continuous targets), from a family's DataSpec."""
    if spec.target_kind == "continuous":
        return "generative"
    if spec.target_kind == "multiclass":
        return "resolution"
    if spec.extra.get("output") == "score":
        return "score"
    return "unfold"


@dataclass
class ModelBundle:
    """A self-contained trained model; see the module docstring."""

    family: str
    model_config: dict[str, Any]
    manifest: dict[str, Any]
    train_config: dict[str, Any]
    state_dict: dict[str, Tensor] = field(repr=False)
    response: dict[str, Any] | None = None  # {"counts": (reco x truth), "truth": [...]}
    info: dict[str, Any] = field(default_factory=dict)  # provenance: scan, trial, metrics, sha
    _model: nn.Module | None = field(default=None, init=False, repr=False, compare=False)

    # ------------------------------------------------------------------ the family
    @property
    def family_obj(self) -> Any:
        return _resolve_family(self.family)

    @property
    def spec(self) -> Any:
        return _data_spec(self.family_obj, self.manifest)

    @property
    def kind(self) -> str:
        return family_kind(self.spec)

    @property
    def edges(self) -> np.ndarray:
        """Unfolding bin edges (unfolding families)."""
        unfold = self.manifest.get("unfold") or {}
        if "edges" not in unfold:
            raise ConfigError(f"model family {self.family!r} has no unfolding edges")
        return np.asarray(unfold["edges"], dtype=np.float64)

    @property
    def n_bins(self) -> int:
        return len(self.edges) - 1

    @property
    def quantity(self) -> str:
        return str((self.manifest.get("unfold") or {}).get("quantity", "x"))

    def unfold_column(self, which: str) -> str:
        """The raw ``truth``/``reco`` column of the unfolded quantity (manifest names, or
        ``truth_<quantity>``/``reco_<quantity>``)."""
        unfold = self.manifest.get("unfold") or {}
        name = unfold.get(which)
        return str(name) if name else f"{which}_{self.quantity}"

    def build(self) -> nn.Module:
        """The network with the bundle's weights, on CPU, in eval mode (built once)."""
        if self._model is None:
            family = self.family_obj
            try:
                config = family.config_cls(**self.model_config)
            except (TypeError, ValueError) as exc:
                raise ConfigError(
                    f"model family {self.family!r}: bad model config: {exc}"
                ) from None
            model = family.build(config, self.spec.dims)
            if self.train_config.get("dtype") == "float64":
                model = model.double()
            try:
                model.load_state_dict(self.state_dict)
            except RuntimeError as exc:
                raise ConfigError(
                    f"model family {self.family!r}: weights do not fit the network "
                    f"({str(exc).splitlines()[0]})"
                ) from None
            model.eval()
            self._model = model
        return self._model

    # ------------------------------------------------------------------ raw inputs
    def input_columns(self) -> list[str]:
        """The raw columns :meth:`predict` needs (see the module docstring)."""
        out = []
        for c in self.spec.x_columns:
            if c.startswith("feat_"):
                out.append(c[len("feat_") :])
            elif c == "reco_bin":
                out.append(self.unfold_column("reco"))
            else:
                out.append(c)
        return list(dict.fromkeys(out))

    def apply_columns(self) -> list[str]:
        """The raw columns ``hepscan apply`` needs: :meth:`input_columns`, and for unfolding
        the reco column of the quantity (which rows are inside the edges, the reco histogram)."""
        cols = self.input_columns()
        if self.kind == "unfold":
            cols.append(self.unfold_column("reco"))
        return list(dict.fromkeys(cols))

    def _column(self, frame: Mapping[str, Any], name: str, where: str) -> np.ndarray:
        if name not in frame:
            have = sorted(map(str, getattr(frame, "columns", frame)))
            needs = (
                self.apply_columns() if name not in self.input_columns() else self.input_columns()
            )
            raise InputError(
                f"{where}: column {name!r} missing; model family {self.family!r} needs "
                f"{needs} (have {have})"
            )
        col = np.asarray(frame[name], dtype=np.float64).reshape(-1)
        if not np.isfinite(col).all():
            bad = int((~np.isfinite(col)).sum())
            raise InputError(f"{where}: column {name!r} holds {bad} NaN/inf value(s)")
        return col

    def reco_bin(self, frame: Mapping[str, Any], where: str = "input") -> np.ndarray:
        """Reco bin per row: a ``reco_bin`` column, or the raw reco column binned (-1 outside)."""
        if "reco_bin" in frame:
            return np.asarray(frame["reco_bin"], dtype=np.int64).reshape(-1)
        return bin_index(self._column(frame, self.unfold_column("reco"), where), self.edges)

    def inputs(self, frame: Mapping[str, Any], where: str = "input") -> Tensor:
        """The network's x (rows, inputs) from raw columns, standardised as in training."""
        features = list(self.manifest.get("features", []))
        scaler = self.manifest.get("scaler", {})
        mean, std = scaler.get("mean", []), scaler.get("std", [])
        cols = []
        for c in self.spec.x_columns:
            if c.startswith("feat_"):
                name = c[len("feat_") :]
                i = features.index(name)
                s = float(std[i]) if float(std[i]) > 0 else 1.0
                cols.append((self._column(frame, name, where) - float(mean[i])) / s)
            elif c == "reco_bin":
                cols.append(self.reco_bin(frame, where).astype(np.float64))
            else:
                cols.append(self._column(frame, c, where))
        x = np.stack(cols, axis=1) if cols else np.zeros((0, 0))
        if self.spec.x_columns and any(c.startswith("feat_") for c in self.spec.x_columns):
            x = x.astype(np.float32)  # shards hold feat_* as float32: round alike
        dtype = torch.float64 if self.train_config.get("dtype") == "float64" else torch.float32
        return torch.as_tensor(np.asarray(x, dtype=np.float64), dtype=dtype)

    # ------------------------------------------------------------------ predictions
    def _method(self, model: Any, name: str) -> Any:
        """``model.<name>``, or one error naming the family, its kind and the missing method."""
        fn = getattr(model, name, None)
        if not callable(fn):
            raise ConfigError(
                f"model family {self.family!r} ({self.kind} kind, from its data_spec) has no "
                f"method {name}(x) on its module {type(model).__name__}: a trained {self.kind} "
                f"model needs it to predict (hepscan apply, the published MLflow model)"
            )
        return fn

    def truth_probabilities(self, frame: Mapping[str, Any], where: str = "input") -> np.ndarray:
        """(rows, bins) float64: each event's probabilities over the truth bins.

        ``unfold_migration``: migration probabilities shifted by the event's reco bin; rows
        with no reco bin get zeros (they cannot be unfolded by migration)."""
        if self.kind != "unfold":
            raise ConfigError(f"model family {self.family!r} does not unfold")
        model = self.build()
        x = self.inputs(frame, where)
        with torch.no_grad():
            probs = self._method(model, "predict_proba")(x).double()
        n = self.n_bins
        if probs.shape[1] == n and "reco_bin" not in self.spec.x_columns:
            return np.asarray(probs.numpy(), dtype=np.float64)
        shifts = getattr(model, "shifts", None)
        if shifts is None:
            raise ConfigError(
                f"model family {self.family!r}: {probs.shape[1]} classes for {n} bins and no "
                "migration shifts: cannot map its classes to truth bins"
            )
        reco = torch.as_tensor(self.reco_bin(frame, where))
        target = reco[:, None] + shifts[None, :].cpu()
        valid = (reco[:, None] >= 0) & (target >= 0) & (target < n)
        out = torch.zeros(len(reco), n, dtype=torch.float64)
        rows = torch.arange(len(reco))[:, None].expand_as(target)
        out.index_put_((rows[valid], target[valid]), probs[valid], accumulate=True)
        return np.asarray(out.numpy(), dtype=np.float64)

    def predict(
        self,
        frame: Mapping[str, Any],
        *,
        output: str | None = None,
        seed: int = 0,
        where: str = "input",
    ) -> dict[str, np.ndarray]:
        """Per-row predictions from raw columns (see the module docstring for the columns).

        ``output``: ``"proba"`` (unfolding, resolution) or ``"sample"`` (resolution, gan,
        flow); default the first the family supports. Sampling draws from a
        ``torch.Generator`` seeded with ``seed``."""
        kind = self.kind
        output = output or OUTPUTS[kind][0]
        if output not in OUTPUTS[kind]:
            raise ConfigError(
                f"model family {self.family!r}: output {output!r} not available "
                f"(choose from {list(OUTPUTS[kind])})"
            )
        if kind == "unfold":
            p = self.truth_probabilities(frame, where)
            return {f"p_{k}": p[:, k] for k in range(p.shape[1])}
        model = self.build()
        x = self.inputs(frame, where)
        if kind == "score":
            return {"score": self._method(model, "score")(x).double().numpy()}
        gen = torch.Generator().manual_seed(int(seed))
        names = list(self.spec.dims.names) or [f"q{i}" for i in range(len(self.spec.y_columns))]
        with torch.no_grad():
            if kind == "resolution" and output == "proba":
                logits = model(self._method(model, "standardise_x")(x))
                p = torch.softmax(logits, dim=-1).double().numpy()
                return {
                    f"p_{q}_{k}": p[:, i, k] for i, q in enumerate(names) for k in range(p.shape[2])
                }
            if kind == "resolution":
                reco, ok = self._method(model, "smear")(x, generator=gen)
                out = {f"reco_{q}": reco[:, i].double().numpy() for i, q in enumerate(names)}
                out["reconstructed"] = ok.numpy()
                return out
            y = self._method(model, "sample")(x, generator=gen)
        return {c: y[:, i].double().numpy() for i, c in enumerate(self.spec.y_columns)}

    def output_columns(self, output: str | None = None) -> list[str]:
        """Names of the columns :meth:`predict` returns."""
        kind = self.kind
        output = output or OUTPUTS[kind][0]
        if kind == "unfold":
            return [f"p_{k}" for k in range(self.n_bins)]
        if kind == "score":
            return ["score"]
        names = list(self.spec.dims.names)
        if kind == "resolution" and output == "proba":
            n = self.spec.dims.n_classes[0]
            return [f"p_{q}_{k}" for q in names for k in range(n)]
        if kind == "resolution":
            return [f"reco_{q}" for q in names] + ["reconstructed"]
        return list(self.spec.y_columns)

    # ------------------------------------------------------------------ storage
    def to_json(self) -> dict[str, Any]:
        return {
            "bundle_version": BUNDLE_VERSION,
            "family": self.family,
            "model_config": self.model_config,
            "manifest": self.manifest,
            "train_config": self.train_config,
            "response": self.response,
            "info": self.info,
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write ``path/bundle.json`` and ``path/weights.pt`` (``path`` is created)."""
        d = Path(path)
        d.mkdir(parents=True, exist_ok=True)
        text = json.dumps(self.to_json(), indent=1, sort_keys=True, default=_json_default)
        (d / BUNDLE_FILE).write_text(text)
        torch.save({k: v.detach().cpu() for k, v in self.state_dict.items()}, d / WEIGHTS_FILE)
        return d

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ModelBundle:
        """Read a bundle directory; an InputError names the file when it is not one."""
        d = Path(path)
        meta_path = d / BUNDLE_FILE
        try:
            meta = json.loads(meta_path.read_text())
        except FileNotFoundError:
            raise InputError(
                f"{meta_path}: not a hepscan model bundle (no {BUNDLE_FILE})"
            ) from None
        except json.JSONDecodeError as exc:
            raise InputError(f"{meta_path}: not valid JSON ({exc})") from None
        version = meta.get("bundle_version")
        if not isinstance(version, int) or version > BUNDLE_VERSION:
            raise InputError(
                f"{meta_path}: bundle_version {version!r}; this hepscan reads up to "
                f"{BUNDLE_VERSION}"
            )
        try:
            state = torch.load(d / WEIGHTS_FILE, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
            raise InputError(f"{d / WEIGHTS_FILE}: cannot read weights ({exc})") from None
        for key in ("family", "model_config", "manifest", "train_config"):
            if key not in meta:
                raise InputError(f"{meta_path}: bundle lacks key {key!r}")
        return cls(
            family=str(meta["family"]),
            model_config=dict(meta["model_config"]),
            manifest=dict(meta["manifest"]),
            train_config=dict(meta["train_config"]),
            state_dict=dict(state),
            response=meta.get("response"),
            info=dict(meta.get("info") or {}),
        )

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: Mapping[str, Any],
        manifest: Mapping[str, Any],
        *,
        response: dict[str, Any] | None = None,
        info: Mapping[str, Any] | None = None,
    ) -> ModelBundle:
        """A bundle from a jobs/train checkpoint (``last.pt``/``best.pt`` content) and the raw
        manifest of the dataset it trained on."""
        for key in ("family", "model_config", "train_config", "model"):
            if key not in checkpoint:
                raise InputError(f"checkpoint lacks key {key!r} (not a hepscan checkpoint)")
        train_config = dict(checkpoint["train_config"])
        family = str(train_config.get("family") or checkpoint["family"])
        return cls(
            family=family,
            model_config=dict(checkpoint["model_config"]),
            manifest=manifest_subset(manifest),
            train_config=train_config,
            state_dict={k: v.detach().cpu() for k, v in checkpoint["model"].items()},
            response=response,
            info=dict(info or {}),
        )


def bin_index(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Bin of each value in ``[edges[0], edges[-1])``; -1 outside (as jobs/preprocess bins)."""
    idx = np.searchsorted(edges, x, side="right").astype(np.int64) - 1
    inside = (x >= edges[0]) & (x < edges[-1])
    return np.where(inside, idx, -1)


def _json_default(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return str(value)
