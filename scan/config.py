"""The scan configuration: a YAML file validated with pydantic, errors naming the key at fault.

.. code-block:: yaml

    name: unfold_zll
    dataset: data/zll                 # manifest.json or its directory (relative to the cwd)
    family: unfold_bins
    search_space:                     # omitted: the family's default space
      lr: {type: loguniform, low: 1.0e-4, high: 1.0e-2}
      depth: [int, 1, 4]              # shorthand: [type, low, high] or [choice, [values...]]
      batch_norm: [choice, [true, false]]
      dropout: {type: uniform, low: 0.0, high: 0.5, when: {batch_norm: false}}
    fixed: {batch_size: 512}          # model or training parameters held constant
    objective: {metric: chi2_ndf, mode: min}
    # or objectives: [{metric: chi2_ndf, mode: min}, {metric: train_time, mode: min}]
    searcher: tpe                     # tpe | random | grid | cmaes | nsga2
    scheduler: {type: asha, grace_period: 1, reduction_factor: 3}   # or: none
    num_trials: 12
    concurrency: 2
    resources: {workers: 2, cpus_per_worker: 1, gpus_per_worker: 0, collective_timeout_s: 300}
    max_failures: 2                   # retries of a failed trial, from its last checkpoint
    backend: horovod                  # single | horovod | ddp
    max_epochs: 10

Parameter names are routed by name: training parameters (:data:`TRAIN_PARAMS`) go to
``jobs.train.TrainConfig``, every other name must be a field of the family's model config.

Checks that need no running engine (family known, names valid, metrics reported, space not
empty, conditions well formed) happen in :func:`load_scan_config`; the cluster-size check needs
Ray and happens in ``scan.driver`` right after ``ray.init``, still before any trial starts.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from models.errors import ConfigError
from scan.params import Param, StrictModel, grid_size, grid_values, sample_order

# TrainConfig fields a scan may set (fixed or searched); everything else belongs to the model.
TRAIN_PARAMS: tuple[str, ...] = ("batch_size", "lr", "patience", "max_rows", "device", "seed")
TRAIN_PARAMS += ("precision", "compile", "tf32", "data_parts", "shuffle_buffer", "prefetch")
# Metrics every trial reports besides the family's own (jobs/train adds the losses; the trainable
# adds the timings; Tune adds its counters).
TRAIN_METRICS = (
    "train_loss",
    "val_loss",
    "epoch",
    "train_time_s",
    "epoch_time_s",
    "samples_per_s",
    "step_time_s",
    "train_time_total_s",
)
TUNE_METRICS = ("time_total_s", "training_iteration")
SEARCHERS = ("tpe", "random", "grid", "cmaes", "nsga2")
MULTI_OBJECTIVE_SEARCHERS = ("nsga2", "tpe", "random")


class Objective(StrictModel):
    metric: str
    mode: Literal["min", "max"] = "min"


class SchedulerConfig(StrictModel):
    type: Literal["asha", "none"] = "asha"
    grace_period: Annotated[int, Field(ge=1)] = 1
    reduction_factor: Annotated[float, Field(gt=1)] = 3.0

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"type": data}
        if data is None:
            return {"type": "none"}
        return data


class Resources(StrictModel):
    workers: Annotated[int, Field(ge=1)] = 1
    cpus_per_worker: Annotated[float, Field(gt=0)] = 1.0
    gpus_per_worker: Annotated[float, Field(ge=0)] = 0.0
    # Seconds a rank waits in a collective for the others (a dead rank on a lost node sends no
    # error): jobs.backends.collective_timeout. Longer than any stretch one rank works alone.
    collective_timeout_s: Annotated[float, Field(gt=0)] = 300.0

    @model_validator(mode="after")
    def _whole_gpus(self) -> Resources:
        from scan.resources import check_gpu_request

        check_gpu_request(self.workers, self.gpus_per_worker)
        return self

    @property
    def cpus(self) -> float:
        return self.workers * self.cpus_per_worker

    @property
    def gpus(self) -> float:
        return self.workers * self.gpus_per_worker


class ScanConfig(StrictModel):
    """A validated scan; paths are absolute after :func:`load_scan_config`."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = "scan"
    dataset: str
    family: str
    search_space: dict[str, Param] | None = None
    fixed: dict[str, Any] = Field(default_factory=dict)
    objective: Objective | None = None
    objectives: list[Objective] | None = None
    searcher: Literal["tpe", "random", "grid", "cmaes", "nsga2"] = "tpe"
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    num_trials: Annotated[int, Field(ge=1)] = 16
    concurrency: Annotated[int, Field(ge=1)] = 1
    resources: Resources = Field(default_factory=Resources)
    backend: Literal["single", "horovod", "ddp"] = "single"
    max_epochs: Annotated[int, Field(ge=1)] = 20
    time_budget_s: Annotated[float, Field(gt=0)] | None = None
    seed: int = 0
    # Tune retries a failed trial (a rank or node lost, any error) this many times, each from
    # its last checkpoint (docs/slurm.md, "Faults").
    max_failures: Annotated[int, Field(ge=0)] = 2
    scan_dir: str | None = None
    tracking_uri: str | None = None
    # How long the MLflow server may stay unreachable before the scan stops (scan/outbox.py);
    # meanwhile tracking writes are buffered and retried with backoff.
    tracking_outage_timeout_s: Annotated[float, Field(gt=0)] = 300.0
    experiment: str = "hepscan"
    # Optuna's TPE needs a few random trials first; None = Optuna's default (10).
    n_startup_trials: Annotated[int, Field(ge=1)] | None = None
    # Register the best trial's model in the MLflow Model Registry under `name` (true), under
    # another name (a string) or not at all (false); `register_top` K logs the K best trials.
    register_model: bool | str = Field(True, alias="register")  # `register` is ABCMeta's
    register_top: Annotated[int, Field(ge=1)] = 1

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not v or "/" in v or v.startswith("."):
            raise ValueError(f"must be a plain non-empty name without '/' (got {v!r})")
        return v

    @model_validator(mode="after")
    def _objectives(self) -> ScanConfig:
        if self.objective is not None and self.objectives is not None:
            raise ValueError("give either 'objective' or 'objectives', not both")
        if self.objectives is not None and not self.objectives:
            raise ValueError("'objectives' is empty")
        return self

    # ---- derived views -------------------------------------------------------------------
    @property
    def objective_list(self) -> list[Objective]:
        if self.objectives:
            return list(self.objectives)
        if self.objective is not None:
            return [self.objective]
        return [Objective(metric="val_loss", mode="min")]

    @property
    def metrics(self) -> list[str]:
        return [o.metric for o in self.objective_list]

    @property
    def modes(self) -> list[str]:
        return [o.mode for o in self.objective_list]

    @property
    def multi_objective(self) -> bool:
        return len(self.objective_list) > 1

    @property
    def space(self) -> dict[str, Param]:
        assert self.search_space is not None, "load_scan_config fills the default space"
        return self.search_space

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", exclude_none=True)


