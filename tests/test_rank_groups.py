"""The Ray-path rank groups average gradients right: 2 ranks in a Tune trial = one process.

Every registered family runs as a 2-rank trial of :class:`scan.trainable.ScanTrainable` in a real
Ray Tune run (Horovod ranks of ``_HorovodGroup``, DDP actors of ``_DdpGroup``), and its final
checkpoint (weights and every optimizer's state) is compared with one process trained by
``jobs.train.train`` on the same global batches (``data_parts: 2``, see
tests/test_train_distributed.py), within 1e-5.

The real GAN draws per-rank noise (seeded by rank), so it is checked Horovod against DDP on 2
ranks (same per-rank draws: identical weights), and its zero-noise double
(tests/rank_families.py: same network and two optimizers) against one process. unfold_migration
has built-in batch norm (per-rank statistics), so its double without batch norm is compared.

Each backend's families run as consecutive trials on ONE rank group (the trainable is reused
while its group settings stay the same), so the whole check costs two group start-ups.

A rank that dies mid-trial (SIGKILL; or SIGSTOP, noticed by the collective timeout) fails the
trial at once, Tune retries it from its last checkpoint and the scan goes on: one DDP scan
(first trial SIGKILL, second SIGSTOP) and one Horovod scan (SIGKILL).

Run: ``flock /tmp/heavy.lock python -m pytest -q tests/test_rank_groups.py`` (two Tune runs
of 10 trials, one rank group each, two rank-kill scans; ~2-3 min on 2 CPUs).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from jobs.train_synthetic import write_unfold_dataset

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]

ATOL = 1e-5
EPOCHS = 2
GAN_FIXED = "tests.rank_families:GAN_FIXED_NOISE"
MIGRATION_NO_BN = "tests.rank_families:UNFOLD_MIGRATION_NO_BN"
VAE_FIXED = "tests.rank_families:VAE_FIXED_NOISE"
SMALL_GAN = {"hidden": 16, "depth": 1, "critic_hidden": 16, "critic_depth": 1, "n_critic": 2}
SMALL_VAE = {"hidden": 16, "depth": 1, "latent": 2}
# Model settings: small, and no dropout/batch norm (those legitimately differ per rank).
FAMILIES: dict[str, dict[str, Any]] = {
    "unfold_bins": {"alpha": 0.5, "batchnorm": False, "dropout": 0.0},
    MIGRATION_NO_BN: {"dropout": 0.0, "width_scale": 0.3},
    "resolution": {"hidden": 16, "depth": 2},
    "flow": {"transforms": 2, "hidden_features": 16, "hidden_layers": 1},
    "gan": SMALL_GAN,
    GAN_FIXED: SMALL_GAN,
    "param_classifier": {"hidden": 16, "depth": 2, "dropout": 0.0},
    "vae": SMALL_VAE,
    VAE_FIXED: SMALL_VAE,
    "regression": {"hidden": 16, "depth": 2, "batchnorm": False, "dropout": 0.0},
}
# Families with legitimately per-rank behaviour: the real one is checked Horovod against DDP
# (same per-rank draws), its double (tests/rank_families.py) against one process.
PER_RANK = {"gan": GAN_FIXED, "vae": VAE_FIXED}
# Registered families compared only through a double (per-rank batch-norm statistics).
EXEMPT = {"unfold_migration": MIGRATION_NO_BN}
BACKENDS = ("horovod", "ddp")
RES_EDGES = [-0.1, -0.03, 0.0, 0.03, 0.1]


def _add_resolution(path: Path) -> Path:
    """Give the synthetic dataset a resolution target (``res_m``) for the resolution family."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.manifest import MANIFEST_NAME, write_manifest

    manifest = json.loads((path / MANIFEST_NAME).read_text())
    for split in manifest["splits"].values():
        for shard in split["files"]:
            f = path / shard["path"]
            t = pq.read_table(f)
            d = t["reco_m"].to_numpy() / t["truth_m"].to_numpy() - 1.0
            cls = np.clip(np.searchsorted(RES_EDGES, d, side="right") - 1, 0, len(RES_EDGES) - 2)
            pq.write_table(t.append_column("res_m", pa.array(cls.astype(np.int32))), f)
    manifest["columns"]["res_m"] = "int32"
    manifest["resolution"] = {
        "n_classes": len(RES_EDGES) - 1,
        "quantities": {"m": {"edges": RES_EDGES, "relative": True}},
    }
    write_manifest(path / MANIFEST_NAME, manifest)
    return path


