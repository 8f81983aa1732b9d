"""A node dies mid-scan, on the local 2-node SLURM test cluster (slurm/testcluster; root).

Run: ``flock /tmp/heavy.lock python -m pytest -q tests/test_faults_cluster.py`` (the cluster
is one machine-wide resource; the session fixture of tests/test_slurm_cluster.py brings it up
and down).

A scan of 2-rank Horovod trials runs on 2 nodes (one trial fills a node). Once a trial on the
Ray worker node (hsnode2) has checkpointed an epoch, every Ray process in that node's network
namespace is SIGKILLed (raylet, workers, ``ray start``): for Ray the node is gone, SLURM's
slurmd stays. The scan must go on on hsnode1: the lost trial is retried from its last checkpoint
(``max_failures``), every MLflow run holds the steps 1..N exactly once, the scan ends with all N
trials finished, no run is left RUNNING, and ``hepscan report`` names the retried trial.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_slurm_cluster import _runs, _scan_config, _wait, cluster, zll  # noqa: F401

from slurm.submit import JobSpec, submit

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

WORKER_NS = "hepscan-n2"  # slurm/testcluster/up.sh: hsnode2's network namespace
EPOCHS = 6


def _ray_pids_in(ns: str) -> list[int]:
    """Ray's processes (raylet, agents, workers, `ray start`) in a node's network namespace."""
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
    pids = []
    for pid in out.split():
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "slurm" not in cmd.split(" ", 1)[0] and ("ray" in cmd or "raylet" in cmd):
            pids.append(int(pid))
    return pids


class NodeKiller(threading.Thread):
    """Kills every Ray process of hsnode2 once a trial running there has checkpointed
    ``after`` epochs (its result.json says so) and is still running."""

    def __init__(self, scan_dir: Path, after: int) -> None:
        super().__init__(daemon=True)
        self.scan_dir, self.after = scan_dir, after
        self.killed: dict[str, Any] | None = None
        self.at_epoch = 0
        self.stop = threading.Event()

    def _victim(self) -> str | None:
        for d in sorted(self.scan_dir.glob("tune/trial_*")):
            lines = (
                (d / "result.json").read_text().splitlines() if (d / "result.json").exists() else []
            )
            if not lines:
                continue
            last = json.loads(lines[-1])
            ckpt = d / f"checkpoint_{self.after - 1:06d}"
            if (
                last.get("hostname") == "hsnode2"
                and int(last.get("training_iteration", 0)) >= self.after
                and int(last.get("training_iteration", 0)) < EPOCHS
                and ckpt.exists()
            ):
                self.at_epoch = int(last["training_iteration"])
                return d.name
        return None

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                victim = self._victim()
            except (OSError, ValueError):  # a file being written
                victim = None
            if victim:
                pids = _ray_pids_in(WORKER_NS)
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                self.killed = {
                    "trial": victim, "pids": len(pids), "t": time.time(), "epoch": self.at_epoch
                }  # fmt: skip
                return
            time.sleep(0.1)


def test_node_lost_mid_scan_trials_resume_on_the_survivor(
    cluster: str,  # noqa: F811
    zll: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    n_trials = 2  # one per node at first; the lost one is retried on the survivor
    cfg_path = _scan_config(
        zll, tmp_path, num_trials=n_trials, max_epochs=EPOCHS, backend="horovod"
    )
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["max_failures"] = 2
    cfg["resources"]["collective_timeout_s"] = 60
    cfg_path.write_text(yaml.safe_dump(cfg))
    scan_dir = tmp_path / "scan"
    spec = JobSpec(
        config=cfg_path, nodes=2, cpus_per_node=2, time="00:15:00", run_dir=tmp_path / "run",
        scan_dir=scan_dir,
    )  # fmt: skip
    result = submit(spec)
    assert result.job_id
    killer = NodeKiller(scan_dir, after=2)
    killer.start()
    t0 = time.time()
    try:
        st = _wait(result.job_id, Path(result.log_path), timeout=600)
    finally:
        killer.stop.set()
    log = Path(result.log_path).read_text()
    assert killer.killed is not None, "no trial ran on hsnode2 past epoch 2:\n" + log[-4000:]
    lost = killer.killed["trial"].removeprefix("trial_")
    facts = _facts(scan_dir, lost, killer.killed["t"], killer.killed["epoch"])
    print(f"node loss: job {st.state} {st.exit_code}, scan {time.time() - t0:.0f} s, {facts}")
    assert killer.killed["pids"] > 0
    assert (st.state, st.exit_code) == ("COMPLETED", "0:0"), log[-6000:]

    # exactly N trials, all finished (none RUNNING); the lost one retried from its checkpoint
    # (every epoch logged once) and finished on the survivor
    parent, children = _runs(scan_dir)
    assert parent.info.status == "FINISHED"
    assert len(children) == n_trials
    assert {c.info.status for c in children} == {"FINISHED"}
    for tid, steps in facts["steps"].items():
        assert steps == list(range(1, EPOCHS + 1)), (tid, steps)
    assert facts["hosts"][lost] == "hsnode1"
    report = subprocess.run(
        [sys.executable, "-m", "scan.cli", "report", str(scan_dir)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    assert f"retried trials (restarted from their last checkpoint): {lost} (1x)" in report.stdout


def _facts(scan_dir: Path, lost: str, t_kill: float, epoch: int) -> dict[str, Any]:
    """What happened: MLflow steps, statuses and hosts per trial; Tune's iterations of the
    lost trial and how long after the kill it reported again."""
    from tracking.store import _client

    _, children = _runs(scan_dir)
    client = _client(f"sqlite:///{scan_dir / 'mlflow.db'}")
    steps, hosts, status = {}, {}, {}
    for c in children:
        tid = c.data.tags.get("trial_id")
        steps[tid] = [m.step for m in client.get_metric_history(c.info.run_id, "val_loss")]
        hosts[tid], status[tid] = c.data.tags.get("hepscan.host"), c.info.status
    res = scan_dir / "tune" / f"trial_{lost}" / "result.json"
    rows = [json.loads(x) for x in res.read_text().splitlines()] if res.exists() else []
    after = [r for r in rows if r["training_iteration"] > epoch]
    return {
        "lost": lost,
        "trials": len(children),
        "status": status,
        "steps": steps,
        "hosts": hosts,
        "tune_iterations_of_lost": [r["training_iteration"] for r in rows],
        "killed_in_epoch": epoch + 1,
        # Tune's timestamps are whole seconds
        "next_epoch_done_after_s": round(after[0]["timestamp"] - t_kill) if after else None,
    }
