"""Search-space translation: scan-config :class:`~scan.params.Param` objects to Optuna.

Every searcher of a scan goes through Tune's ``OptunaSearch``, which gets a *define-by-run*
function, :class:`DefineByRun`: parameters are suggested in dependency order and a conditional
parameter is suggested only when its ``when`` condition holds, so TPE models it only on the
trials where it exists. The function is a picklable object because Tune pickles the searcher
with the experiment state that ``hepscan resume`` restores. :func:`make_sampler` builds the
seeded Optuna sampler.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from scan.params import Param, grid_values, is_active, sample_order

if TYPE_CHECKING:
    import optuna

    from scan.config import ScanConfig

__all__ = ["DefineByRun", "make_sampler", "optuna_distributions", "suggest"]


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
