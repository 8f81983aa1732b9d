"""Faults a real cluster produces, on the real engines (issue 15, items 3-5).

* two drivers on one scan directory: the second fails at once naming the holder; a stale lock
  (dead pid, finished SLURM job) is taken over with a message;
* the MLflow tracking server (a real ``mlflow server`` on sqlite) goes away mid-scan and comes
  back: nothing lost; it never comes back: the scan fails after ``tracking_outage_timeout_s``
  and ``hepscan resume`` completes it once the server is back;
* the scan directory's filesystem fills up mid-scan (a small tmpfs): a clear ENOSPC error, the
  state stays loadable, ``hepscan resume`` completes the scan once space is freed.

Run: ``flock /tmp/heavy.lock python -m pytest -q tests/test_faults.py``
"""

from __future__ import annotations

import errno
import json
import os
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

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "HEPSCAN_RAY_CPUS": "2", "PYTHONPATH": str(REPO)}
    env.pop("SLURM_JOB_ID", None)
    env.update(extra)
    return env


HEPSCAN = [sys.executable, "-m", "scan.cli"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_unfold_dataset(tmp_path_factory.mktemp("ds") / "zll", rows=1200, n_bins=6)


def scan_cfg(dataset: Path, **over: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "name": "faults",
        "dataset": str(dataset),
        "family": "unfold_bins",
        "search_space": {"alpha": ["loguniform", 0.5, 4.0]},
        "fixed": {"batch_size": 128, "lr": 0.003, "patience": 0},
        "objective": {"metric": "chi2_ndf", "mode": "min"},
        "scheduler": "none",
        "num_trials": 2,
        "concurrency": 1,
        "max_epochs": 3,
        "seed": 1,
        "register": False,
    }
    cfg.update(over)
    return cfg


def write_cfg(tmp_path: Path, cfg: dict[str, Any]) -> Path:
    path = tmp_path / "scan.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


# ------------------------------------------------------------------ 4. two drivers, one dir
HOLDER = """
import sys, time
from scan.lock import hold
with hold(sys.argv[1], "test holder"):
    print("held", flush=True)
    time.sleep(300)
"""


@pytest.fixture
def held_dir(tmp_path: Path, dataset: Path) -> Iterator[tuple[Path, subprocess.Popen[str]]]:
    """A scan directory (scan.json written) held by a live process in SLURM job 4242."""
    from scan.config import load_scan_config
    from scan.state import save_config

    d = tmp_path / "scan"
    save_config(load_scan_config(scan_cfg(dataset, scan_dir=str(d))), d)
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(d)],
        cwd=REPO,
        env=_env(SLURM_JOB_ID="4242"),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    try:
        yield d, proc
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def test_second_driver_is_refused_naming_the_holder(
    held_dir: tuple[Path, subprocess.Popen[str]], tmp_path: Path, dataset: Path
) -> None:
    d, holder = held_dir
    cfg = write_cfg(tmp_path, scan_cfg(dataset))
    want = f"host {socket.gethostname()}, pid {holder.pid}, SLURM job 4242"
    cmds = {
        "scan": [*HEPSCAN, "scan", str(cfg), "--scan-dir", str(d)],
        "resume": [*HEPSCAN, "resume", str(d)],
        "slurm submit": [
            *HEPSCAN, "slurm", "submit", str(cfg), "--scan-dir", str(d),
            "--cpus-per-node", "2", "--time", "00:10:00", "--run-dir", str(tmp_path / "run"),
        ],
    }  # fmt: skip
    for name, cmd in cmds.items():
        t0 = time.monotonic()
        out = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=60)
        took = time.monotonic() - t0
        assert out.returncode == 2, (name, out.stdout, out.stderr)
        assert f"is in use by a live driver: {want}" in out.stderr, (name, out.stderr)
        assert "scancel 4242" in out.stderr
        assert took < 20, (name, took)  # at once: no Ray, no MLflow started
    assert holder.poll() is None
    assert json.loads((d / "driver.json").read_text())["pid"] == holder.pid
    assert not (d / "tune").exists() and not (tmp_path / "run" / "scan.sbatch").exists()


