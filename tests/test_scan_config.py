"""Scan config validation and search-space translation (no Ray cluster needed)."""

from __future__ import annotations

import itertools
import pickle
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from jobs.train_synthetic import write_unfold_dataset
from models.errors import ConfigError
from scan.config import load_scan_config, parse_override
from scan.params import Param, grid_values, is_active, sample_order
from scan.space import DefineByRun, make_sampler

REPO = Path(__file__).resolve().parents[1]


def grid_points(space: dict[str, Param]) -> list[dict[str, Any]]:
    """Every point of a grid space."""
    names = list(space)
    axes = [grid_values(space[n]) for n in names]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*axes)]


def base(**over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "dataset": "/nonexistent/ds",
        "family": "unfold_bins",
        "search_space": {
            "alpha": ["loguniform", 0.5, 8.0],
            "depth": ["int", 1, 3],
            "batchnorm": ["choice", [True, False]],
            "dropout": {"type": "uniform", "low": 0.0, "high": 0.4, "when": {"batchnorm": False}},
        },
        "objective": {"metric": "chi2_ndf", "mode": "min"},
    }
    cfg.update(over)
    if "objectives" in over:
        del cfg["objective"]
    return cfg


def test_valid_config_resolves_paths_and_defaults() -> None:
    cfg = load_scan_config(base(), {"num_trials": 7, "resources.workers": 2})
    assert cfg.num_trials == 7 and cfg.resources.workers == 2
    assert Path(cfg.dataset).is_absolute()
    assert cfg.searcher == "tpe" and cfg.scheduler.type == "asha"
    assert cfg.space["dropout"].condition() == {"batchnorm": [False]}


def test_family_default_space_when_omitted() -> None:
    data = base()
    del data["search_space"]
    cfg = load_scan_config(data)
    assert set(cfg.space) == {"alpha", "p", "depth", "dropout", "batchnorm"}


@pytest.mark.parametrize(
    ("over", "key"),
    [
        ({"family": "nope"}, "family: unknown model family 'nope'"),
        ({"search_space": {}}, "search_space: is empty"),
        ({"objective": {"metric": "auc", "mode": "min"}}, "objective.metric:"),
        ({"objective": {"metric": "chi2_ndf", "mode": "max"}}, "objective.mode:"),
        (
            {"objectives": [{"metric": "chi2_ndf"}, {"metric": "bogus"}]},
            "objectives.1.metric:",
        ),
        ({"num_trials": 0}, "num_trials:"),
        ({"resources": {"workers": 0}}, "resources.workers:"),
        ({"resources": {"cpus": 2}}, "resources.cpus: unknown key"),
        ({"sercher": "tpe"}, "sercher: unknown key"),
        ({"searcher": "bayes"}, "searcher:"),
        ({"backend": "mpi"}, "backend:"),
        ({"search_space": {"alpha": ["loguniform", 0.0, 1.0]}}, "search_space.alpha:"),
        ({"search_space": {"alpha": ["uniform", 2.0, 1.0]}}, "search_space.alpha:"),
        ({"search_space": {"depth": ["int", 1.5, 3]}}, "search_space.depth:"),
        ({"search_space": {"widht": ["int", 1, 3]}}, "search_space.widht: not a parameter"),
        ({"fixed": {"colour": 1}}, "fixed.colour: not a parameter"),
        (
            {
                "search_space": {
                    "dropout": {"type": "uniform", "low": 0, "high": 1, "when": {"x": 1}}
                }
            },
            "search_space.dropout.when.x: not a searched parameter",
        ),
        (
            {
                "search_space": {
                    "batchnorm": ["choice", [True, False]],
                    "dropout": {"type": "uniform", "low": 0, "high": 1, "when": {"batchnorm": 3}},
                }
            },
            "search_space.dropout.when.batchnorm: value(s) [3]",
        ),
        ({"searcher": "grid"}, "search_space.alpha: searcher 'grid' needs"),
        (
            {"objectives": [{"metric": "chi2_ndf"}, {"metric": "train_time_total_s"}]},
            None,
        ),
        (
            {
                "searcher": "cmaes",
                "objectives": [{"metric": "chi2_ndf"}, {"metric": "train_time_total_s"}],
            },
            "searcher: 'cmaes' is single-objective",
        ),
        ({"fixed": {"depth": 2}}, "fixed.depth: is also in search_space"),
    ],
)
def test_bad_configs_name_the_key(over: dict[str, Any], key: str | None) -> None:
    if key is None:  # a valid multi-objective TPE scan
        cfg = load_scan_config(base(**over))
        assert cfg.multi_objective and cfg.metrics == ["chi2_ndf", "train_time_total_s"]
        return
    with pytest.raises(ConfigError) as err:
        load_scan_config(base(**over))
    assert key in str(err.value)


def test_cycle_in_conditions_is_rejected() -> None:
    space = {
        "a": {"type": "choice", "values": [1, 2], "when": {"b": 1}},
        "b": {"type": "choice", "values": [1, 2], "when": {"a": 1}},
    }
    with pytest.raises(ConfigError, match="search_space: conditions form a cycle"):
        load_scan_config(base(search_space=space, family="unfold_bins"), check_registry=False)


