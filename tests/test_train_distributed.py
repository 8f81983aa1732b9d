"""Two data-parallel ranks with global batch B give the weights of one process with batch B.

Global batches are defined by the stream (jobs/train/stream.py) with ``data_parts: 2``: the
one-process reference reads the same two parts that the two ranks read one each, so both train
on exactly the same global batches (tests/test_train_stream.py checks that row for row).

Real engines: Horovod ranks with gloo through ``horovod.runner.run`` and ``torch.distributed``
gloo processes. Neither is skipped when missing (CI builds Horovod: .ci/install-horovod.sh).
No dropout or batch norm: those legitimately differ per rank.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch

from jobs.train import LAST, TrainConfig, TrainingDiverged, TrainResult, train
from jobs.train_synthetic import write_unfold_dataset

MODEL = {"alpha": 1.0, "p": 1.0, "batchnorm": False, "dropout": 0.0}
# float32 reductions sum in a different order on 2 ranks; after 3 epochs of Adam the
# weights agree to ~1e-7 (measured 6e-8), so 1e-5 still fails on any real mismatch (a wrong
# batch split or an unaveraged gradient moves weights by > 1e-3).
ATOL = 1e-5


class ListReporter:
    def __init__(self) -> None:
        self.epochs: list[int] = []

    def report(self, epoch: int, metrics: dict[str, float], checkpoint_path: str | None) -> None:
        self.epochs.append(epoch)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_unfold_dataset(tmp_path_factory.mktemp("data") / "synth", rows=1200, seed=3)


@pytest.fixture(scope="module")
def base(dataset: Path) -> TrainConfig:
    return TrainConfig(
        dataset=str(dataset),
        family="unfold_bins",
        model=dict(MODEL),
        epochs=3,
        batch_size=64,
        lr=3e-3,
        patience=0,
        device="cpu",
        data_parts=2,
    )


@pytest.fixture(scope="module")
def single(base: TrainConfig) -> TrainResult:
    return train(base)


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def assert_equivalent(single: TrainResult, multi: TrainResult) -> None:
    assert multi.epochs_run == single.epochs_run == 3
    # the runs really trained (weights moved far more than the tolerance) ...
    assert max_diff(single.state_dict, multi.state_dict) < ATOL
    for h1, h2 in zip(single.history, multi.history, strict=True):
        assert h1["val_loss"] == pytest.approx(h2["val_loss"], abs=1e-5)
        assert h1["train_loss"] == pytest.approx(h2["train_loss"], abs=1e-5)
    # ... and per-rank samples/s count the global batch
    assert multi.history[-1]["samples_per_s"] > 0


def test_weights_move_much_more_than_tolerance(base: TrainConfig, single: TrainResult) -> None:
    other = train(dataclasses.replace(base, epochs=3, batch_size=32))
    assert max_diff(single.state_dict, other.state_dict) > 100 * ATOL


@pytest.mark.slow
def test_horovod_two_ranks_match_one_process(
    base: TrainConfig, single: TrainResult, tmp_path: Path
) -> None:
    import horovod.torch  # noqa: F401  - fail (not skip) when Horovod is not built

    rep = ListReporter()
    cfg = dataclasses.replace(base, workers=2, backend="horovod", checkpoint_dir=str(tmp_path))
    multi = train(cfg, rep)
    assert_equivalent(single, multi)
    assert rep.epochs == [1, 2, 3]
    ckpt = torch.load(tmp_path / LAST, weights_only=True)
    assert ckpt["epoch"] == 3 and ckpt["train_config"]["workers"] == 2


def test_ddp_two_ranks_match_one_process(
    base: TrainConfig, single: TrainResult, tmp_path: Path
) -> None:
    rep = ListReporter()
    cfg = dataclasses.replace(base, workers=2, backend="ddp", checkpoint_dir=str(tmp_path))
    multi = train(cfg, rep)
    assert_equivalent(single, multi)
    assert rep.epochs == [1, 2, 3]  # streamed from rank 0 while training


@pytest.mark.slow
def test_resume_single_run_on_two_ddp_ranks(
    base: TrainConfig, single: TrainResult, tmp_path: Path
) -> None:
    """Checkpoint from one process, continued on 2 ranks (state broadcast from rank 0)."""
    train(dataclasses.replace(base, epochs=1, checkpoint_dir=str(tmp_path)))
    rep = ListReporter()
    cfg = dataclasses.replace(base, workers=2, backend="ddp", checkpoint_dir=str(tmp_path))
    resumed = train(cfg, rep)
    assert rep.epochs == [2, 3]
    assert_equivalent(single, resumed)


@pytest.mark.slow
def test_ddp_nan_fails_on_every_rank(base: TrainConfig) -> None:
    cfg: Any = dataclasses.replace(base, workers=2, backend="ddp", lr=1e30, epochs=4)
    with pytest.raises(TrainingDiverged, match="non-finite"):
        train(cfg)


def test_horovod_env_repairs_what_horovod_runner_run_sets() -> None:
    from jobs.backends import HOROVOD_DEFAULTS, horovod_env

    # horovod.runner.run 0.28.1 exports "(None,)" for both (read by Horovod's core as 0)
    broken = {"HOROVOD_CYCLE_TIME": "(None,)", "HOROVOD_CACHE_CAPACITY": "(None,)"}
    assert horovod_env(broken) == HOROVOD_DEFAULTS
    assert horovod_env({}) == HOROVOD_DEFAULTS
    mine = {"HOROVOD_CYCLE_TIME": "5", "HOROVOD_CACHE_CAPACITY": "0"}
    assert horovod_env(mine) == mine  # a user's numeric value is kept
    bad = horovod_env({"HOROVOD_CYCLE_TIME": "-1"})
    assert bad["HOROVOD_CYCLE_TIME"] == HOROVOD_DEFAULTS["HOROVOD_CYCLE_TIME"]


def test_horovod_bucket_size_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from jobs.backends import HOROVOD_BUCKET_ENV, horovod_bucket_bytes
    from models.errors import ConfigError

    monkeypatch.delenv(HOROVOD_BUCKET_ENV, raising=False)
    assert horovod_bucket_bytes() == 25 * 2**20
    monkeypatch.setenv(HOROVOD_BUCKET_ENV, "0")
    assert horovod_bucket_bytes() == 0  # one allreduce per parameter
    for bad in ("many", "-1", "nan"):
        monkeypatch.setenv(HOROVOD_BUCKET_ENV, bad)
        with pytest.raises(ConfigError, match=HOROVOD_BUCKET_ENV):
            horovod_bucket_bytes()
