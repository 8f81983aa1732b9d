"""The ``hepscan preprocess`` configuration: a YAML file validated with pydantic.

Unknown keys are errors (``extra="forbid"``) and every error names the config file and the
key path, e.g. ``configs/preprocess_zll.yaml: unfold.edges.bins: Input should be greater
than 0``. Relative ``files`` patterns are resolved against the directory of the config file
(for a config given as a dict: against the current directory), so a config stays valid
wherever it is launched from. The manifest stores the paths as written, never absolute ones
that the patterns did not already contain.

Example (all keys; the defaults are shown where a key may be left out)::

    sample: zll                      # label copied into the manifest
    files: ["../data/zll/*.root"]    # glob patterns, expanded and sorted
    tree: events
    branches: {}                     # logical name -> branch, overrides the selection's defaults
    event_id: event_id               # branch, [branch_a, branch_b] (a<<32 | b) or null (file+entry)
    weight: null                     # branch holding a per-event weight, else weight 1
    selection: {kind: zll_pair, z_mass: 91.1876, window: 0.25, iso_max: 0.1, lep_pt_min: 0.0}
    # other kinds: jets, dijet, ttbar, hzz_muon_match, zmumu_reco, recoil, nanoaod_dilepton
    # (NanoAOD layout, see jobs/preprocess/nanoaod.py) or an import string "package.module:function" (your own
    # selection, see jobs/preprocess/user.py):
    #   selection: {kind: "mysel:select_events", branches: [Muon_pt, ...], options: {pt_min: 20}}
    features: [reco_mass, reco_l1_pt, reco_l2_pt, reco_l1_iso, reco_l2_iso]
    unfold:                          # optional: binned unfolding targets
      quantity: mass
      truth: truth_mass              # null for reco-only data (no truth_bin / migration)
      reco: reco_mass
      edges: {start: 65.0, stop: 115.0, bins: 40}   # or an explicit increasing list
      outside: drop                  # drop rows whose truth or reco value is outside the edges
    resolution:                      # optional: (reco - truth) classes + inefficiency class
      n_classes: 100
      quantile_range: [0.01, 0.99]   # class edges span these quantiles of the train split
      quantities:
        pt: {truth: truth_pt, reco: reco_pt, mode: relative}   # relative | absolute | angle
    generative: {condition: [truth_mass], target: [reco_mass]}
    classify: {label: truth_label, mass: truth_mass}   # optional: signal/background label
                                     # (0/1) and the signal-mass parameter (or null)
    regression: {target: [truth_upar, truth_uperp]}   # regression family: x = features
    split: {train: 0.8, validation: 0.1, test: 0.1}
    nan_policy: error                # or drop (dropped events are counted in the manifest)
    step_size: 100 MB                # Dask partition size: bytes or "N MB"/"N GB" (uproot syntax)
    shard_rows: 1000000              # at most this many rows per Parquet shard
    compression: snappy              # snappy | zstd | none
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    JsonValue,
    Tag,
    ValidationError,
    field_validator,
    model_validator,
)

from models.errors import ConfigError

__all__ = [
    "BUILTIN_KINDS",
    "NanoaodDileptonSelection",
    "PreprocessConfig",
    "UserSelection",
    "ZllPairSelection",
    "load_config",
    "parse_config",
    "step_size_bytes",
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Edges(_Strict):
    start: float
    stop: float
    bins: int = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Edges:
        if not self.stop > self.start:
            raise ValueError("stop must be greater than start")
        return self


class UnfoldConfig(_Strict):
    quantity: str
    truth: str | None
    reco: str
    edges: Edges | list[float]
    outside: Literal["drop", "keep"] = "drop"

    @field_validator("edges")
    @classmethod
    def _increasing(cls, v: Edges | list[float]) -> Edges | list[float]:
        if isinstance(v, list) and (
            len(v) < 2 or any(b <= a for a, b in zip(v[:-1], v[1:], strict=True))
        ):
            raise ValueError("explicit edges must be a strictly increasing list of >= 2 values")
        return v

    def edge_values(self) -> list[float]:
        if isinstance(self.edges, Edges):
            import numpy as np

            e = self.edges
            return [float(x) for x in np.linspace(e.start, e.stop, e.bins + 1)]
        return [float(x) for x in self.edges]


class ResolutionQuantity(_Strict):
    truth: str
    reco: str
    mode: Literal["relative", "absolute", "angle"] = "absolute"
    range: tuple[float, float] | None = None

    @field_validator("range")
    @classmethod
    def _range_ordered(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not v[1] > v[0]:
            raise ValueError("range must be [low, high] with high > low")
        return v


class ResolutionConfig(_Strict):
    n_classes: int = Field(default=100, ge=2)
    quantile_range: tuple[float, float] = (0.01, 0.99)
    quantities: dict[str, ResolutionQuantity]

    @field_validator("quantile_range")
    @classmethod
    def _q_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= v[0] < v[1] <= 1.0:
            raise ValueError("quantile_range must satisfy 0 <= low < high <= 1")
        return v


class GenerativeConfig(_Strict):
    condition: list[str] = Field(min_length=1)
    target: list[str] = Field(min_length=1)


class ClassifyConfig(_Strict):
    """Signal/background classification: the 0/1 label column and, for a parameterized
    classifier, the column of the signal-mass parameter (written to the shards as float64)."""

    label: str
    mass: str | None = None


class RegressionConfig(_Strict):
    """Continuous targets of a regression family, written unstandardised to the shards; the
    network's inputs are the ``features`` (``feat_*``)."""

    target: list[str] = Field(min_length=1)


