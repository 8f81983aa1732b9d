"""jobs/train in one process: learning, determinism, checkpoints/resume, early stopping, NaN,
and bad input rejected through the CLI before training starts."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from jobs.train import (
    BEST,
    LAST,
    TrainConfig,
    TrainingDiverged,
    TrainSession,
    load_train_config,
    train,
    train_config_from_dict,
)
from jobs.train_synthetic import write_unfold_dataset
from models.errors import ConfigError
from scan.cli import main

FAMILY = "unfold_bins"
MODEL = {"alpha": 1.0, "p": 1.0, "batchnorm": False, "dropout": 0.0}


class ListReporter:
    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, float], str | None]] = []

    def report(self, epoch: int, metrics: dict[str, float], checkpoint_path: str | None) -> None:
        self.calls.append((epoch, dict(metrics), checkpoint_path))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_unfold_dataset(tmp_path_factory.mktemp("data") / "synth", rows=1500, seed=1)


def config(dataset: Path, **kw: Any) -> TrainConfig:
    base: dict[str, Any] = {
        "dataset": str(dataset),
        "family": FAMILY,
        "model": dict(MODEL),
        "epochs": 3,
        "batch_size": 64,
        "lr": 3e-3,
        "patience": 0,
    }
    base.update(kw)
    return TrainConfig(**base)


def weights_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_single_process_learns_and_reports(dataset: Path) -> None:
    rep = ListReporter()
    res = train(config(dataset, epochs=4), rep)
    losses = [m["train_loss"] for m in res.history]
    assert [c[0] for c in rep.calls] == [1, 2, 3, 4]
    assert losses[-1] < 0.85 * losses[0], losses
    assert res.history[-1]["val_loss"] < res.history[0]["val_loss"]
    for key in ("epoch", "train_loss", "val_loss", "chi2_ndf", "epoch_time_s", "samples_per_s"):
        assert key in res.history[-1] and math.isfinite(res.history[-1][key])
    assert res.epochs_run == 4 and not res.stopped_early
    assert res.checkpoint_path is None  # no checkpoint_dir: nothing written


def test_seeded_runs_are_identical_and_seeds_differ(dataset: Path) -> None:
    a = train(config(dataset, epochs=2))
    b = train(config(dataset, epochs=2))
    c = train(config(dataset, epochs=2, seed=7))
    assert weights_equal(a.state_dict, b.state_dict)
    assert a.history[-1]["val_loss"] == b.history[-1]["val_loss"]
    assert not weights_equal(a.state_dict, c.state_dict)


def test_resume_continues_exactly(dataset: Path, tmp_path: Path) -> None:
    straight = train(config(dataset, epochs=4, checkpoint_dir=str(tmp_path / "a")))
    first = train(config(dataset, epochs=2, checkpoint_dir=str(tmp_path / "b")))
    assert first.epochs_run == 2
    rep = ListReporter()
    resumed = train(config(dataset, epochs=4, checkpoint_dir=str(tmp_path / "b")), rep)
    assert [c[0] for c in rep.calls] == [3, 4]  # only the new epochs run
    assert resumed.epochs_run == 4 and len(resumed.history) == 4
    assert weights_equal(straight.state_dict, resumed.state_dict)
    assert [h["val_loss"] for h in straight.history] == [h["val_loss"] for h in resumed.history]

    ckpt = torch.load(tmp_path / "b" / LAST, weights_only=True)
    assert ckpt["epoch"] == 4 and ckpt["train_config"]["epochs"] == 4
    assert ckpt["model_config"]["alpha"] == 1.0 and ckpt["family"] == FAMILY
    assert len(ckpt["optimizers"]) == 1 and ckpt["optimizers"][0]["state"]
    assert (tmp_path / "b" / BEST).exists()
    assert not [p.name for p in (tmp_path / "b").iterdir() if p.name.startswith(".")]
    # a finished run resumed with the same epochs trains nothing more
    again = train(config(dataset, epochs=4, checkpoint_dir=str(tmp_path / "b")))
    assert again.epochs_run == 4 and weights_equal(again.state_dict, straight.state_dict)


def test_resume_with_other_hyperparameters_is_refused(dataset: Path, tmp_path: Path) -> None:
    train(config(dataset, epochs=1, checkpoint_dir=str(tmp_path)))
    with pytest.raises(ConfigError, match="'lr'"):
        train(config(dataset, epochs=2, lr=1e-2, checkpoint_dir=str(tmp_path)))


def test_early_stopping_on_a_flat_monitor(dataset: Path, tmp_path: Path) -> None:
    # lr so small that float32 weights cannot move: val_loss never improves after epoch 1.
    rep = ListReporter()
    res = train(config(dataset, epochs=10, lr=1e-12, patience=2, checkpoint_dir=str(tmp_path)), rep)
    assert res.stopped_early and res.epochs_run == 3 and res.best_epoch == 1
    assert len(rep.calls) == 3
    assert torch.load(tmp_path / BEST, weights_only=True)["epoch"] == 1
    assert torch.load(tmp_path / LAST, weights_only=True)["stopped"] is True


def test_early_stopping_maximises_accuracy(dataset: Path) -> None:
    cfg = config(dataset, epochs=3, monitor="accuracy", mode="max")
    res = train(cfg)
    best = max(h["accuracy"] for h in res.history)
    assert res.best_metric == best
    with pytest.raises(ConfigError, match="'mode'"):
        train(config(dataset, monitor="accuracy", mode="min"))


def test_nan_loss_raises_training_diverged(dataset: Path) -> None:
    with pytest.raises(TrainingDiverged, match="non-finite"):
        train(config(dataset, epochs=5, lr=1e30))


def test_session_api_and_max_rows(dataset: Path) -> None:
    s = TrainSession(config(dataset, epochs=2, max_rows=300, batch_size=64))
    s.setup()
    assert s.steps_per_epoch == (s.n_train // 64) and s.n_train <= 300
    m = s.run_epoch()
    assert m["epoch"] == 1.0 and not s.done
    s.run_epoch()
    assert s.done
    with pytest.raises(RuntimeError):
        s.run_epoch()


def _training_closure(calibrate: bool, dataset: Path) -> tuple[torch.Tensor, float]:
    """(logit offsets, largest |Σ p_k − n_k| / n_k) on the training rows after 2 epochs."""
    s = TrainSession(config(dataset, epochs=2, calibrate=calibrate, dtype="float64"))
    s.setup()
    s.run_epoch()
    s.run_epoch()
    model: Any = s.model
    rows = s.feed.load(s.feed.train)  # every training row (one process)
    y = rows["y"].reshape(-1)
    keep = y >= 0
    counts = torch.bincount(y[keep], minlength=model.n_bins).double()
    unfolded = model.unfold(rows["x"][keep])
    return model.logit_offset.clone(), float(
        ((unfolded - counts).abs() / counts.clamp(min=1)).max()
    )


def test_every_epoch_calibrates_the_unfolding_on_the_training_rows(dataset: Path) -> None:
    offsets, mismatch = _training_closure(True, dataset)
    assert mismatch < 1e-6  # Σ_events p_k equals the training truth count of every bin
    assert float(offsets.abs().max()) > 1e-3
    raw_offsets, raw_mismatch = _training_closure(False, dataset)
    assert torch.count_nonzero(raw_offsets) == 0
    assert raw_mismatch > 0.05  # two epochs of Adam leave the sums several % off


def test_batch_larger_than_data_is_lowered(dataset: Path) -> None:
    s = TrainSession(config(dataset, epochs=1, max_rows=100, batch_size=4096))
    s.setup()
    assert s.batch == s.n_train and s.steps_per_epoch == 1
    s.run_epoch()


# --------------------------------------------------------------------------- config + CLI


def write_config(path: Path, **kw: Any) -> Path:
    path.write_text(yaml.safe_dump(kw))
    return path


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exc:
        main(args)
    return int(exc.value.code or 0), capsys.readouterr().err


def test_cli_trains_and_checkpoints(
    dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = write_config(
        tmp_path / "t.yaml", dataset=str(dataset), family=FAMILY, batch_size=64, epochs=5
    )
    main(["train", str(cfg), "--epochs", "2", "--checkpoint-dir", str(tmp_path / "ck")])
    out = capsys.readouterr().out
    assert "epoch 1:" in out and "epoch 2:" in out and "epoch 3:" not in out
    assert torch.load(tmp_path / "ck" / LAST, weights_only=True)["epoch"] == 2


def test_example_config_is_valid() -> None:
    cfg = load_train_config(Path(__file__).resolve().parents[1] / "configs/train_unfold_zll.yaml")
    assert cfg.family == "unfold_bins" and cfg.backend == "horovod" and cfg.workers == 2


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"learning_rate": 0.1}, "learning_rate"),
        ({"family": "no_such_family"}, "no_such_family"),
        ({"epochs": "ten"}, "'epochs'"),
        ({"backend": "mpi"}, "'backend'"),
        ({"workers": 2, "backend": "single"}, "'workers'"),
        ({"model": {"n_bins": 7}}, "model.n_bins"),
        ({"model": {"n_inputs": 3}}, "model.n_inputs"),
        ({"model": {"widthh": 3}}, "widthh"),
        ({"monitor": "val_chi3"}, "val_chi3"),
    ],
)
def test_bad_config_fails_with_key(
    dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: dict[str, Any],
    needle: str,
) -> None:
    base: dict[str, Any] = {"dataset": str(dataset), "family": FAMILY, "epochs": 1}
    base.update(extra)
    cfg = write_config(tmp_path / "bad.yaml", **base)
    code, err = run_cli(["train", str(cfg), "--checkpoint-dir", str(tmp_path / "ck")], capsys)
    assert code == 2 and needle in err, err
    assert not (tmp_path / "ck").exists()  # nothing trained, nothing written


def test_matching_dimension_keys_are_accepted(dataset: Path) -> None:
    res = train(config(dataset, epochs=1, model={**MODEL, "n_bins": 10}))
    assert res.epochs_run == 1


def _edit_manifest(src: Path, dest: Path, edit: Any) -> Path:
    import shutil

    shutil.copytree(src, dest)
    m = json.loads((dest / "manifest.json").read_text())
    edit(m)
    (dest / "manifest.json").write_text(json.dumps(m))
    return dest


def _drop_truth(m: dict[str, Any]) -> None:
    del m["columns"]["truth_bin"]


def _extra_feature(m: dict[str, Any]) -> None:
    m["features"].append("f9")


def _fewer_edges(m: dict[str, Any]) -> None:
    m["unfold"]["edges"] = m["unfold"]["edges"][:6]  # 5 bins; shards hold indices up to 9


def _no_unfold(m: dict[str, Any]) -> None:
    del m["unfold"]


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (_drop_truth, ["truth_bin", "manifest.json"]),
        (_extra_feature, ["feat_f9", "manifest.json"]),
        (_fewer_edges, ["truth_bin", "5 classes", "train"]),
        (_no_unfold, ["'unfold'"]),
    ],
)
def test_dataset_config_mismatch_fails_before_training(
    dataset: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    edit: Any,
    needles: list[str],
) -> None:
    bad = _edit_manifest(dataset, tmp_path / "bad", edit)
    cfg = write_config(tmp_path / "c.yaml", dataset=str(bad), family=FAMILY, epochs=1)
    code, err = run_cli(["train", str(cfg), "--checkpoint-dir", str(tmp_path / "ck")], capsys)
    assert code == 2
    for n in needles:
        assert n in err, err
    assert not (tmp_path / "ck").exists()


def test_missing_dataset_and_config_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(["train", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2 and "nope.yaml" in err
    cfg = write_config(tmp_path / "c.yaml", dataset=str(tmp_path / "nodata"), family=FAMILY)
    code, err = run_cli(["train", str(cfg)], capsys)
    assert code == 2 and "nodata" in err and "manifest" in err


def test_config_from_dict_validates() -> None:
    cfg = train_config_from_dict({"dataset": "d", "family": "f", "lr": 1})
    assert isinstance(cfg.lr, float) and dataclasses.asdict(cfg)["lr"] == 1.0
    with pytest.raises(ConfigError, match="'dataset'"):
        train_config_from_dict({"family": "f"})
    with pytest.raises(ConfigError, match="'batch_size'"):
        train_config_from_dict({"dataset": "d", "family": "f", "workers": 3, "backend": "ddp"})
