"""hepscan on a real SLURM: the local 2-node test cluster of slurm/testcluster (root needed).

Run: ``.venv/bin/python -m pytest tests/test_slurm_cluster.py -m slurm``.  A session fixture
brings the cluster up with ``slurm/testcluster/up.sh --nodes 2`` (installing Debian's slurm and
munge when missing) and tears it down at the end only if it brought it up.  Every job is waited
for with a deadline and cancelled when it passes, so a failure never leaves a hung job.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from scan.cli import main
from slurm.submit import JobSpec, JobStatus, status, submit

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
TESTCLUSTER = ROOT / "slurm" / "testcluster"
HOME = Path(os.environ.get("HEPSCAN_SLURM_HOME", "/run/hepscan-slurm"))
TERMINAL = {
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
    "DEADLINE", "PREEMPTED",
}  # fmt: skip


@pytest.fixture(scope="session")
def cluster() -> Iterator[str]:
    """A 2-node SLURM cluster; yields its SLURM_CONF."""
    mode_file = HOME / "mode"
    before = mode_file.read_text().strip() if mode_file.exists() else None
    up = subprocess.run(
        ["bash", str(TESTCLUSTER / "up.sh"), "--nodes", "2"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert up.returncode == 0, f"up.sh failed:\n{up.stdout}\n{up.stderr}"
    conf = str(HOME / "slurm.conf")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    try:
        yield conf
    finally:
        if before != "2":
            subprocess.run(["bash", str(TESTCLUSTER / "down.sh")], capture_output=True, timeout=300)
            if before == "1":
                subprocess.run(
                    ["bash", str(TESTCLUSTER / "up.sh"), "--nodes", "1"],
                    capture_output=True, timeout=300,
                )  # fmt: skip
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


def _squeue_ids() -> set[str]:
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def _wait(job_id: str, log: Path, timeout: float = 600, restarts: int = 0) -> JobStatus:
    """Poll until the job ends (after at least ``restarts`` requeues); cancel it past the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        st = status(job_id)
        if st.state in TERMINAL:
            if st.restarts < restarts:
                tail = log.read_text()[-6000:] if log.exists() else "(no log)"
                pytest.fail(f"job {job_id} ended {st.state} without a requeue; log:\n{tail}")
            return st
        if time.monotonic() > deadline:
            subprocess.run(["scancel", job_id], check=False)
            tail = log.read_text()[-6000:] if log.exists() else "(no log)"
            pytest.fail(f"job {job_id} still {st.state} after {timeout:.0f} s; log:\n{tail}")
        time.sleep(2)


def _log_of(result: Any) -> Path:
    return Path(result.log_path)


# ---------------------------------------------------------------------------- the cluster


def test_cluster_has_two_idle_nodes_on_their_own_addresses(cluster: str) -> None:
    out = subprocess.run(
        ["sinfo", "-h", "-N", "-o", "%N %t %c %o"], capture_output=True, text=True, check=True
    ).stdout.split("\n")
    rows = sorted(line.split() for line in out if line.strip())
    assert [r[0] for r in rows] == ["hsnode1", "hsnode2"]
    assert {r[3] for r in rows} == {"10.77.0.11", "10.77.0.12"}
    assert all(r[1] in ("idle", "mix", "alloc") for r in rows)
    # a second up.sh only reports
    again = subprocess.run(
        ["bash", str(TESTCLUSTER / "up.sh"), "--nodes", "2"], capture_output=True, text=True
    )
    assert again.returncode == 0 and "cluster up in 2-node mode" in again.stdout
    assert "started" not in again.stdout


# ---------------------------------------------------------------------------- bad submissions