class SplitConfig(_Strict):
    train: float = Field(default=0.8, gt=0.0)
    validation: float = Field(default=0.1, ge=0.0)
    test: float = Field(default=0.1, ge=0.0)

    @model_validator(mode="after")
    def _sum_one(self) -> SplitConfig:
        if abs(self.train + self.validation + self.test - 1.0) > 1e-9:
            raise ValueError("train + validation + test must sum to 1")
        return self


class ZllPairSelection(_Strict):
    """Best opposite-charge same-flavour isolated lepton pair closest to mZ (zll samples)."""

    kind: Literal["zll_pair"]
    z_mass: float = 91.1876
    window: float = Field(default=0.25, gt=0.0)
    iso_max: float = 0.1
    lep_pt_min: float = 0.0


class JetsSelection(_Strict):
    """One row per truth jet; unreconstructed jets keep their truth (inefficiency class)."""

    kind: Literal["jets"]
    truth_pt_min: float = 0.0


class DijetSelection(_Strict):
    kind: Literal["dijet"]


class TtbarSelection(_Strict):
    """Every event of the ``ttbar`` sample (Z′ → tt̄ signal and SM tt̄ background)."""

    kind: Literal["ttbar"]


class RecoilSelection(_Strict):
    """One row per ``recoil`` event, vectors in the raw-recoil frame (jobs/preprocess/recoil.py)."""

    kind: Literal["recoil"]


class HzzMuonMatchSelection(_Strict):
    """One row per reco muon, matched to the MC truth lepton within ``dr_max``."""

    kind: Literal["hzz_muon_match"]
    dr_max: float = Field(default=0.3, gt=0.0)
    muon_pt_min: float = 0.0


class ZmumuRecoSelection(_Strict):
    """Reco-only dimuon candidates (one per entry), e.g. the CMS ``Zmumu`` file."""

    kind: Literal["zmumu_reco"]
    opposite_charge: bool = True
    z_mass: float = 91.1876
    window: float | None = 0.25


class NanoaodDileptonSelection(_Strict):
    """Best opposite-charge isolated pair of one NanoAOD collection, truth via ``genPartIdx``.

    Reads ``<collection>_{pt,eta,phi,charge,<iso>,genPartIdx}`` and ``<gen>_{pt,eta,phi,pdgId}``
    (``<gen>_mass``, ``<gen>_status`` when present); see :mod:`jobs.preprocess.nanoaod`.
    """

    kind: Literal["nanoaod_dilepton"]
    collection: str = "Muon"
    flavour: Literal[11, 13, 15] | None = None  # |pdgId|; implied by Muon, Electron, Tau
    iso: str = "pfRelIso03_all"  # isolation field of the collection: <collection>_<iso>
    iso_max: float = 0.15
    pt_min: float = 0.0
    eta_max: float | None = Field(default=None, gt=0.0)
    require: list[str] = Field(
        default_factory=list
    )  # boolean fields that must be true, e.g. tightId
    gen: str = "GenPart"
    z_mass: float = 91.1876
    window: float = Field(default=0.25, gt=0.0)

    @model_validator(mode="after")
    def _known_flavour(self) -> NanoaodDileptonSelection:
        if self.flavour is None and self.collection not in COLLECTION_FLAVOUR:
            raise ValueError(
                f"set 'flavour' (11, 13 or 15) for collection {self.collection!r} "
                f"(implied only for {', '.join(COLLECTION_FLAVOUR)})"
            )
        return self

    @property
    def pdg_id(self) -> int:
        return self.flavour if self.flavour is not None else COLLECTION_FLAVOUR[self.collection]


COLLECTION_FLAVOUR = {"Muon": 13, "Electron": 11, "Tau": 15}

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
IMPORT_STRING = rf"^{_NAME}(\.{_NAME})*:{_NAME}(\.{_NAME})*$"


class UserSelection(_Strict):
    """Your own selection: ``kind: "package.module:function"`` (see :mod:`jobs.preprocess.user`).

    The function gets the ``branches`` of one chunk as an awkward record array plus the
    ``options`` as keyword arguments, and returns the row columns with an ``entry`` column.
    """

    kind: str = Field(pattern=IMPORT_STRING)
    branches: list[str] = Field(min_length=1)
    options: dict[str, JsonValue] = Field(default_factory=dict)
    reco_ok: bool = False  # the function also returns a boolean 'reco_ok' column


BUILTIN_KINDS = (
    "zll_pair",
    "jets",
    "dijet",
    "ttbar",
    "hzz_muon_match",
    "zmumu_reco",
    "nanoaod_dilepton",
    "recoil",
)


