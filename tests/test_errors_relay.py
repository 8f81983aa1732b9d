"""Errors are not swallowed: any exception of DDP rank 0 reaches the caller with its type,
message and the rank's traceback; a corrupt ``tracking.json`` is an error naming the file; an
MLflow failure other than "no such run" is an error, not "no run".

Real engines: two ``torch.distributed`` gloo processes; MLflow's sqlite store and its REST
client.  Run: ``python -m pytest -q tests/test_errors_relay.py`` (~20 s).
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
import textwrap
from pathlib import Path
from typing import Any

import pytest

from jobs.train import TrainConfig, train
from jobs.train.launch import RankError
from jobs.train_synthetic import write_unfold_dataset
from models.errors import HepscanError, InputError
from scan.state import tracking_state
from tracking.runs import ScanTracker

FAULTY = '''
"""unfold_bins whose forward pass raises on rank 0 (RANK=0) only."""
import dataclasses
import os

from models import get_family

BASE = get_family("unfold_bins")


class PicklableFault(LookupError):
    pass


class UnpicklableFault(Exception):
    def __init__(self, what, where):  # two required args: unpickling calls it with one
        super().__init__(f"{what} at {where}")


def _build(raises):
    def build(config, dims):
        model = BASE.build(config, dims)

        def hook(module, args):
            if os.environ.get("RANK") == "0":
                raise raises()

        model.register_forward_pre_hook(hook)
        return model

    return build


PICKLABLE = dataclasses.replace(
    BASE, build=_build(lambda: PicklableFault("shard 3 lacks column 'w'"))
)
UNPICKLABLE = dataclasses.replace(
    BASE, build=_build(lambda: UnpicklableFault("bad batch", "step 1"))
)
'''


@pytest.fixture(scope="module")
def ddp_config(tmp_path_factory: pytest.TempPathFactory) -> TrainConfig:
    root = tmp_path_factory.mktemp("relay")
    (root / "faulty_family.py").write_text(textwrap.dedent(FAULTY))
    data = write_unfold_dataset(root / "synth", rows=400, seed=5)
    return TrainConfig(
        dataset=str(data),
        family="faulty_family:PICKLABLE",
        model={"batchnorm": False, "dropout": 0.0},
        epochs=1,
        batch_size=64,
        lr=1e-3,
        patience=0,
        device="cpu",
        workers=2,
        backend="ddp",
        data_parts=2,
    )


@pytest.fixture()
def family_on_path(ddp_config: TrainConfig, monkeypatch: pytest.MonkeyPatch) -> None:
    root = str(Path(ddp_config.dataset).parent)
    monkeypatch.syspath_prepend(root)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))


@pytest.mark.usefixtures("family_on_path")
def test_ddp_rank0_relays_any_exception_type(ddp_config: TrainConfig) -> None:
    """Before: only HepscanError was relayed; a LookupError surfaced as torch's
    ProcessRaisedException. Now the caller gets the LookupError subclass itself, with the rank's
    traceback as a note."""
    with pytest.raises(LookupError, match="shard 3 lacks column 'w'") as info:
        train(ddp_config)
    assert type(info.value).__name__ == "PicklableFault"
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "raised on rank 0" in notes
    assert "in hook" in notes  # the frame where it happened, from the rank's traceback


@pytest.mark.usefixtures("family_on_path")
def test_ddp_rank0_relays_an_unpicklable_exception_as_text(ddp_config: TrainConfig) -> None:
    cfg: Any = dataclasses.replace(ddp_config, family="faulty_family:UNPICKLABLE")
    with pytest.raises(RankError) as info:
        train(cfg)
    text = str(info.value)
    assert text.startswith("rank 0 raised UnpicklableFault: bad batch at step 1\n")
    assert "Traceback (most recent call last)" in text and "in hook" in text


# ---------------------------------------------------------------- tracking.json and MLflow


def _tracked_scan(scan_dir: Path) -> ScanTracker:
    tracker = ScanTracker(scan_dir)
    tracker.start_scan("relay", {"lr": 1e-3}, {"lr": ["loguniform", 1e-4, 1e-2]})
    tracker.start_trial("t1", {"lr": 1e-3})
    return tracker


def test_corrupt_tracking_json_is_an_error_naming_the_file(tmp_path: Path) -> None:
    _tracked_scan(tmp_path)
    mapping = tmp_path / "tracking.json"
    assert json.loads(mapping.read_text())["trials"]
    mapping.write_text('{"parent_run_id": "abc", "trials": {')  # cut mid-write
    with pytest.raises(InputError, match=r"tracking\.json: corrupt MLflow run mapping") as a:
        ScanTracker(tmp_path)
    assert str(mapping) in str(a.value)
    with pytest.raises(InputError, match=r"tracking\.json: corrupt MLflow run mapping") as b:
        tracking_state(tmp_path)
    assert str(mapping) in str(b.value)
    mapping.write_text("[1, 2]")
    with pytest.raises(InputError, match="a JSON object expected, found list"):
        tracking_state(tmp_path)
    mapping.unlink()
    assert tracking_state(tmp_path) == {}  # no file: no runs yet, not an error


def test_only_a_missing_run_means_no_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tracker = _tracked_scan(tmp_path / "scan")
    # the expected case: a run id the store does not know
    assert tracker._get_run("0123456789abcdef0123456789abcdef") is None
    assert tracker._get_run(tracker.trial_run_id("t1")) is not None
    # anything else is an error naming the store and the run, not "no run"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    down = ScanTracker(tmp_path / "down", tracking_uri=f"http://me:s3cret@127.0.0.1:{port}")
    with pytest.raises(HepscanError) as info:
        down._get_run("0123456789abcdef0123456789abcdef")
    text = str(info.value)
    assert text.startswith(f"MLflow store http://me:***@127.0.0.1:{port}: reading run ")
    assert "s3cret" not in text