# ---- loading ---------------------------------------------------------------------------------


def _loc(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(p) for p in loc) or "<top level>"


def _format_validation(source: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        # Drop pydantic's internal union/validator tags from the key path.
        loc = tuple(
            p
            for p in err["loc"]
            if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))
        )
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{source}: {_loc(loc)}: {msg}")
    return "\n".join(dict.fromkeys(lines))


def set_path(data: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``a.b.c`` in nested dicts (for ``--set`` overrides)."""
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        nxt = node.get(p)
        if not isinstance(nxt, dict):
            nxt = {}
            node[p] = nxt
        node = nxt
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``key.path=value`` with value parsed as YAML (numbers, lists, booleans)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected key=value")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {key}: value is not valid YAML ({exc})") from None
    return key.strip(), value


def load_scan_config(
    source: str | os.PathLike[str] | Mapping[str, Any],
    overrides: Mapping[str, Any] | None = None,
    *,
    check_registry: bool = True,
) -> ScanConfig:
    """Read, override, validate and resolve a scan config; raises ConfigError naming the key."""
    if isinstance(source, Mapping):
        data: dict[str, Any] = dict(source)
        where = "scan config"
    else:
        path = Path(source)
        where = str(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{path}: scan config not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        data = loaded
    data = _deep_copy(data)
    for key, value in (overrides or {}).items():
        set_path(data, key, value)
    try:
        cfg = ScanConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(where, exc)) from None
    updates: dict[str, Any] = {"dataset": str(Path(cfg.dataset).expanduser().absolute())}
    if cfg.scan_dir is not None:
        updates["scan_dir"] = str(Path(cfg.scan_dir).expanduser().absolute())
    cfg = cfg.model_copy(update=updates)
    if check_registry:
        cfg = check_against_registry(cfg, where)
    check_space(cfg, where)
    return cfg


def _deep_copy(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _deep_copy(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_deep_copy(v) for v in data]
    return data


def model_fields(config_cls: type) -> set[str]:
    """The hyperparameter names of a family's (dataclass) model config."""
    return (
        {f.name for f in dataclasses.fields(config_cls)}
        if dataclasses.is_dataclass(config_cls)
        else set()
    )


def check_against_registry(cfg: ScanConfig, where: str = "scan config") -> ScanConfig:
    """Family found (a registered name or ``"pkg.module:ATTR"``, imported and validated here,
    before any trial), parameter names valid, objective metrics reported; fills the default
    space."""
    from models.registry import get_family, is_import_string

    try:
        family = get_family(cfg.family)
    except ConfigError as exc:  # import-string errors start with "family '...':"
        at = "" if is_import_string(cfg.family) else "family: "
        raise ConfigError(f"{where}: {at}{exc}") from None
    if cfg.search_space is None:
        default: dict[str, Param] = {}
        for k, v in dict(family.search_space()).items():
            try:
                default[k] = Param.model_validate(list(v))
            except ValidationError as exc:
                msg = _format_validation(f"family {cfg.family!r}: search_space()[{k!r}]", exc)
                raise ConfigError(f"{where}: {msg}") from None
        cfg = cfg.model_copy(update={"search_space": default})
    allowed = model_fields(family.config_cls) | set(TRAIN_PARAMS)
    for section, names in (("search_space", cfg.space), ("fixed", cfg.fixed)):
        for name in names:
            if name not in allowed:
                raise ConfigError(
                    f"{where}: {section}.{name}: not a parameter of family {cfg.family!r} "
                    f"(model: {sorted(model_fields(family.config_cls))}; "
                    f"training: {list(TRAIN_PARAMS)})"
                )
    reported = set(family.metrics) | set(TRAIN_METRICS) | set(TUNE_METRICS)
    key = "objectives" if cfg.objectives else "objective"
    for i, obj in enumerate(cfg.objective_list):
        if obj.metric not in reported:
            at = f"{key}.{i}.metric" if cfg.objectives else f"{key}.metric"
            raise ConfigError(
                f"{where}: {at}: family {cfg.family!r} does not report metric {obj.metric!r} "
                f"(it reports: {sorted(reported)})"
            )
        modes = family.metric_modes
        if obj.metric in modes and modes[obj.metric] != obj.mode:
            at = f"{key}.{i}.mode" if cfg.objectives else f"{key}.mode"
            raise ConfigError(
                f"{where}: {at}: {obj.metric!r} should be {modes[obj.metric]!r}, not {obj.mode!r}"
            )
    return cfg


def check_space(cfg: ScanConfig, where: str = "scan config") -> None:
    """Space not empty, conditions refer to earlier-samplable params, searcher fits the space."""
    space = cfg.search_space
    if space is not None and not space:
        raise ConfigError(f"{where}: search_space: is empty (give at least one parameter)")
    space = space or {}
    both = sorted(set(space) & set(cfg.fixed))
    if both:
        raise ConfigError(f"{where}: fixed.{both[0]}: is also in search_space")
    for name, p in space.items():
        for parent, allowed in p.condition().items():
            if parent == name:
                raise ConfigError(f"{where}: search_space.{name}.when: refers to itself")
            if parent not in space:
                raise ConfigError(
                    f"{where}: search_space.{name}.when.{parent}: not a searched parameter"
                )
            pp = space[parent]
            if pp.type == "choice":
                bad = [v for v in allowed if v not in (pp.values or [])]
                if bad:
                    raise ConfigError(
                        f"{where}: search_space.{name}.when.{parent}: value(s) {bad} are not "
                        f"among its choices {pp.values}"
                    )
    try:
        sample_order(space)
    except ValueError as exc:
        raise ConfigError(f"{where}: search_space: {exc}") from None
    if cfg.multi_objective and cfg.searcher not in MULTI_OBJECTIVE_SEARCHERS:
        raise ConfigError(
            f"{where}: searcher: {cfg.searcher!r} is single-objective; with several objectives "
            f"use one of {list(MULTI_OBJECTIVE_SEARCHERS)}"
        )
    if cfg.searcher == "grid":
        for name, p in space.items():
            try:
                grid_values(p)
            except ValueError as exc:
                raise ConfigError(f"{where}: search_space.{name}: {exc}") from None
            if p.when:
                raise ConfigError(
                    f"{where}: search_space.{name}.when: conditional parameters need a "
                    "sampling searcher (tpe, random, cmaes), not grid"
                )
    if cfg.searcher == "grid":
        n = grid_size(space)
        if cfg.num_trials > n:
            raise ConfigError(
                f"{where}: num_trials: {cfg.num_trials} exceeds the {n} points of the grid"
            )
    if cfg.searcher == "cmaes" and any(p.when for p in space.values()):
        raise ConfigError(
            f"{where}: searcher: 'cmaes' cannot sample conditional parameters "
            f"({[n for n, p in space.items() if p.when]}); use tpe or random"
        )
