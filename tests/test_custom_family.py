"""A physicist's own model family: import strings, register_family, validation, the contract
test users run (models.testing), and examples/custom_family/run.sh end to end.

Run: ``python -m pytest -q tests/test_custom_family.py`` (the run.sh test takes ~1 min).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from torch import Tensor, nn

from jobs.train_synthetic import write_unfold_dataset
from models import REGISTRY, get_family, register_family
from models.base import DataDims, Family, StepFn
from models.contract import InvalidFamilyError, validate_family
from models.errors import ConfigError
from models.testing import ContractViolation, FamilyContract, check_family, tiny_manifest
from scan.config import load_scan_config

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "custom_family"
HEPSCAN = Path(sys.executable).with_name("hepscan")


def _load_example_test() -> Any:
    """The example's own contract test (examples/custom_family/test_resmlp.py), run here too."""
    spec = importlib.util.spec_from_file_location("example_test_resmlp", EXAMPLE / "test_resmlp.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.TestResMLP


TestResMLP = _load_example_test()


@pytest.fixture(autouse=True, scope="module")
def example_on_path() -> Iterator[None]:
    """``resmlp`` importable, as run.sh's PYTHONPATH makes it; sys.path and env restored."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(EXAMPLE))
        mp.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
        yield


@pytest.fixture()
def bad_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A user module with broken families; returns its name."""
    (tmp_path / "bad_families.py").write_text(
        textwrap.dedent(
            """
            import dataclasses

            from resmlp import FAMILY

            NOT_A_FAMILY = {"name": "resmlp"}
            NO_METRICS = dataclasses.replace(FAMILY, metrics=())
            BAD_MODES = dataclasses.replace(FAMILY, metric_modes={"val_loss": "down"})

            class PlainConfig:
                width = 3

            NOT_A_DATACLASS = dataclasses.replace(FAMILY, config_cls=PlainConfig)

            @dataclasses.dataclass
            class NoDefault:
                width: int

            NO_DEFAULT = dataclasses.replace(FAMILY, config_cls=NoDefault)
            BAD_BUILD = dataclasses.replace(FAMILY, build=lambda config: None)
            BAD_SPACE = dataclasses.replace(FAMILY, search_space=lambda: {"blocks": ("int", 3, 1)})

            def make_family():
                return FAMILY
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return "bad_families"


def scan_dict(family: str, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"dataset": "/nonexistent", "family": family}
    cfg.update(over)
    return cfg


# --- import strings and validation ---------------------------------------------------------


def test_import_string_family_resolves_and_validates() -> None:
    family = get_family("resmlp:FAMILY")
    assert family.name == "resmlp" and "resmlp" not in REGISTRY
    cfg = load_scan_config(EXAMPLE / "scan.yaml", {"dataset": "/tmp/x"})
    assert cfg.family == "resmlp:FAMILY"
    assert set(cfg.space) == {"width", "blocks", "lr"}
    default = load_scan_config(scan_dict("resmlp:FAMILY"))  # the family's own default space
    assert set(default.space) == {"width", "blocks", "dropout"}
    # the directory the module came from is shared with processes started later
    assert str(EXAMPLE) in os.environ["PYTHONPATH"].split(os.pathsep)


def test_zero_argument_factory_is_called(bad_module: str) -> None:
    assert get_family(f"{bad_module}:make_family") is get_family("resmlp:FAMILY")


@pytest.mark.parametrize(
    ("attr", "message"),
    [
        ("NOT_A_FAMILY", "is a builtins.dict, not a models.base.Family"),
        ("NO_METRICS", "metrics: is empty"),
        ("BAD_MODES", "metric_modes: {'val_loss': 'down'}: each mode must be 'min' or 'max'"),
        ("NOT_A_DATACLASS", "config_cls: <class 'bad_families.PlainConfig'> must be a @dataclass"),
        ("NO_DEFAULT", r"config_cls NoDefault: field\(s\) \['width'\] have no default"),
        ("BAD_BUILD", r"build: .* cannot be called as build\(config, dims\)"),
        ("BAD_SPACE", r"search_space\(\)\['blocks'\]: \('int', 3, 1\) must be"),
        ("MISSING", "has no attribute 'MISSING'; its Family objects: .*'NO_METRICS'"),
    ],
)
def test_scan_config_names_what_the_family_lacks(bad_module: str, attr: str, message: str) -> None:
    spec = f"{bad_module}:{attr}"
    with pytest.raises(ConfigError, match=message) as info:
        load_scan_config(scan_dict(spec))
    assert str(info.value).startswith(f"scan config: family '{spec}': ")


def test_missing_module_and_broken_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match="cannot import module 'no_such_pkg.models'.*PYTHONPATH"):
        load_scan_config(scan_dict("no_such_pkg.models:FAMILY"))
    (tmp_path / "needs_dep.py").write_text("import no_such_dependency\n")
    (tmp_path / "syntax_err.py").write_text("def broken(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ConfigError, match="No module named 'no_such_dependency'"):
        get_family("needs_dep:FAMILY")
    with pytest.raises(ConfigError, match="importing 'syntax_err' raised SyntaxError"):
        get_family("syntax_err:FAMILY")
    with pytest.raises(ConfigError, match="expected 'package.module:ATTR'"):
        get_family("resmlp:")


def test_register_family() -> None:
    family = get_family("resmlp:FAMILY")
    try:
        assert register_family(family, name="my_resmlp") is family
        assert get_family("my_resmlp") is family
        assert load_scan_config(scan_dict("my_resmlp")).family == "my_resmlp"
        register_family(family, name="my_resmlp")  # the same object again: fine
        other = dataclasses.replace(family, description="another")
        with pytest.raises(ConfigError, match="'my_resmlp' is already registered"):
            register_family(other, name="my_resmlp")
        assert register_family(other, name="my_resmlp", replace=True) is other
        with pytest.raises(InvalidFamilyError, match="metrics: is empty"):
            register_family(dataclasses.replace(family, metrics=()), name="broken")
        with pytest.raises(ConfigError, match="without ':'"):
            register_family(family, name="a:b")
        assert "broken" not in REGISTRY
    finally:
        REGISTRY.pop("my_resmlp", None)


def test_builtin_families_pass_validation() -> None:
    for name, family in REGISTRY.items():
        assert validate_family(family, name) is family


# --- hepscan train with an import string (the console script, a module in the cwd) ---------


def test_hepscan_train_imports_a_family_from_the_cwd(tmp_path: Path) -> None:
    """The user's module sits in the working directory and is named only in the config; the
    two DDP ranks are fresh processes that import it themselves."""
    ds = write_unfold_dataset(tmp_path / "ds", rows=600, n_bins=5)
    user = tmp_path / "analysis"
    user.mkdir()
    (user / "my_family.py").write_text((EXAMPLE / "resmlp.py").read_text())
    cfg = {
        "dataset": str(ds),
        "family": "my_family:FAMILY",
        "model": {"width": 16, "blocks": 1},
        "epochs": 1,
        "batch_size": 64,
        "backend": "ddp",
        "workers": 2,
        "checkpoint_dir": str(tmp_path / "ckpt"),
    }
    (user / "train.yaml").write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [str(HEPSCAN), "train", "train.yaml"],
        cwd=user,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    saved = torch.load(tmp_path / "ckpt" / "last.pt", map_location="cpu", weights_only=True)
    assert saved["train_config"]["family"] == "my_family:FAMILY"
    assert saved["train_config"]["workers"] == 2

    (user / "train.yaml").write_text(yaml.safe_dump(dict(cfg, family="my_family:NOPE")))
    bad = subprocess.run(
        [str(HEPSCAN), "train", "train.yaml", "--workers", "1"],
        cwd=user,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0
    assert "key 'family': family 'my_family:NOPE'" in bad.stderr
    assert "has no attribute 'NOPE'" in bad.stderr and "Traceback" not in bad.stderr


# --- the contract checks fail when they should -----------------------------------------------


class _Base(nn.Module):
    """A tiny valid classifier to break in one place at a time."""

    def __init__(self, config: Any, dims: DataDims) -> None:
        super().__init__()
        self.config = config
        self.lin = nn.Linear(dims.n_inputs, dims.n_classes[0])

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x)  # type: ignore[no-any-return]

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return [torch.optim.SGD(self.parameters(), lr=lr)]

    def loss(self, batch: dict[str, Tensor]) -> Tensor:
        return nn.functional.cross_entropy(self(batch["x"]), batch["y"])

    def training_step(
        self, batch: dict[str, Tensor], optimizers: list[torch.optim.Optimizer], step_fn: StepFn
    ) -> dict[str, float]:
        loss = self.loss(batch)
        step_fn(optimizers[0], loss)
        return {"loss": float(loss.detach())}

    @torch.no_grad()
    def evaluate(self, data: dict[str, Tensor]) -> dict[str, float]:
        was = self.training
        self.eval()
        out = {"val_loss": float(self.loss(data))}
        self.train(was)
        return out


class _UnusedLayer(_Base):
    def __init__(self, config: Any, dims: DataDims) -> None:
        super().__init__(config, dims)
        self.unused = nn.Linear(2, 2)


class _NotOptimised(_Base):
    def __init__(self, config: Any, dims: DataDims) -> None:
        super().__init__(config, dims)
        self.extra = nn.Linear(dims.n_classes[0], dims.n_classes[0])

    def forward(self, x: Tensor) -> Tensor:
        return self.extra(self.lin(x))  # type: ignore[no-any-return]

    def configure_optimizers(self, lr: float) -> list[torch.optim.Optimizer]:
        return [torch.optim.SGD(self.lin.parameters(), lr=lr)]


class _Unseeded(_Base):
    def training_step(self, batch: Any, optimizers: Any, step_fn: StepFn) -> dict[str, float]:
        noise = torch.Generator().manual_seed(time.perf_counter_ns())  # not from torch's seed
        noisy = {"x": batch["x"] + torch.randn(batch["x"].shape, generator=noise), "y": batch["y"]}
        return super().training_step(noisy, optimizers, step_fn)


class _StateOutsideStateDict(_Base):
    def __init__(self, config: Any, dims: DataDims) -> None:
        super().__init__(config, dims)
        self.shift = torch.zeros(dims.n_classes[0])  # a plain attribute, not a buffer

    def training_step(self, batch: Any, optimizers: Any, step_fn: StepFn) -> dict[str, float]:
        self.shift = self.shift + torch.arange(len(self.shift))  # changes the softmax
        return super().training_step(batch, optimizers, step_fn)

    def forward(self, x: Tensor) -> Tensor:
        return self.lin(x) + self.shift  # type: ignore[no-any-return]


class _ForgetsMode(_Base):
    @torch.no_grad()
    def evaluate(self, data: dict[str, Tensor]) -> dict[str, float]:
        self.eval()
        return {"val_loss": float(self.loss(data))}


def _family(model_cls: type[nn.Module], **over: Any) -> Family:
    resmlp = get_family("resmlp:FAMILY")
    fields: dict[str, Any] = {
        "name": model_cls.__name__.strip("_").lower(),
        "build": model_cls,
        "metrics": ("val_loss",),
        "metric_modes": {"val_loss": "min"},
        "search_space": lambda: {},
    }
    fields.update(over)
    return dataclasses.replace(resmlp, **fields)


def test_the_contract_passes_a_valid_tiny_family() -> None:
    check_family(_family(_Base), tiny_manifest())


@pytest.mark.parametrize(
    ("model_cls", "over", "message"),
    [
        (_UnusedLayer, {}, r"parameter\(s\) \['unused.bias', 'unused.weight'\] got no"),
        (_NotOptimised, {}, r"parameter\(s\) \['extra.bias', 'extra.weight'\] are in no optimizer"),
        (_Unseeded, {}, "the same seeds gave different training losses"),
        (_StateOutsideStateDict, {}, "evaluate\\(\\) differs after save/load"),
        (_ForgetsMode, {}, r"evaluate\(\) must restore the previous mode \(train\)"),
        (_Base, {"metrics": ("val_loss", "auc")}, r"evaluate\(\) lacks metric\(s\) \['auc'\]"),
    ],
)
def test_the_contract_catches_a_broken_family(
    model_cls: type[nn.Module], over: dict[str, Any], message: str
) -> None:
    family = _family(model_cls, **over)
    with pytest.raises(ContractViolation, match=message):
        check_family(family, tiny_manifest())


def test_family_contract_class_fails_on_a_broken_family() -> None:
    class Broken(FamilyContract):
        family = _family(_UnusedLayer)

    with pytest.raises(ContractViolation, match="unused"):
        Broken().test_gradients_reach_every_parameter()
    Broken().test_family_is_valid()  # the static part alone cannot see it


# --- examples/custom_family/run.sh -----------------------------------------------------------


@pytest.mark.slow
def test_example_run_sh_scans_the_user_family(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    work = tmp_path / "work"
    env = {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(REPO)}
    env.pop("VIRTUAL_ENV", None)
    done = subprocess.run(
        ["bash", str(EXAMPLE / "run.sh"), str(work)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (done.stdout[-3000:], done.stderr[-3000:])
    assert "2 of 2 trials: 2 FINISHED" in done.stdout

    state = json.loads((work / "scan" / "tracking.json").read_text())
    client = MlflowClient(state["tracking_uri"])
    parent = client.get_run(state["parent_run_id"])
    assert parent.data.params["family"] == "resmlp:FAMILY"
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    assert len(children) == 2
    for run in children:
        assert run.info.status == "FINISHED"
        assert run.data.params["family"] == "resmlp:FAMILY"
        assert {"width", "blocks", "lr"} <= set(run.data.params)
        assert len(client.get_metric_history(run.info.run_id, "chi2_ndf")) == 2