def _add_classify(path: Path) -> Path:
    """Give the synthetic dataset a 0/1 label (``label``: truth mass above 91 GeV) and a mass
    parameter (``mass``: one of three hypotheses) for param_classifier and vae, and a
    ``regression`` section (target ``truth_m``, an existing column) for regression."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from jobs.manifest import MANIFEST_NAME, write_manifest

    manifest = json.loads((path / MANIFEST_NAME).read_text())
    rng = np.random.default_rng(11)
    for split in manifest["splits"].values():
        for shard in split["files"]:
            f = path / shard["path"]
            t = pq.read_table(f)
            label = (t["truth_m"].to_numpy() > 91.0).astype(np.int32)
            mass = rng.choice([80.0, 90.0, 100.0], size=len(label))
            t = t.append_column("label", pa.array(label))
            pq.write_table(t.append_column("mass", pa.array(mass)), f)
    manifest["columns"].update(label="int32", mass="float64")
    manifest["classify"] = {"label": "label", "mass": "mass"}
    manifest["regression"] = {"target": ["truth_m"]}
    write_manifest(path / MANIFEST_NAME, manifest)
    return path


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = write_unfold_dataset(tmp_path_factory.mktemp("data") / "synth", rows=900, n_bins=6, seed=3)
    return _add_classify(_add_resolution(d))


def _static(dataset: Path, family: str, backend: str, workers: int) -> dict[str, Any]:
    return {
        "dataset": str(dataset),
        "family": family,
        "fixed": {
            **FAMILIES[family],
            "batch_size": 64,
            "lr": 3e-3,
            "patience": 0,
            "data_parts": 2,
        },
        "workers": workers,
        "cpus_per_worker": 1,
        "gpus_per_worker": 0,
        "backend": backend,
        "max_epochs": EPOCHS,
        "seed": 5,
        "monitor": "val_loss",
        "mode": "min",
        "objectives": [["val_loss", "min"]],
    }


@pytest.fixture(scope="module")
def ray_2cpu() -> Iterator[None]:
    """One local 2-CPU Ray for the module (scans started by launch() join it)."""
    import ray

    from models.registry import get_family
    from scan.driver import _init_ray

    get_family(GAN_FIXED)  # puts the repository root on PYTHONPATH before the workers start
    os.environ["HEPSCAN_RAY_CPUS"] = "2"
    started = _init_ray(None, ROOT, verbose=0)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def trials(
    ray_2cpu: None,
    dataset: Path,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> dict[tuple[str, str], Path]:
    """Two Tune runs (Horovod, DDP) of 2-rank trials, one per family; their final checkpoints'
    last.pt.
    Only the families of the selected tests run (``-k resolution`` trains 2 trials)."""
    from ray import tune

    from scan.state import STATIC_KEY
    from scan.trainable import ScanTrainable, trial_dirname, trial_resources

    wanted = {
        getattr(item, "callspec", None) and item.callspec.params.get("family")
        for item in request.session.items
    }
    for item in request.session.items:
        if item.name.startswith("test_per_rank_family_horovod_matches_ddp"):
            wanted.add(item.callspec.params["family"])
    out, pids = {}, {}
    for backend in BACKENDS:
        # One Tune run per backend: its families run one after the other on ONE rank group
        # (reuse_actors: the trainable keeps its ranks while the group settings stay the same).
        statics = [_static(dataset, f, backend, 2) for f in FAMILIES if f in wanted]
        tuner = tune.Tuner(
            tune.with_resources(ScanTrainable, trial_resources(2, 1, 0)),
            param_space={STATIC_KEY: tune.grid_search(statics)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=1,
                reuse_actors=True,
                trial_name_creator=trial_dirname,
                trial_dirname_creator=trial_dirname,
            ),
            run_config=tune.RunConfig(
                storage_path=str(tmp_path_factory.mktemp("tune")),
                stop={"training_iteration": EPOCHS},
                checkpoint_config=tune.CheckpointConfig(checkpoint_at_end=True),
                failure_config=tune.FailureConfig(fail_fast=True),
                verbose=0,
            ),
        )
        for r in tuner.fit():
            assert r.error is None, r.error
            static = r.config[STATIC_KEY]
            assert r.metrics["training_iteration"] == EPOCHS
            out[static["family"], backend] = Path(r.checkpoint.path) / "last.pt"
            pids.setdefault(backend, set()).add(r.metrics["pid"])
    # one trainable (and so one rank group) per backend trained all its families
    assert all(len(p) == 1 for p in pids.values()), pids
    return out


def _single(dataset: Path, family: str, tmp_path: Path, epochs: int = EPOCHS) -> Path:
    """One process on the same global batches (the trial's own TrainConfig with 1 worker)."""
    from jobs.train import train, train_config_from_dict
    from scan.trainable import build_train_config

    static = _static(dataset, family, "single", 1)
    static["max_epochs"] = epochs
    cfg = build_train_config(static, {})
    cfg["checkpoint_dir"] = str(tmp_path)
    train(train_config_from_dict(cfg, "test"))
    return tmp_path / "last.pt"


def _flat(ckpt: Path) -> dict[str, torch.Tensor]:
    """Model weights and every optimizer's per-parameter state, by name."""
    c = torch.load(ckpt, weights_only=True)
    out = {f"model.{k}": v for k, v in c["model"].items() if v.is_floating_point()}
    for i, opt in enumerate(c["optimizers"]):
        for p, state in opt["state"].items():
            for k, v in state.items():
                if torch.is_tensor(v) and v.is_floating_point() and v.dim() > 0:
                    out[f"opt{i}.{p}.{k}"] = v
    return out


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """The largest difference, relative for entries above 1 in size (the standardisation
    buffers hold values near 91, where one float32 step is 8e-6)."""
    assert a.keys() == b.keys()
    worst = 0.0
    for k in a:
        if a[k].numel():
            x, y = a[k].double(), b[k].double()
            worst = max(worst, float(((x - y).abs() / y.abs().clamp(min=1.0)).max()))
    return worst


@pytest.fixture(scope="module")
def singles(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One process per (family, epochs), trained once for both backends' tests."""
    cache: dict[tuple[str, int], dict[str, torch.Tensor]] = {}
    root = tmp_path_factory.mktemp("single")

    def get(family: str, epochs: int) -> dict[str, torch.Tensor]:
        if (family, epochs) not in cache:
            d = root / f"{family.replace(':', '_')}-{epochs}"
            cache[family, epochs] = _flat(_single(dataset, family, d, epochs))
        return cache[family, epochs]

    return get


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in PER_RANK])
def test_two_ranks_in_a_trial_match_one_process(
    trials: dict[tuple[str, str], Path], singles: Any, family: str, backend: str
) -> None:
    multi = _flat(trials[family, backend])
    single = singles(family, EPOCHS)
    n_opt = len({k.split(".")[0] for k in single if k.startswith("opt")})
    assert n_opt == (2 if family == GAN_FIXED else 1)  # the GAN's two optimizers are compared
    diff, control = _max_diff(multi, single), _max_diff(singles(family, EPOCHS - 1), single)
    print(f"{family} {backend}: 2 ranks vs 1 process {diff:.1e}; one epoch less {control:.1e}")
    assert diff < ATOL
    assert control > 1e-3  # the check can fail: one epoch less is far beyond the tolerance


