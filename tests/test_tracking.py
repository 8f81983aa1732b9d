"""tracking/: MLflow parent/child runs on a real sqlite store, resume safety, plots.

.venv/bin/python -m pytest tests/test_tracking.py -q
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tracking.plots import plot_generated, plot_resolution, plot_unfolded, ratio, save_png
from tracking.runs import (
    MAPPING_FILE,
    ScanTracker,
    TrialStatus,
    default_tracking_uri,
    flatten,
    runs_of_scan,
)

CONFIG = {
    "family": "unfolding",
    "model": {"hidden": [64, 64], "dropout": 0.1},
    "train": {"epochs": 3, "lr": 1e-3},
}
SPACE = {"lr": {"type": "loguniform", "low": 1e-4, "high": 1e-2}, "hidden": {"type": "choice"}}


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An initialised, empty MLflow sqlite store: creating one runs ~100 alembic migrations
    (seconds), so tests copy this file instead of each paying for it."""
    scan_dir = tmp_path_factory.mktemp("template")
    ScanTracker(scan_dir).client.search_experiments()
    return scan_dir / "mlflow.db"


def _scan_dir(tmp_path: Path, empty_store: Path, name: str = "scan") -> Path:
    scan_dir = tmp_path / name
    scan_dir.mkdir()
    shutil.copyfile(empty_store, scan_dir / "mlflow.db")
    return scan_dir


