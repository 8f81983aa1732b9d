"""Search-space translation: scan-config :class:`~scan.config.Param` objects to Optuna and Tune.

Optuna (every searcher of a scan goes through ``OptunaSearch``) gets a *define-by-run* function,
:class:`DefineByRun`: parameters are suggested in dependency order and a conditional parameter is
suggested only when its ``when`` condition holds, so TPE models it only on the trials where it
exists. The function is a picklable object because Tune pickles the searcher with the experiment
state that ``hepscan resume`` restores.

:func:`to_tune` gives the equivalent Ray Tune space (``tune.sample_from`` for conditional
parameters) for Tune's own samplers; :func:`make_sampler` builds the seeded Optuna sampler.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from scan.config import Param, ScanConfig

if TYPE_CHECKING:
    import optuna

GRID_INT_LIMIT = 64  # an int range wider than this is not a sensible grid axis


def sample_order(space: Mapping[str, Param]) -> list[str]:
    """Parameter names so that every condition's parameters come before the conditioned one.

    Ties keep the config's order. Raises ValueError on a dependency cycle.
    """
    order: list[str] = []
    done: set[str] = set()
    pending = list(space)
    while pending:
        progressed = False
        for name in list(pending):
            deps = set(space[name].condition())
            if deps <= done:
                order.append(name)
                done.add(name)
                pending.remove(name)
                progressed = True
        if not progressed:
            raise ValueError(f"conditions form a cycle between {sorted(pending)}")
    return order


def is_active(param: Param, values: Mapping[str, Any]) -> bool:
    """Whether a conditional parameter applies given the values sampled so far."""
    return all(k in values and values[k] in allowed for k, allowed in param.condition().items())


def grid_values(param: Param) -> list[Any]:
    """The grid axis of one parameter (choice values or every int in range)."""
    if param.type == "choice":
        return list(param.values or [])
    if param.type == "int":
        assert param.low is not None and param.high is not None
        lo, hi = int(param.low), int(param.high)
        if hi - lo + 1 > GRID_INT_LIMIT:
            raise ValueError(
                f"int range {lo}..{hi} is too wide for a grid (max {GRID_INT_LIMIT} values); "
                "use 'choice' with the values you want"
            )
        return list(range(lo, hi + 1))
    raise ValueError(
        f"searcher 'grid' needs 'choice' or 'int' parameters, not {param.type!r} "
        "(list the grid points with 'choice')"
    )


def grid_size(space: Mapping[str, Param]) -> int:
    return math.prod(len(grid_values(p)) for p in space.values())


class DefineByRun:
    """Optuna define-by-run space: ``space(trial)`` suggests every active parameter."""

    def __init__(self, space: Mapping[str, Param]) -> None:
        self.space = dict(space)
        self.order = sample_order(self.space)

    def __call__(self, trial: optuna.Trial) -> None:
        values: dict[str, Any] = {}
        for name in self.order:
            p = self.space[name]
            if not is_active(p, values):
                continue
            values[name] = suggest(trial, name, p)


def suggest(trial: optuna.Trial, name: str, p: Param) -> Any:
    if p.type == "choice":
        return trial.suggest_categorical(name, list(p.values or []))  # type: ignore[arg-type]
    assert p.low is not None and p.high is not None
    if p.type == "int":
        return trial.suggest_int(name, int(p.low), int(p.high))
    return trial.suggest_float(name, float(p.low), float(p.high), log=p.type == "loguniform")


def optuna_distributions(space: Mapping[str, Param]) -> dict[str, Any]:
    """Unconditional Optuna distributions of every parameter (to rebuild a study for reports)."""
    import optuna

    out: dict[str, Any] = {}
    for name, p in space.items():
        if p.type == "choice":
            out[name] = optuna.distributions.CategoricalDistribution(list(p.values or []))
        elif p.type == "int":
            out[name] = optuna.distributions.IntDistribution(int(p.low or 0), int(p.high or 0))
        else:
            out[name] = optuna.distributions.FloatDistribution(
                float(p.low or 0), float(p.high or 0), log=p.type == "loguniform"
            )
    return out


def to_tune(space: Mapping[str, Param]) -> dict[str, Any]:
    """The same space for Tune's own samplers; conditional parameters become ``sample_from``
    functions that return ``None`` when their condition does not hold."""
    from ray import tune

    out: dict[str, Any] = {}
    for name in sample_order(space):
        p = space[name]
        dom = _tune_domain(p)
        if p.when:
            out[name] = tune.sample_from(_Conditional(p, dom))
        else:
            out[name] = dom
    return out


def _tune_domain(p: Param) -> Any:
    from ray import tune

    if p.type == "choice":
        return tune.choice(list(p.values or []))
    assert p.low is not None and p.high is not None
    if p.type == "int":
        return tune.randint(int(p.low), int(p.high) + 1)  # Tune's upper bound is exclusive
    if p.type == "loguniform":
        return tune.loguniform(p.low, p.high)
    return tune.uniform(p.low, p.high)


class _Conditional:
    def __init__(self, param: Param, domain: Any) -> None:
        self.param = param
        self.domain = domain

    def __call__(self, spec: Any) -> Any:
        config = spec.config if hasattr(spec, "config") else spec
        if not is_active(self.param, config):
            return None
        return self.domain.sample()


def make_sampler(cfg: ScanConfig) -> optuna.samplers.BaseSampler:
    """The seeded Optuna sampler for ``cfg.searcher``.

    Grid: after the last point Optuna's GridSampler calls ``study.stop()``, which raises outside
    ``study.optimize``; Optuna records the trial's result before that, and Tune's OptunaSearch
    logs the error, so the scan is unaffected (``num_trials`` is capped at the grid size).
    """
    import warnings

    import optuna

    with warnings.catch_warnings():
        # Multivariate/grouped TPE are flagged experimental; using them is deliberate here.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _make_sampler(cfg)


def _make_sampler(cfg: ScanConfig) -> optuna.samplers.BaseSampler:
    import optuna

    seed = cfg.seed
    if cfg.searcher == "tpe":
        kwargs: dict[str, Any] = {"seed": seed, "multivariate": not cfg.multi_objective}
        if cfg.n_startup_trials is not None:
            kwargs["n_startup_trials"] = cfg.n_startup_trials
        # "group" lets the multivariate TPE handle conditional (define-by-run) spaces.
        if kwargs["multivariate"] and any(p.when for p in cfg.space.values()):
            kwargs["group"] = True
        return optuna.samplers.TPESampler(**kwargs)
    if cfg.searcher == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.searcher == "grid":
        grid = {name: grid_values(p) for name, p in cfg.space.items()}
        return optuna.samplers.GridSampler(grid, seed=seed)  # type: ignore[arg-type]
    if cfg.searcher == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed)
    if cfg.searcher == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    raise AssertionError(cfg.searcher)


def grid_points(space: Mapping[str, Param]) -> list[dict[str, Any]]:
    """Every point of a grid space (for tests and for sizing ``num_trials``)."""
    names = list(space)
    axes = [grid_values(space[n]) for n in names]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes)]