@pytest.mark.parametrize("family", list(PER_RANK))
def test_per_rank_family_horovod_matches_ddp(
    trials: dict[tuple[str, str], Path], family: str
) -> None:
    """The real GAN and VAE (per-rank noise): both backends draw the same per-rank numbers, so
    their optimizers' averaged gradients give the same weights (the GAN's two optimizers)."""
    hvd, ddp = _flat(trials[family, "horovod"]), _flat(trials[family, "ddp"])
    n_opt = len({k.split(".")[0] for k in hvd if k.startswith("opt")})
    assert n_opt == (2 if family == "gan" else 1)
    diff = _max_diff(hvd, ddp)
    print(f"{family}: horovod vs ddp {diff:.1e}")
    assert diff < ATOL


def test_every_registered_family_is_covered() -> None:
    """A new registered family must join FAMILIES (or EXEMPT, naming its double): none escapes
    the rank-equivalence check."""
    from models.registry import REGISTRY

    covered = set(FAMILIES) | set(EXEMPT)
    assert sorted(set(REGISTRY) - covered) == []
    for name, double in {**EXEMPT, **PER_RANK}.items():
        assert name in REGISTRY and double in FAMILIES, name
    assert set(EXEMPT).isdisjoint(FAMILIES)


# ---------------------------------------------------------------------------- a rank dies

# What a rank's process is called in `ps` (Ray's process title) for each backend.
RANK_TITLE = {"ddp": "ray::RankWorker", "horovod": "ray::BaseHorovodWorker"}


def _rank_pids(backend: str) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    pids = []
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if args.startswith(RANK_TITLE[backend]):
            pids.append(int(pid))
    return sorted(pids)


class RankKiller(threading.Thread):
    """Sends ``sigs[i]`` to one rank of the i-th trial once that trial has checkpointed
    ``after`` epochs (its checkpoint directory exists): the next epoch is under way, its ranks in
    collectives. SIGKILL: the rank is gone (its peers see a closed connection); SIGSTOP: the
    rank is silent (as behind a network partition) and only a timeout can tell."""

    def __init__(self, scan_dir: Path, backend: str, after: int, sigs: list[int]) -> None:
        super().__init__(daemon=True)
        self.scan_dir, self.backend, self.after, self.sigs = scan_dir, backend, after, sigs
        self.killed: list[tuple[str, int, int, float]] = []  # (trial dir, signal, pid, time)
        self.stop = threading.Event()

    def run(self) -> None:
        name = f"checkpoint_{self.after - 1:06d}"
        while not self.stop.is_set() and len(self.killed) < len(self.sigs):
            hit = {k[0] for k in self.killed}
            done = [
                d.parent.name
                for d in sorted(self.scan_dir.glob(f"tune/trial_*/{name}"))
                if d.parent.name not in hit
            ]
            pids = _rank_pids(self.backend)
            if done and len(pids) == 2:
                sig = self.sigs[len(self.killed)]
                os.kill(pids[-1], sig)
                self.killed.append((done[0], sig, pids[-1], time.monotonic()))
            time.sleep(0.02)