def _search_runs_df(uri: str, experiment_id: str, parent: str):  # type: ignore[no-untyped-def]
    """mlflow.search_runs (fluent API) against ``uri`` without leaking the global URI."""
    import mlflow
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    with _use_tracking_uri(uri):
        return mlflow.search_runs(
            experiment_ids=[experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent}'",
        )


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_import_is_light() -> None:
    code = (
        "import sys, tracking, tracking.runs, tracking.plots\n"
        "bad = [m for m in ('mlflow', 'ray', 'matplotlib') if m in sys.modules]\n"
        "assert not bad, bad\n"
        "assert tracking.TrialStatus.KILLED == 'KILLED'\n"
        "assert 'ray' not in sys.modules\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr


def test_flatten_nested_config() -> None:
    flat = flatten(CONFIG)
    assert flat == {
        "family": "unfolding",
        "model.hidden": [64, 64],
        "model.dropout": 0.1,
        "train.epochs": 3,
        "train.lr": 1e-3,
    }


def test_parent_and_three_nested_trials(tmp_path: Path, empty_store: Path) -> None:
    from mlflow import MlflowClient

    scan_dir = _scan_dir(tmp_path, empty_store)
    tracker = ScanTracker(scan_dir)
    assert tracker.tracking_uri == default_tracking_uri(scan_dir)
    parent = tracker.start_scan("unfold-scan", CONFIG, SPACE, tags={"owner": "test"})
    assert tracker.parent_run_id == parent

    ckpt = tmp_path / "best.pt"
    ckpt.write_bytes(b"\0" * 128)
    trials = {
        "t0": (TrialStatus.FINISHED, None),
        "t1": (TrialStatus.KILLED, "asha"),
        "t2": (TrialStatus.FAILED, "NaN loss at epoch 1"),
    }
    for i, tid in enumerate(trials):
        tracker.start_trial(tid, {"lr": 10.0 ** -(i + 2), "model": {"hidden": [32] * (i + 1)}})
    # Trials interleave as in a concurrent scan: epochs of all trials, then the ends.
    for step in range(3):
        for tid in trials:
            if tid == "t2" and step == 1:
                tracker.log_epoch(tid, step, {"loss": float("nan"), "chi2_ndf": 3.0})
            else:
                tracker.log_epoch(tid, step, {"loss": 1.0 / (step + 1), "chi2_ndf": 2.0 - step})
    tracker.log_trial_artifacts("t0", [ckpt], artifact_path="checkpoints")
    fig = plot_unfolded(np.linspace(0, 1, 5), [4, 5, 6, 7], [3, 5, 5, 8], {"nn": [4, 5, 7, 7]})
    tracker.log_trial_figure("t0", fig, "unfolded")
    for tid, (status, reason) in trials.items():
        final = {"chi2_ndf": 0.9} if status is TrialStatus.FINISHED else None
        tracker.end_trial(tid, status, final_metrics=final, reason=reason)
    png = save_png(fig, tmp_path / "report.png")
    tracker.log_scan_figure(png, "best_unfolded")
    tracker.set_trial_tags("t0", {"hepscan.checkpoint": str(ckpt)})
    tracker.end_scan(TrialStatus.FINISHED, {"best_chi2_ndf": 0.9, "best_trial": "t0"})

    client = MlflowClient(tracking_uri=tracker.tracking_uri)
    prun = client.get_run(parent)
    assert prun.info.status == "FINISHED"
    assert prun.info.run_name == "unfold-scan"
    assert prun.data.params["model.dropout"] == "0.1"
    assert prun.data.params["train.epochs"] == "3"
    assert json.loads(prun.data.params["search_space"]) == SPACE
    assert prun.data.tags["owner"] == "test"
    assert prun.data.tags["hepscan.host"]
    assert "hepscan.version" in prun.data.tags
    assert prun.data.metrics["best_chi2_ndf"] == pytest.approx(0.9)
    parent_files = {f.path for f in client.list_artifacts(parent)}
    assert {"config.json", "search_space.json", "summary.json", "plots"} <= parent_files
    assert [f.path for f in client.list_artifacts(parent, "plots")] == ["plots/best_unfolded.png"]
    assert prun.data.tags["hepscan.summary.best_trial"] == "t0"
    # Artifacts of the embedded store land inside the scan directory.
    assert (scan_dir / "mlartifacts").is_dir()
    assert prun.info.artifact_uri.startswith((scan_dir / "mlartifacts").as_uri())

    df = _search_runs_df(tracker.tracking_uri, prun.info.experiment_id, parent)
    assert len(df) == 3
    assert set(df["tags.mlflow.parentRunId"]) == {parent}
    status_of = dict(zip(df["tags.trial_id"], df["status"], strict=True))
    assert status_of == {"t0": "FINISHED", "t1": "KILLED", "t2": "FAILED"}
    by_tid = df.set_index("tags.trial_id")
    assert by_tid.loc["t1", "tags.hepscan.stopped_by"] == "asha"
    assert by_tid.loc["t2", "tags.hepscan.error"] == "NaN loss at epoch 1"
    assert by_tid.loc["t2", "tags.hepscan.nonfinite.loss"] == "step 1"
    assert by_tid.loc["t1", "params.lr"] == "0.001"
    assert by_tid.loc["t0", "tags.hepscan.checkpoint"] == str(ckpt)
    assert by_tid.loc["t2", "params.model.hidden"] == "[32, 32, 32]"

    # The helper used by reports sees the same runs.
    mine = runs_of_scan(tracker.tracking_uri, parent)
    assert sorted(mine["run_id"]) == sorted(df["run_id"])
    assert set(mine["status"]) == {"FINISHED", "KILLED", "FAILED"}

    t0 = tracker.trial_run_id("t0")
    t2 = tracker.trial_run_id("t2")
    assert t0 is not None and t2 is not None
    hist = client.get_metric_history(t0, "loss")
    assert [m.step for m in sorted(hist, key=lambda m: m.step)] == [0, 1, 2]
    assert [m.value for m in sorted(hist, key=lambda m: m.step)] == pytest.approx(
        [1.0, 0.5, 1.0 / 3.0]
    )
    # The final metric is logged at the last epoch's step, so "latest" is the final value.
    chi2 = {(m.step, m.value) for m in client.get_metric_history(t0, "chi2_ndf")}
    assert chi2 == {(0, 2.0), (1, 1.0), (2, 0.0), (2, 0.9)}
    assert client.get_run(t0).data.metrics["chi2_ndf"] == pytest.approx(0.9)
    # The NaN epoch was skipped, the finite metric of that epoch was kept.
    assert sorted(m.step for m in client.get_metric_history(t2, "loss")) == [0, 2]
    assert sorted(m.step for m in client.get_metric_history(t2, "chi2_ndf")) == [0, 1, 2]
    assert all(math.isfinite(m.value) for m in client.get_metric_history(t2, "loss"))

    files = {f.path for f in client.list_artifacts(t0)}
    assert {"checkpoints", "plots", "trial_config.json"} <= files
    assert [f.path for f in client.list_artifacts(t0, "checkpoints")] == ["checkpoints/best.pt"]
    plots = client.list_artifacts(t0, "plots")
    assert [f.path for f in plots] == ["plots/unfolded.png"]
    assert (plots[0].file_size or 0) > 5_000


def test_resume_reuses_runs_and_closes_dangling(tmp_path: Path, empty_store: Path) -> None:
    from mlflow import MlflowClient

    # A quote in the path: the scan directory is also a search-filter literal.
    scan_dir = _scan_dir(tmp_path, empty_store, "it's a scan")
    first = ScanTracker(scan_dir)
    parent = first.start_scan("resume-scan", CONFIG, SPACE)
    first.start_trial("a", {"lr": 0.01})
    first.log_epoch("a", 0, {"loss": 1.0})
    first.end_trial("a", TrialStatus.FINISHED)
    run_b = first.start_trial("b", {"lr": 0.02})
    first.log_epoch("b", 0, {"loss": 2.0})
    first.log_epoch("b", 1, {"loss": 1.5})
    run_c = first.start_trial("c", {"lr": 0.03})
    run_q = first.start_trial("q'1", {"lr": 0.05})
    first.end_trial("q'1", TrialStatus.FINISHED)
    # The driver dies here (SIGKILL): parent, b and c stay RUNNING.
    client = MlflowClient(tracking_uri=first.tracking_uri)
    assert client.get_run(run_b).info.status == "RUNNING"
    mapping = json.loads((scan_dir / MAPPING_FILE).read_text())
    assert mapping["parent_run_id"] == parent
    assert mapping["trials"] == {
        "a": first.trial_run_id("a"),
        "b": run_b,
        "c": run_c,
        "q'1": run_q,
    }

    second = ScanTracker(scan_dir)
    assert second.parent_run_id == parent
    assert second.start_scan("resume-scan", CONFIG, SPACE) == parent
    assert client.get_run(parent).info.status == "RUNNING"
    # Trials left RUNNING by the dead driver are KILLED until Tune resumes them.
    assert client.get_run(run_b).info.status == "KILLED"
    assert client.get_run(run_b).data.tags["hepscan.stopped_by"] == "interrupt"
    assert client.get_run(run_c).info.status == "KILLED"

    assert second.start_trial("b", {"lr": 0.02}) == run_b
    resumed = client.get_run(run_b)
    assert resumed.info.status == "RUNNING"
    assert "hepscan.stopped_by" not in resumed.data.tags
    second.log_epoch("b", 2, {"loss": 1.0})
    second.end_trial("b", TrialStatus.FINISHED)

    # Lost mapping file: the runs are found again through their tags.
    (scan_dir / MAPPING_FILE).unlink()
    third = ScanTracker(scan_dir)
    assert third.parent_run_id is None
    assert third.start_scan("resume-scan", CONFIG, SPACE) == parent
    assert third.start_trial("c", {"lr": 0.03}) == run_c
    assert third.start_trial("q'1", {"lr": 0.05}) == run_q
    third.end_trial("q'1", TrialStatus.FINISHED)
    third.start_trial("d", {"lr": 0.04})
    third.log_epoch("d", 0, {"loss": 3.0})
    # Interrupt (SIGTERM handler): everything still RUNNING is closed, parent included.
    assert third.close_dangling() == 3  # c, d and the parent
    assert third.close_dangling() == 0

    df = runs_of_scan(third.tracking_uri, parent)
    assert sorted(df["tags.trial_id"]) == ["a", "b", "c", "d", "q'1"]  # no duplicates
    assert "RUNNING" not in set(df["status"])
    assert client.get_run(parent).info.status == "KILLED"
    assert set(df.loc[df["tags.trial_id"].isin(["c", "d"]), "tags.hepscan.stopped_by"]) == {
        "interrupted"
    }
    assert [m.step for m in client.get_metric_history(run_b, "loss")] == [0, 1, 2]
    exp_runs = client.search_runs([client.get_run(parent).info.experiment_id])
    assert len(exp_runs) == 6  # one parent + five trials, nothing else


def test_unknown_trial_and_missing_scan_are_errors(tmp_path: Path, empty_store: Path) -> None:
    tracker = ScanTracker(_scan_dir(tmp_path, empty_store))
    with pytest.raises(RuntimeError, match="start_scan"):
        tracker.start_trial("x", {})
    tracker.start_scan("s", {"a": 1}, {"a": {"type": "int"}})
    with pytest.raises(KeyError, match="no run for trial 'zz'"):
        tracker.log_epoch("zz", 0, {"loss": 1.0})
    tracker.start_trial("x", {"long": "v" * 7000})
    with pytest.raises(FileNotFoundError):
        tracker.log_trial_artifacts("x", [tmp_path / "missing.pt"])
    tracker.end_trial("x", TrialStatus.FINISHED)
    tracker.end_scan(TrialStatus.FINISHED)
    df = runs_of_scan(tracker.tracking_uri, tracker.parent_run_id or "")
    assert len(df) == 1
    assert len(df.loc[0, "params.long"]) == 6000  # MLflow's limit, truncated not rejected


# ------------------------------------------------------------------ plots


def test_ratio_values() -> None:
    r, e = ratio(np.array([10.0, 0.0, 5.0, 9.0]), np.array([5.0, 2.0, 0.0, 3.0]))
    assert r[:2] == pytest.approx([2.0, 0.0])
    assert math.isnan(r[2]) and math.isnan(e[2])
    assert r[3] == pytest.approx(3.0)
    # Poisson numerator, exact reference.
    assert e[0] == pytest.approx(math.sqrt(10.0) / 5.0)
    assert e[1] == pytest.approx(0.0)
    assert e[3] == pytest.approx(1.0)
    r2, e2 = ratio(np.array([8.0]), np.array([4.0]), np.array([1.0]), np.array([2.0]))
    assert r2[0] == pytest.approx(2.0)
    assert e2[0] == pytest.approx(math.sqrt((1 / 4) ** 2 + (8 * 2 / 16) ** 2))


def test_plots_write_pngs(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    edges = np.linspace(0.0, 100.0, 21)
    truth = rng.poisson(200, 20).astype(np.float64)
    reco = truth * 0.9
    fig = plot_unfolded(
        edges,
        truth,
        reco,
        {"omnifold": truth * 1.02, "ibu": (truth * 0.98, np.sqrt(truth))},
        title="m_ll",
    )
    ratio_axis = fig.axes[1]
    # The plotted ratio points are unfolded/truth.
    points = ratio_axis.lines[0].get_ydata()
    assert np.asarray(points) == pytest.approx(np.full(20, 1.02))
    p1 = save_png(fig, tmp_path / "plots" / "unfolded.png")

    table = {
        "bin_lo": [0.0, 1.0, 2.0, 0.0, 1.0, 2.0],
        "bin_hi": [1.0, 2.0, 2.5, 1.0, 2.0, 2.5],
        "mean": [0.01, -0.02, 0.03, 0.0, 0.0, 0.01],
        "rms": [0.10, 0.12, 0.20, 0.05, 0.06, 0.09],
        "label": ["detector"] * 3 + ["nn"] * 3,
    }
    p2 = save_png(plot_resolution(table, variable="|η|"), tmp_path / "resolution.png")
    ref = rng.normal(size=(4000, 3))
    gen = rng.normal(0.05, 1.0, size=(4000, 3))
    p3 = save_png(plot_generated(ref, gen, ["pt", "eta", "phi"]), tmp_path / "gen.png")
    for p in (p1, p2, p3):
        assert p.is_file()
        width, height = _png_size(p)
        assert 300 <= width <= 2000 and 300 <= height <= 2000
        assert p.stat().st_size > 10_000
    assert sorted(x.name for x in tmp_path.rglob("*.png")) == [
        "gen.png",
        "resolution.png",
        "unfolded.png",
    ]  # no temporaries left behind
    with pytest.raises(ValueError, match="3 features, generated 2"):
        plot_generated(ref, gen[:, :2])
    with pytest.raises(KeyError, match="rms"):
        plot_resolution({"bin_lo": [0], "bin_hi": [1], "mean": [0]})


def test_retry_waits_out_sqlite_lock() -> None:
    from tracking import store

    calls: list[int] = []

    def flaky(x: int) -> int:
        calls.append(x)
        if len(calls) < 3:
            raise RuntimeError("(sqlite3.OperationalError) database is locked")
        return x * 2

    assert store._retry(flaky, 21) == 42
    assert len(calls) == 3

    def broken() -> None:
        raise RuntimeError("no such table: runs")

    with pytest.raises(RuntimeError, match="no such table"):
        store._retry(broken)