def test_stale_locks_are_taken_over(tmp_path: Path) -> None:
    from scan.lock import HOLDER_FILE, ScanLocked, check_free, hold

    d = tmp_path / "scan"
    d.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    record = {"host": socket.gethostname(), "pid": dead.pid, "command": "hepscan scan"}
    (d / HOLDER_FILE).write_text(json.dumps(record))
    said: list[str] = []
    check_free(d)  # a dead holder does not block a submission either
    with hold(d, "test", notify=said.append) as me:
        assert me.pid == os.getpid()
        assert json.loads((d / HOLDER_FILE).read_text())["pid"] == os.getpid()
    assert len(said) == 1
    assert f"stale lock of {d}: host {socket.gethostname()}, pid {dead.pid}" in said[0]
    assert f"pid {dead.pid} is no longer running" in said[0]
    assert not (d / HOLDER_FILE).exists()  # released

    # A record from another node: live while its SLURM job runs, stale once SLURM says it ended.
    # `squeue` is a stand-in here (no controller outside the SLURM test cluster).
    record = {"host": "node-gone", "pid": 1, "slurm_job_id": "777", "command": "hepscan scan"}
    (d / HOLDER_FILE).write_text(json.dumps(record))
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    old_path = os.environ["PATH"]
    os.environ["PATH"] = path
    try:
        squeue.write_text("#!/bin/sh\necho RUNNING\n")
        squeue.chmod(0o755)
        with pytest.raises(ScanLocked, match=r"host node-gone, pid 1, SLURM job 777"):
            check_free(d)
        with pytest.raises(ScanLocked, match=r"scancel 777"), hold(d, "test"):
            pass
        squeue.write_text(
            "#!/bin/sh\necho 'slurm_load_jobs error: Invalid job id specified' >&2\nexit 1\n"
        )
        said.clear()
        with hold(d, "test", notify=said.append):
            pass
        assert "SLURM job 777 is no longer known to SLURM" in said[0]
    finally:
        os.environ["PATH"] = old_path


# ------------------------------------------------------------------ 3. tracking server outage
class MlflowServer:
    """A real ``mlflow server`` (sqlite behind it) on 127.0.0.1, stopped and restarted on the
    same port."""

    def __init__(self, root: Path) -> None:
        self.root = root
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> float:
        t0 = time.monotonic()
        log = open(self.root / "server.log", "ab")  # noqa: SIM115 - the server owns it
        self.proc = subprocess.Popen(
            [
                sys.executable, "-m", "mlflow", "server",
                "--backend-store-uri", f"sqlite:///{self.root / 'server.db'}",
                "--artifacts-destination", str(self.root / "artifacts"),
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            ],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        log.close()
        import urllib.request

        while time.monotonic() - t0 < 60:
            assert self.proc.poll() is None, (self.root / "server.log").read_text()[-2000:]
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=1).close()
                return time.monotonic() - t0
            except OSError:
                time.sleep(0.2)
        raise AssertionError("mlflow server did not start in 60 s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)  # the whole server (uvicorn and its worker) at once
            self.proc.wait()
        self.proc = None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MlflowServer]:
    srv = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def live(server: MlflowServer) -> MlflowServer:
    if server.proc is None:
        server.start()
    return server