def test_yaml_file_errors_name_file_and_key(tmp_path: Path) -> None:
    p = tmp_path / "scan.yaml"
    p.write_text(yaml.safe_dump(base(concurrency="two")))
    with pytest.raises(ConfigError, match=r"scan\.yaml: concurrency:"):
        load_scan_config(p)
    with pytest.raises(ConfigError, match="scan config not found"):
        load_scan_config(tmp_path / "missing.yaml")


def test_parse_override_types() -> None:
    assert parse_override("num_trials=12") == ("num_trials", 12)
    assert parse_override("scheduler=none") == ("scheduler", "none")
    assert parse_override("fixed.lr=1.0e-3") == ("fixed.lr", 1e-3)
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("num_trials")


@pytest.mark.parametrize("name", ["unfold_zll", "resolution_jets", "gan_jets", "flow_jets", "demo"])
def test_shipped_configs_validate(name: str) -> None:
    cfg = load_scan_config(REPO / "configs" / f"{name}.yaml")
    assert cfg.space and cfg.num_trials >= 1


# ---------------------------------------------------------------------------- spaces


def test_sample_order_puts_conditions_first() -> None:
    cfg = load_scan_config(base())
    order = sample_order(cfg.space)
    assert order.index("batchnorm") < order.index("dropout")


def _ask(cfg: Any, n: int) -> list[dict[str, Any]]:
    study = optuna.create_study(sampler=make_sampler(cfg))
    space = pickle.loads(pickle.dumps(DefineByRun(cfg.space)))  # Tune pickles it with the state
    out = []
    for _ in range(n):
        t = study.ask()
        space(t)
        out.append(dict(t.params))
        value = sum(float(v) for v in t.params.values() if not isinstance(v, bool))
        try:
            study.tell(t, value)
        except RuntimeError:  # GridSampler's study.stop() after the last point (see make_sampler)
            assert cfg.searcher == "grid" and len(out) == n
    return out


def test_define_by_run_respects_conditions_and_bounds() -> None:
    cfg = load_scan_config(base(searcher="random", seed=3))
    trials = _ask(cfg, 40)
    for p in trials:
        assert 0.5 <= p["alpha"] <= 8.0 and p["depth"] in (1, 2, 3)
        assert ("dropout" in p) == (p["batchnorm"] is False)
        if "dropout" in p:
            assert 0.0 <= p["dropout"] <= 0.4
    assert {p["batchnorm"] for p in trials} == {True, False}


def test_seeded_samplers_are_reproducible() -> None:
    for searcher in ("tpe", "random"):
        cfg = load_scan_config(base(searcher=searcher, seed=11, n_startup_trials=3))
        assert _ask(cfg, 8) == _ask(cfg, 8)
    other = load_scan_config(base(searcher="random", seed=12))
    assert _ask(other, 4) != _ask(load_scan_config(base(searcher="random", seed=11)), 4)


def test_grid_and_cmaes_and_nsga2() -> None:
    space = {"depth": ["int", 1, 3], "batchnorm": ["choice", [True, False]]}
    cfg = load_scan_config(base(searcher="grid", search_space=space, num_trials=6))
    seen = _ask(cfg, 6)
    assert sorted(map(str, seen)) == sorted(map(str, grid_points(cfg.space)))
    assert len(seen) == 6
    with pytest.raises(ConfigError, match="num_trials: 7 exceeds the 6 points"):
        load_scan_config(base(searcher="grid", search_space=space, num_trials=7))
    cma = load_scan_config(base(searcher="cmaes", search_space={"alpha": ["uniform", 1, 2]}))
    assert all(1 <= p["alpha"] <= 2 for p in _ask(cma, 3))
    nsga = load_scan_config(
        base(
            searcher="nsga2",
            objectives=[
                {"metric": "chi2_ndf", "mode": "min"},
                {"metric": "train_time_total_s", "mode": "min"},
            ],
        )
    )
    assert isinstance(make_sampler(nsga), optuna.samplers.NSGAIISampler)


def test_is_active_follows_conditions() -> None:
    cfg = load_scan_config(base())
    assert is_active(cfg.space["dropout"], {"batchnorm": False})
    assert not is_active(cfg.space["dropout"], {"batchnorm": True})
    assert not is_active(cfg.space["dropout"], {})


def test_nothing_starts_for_a_bad_config(tmp_path: Path) -> None:
    """launch() fails on the config before Ray or MLflow start and writes nothing."""
    import ray

    from scan import launch

    ds = write_unfold_dataset(tmp_path / "ds", rows=300, n_bins=4)
    scan_dir = tmp_path / "scan"
    with pytest.raises(ConfigError, match="objective.metric"):
        launch(base(dataset=str(ds), objective={"metric": "wasserstein"}), scan_dir=str(scan_dir))
    with pytest.raises(ConfigError, match="family: unknown"):
        launch(base(dataset=str(ds), family="unfold_binz"), scan_dir=str(scan_dir))
    assert not ray.is_initialized()
    assert not scan_dir.exists()