def _selection_tag(v: Any) -> str | None:
    kind = v.get("kind") if isinstance(v, dict) else getattr(v, "kind", None)
    if isinstance(kind, str) and ":" in kind:
        return "import"
    return kind if isinstance(kind, str) else None


Selection = Annotated[
    Annotated[ZllPairSelection, Tag("zll_pair")]
    | Annotated[JetsSelection, Tag("jets")]
    | Annotated[DijetSelection, Tag("dijet")]
    | Annotated[TtbarSelection, Tag("ttbar")]
    | Annotated[HzzMuonMatchSelection, Tag("hzz_muon_match")]
    | Annotated[ZmumuRecoSelection, Tag("zmumu_reco")]
    | Annotated[NanoaodDileptonSelection, Tag("nanoaod_dilepton")]
    | Annotated[RecoilSelection, Tag("recoil")]
    | Annotated[UserSelection, Tag("import")],
    Discriminator(
        _selection_tag,
        custom_error_type="selection_kind",
        custom_error_message=(
            f"kind must be one of {', '.join(BUILTIN_KINDS)} "
            "or an import string 'package.module:function'"
        ),
    ),
]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|kB|KB|MB|GB|KiB|MiB|GiB)\s*$")


class PreprocessConfig(_Strict):
    sample: str
    files: list[str] = Field(min_length=1)
    tree: str = "events"
    branches: dict[str, str] = Field(default_factory=dict)
    event_id: str | list[str] | None = "event_id"
    weight: str | None = None
    selection: Selection
    features: list[str] = Field(min_length=1)
    unfold: UnfoldConfig | None = None
    resolution: ResolutionConfig | None = None
    generative: GenerativeConfig | None = None
    classify: ClassifyConfig | None = None
    regression: RegressionConfig | None = None
    split: SplitConfig = Field(default_factory=SplitConfig)
    nan_policy: Literal["error", "drop"] = "error"
    step_size: int | str = "100 MB"
    shard_rows: int = Field(default=1_000_000, gt=0)
    compression: Literal["snappy", "zstd", "none"] = "snappy"

    @field_validator("step_size")
    @classmethod
    def _step(cls, v: int | str) -> int | str:
        if isinstance(v, int):
            if v <= 0:
                raise ValueError("step_size must be positive")
            return v
        if not _SIZE.match(v):
            raise ValueError("step_size must be bytes or a size such as '100 MB'")
        return v

    @field_validator("event_id")
    @classmethod
    def _eid(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and not 1 <= len(v) <= 2:
            raise ValueError("event_id lists take one or two branches (run, event)")
        return v


_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODEL_TAGS = {"ClassifyConfig", "Edges", "ResolutionQuantity", "ResolutionConfig", "UnfoldConfig"}


def _loc(loc: tuple[int | str, ...], kinds: set[str]) -> str:
    out = ""
    for i, part in enumerate(loc):
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        # pydantic puts union tags into the path (the discriminator value of tagged unions,
        # 'function-after[...]', 'list[float]' or a model name); users never write them
        if i > 0 and loc[i - 1] == "selection" and part in kinds:
            continue
        if not _KEY.match(part) or part in _MODEL_TAGS:
            continue
        out += f".{part}" if out else part
    return out or "<top level>"


def parse_config(data: Any, source: str) -> PreprocessConfig:
    """Validate a mapping; errors become :class:`ConfigError` naming ``source`` and the key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level")
    try:
        return PreprocessConfig.model_validate(data)
    except ValidationError as exc:
        kinds = {*BUILTIN_KINDS, "import"}
        found: list[tuple[str, str]] = []
        for err in exc.errors():
            key = _loc(tuple(err["loc"]), kinds)
            msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
            found.append((key, msg))
        # of a union's alternatives, report the one that got deepest into the value
        keys = {k for k, _ in found}
        lines = [
            f"{source}: {k}: {m}"
            for k, m in dict.fromkeys(found)
            if not any(o.startswith(k + ".") or o.startswith(k + "[") for o in keys)
        ]
        raise ConfigError("; ".join(lines)) from None


def load_config(
    config: str | os.PathLike[str] | dict[str, Any],
) -> tuple[PreprocessConfig, Path, str]:
    """Return (validated config, base dir for relative files, source label for messages)."""
    if isinstance(config, dict):
        return parse_config(config, "<config dict>"), Path.cwd(), "<config dict>"
    import yaml

    path = Path(config)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    return parse_config(data, str(path)), path.parent, str(path)


def step_size_bytes(step: int | str) -> int:
    if isinstance(step, int):
        return step
    m = _SIZE.match(step)
    assert m is not None
    factor = {
        "B": 1,
        "kB": 1000,
        "KB": 1000,
        "MB": 1000**2,
        "GB": 1000**3,
        "KiB": 1024,
        "MiB": 1024**2,
        "GiB": 1024**3,
    }[m.group(2)]
    return int(float(m.group(1)) * factor)