def test_outbox_is_bounded_and_gives_up_on_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a port nobody listens on (a real MLflow client, a real refused connection)."""
    import mlflow

    from scan.outbox import Outbox, TrackingUnavailable, is_unreachable, quick_http_client

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
    for var in ("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT"):
        monkeypatch.delenv(var, raising=False)  # restored after the test
    quick_http_client(uri)
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"
    client = mlflow.MlflowClient(uri)
    t0 = time.monotonic()
    with pytest.raises(Exception) as info:
        client.get_experiment_by_name("x")
    assert time.monotonic() - t0 < 5  # no minutes of client-side retries
    assert is_unreachable(info.value)
    assert not is_unreachable(ValueError("API request to x failed with error code 400"))

    applied: list[str] = []

    def apply(name: str, kwargs: dict[str, Any]) -> None:
        client.get_experiment_by_name(name)
        applied.append(name)

    box = Outbox(apply, timeout_s=60, where=f"MLflow at {uri}", max_buffered=5)
    for i in range(5):
        box.submit(f"op{i}")
    assert len(box) == 5 and box.failed is None and box.retries == 1  # backoff: 1 try so far
    box.submit("op5")
    assert box.failed is not None and "6 tracking writes buffered" not in box.failed
    assert "5 tracking writes buffered (the cap is 5)" in box.failed
    assert len(box) == 6 and not applied

    box = Outbox(apply, timeout_s=1.5, where=f"MLflow at {uri}")
    box.submit("op")
    t0 = time.monotonic()
    with pytest.raises(TrackingUnavailable, match=r"unreachable for [12] s \(tracking_outage"):
        box.drain()
    assert 1.0 < time.monotonic() - t0 < 5
    assert 2 <= box.retries <= 6  # 0.5 s doubling, capped at the deadline
    saved = tmp_path / "outbox.json"
    assert box.save(saved) == 1
    fresh = Outbox(apply, timeout_s=1)
    assert fresh.load(saved) == 1 and fresh.pending == [("op", {})]


def _results(scan_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Tune's results per trial, as written to disk by the trials (the reference)."""
    out = {}
    for f in sorted((scan_dir / "tune").glob("trial_*/result.json")):
        out[f.parent.name.removeprefix("trial_")] = [
            json.loads(ln) for ln in f.read_text().splitlines() if ln.strip()
        ]
    return out


def _n_results(scan_dir: Path) -> int:
    return sum(len(v) for v in _results(scan_dir).values()) if (scan_dir / "tune").exists() else 0