@pytest.mark.parametrize(
    ("backend", "sigs"),
    [("ddp", [signal.SIGKILL, signal.SIGSTOP]), ("horovod", [signal.SIGKILL])],
    ids=["ddp-kill-then-stop", "horovod-kill"],
)
def test_a_lost_rank_fails_the_trial_which_resumes_from_its_checkpoint(
    ray_2cpu: None, dataset: Path, tmp_path: Path, backend: str, sigs: list[int]
) -> None:
    """One rank killed (or stopped: ddp's second trial) mid-trial: the trial fails within the
    collective timeout at most (no hang), Tune retries it from its last checkpoint
    (max_failures), the scan goes on, every trial finishes, and each MLflow run holds the steps
    1..N exactly once."""
    from scan import launch
    from scan.report import build_report
    from tracking.store import _client

    epochs, after = 4, 2
    timeout = 6  # seconds a collective waits; the stopped rank is noticed by this timeout
    cfg = {
        "name": "rank_kill",
        "dataset": str(dataset),
        "family": "unfold_bins",
        "search_space": {"alpha": ["choice", [0.5, 1.0]]},
        "fixed": {"batch_size": 32, "lr": 0.003, "patience": epochs + 1, "batchnorm": False},
        "searcher": "grid",
        "scheduler": "none",
        "num_trials": 2,
        "concurrency": 1,
        "max_epochs": epochs,
        "seed": 1,
        "backend": backend,
        "max_failures": 1,
        "resources": {"workers": 2, "cpus_per_worker": 1, "collective_timeout_s": timeout},
    }
    scan_dir = tmp_path / "scan"
    killer = RankKiller(scan_dir, backend, after=after, sigs=sigs)
    killer.start()
    t0 = time.monotonic()
    try:
        result = launch(cfg, scan_dir=str(scan_dir), verbose=0)
    finally:
        killer.stop.set()
        for _, sig, pid, _ in killer.killed:
            if sig == signal.SIGSTOP:  # the group should have killed it
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
    wall = time.monotonic() - t0
    assert len(killer.killed) == len(sigs), f"ranks killed: {killer.killed} (a trial ended early)"
    killed_ids = [k[0].removeprefix("trial_") for k in killer.killed]
    # the scan went on: both trials finished, each killed one after exactly one retry
    assert sorted(result.trials["status"]) == ["FINISHED", "FINISHED"]
    retries = dict(zip(result.trials["trial_id"], result.trials["retries"], strict=True))
    assert all(retries[t] == 1 for t in killed_ids) and sum(retries.values()) == len(sigs), retries
    assert (result.trials["epochs"] == epochs).all()
    state = json.loads((scan_dir / "tracking.json").read_text())
    client = _client(state["tracking_uri"])
    for tid, run_id in zip(result.trials["trial_id"], result.trials["run_id"], strict=True):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        steps = [m.step for m in client.get_metric_history(run_id, "val_loss")]
        assert steps == list(range(1, epochs + 1)), (tid, steps)
    _, text, _ = build_report(scan_dir)
    retried = [ln for ln in text.splitlines() if ln.startswith("retried trials (restarted")]
    assert len(retried) == 1, text
    assert sorted(retried[0].split(": ", 1)[1].split(", ")) == sorted(
        f"{t} (1x)" for t in killed_ids
    )
    report = []
    for trial_dir, sig, pid, t_kill in killer.killed:
        # ... resumed from its checkpoint: Tune's results count every epoch once
        progress = (scan_dir / "tune" / trial_dir / "result.json").read_text().splitlines()
        assert len(progress) == epochs, progress
        # bounded: the retry's first epoch ended within the timeout plus a group start-up
        stamps = [json.loads(x)["timestamp"] for x in progress]
        t_kill_wall = time.time() - (time.monotonic() - t_kill)
        recovered = stamps[after] - t_kill_wall
        assert recovered < timeout + 60, recovered
        report.append(
            f"{signal.Signals(sig).name} rank pid {pid} after epoch {after} of {trial_dir}: "
            f"epoch {after + 1} done {recovered:.0f} s later"
        )
    print(f"{backend}: " + "; ".join(report) + f"; scan {wall:.1f} s")
