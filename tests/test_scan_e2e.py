"""End-to-end scans with the real engines: Ray Tune + Optuna + ASHA + Horovod + MLflow.

Checked through the MLflow API: run counts, nesting, statuses, metric steps, artifacts.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.train_synthetic import write_unfold_dataset
from models.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_2cpu() -> Iterator[None]:
    """One local 2-CPU Ray for the in-process scans of this module (launch() reuses it)."""
    import ray

    from scan.driver import _init_ray

    os.environ["HEPSCAN_RAY_CPUS"] = "2"
    started = _init_ray(None, REPO, verbose=0)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_unfold_dataset(tmp_path_factory.mktemp("ds") / "zll", rows=1500, n_bins=6)


def scan_cfg(dataset: Path, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "e2e",
        "dataset": str(dataset),
        "family": "unfold_bins",
        "search_space": {
            "alpha": ["loguniform", 0.5, 4.0],
            "batchnorm": ["choice", [True, False]],
            "dropout": {"type": "uniform", "low": 0.0, "high": 0.3, "when": {"batchnorm": False}},
        },
        "fixed": {"batch_size": 128, "lr": 0.003, "patience": 0},
        "objective": {"metric": "chi2_ndf", "mode": "min"},
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "num_trials": 4,
        "concurrency": 1,
        "max_epochs": 3,
        "seed": 1,
    }
    cfg.update(over)
    return cfg


def mlflow_runs(scan_dir: Path) -> tuple[Any, Any, list[Any]]:
    from tracking.store import _client

    state = json.loads((scan_dir / "tracking.json").read_text())
    client = _client(state["tracking_uri"])
    parent = client.get_run(state["parent_run_id"])
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
        max_results=1000,
    )
    return client, parent, children


def test_horovod_scan_end_to_end(ray_2cpu: None, dataset: Path, tmp_path: Path) -> None:
    import torch

    from scan import launch
    from scan.report import build_report

    scan_dir = tmp_path / "scan"
    result = launch(
        scan_cfg(dataset, resources={"workers": 2, "cpus_per_worker": 1}, backend="horovod"),
        scan_dir=str(scan_dir),
        verbose=0,
    )
    assert len(result.trials) == 4
    assert set(result.best_config) >= {"alpha", "batchnorm", "batch_size", "lr"}
    assert 0 < result.best_metrics["chi2_ndf"] < 1e6

    client, parent, children = mlflow_runs(scan_dir)
    assert parent.info.run_id == result.parent_run_id
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["hepscan.kind"] == "scan"
    assert len(children) == 4
    trial_ids = [r.data.tags["trial_id"] for r in children]
    assert sorted(trial_ids) == sorted(result.trials["trial_id"])
    statuses = {r.data.tags["trial_id"]: r.info.status for r in children}
    assert set(statuses.values()) <= {"FINISHED", "KILLED"}
    assert "FINISHED" in statuses.values()
    by_id = result.trials.set_index("trial_id")
    for run in children:
        tid = run.data.tags["trial_id"]
        steps = [m.step for m in client.get_metric_history(run.info.run_id, "chi2_ndf")]
        assert steps == list(range(1, int(by_id.loc[tid, "epochs"]) + 1))
        if run.info.status == "KILLED":
            assert run.data.tags["hepscan.stopped_by"] == "asha"
            assert by_id.loc[tid, "epochs"] < 3
        else:
            assert steps == [1, 2, 3]
        assert float(run.data.params["alpha"]) == pytest.approx(by_id.loc[tid, "alpha"])
        assert run.data.tags["hepscan.host"] == socket.gethostname()
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"trial_config.json", "checkpoint", "plots"} <= arts
        assert [a.path for a in client.list_artifacts(run.info.run_id, "plots")] == [
            "plots/unfolded.png"
        ]
        ckpt = Path(client.download_artifacts(run.info.run_id, "checkpoint/best.pt", str(tmp_path)))
        saved = torch.load(ckpt, map_location="cpu", weights_only=True)
        assert saved["train_config"]["workers"] == 2
        assert saved["train_config"]["backend"] == "horovod"

    _, text, plots = build_report(scan_dir)
    assert "parameter importances for chi2_ndf" in text
    assert result.best_trial_id is not None and result.best_trial_id in text
    assert all(p.exists() and p.stat().st_size > 0 for p in plots)


def test_failing_trial_is_failed_and_scan_continues(
    ray_2cpu: None, dataset: Path, tmp_path: Path
) -> None:
    from scan import launch

    # dropout 1.5 is rejected when the trial builds its model; the grid holds both points.
    # Two DDP ranks per trial: the error is raised on every rank and reaches Tune from rank 0.
    cfg = scan_cfg(
        dataset,
        resources={"workers": 2, "cpus_per_worker": 1},
        backend="ddp",
        searcher="grid",
        search_space={"dropout": ["choice", [0.1, 1.5]]},
        scheduler="none",
        num_trials=2,
        max_epochs=2,
        max_failures=1,
    )
    scan_dir = tmp_path / "scan"
    result = launch(cfg, scan_dir=str(scan_dir), verbose=0)
    assert sorted(result.trials["status"]) == ["FAILED", "FINISHED"]
    assert result.best_config["dropout"] == 0.1
    _, parent, children = mlflow_runs(scan_dir)
    assert parent.info.status == "FINISHED"
    assert len(children) == 2  # the retry (max_failures=1) reused the failed trial's run
    failed = [r for r in children if r.info.status == "FAILED"]
    assert len(failed) == 1 and failed[0].data.params["dropout"] == "1.5"
    assert "dropout" in failed[0].data.tags["hepscan.error"].lower()


def test_cli_exits_nonzero_when_every_trial_fails(
    ray_2cpu: None, dataset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from scan.cli import main

    # dropout 1.5 is rejected when the trial builds its model: nothing reports the objective
    cfg = scan_cfg(
        dataset,
        searcher="grid",
        search_space={"dropout": ["choice", [1.5]]},
        scheduler="none",
        num_trials=1,
        max_epochs=1,
    )
    path = tmp_path / "scan.yaml"
    path.write_text(yaml.safe_dump(cfg))
    scan_dir = tmp_path / "scan"
    with pytest.raises(SystemExit) as exit_info:
        main(["scan", str(path), "--scan-dir", str(scan_dir)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "every trial failed" in err and str(scan_dir / "tune") in err
    _, parent, children = mlflow_runs(scan_dir)
    assert [c.info.status for c in children] == ["FAILED"]


def test_resources_larger_than_cluster_fail_before_trials(
    ray_2cpu: None, dataset: Path, tmp_path: Path
) -> None:
    from scan import launch

    scan_dir = tmp_path / "scan"
    with pytest.raises(ConfigError, match=r"resources: 3 workers x 1.0 cpus_per_worker = 3 CPUs"):
        launch(
            scan_cfg(dataset, resources={"workers": 3}, backend="ddp"),
            scan_dir=str(scan_dir),
            verbose=0,
        )
    assert not (scan_dir / "tune").exists()


def _finished_trials(scan_dir: Path, epochs: int) -> int:
    n = 0
    for f in (scan_dir / "tune").glob("trial_*/result.json"):
        lines = [ln for ln in f.read_text().splitlines() if ln.strip()]
        n += len(lines) >= epochs
    return n


def test_sigterm_then_resume_gives_exactly_n_trials(dataset: Path, tmp_path: Path) -> None:
    n_trials, epochs = 5, 3
    cfg = scan_cfg(dataset, scheduler="none", num_trials=n_trials, max_epochs=epochs)
    cfg_path = tmp_path / "scan.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    scan_dir = tmp_path / "scan"
    env = {**os.environ, "HEPSCAN_RAY_CPUS": "2", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "scan.cli"]
    proc = subprocess.Popen(
        [*cmd, "scan", str(cfg_path), "--scan-dir", str(scan_dir)],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (scan_dir / "tune").exists() and _finished_trials(scan_dir, epochs) >= 2:
            break
        time.sleep(0.5)
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 3, out[-3000:]
    assert "hepscan resume" in out

    _, parent, children = mlflow_runs(scan_dir)
    assert parent.info.status == "KILLED"
    assert 2 <= len(children) < n_trials or any(r.info.status == "KILLED" for r in children)
    assert all(r.info.status != "RUNNING" for r in children)

    done = subprocess.run(
        [*cmd, "resume", str(scan_dir)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert "mlflow ui --backend-store-uri sqlite:///" in done.stdout

    client, parent, children = mlflow_runs(scan_dir)
    assert parent.info.status == "FINISHED"
    trial_ids = [r.data.tags["trial_id"] for r in children]
    assert len(trial_ids) == n_trials and len(set(trial_ids)) == n_trials
    assert all(r.info.status == "FINISHED" for r in children)
    for r in children:
        # In logging order: a trial restarted from scratch (or re-running an epoch after its
        # checkpoint) would log a step twice; every trial must show exactly 1, 2, ..., epochs.
        hist = client.get_metric_history(r.info.run_id, "val_loss")
        steps = [m.step for m in sorted(hist, key=lambda m: (m.timestamp, m.step))]
        assert steps == list(range(1, epochs + 1)), (r.data.tags["trial_id"], steps)
    tune_trials = list((scan_dir / "tune").glob("trial_*"))
    assert len(tune_trials) == n_trials