def _wait_results(proc: subprocess.Popen[str], scan_dir: Path, n: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while _n_results(scan_dir) < n:
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, f"fewer than {n} results in {timeout} s"
        time.sleep(0.1)


def assert_mlflow_matches_tune(uri: str, scan_dir: Path, n_trials: int, epochs: int) -> None:
    """Every trial FINISHED with metric steps exactly 1..epochs, values equal to Tune's."""
    import mlflow

    client = mlflow.MlflowClient(uri)
    state = json.loads((scan_dir / "tracking.json").read_text())
    parent = client.get_run(state["parent_run_id"])
    assert parent.info.status == "FINISHED"
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    assert len(children) == n_trials
    tune = _results(scan_dir)
    assert len(tune) == n_trials
    for run in children:
        assert run.info.status == "FINISHED", run.data.tags
        reports = tune[run.data.tags["trial_id"]]
        # An epoch re-run after a restore repeats in result.json (same values); MLflow has it once.
        first: dict[int, dict[str, Any]] = {}
        for r in reports:
            first.setdefault(int(r["training_iteration"]), r)
        assert sorted(first) == list(range(1, epochs + 1))
        for key in ("val_loss", "chi2_ndf", "train_loss"):
            for r in reports:
                assert r[key] == pytest.approx(first[int(r["training_iteration"])][key], rel=1e-6)
            hist = client.get_metric_history(run.info.run_id, key)
            hist = sorted(hist, key=lambda m: (m.timestamp, m.step))
            assert [m.step for m in hist] == list(range(1, epochs + 1)), key
            want = [first[m.step][key] for m in hist]
            assert [m.value for m in hist] == pytest.approx(want, rel=1e-12), key


def test_tracking_outage_loses_no_metric(live: MlflowServer, dataset: Path, tmp_path: Path) -> None:
    """The server is killed for 5 s (plus its restart, ~5-15 s) while trials report (several epochs fall inside), then
    restarted on the same port: the scan finishes and MLflow holds every report exactly once."""
    n_trials, epochs, outage_s = 2, 8, 5.0
    cfg = write_cfg(
        tmp_path,
        scan_cfg(dataset, num_trials=n_trials, max_epochs=epochs, tracking_outage_timeout_s=120),
    )
    scan_dir = tmp_path / "scan"
    proc = subprocess.Popen(
        [*HEPSCAN, "scan", str(cfg), "--scan-dir", str(scan_dir), "--tracking-uri", live.uri],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_results(proc, scan_dir, 2, timeout=60)
    live.stop()
    down_at = _n_results(scan_dir)
    time.sleep(outage_s)
    during = _n_results(scan_dir) - down_at
    restart_s = live.start()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out[-3000:]
    assert during >= 3, f"only {during} reports fell inside the outage"  # trials kept training
    assert "reachable again after" in out and "all written" in out, out[-3000:]
    assert_mlflow_matches_tune(live.uri, scan_dir, n_trials, epochs)
    print(f"outage {outage_s} s + restart {restart_s:.1f} s; {during} reports inside it")


def test_tracking_server_that_never_returns_fails_then_resume_completes(
    live: MlflowServer, dataset: Path, tmp_path: Path
) -> None:
    n_trials, epochs, timeout_s = 2, 8, 5
    cfg = write_cfg(
        tmp_path,
        scan_cfg(
            dataset, num_trials=n_trials, max_epochs=epochs, tracking_outage_timeout_s=timeout_s
        ),
    )
    scan_dir = tmp_path / "scan"
    proc = subprocess.Popen(
        [*HEPSCAN, "scan", str(cfg), "--scan-dir", str(scan_dir), "--tracking-uri", live.uri],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_results(proc, scan_dir, 2, timeout=60)
    live.stop()
    t0 = time.monotonic()
    out, _ = proc.communicate(timeout=120)
    took = time.monotonic() - t0
    assert proc.returncode == 2, out[-3000:]
    assert took < timeout_s + 30, took  # bounded: the timeout plus Tune's graceful stop
    assert "unreachable for" in out and f"tracking_outage_timeout_s={timeout_s}" in out
    assert f"hepscan resume {scan_dir}" in out and "tracking_outbox.json" in out
    # Tune's results on disk are intact: the report reads them without MLflow.
    rep = subprocess.run(
        [*HEPSCAN, "report", str(scan_dir)], cwd=REPO, env=_env(), capture_output=True, text=True
    )
    assert rep.returncode == 0, rep.stderr[-3000:]

    live.start()
    done = subprocess.run(
        [*HEPSCAN, "resume", str(scan_dir)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert not (scan_dir / "tracking_outbox.json").exists()
    assert_mlflow_matches_tune(live.uri, scan_dir, n_trials, epochs)
    print(f"failed {took:.1f} s after the server went away (timeout {timeout_s} s)")


# ------------------------------------------------------------------ 5. disk full mid-scan
@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 64 MB tmpfs (we run as root), unmounted whatever happens."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(path: Path) -> int:
    """Write ``path`` until the filesystem has no byte left; returns the bytes written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    n = 0
    try:
        for chunk in (1 << 20, 1 << 12, 1):
            while True:
                try:
                    n += os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return n


def test_trial_retry_keeps_the_drivers_newer_result_json(tmp_path: Path) -> None:
    """A trial restarted in the same driver (max_failures retry) keeps the reports of its
    staging result.json that the last (throttled or failed) sync did not copy to the scan
    directory; a new driver (resume, empty staging directory) restores the synced copy."""
    import pyarrow.fs

    from scan.callback import _make_result_logger

    class Storage:
        def __init__(self, fs_path: Path) -> None:
            self.trial_fs_path = str(fs_path)
            self.storage_filesystem = pyarrow.fs.LocalFileSystem()

    class Trial:  # what Tune's logger reads of a trial
        def __init__(self, local: Path, remote: Path) -> None:
            self.local_path, self.storage, self.config = str(local), Storage(remote), {"a": 1}
            self.checkpoint = object()  # restored from a checkpoint

        def init_local_path(self) -> None:
            Path(self.local_path).mkdir(parents=True, exist_ok=True)

    remote, staging = tmp_path / "scan" / "trial_x", tmp_path / "staging" / "trial_x"
    remote.mkdir(parents=True)
    staging.mkdir(parents=True)
    lines = [json.dumps({"training_iteration": i}) for i in range(1, 6)]
    (remote / "result.json").write_text("\n".join(lines[:4]) + "\n")  # synced after epoch 4
    (staging / "result.json").write_text("\n".join(lines) + "\n")  # the driver saw epoch 5
    logger = _make_result_logger()
    trial = Trial(staging, remote)
    logger.log_trial_start(trial)  # the retry (Ray's own logger copies the stale file here)
    logger.log_trial_result(6, trial, {"training_iteration": 6})
    logger.log_trial_end(trial)
    got = [json.loads(ln)["training_iteration"] for ln in _lines(staging / "result.json")]
    assert got == [1, 2, 3, 4, 5, 6]

    fresh = Trial(tmp_path / "staging2" / "trial_x", remote)  # a new driver: hepscan resume
    fresh.init_local_path()
    logger.log_trial_start(fresh)
    logger.log_trial_end(fresh)
    got = [
        json.loads(ln)["training_iteration"]
        for ln in _lines(Path(fresh.local_path) / "result.json")
    ]
    assert got == [1, 2, 3, 4]


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_resume_drops_stale_tune_decisions(tmp_path: Path) -> None:
    """A STOP that Tune cached for a trial which failed while saving is not carried into the
    resume (it stopped the resumed trial at its first checkpoint); the rest of the state stays."""
    from scan.diskspace import drop_stale_decisions

    state = {
        "trial_data": [["{}", "{}"]],
        "runner_data": {
            "_cached_trial_decisions": {"1e48aa75": "STOP"},
            "_queued_trial_decisions": {},
            "_iteration": 57,
            "_max_pending_trials": 1,
        },
        "stats": {"start_time": 1.5},
    }
    path = tmp_path / "experiment_state-2026-12-01_19-26-38.json"
    path.write_text(json.dumps(state))
    assert drop_stale_decisions(tmp_path) == {"1e48aa75": "STOP"}
    after = json.loads(path.read_text())
    state["runner_data"]["_cached_trial_decisions"] = {}  # type: ignore[index]
    assert after == state
    assert drop_stale_decisions(tmp_path) == {}  # nothing left to drop
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temp file left


def test_disk_full_mid_scan_fails_clearly_and_resume_completes(
    small_fs: Path, dataset: Path, tmp_path: Path
) -> None:
    from scan.lock import HOLDER_FILE
    from scan.state import load_saved_config

    # the disk fills after 3 reports: the first trial fails, the second has not started
    n_trials, epochs = 2, 6
    cfg = write_cfg(tmp_path, scan_cfg(dataset, num_trials=n_trials, max_epochs=epochs))
    scan_dir = small_fs / "scan"
    proc = subprocess.Popen(
        [*HEPSCAN, "scan", str(cfg), "--scan-dir", str(scan_dir)],
        cwd=REPO,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_results(proc, scan_dir, 3, timeout=60)
    _fill(small_fs / "filler")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out[-3000:]
    err = [ln for ln in out.splitlines() if ln.startswith("hepscan: error:")]
    assert err, out[-3000:]
    assert f"{scan_dir}: no space left on device (ENOSPC" in err[0]
    assert "No space left on device" in err[0] or "errno 28" in err[0].lower()
    assert f"hepscan resume {scan_dir}" in err[0]
    # The state on disk stays loadable while the disk is still full.
    assert load_saved_config(scan_dir).num_trials == n_trials
    rep = subprocess.run(
        [*HEPSCAN, "report", str(scan_dir)], cwd=REPO, env=_env(), capture_output=True, text=True
    )
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert "FAILED" in rep.stdout

    # The driver that died is recorded as the holder (as after a crash): taken over, said so.
    record = {"host": socket.gethostname(), "pid": proc.pid, "command": "hepscan scan"}
    (scan_dir / HOLDER_FILE).write_text(json.dumps(record))
    (small_fs / "filler").unlink()
    done = subprocess.run(
        [*HEPSCAN, "resume", str(scan_dir)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    assert f"taking over the stale lock of {scan_dir}" in done.stderr
    assert f"pid {proc.pid} is no longer running" in done.stderr
    assert not (scan_dir / HOLDER_FILE).exists() and not (scan_dir / ".space_reserve").exists()
    uri = json.loads((scan_dir / "tracking.json").read_text())["tracking_uri"]
    assert_mlflow_matches_tune(uri, scan_dir, n_trials, epochs)