def test_bad_submissions_fail_before_sbatch(
    cluster: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "scan.yaml"
    cfg.write_text("name: x\n")
    before = _squeue_ids()
    cases = [
        (["--nodes", "3"], "--nodes 3: partition 'debug' has only 2 node(s)"),
        (["--partition", "gpu"], "--partition: unknown partition 'gpu' (available: debug)"),
        (["--cpus-per-node", "64"], "partition 'debug' has 0 node(s) that large"),
        (["--gpus-per-node", "1"], "--gpus-per-node 1): partition 'debug' has 0 node(s)"),
    ]
    for extra, needle in cases:
        args = ["slurm", "submit", str(cfg), "--cpus-per-node", "1", "--time", "00:05:00"]
        args += ["--run-dir", str(tmp_path / "run"), *extra]
        with pytest.raises(SystemExit) as exc:
            main(args)
        assert exc.value.code == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("hepscan: error: ") and needle in err, (extra, err)
    missing = tmp_path / "missing.yaml"
    with pytest.raises(SystemExit) as exc:
        main(["slurm", "submit", str(missing), "--cpus-per-node", "1", "--time", "5"])
    assert exc.value.code == 2
    assert f"config file not found: {missing}" in capsys.readouterr().err
    assert _squeue_ids() == before
    assert not (tmp_path / "run").exists()


def test_sbatch_error_is_shown_verbatim(
    cluster: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "scan.yaml"
    cfg.write_text("name: x\n")
    before = _squeue_ids()
    with pytest.raises(SystemExit) as exc:
        main(
            ["slurm", "submit", str(cfg), "--cpus-per-node", "1", "--time", "5",
             "--run-dir", str(tmp_path / "run"), "--sbatch-arg=--constraint=nosuchfeature"]
        )  # fmt: skip
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "sbatch failed (exit 1): sbatch: error: " in err
    assert "Invalid feature specification" in err
    assert _squeue_ids() == before


# ---------------------------------------------------------------------------- multi-node Ray

RAY_PAYLOAD = """
import json, os, socket
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

ray.init()  # RAY_ADDRESS from the job
nodes = [n for n in ray.nodes() if n["Alive"]]
assert len(nodes) == 2, nodes

@ray.remote(num_cpus=1)
def where():
    return socket.gethostname(), ray.util.get_node_ip_address(), os.environ["RAY_AUTH_MODE"]

refs = [where.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
        for n in nodes]
out = sorted(ray.get(refs))
res = ray.cluster_resources()
print("RESULT " + json.dumps({"nodes": len(nodes), "tasks": out, "cpus": res["CPU"]}), flush=True)
"""


def test_ray_cluster_spans_two_nodes(cluster: str, tmp_path: Path) -> None:
    payload = tmp_path / "payload.py"
    payload.write_text(RAY_PAYLOAD)
    cfg = tmp_path / "scan.yaml"
    cfg.write_text("name: ray-probe\n")
    spec = JobSpec(
        config=cfg, nodes=2, cpus_per_node=2, time="00:10:00", run_dir=tmp_path / "run",
        command=f"{sys.executable} -u {payload}",
    )  # fmt: skip
    result = submit(spec)
    assert result.job_id and result.job_id.isdigit()
    st = _wait(result.job_id, _log_of(result))
    log = _log_of(result).read_text()
    assert (st.state, st.exit_code) == ("COMPLETED", "0:0"), log[-4000:]
    line = next(x for x in log.splitlines() if x.startswith("RESULT "))
    got = json.loads(line[len("RESULT ") :])
    assert got["nodes"] == 2 and got["cpus"] == 4.0
    assert got["tasks"] == [
        ["hsnode1", "10.77.0.11", "token"],
        ["hsnode2", "10.77.0.12", "token"],
    ]
    # node-local temp dirs and the token file are gone; nothing of the job keeps running
    assert not list(Path("/tmp").glob(f"ray-{result.job_id}-*"))
    assert not list((tmp_path / "run" / "ray").glob("auth_token.*"))
    assert "Ray cluster: 2 nodes, 4 CPUs" in log


FAKE_DRIVER = """
import os, signal, sys, time
import ray
ray.init()
restart = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
marker = os.path.join(os.environ["HS_RUN_DIR"], "attempts")
with open(marker, "a") as f:
    f.write(f"{restart} {len(ray.nodes())}\\n")
def stop(*_):
    print("fake driver: checkpointed", flush=True)
    sys.exit(3)
signal.signal(signal.SIGTERM, stop)
if restart == 0:
    open(os.path.join(os.environ["HS_RUN_DIR"], "running"), "w").close()
    time.sleep(600)
print("fake driver: finished", flush=True)
"""


def test_usr1_checkpoints_and_requeues(cluster: str, tmp_path: Path) -> None:
    """The batch script's USR1 path (what --signal=B:USR1@S delivers), with a stand-in driver."""
    driver = tmp_path / "driver.py"
    driver.write_text(FAKE_DRIVER)
    cfg = tmp_path / "scan.yaml"
    cfg.write_text("name: requeue-probe\n")
    run = tmp_path / "run"
    spec = JobSpec(
        config=cfg, nodes=2, cpus_per_node=2, time="00:10:00", run_dir=run,
        command=f"exec {sys.executable} -u {driver}",
    )  # fmt: skip
    result = submit(spec)
    assert result.job_id
    deadline = time.monotonic() + 300
    while not (run / "running").exists():
        if time.monotonic() > deadline or status(result.job_id).state in TERMINAL:
            subprocess.run(["scancel", result.job_id], check=False)
            pytest.fail(_log_of(result).read_text()[-4000:])
        time.sleep(1)
    subprocess.run(["scancel", "--signal=USR1", "--batch", result.job_id], check=True)
    st = _wait(result.job_id, _log_of(result), timeout=600, restarts=1)
    log = _log_of(result).read_text()
    assert (st.state, st.exit_code, st.restarts) == ("COMPLETED", "0:0", 1), log[-4000:]
    assert (run / "attempts").read_text().split("\n")[:2] == ["0 2", "1 2"]
    assert "fake driver: checkpointed" in log and "fake driver: finished" in log
    assert "requeueing job" in log


# ---------------------------------------------------------------------------- Dask preprocessing


@pytest.fixture(scope="module")
def zll(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small simulated zll sample and its locally preprocessed dataset."""
    from jobs.preprocess import preprocess
    from jobs.simulate import simulate

    base = tmp_path_factory.mktemp("zll")
    simulate("zll", 6000, 2, 5, base / "sim", workers=1, progress=False)
    preprocess(
        ROOT / "configs" / "preprocess_zll.yaml", base / "local",
        inputs=[str(base / "sim" / "*.root")], workers=1,
    )  # fmt: skip
    return base


def test_preprocess_on_two_nodes_matches_local(cluster: str, zll: Path, tmp_path: Path) -> None:
    out = tmp_path / "slurm-out"
    spec = JobSpec(
        config=ROOT / "configs" / "preprocess_zll.yaml", kind="preprocess", out=out, nodes=2,
        cpus_per_node=2, time="00:10:00", run_dir=tmp_path / "run",
        driver_args=("--input", str(zll / "sim" / "*.root")),
    )  # fmt: skip
    result = submit(spec)
    assert result.job_id
    st = _wait(result.job_id, _log_of(result))
    log = _log_of(result).read_text()
    assert (st.state, st.exit_code) == ("COMPLETED", "0:0"), log[-4000:]
    assert "Dask cluster: 4 workers on 2 nodes: 10.77.0.11, 10.77.0.12" in log
    local = zll / "local" / "manifest.json"
    assert (out / "manifest.json").read_bytes() == local.read_bytes()
    manifest = json.loads(local.read_text())
    for split in ("train", "validation", "test"):
        for shard in manifest["splits"][split]["files"]:
            path = shard["path"]
            assert (out / path).read_bytes() == (zll / "local" / path).read_bytes()
    assert not list(Path("/tmp").glob(f"dask-{result.job_id}-*"))


# ---------------------------------------------------------------------------- the scan


def _scan_config(
    zll: Path, tmp_path: Path, num_trials: int, max_epochs: int, backend: str = "single"
) -> Path:
    """configs/demo.yaml made small; one 2-CPU trial fills a node, so two run on two nodes.

    ``backend: horovod`` keeps the demo's 2-rank trials (2 x 1 CPU), ``single`` one rank on
    2 CPUs. No early stopping (patience > max_epochs, no ASHA): every trial runs
    ``max_epochs``.
    """
    workers = 1 if backend == "single" else 2
    cfg = yaml.safe_load((ROOT / "configs" / "demo.yaml").read_text())
    cfg["fixed"] = {**cfg.get("fixed", {}), "patience": max_epochs + 1}
    cfg.update(
        name="slurm_demo", dataset=str(zll / "local"), num_trials=num_trials,
        max_epochs=max_epochs, concurrency=2, backend=backend, searcher="random",
        scheduler={"type": "none"},
        resources={"workers": workers, "cpus_per_worker": 2 // workers},
    )  # fmt: skip
    cfg.pop("n_startup_trials", None)
    path = tmp_path / "slurm_demo.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _runs(scan_dir: Path) -> tuple[Any, list[Any]]:
    """The scan's parent run and its child (trial) runs, read through the MLflow API."""
    with warnings.catch_warnings():
        # mlflow's sqlalchemy store trips a SQLAlchemy 2.1 deprecation warning (not ours)
        warnings.filterwarnings("ignore", message=r"The ``noload`` loader strategy is deprecated")
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=f"sqlite:///{scan_dir / 'mlflow.db'}")
        exps = client.search_experiments()
        runs = [r for e in exps for r in client.search_runs([e.experiment_id], max_results=1000)]
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1, [r.info.run_id for r in parents]
    return parents[0], children


def test_scan_on_two_nodes(
    cluster: str,
    zll: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the demo's trials: 2 Horovod ranks each, placed by Ray inside the SLURM allocation, of a
    # user's own family (examples/custom_family/resmlp.py) named by its import string: the
    # module sits in the submit directory only, so the login node, the driver and the Ray
    # workers (and Horovod ranks) on both nodes must each import it from there
    cfg = _scan_config(zll, tmp_path, num_trials=4, max_epochs=2, backend="horovod")
    shutil.copy(ROOT / "examples" / "custom_family" / "resmlp.py", tmp_path / "resmlp.py")
    example = yaml.safe_load((ROOT / "examples" / "custom_family" / "scan.yaml").read_text())
    data = yaml.safe_load(cfg.read_text())
    data.update(family="resmlp:FAMILY", search_space=example["search_space"])
    data["fixed"] = {"patience": 3, "batch_size": 256}
    cfg.write_text(yaml.safe_dump(data))
    scan_dir = tmp_path / "scan"
    args = ["slurm", "submit", str(cfg), "--nodes", "2", "--cpus-per-node", "2"]
    args += ["--time", "00:15:00", "--run-dir", str(tmp_path / "run"), "--scan-dir", str(scan_dir)]
    # a relative path after `--` means what it meant where the job was submitted (README)
    monkeypatch.chdir(tmp_path)
    args += ["--", "--set", f"dataset={os.path.relpath(zll / 'local', tmp_path)}"]
    main(args)
    printed = capsys.readouterr().out
    job_id = printed.split("submitted job ", 1)[1].split()[0]
    log_path = tmp_path / "run" / "logs" / f"hepscan-scan-slurm_demo-{job_id}.out"
    assert f"log:      {log_path}" in printed
    assert f"review:   mlflow ui --backend-store-uri sqlite:///{scan_dir}/mlflow.db" in printed
    st = _wait(job_id, log_path, timeout=900)
    log = log_path.read_text()
    assert (st.state, st.exit_code) == ("COMPLETED", "0:0"), log[-6000:]
    assert "Ray cluster: 2 nodes, 4 CPUs" in log
    parent, children = _runs(scan_dir)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags.get("hepscan.slurm_job_id") == job_id
    assert len(children) == 4
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.tags.get("hepscan.host") for c in children} == {"hsnode1", "hsnode2"}
    assert {c.data.params.get("family") for c in children} == {"resmlp:FAMILY"}


def test_scan_requeue_resumes_without_duplicates(cluster: str, zll: Path, tmp_path: Path) -> None:
    # long enough trials (2 rounds of 2, ~1 min each) that the signal lands mid-scan, in the
    # first round, with trials not yet started
    cfg = _scan_config(zll, tmp_path, num_trials=4, max_epochs=100)
    scan_dir = tmp_path / "scan"
    spec = JobSpec(
        config=cfg, nodes=2, cpus_per_node=2, time="00:20:00", run_dir=tmp_path / "run",
        scan_dir=scan_dir,
    )  # fmt: skip
    result = submit(spec)
    assert result.job_id
    # interrupt once the first trials have started (their MLflow runs exist), i.e. mid-scan
    deadline = time.monotonic() + 600
    while True:
        children: list[Any] = []
        if (scan_dir / "tracking.json").exists():
            try:
                children = _runs(scan_dir)[1]
            except AssertionError:  # the parent run is still being created
                children = []
        if children:
            assert sum(c.info.status == "FINISHED" for c in children) < 4
            break
        if time.monotonic() > deadline or status(result.job_id).state in TERMINAL:
            subprocess.run(["scancel", result.job_id], check=False)
            pytest.fail(_log_of(result).read_text()[-6000:])
        time.sleep(2)
    subprocess.run(["scancel", "--signal=USR1", "--batch", result.job_id], check=True)
    st = _wait(result.job_id, _log_of(result), timeout=1200, restarts=1)
    log = _log_of(result).read_text()
    assert (st.state, st.exit_code, st.restarts) == ("COMPLETED", "0:0", 1), log[-6000:]
    assert "requeueing job" in log and "resuming it" in log
    parent, children = _runs(scan_dir)
    assert parent.info.status == "FINISHED"
    trial_ids = [c.data.tags.get("trial_id") for c in children]
    assert len(children) == 4 and len(set(trial_ids)) == 4, trial_ids
    assert "RUNNING" not in {c.info.status for c in children}
    assert sum(c.info.status == "FINISHED" for c in children) == 4
