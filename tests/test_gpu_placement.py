"""GPU requests and placement, on CPU: validation messages, the env each rank sees, the device
it picks, and Ray's GPU ids reaching the ranks (a local Ray that *declares* 4 GPUs assigns ids
and CUDA_VISIBLE_DEVICES exactly as on a GPU node; nothing here touches CUDA)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from jobs.placement import DEVICE_ENV, cuda_index, resolve_device
from models.errors import ConfigError
from scan.cli import main
from scan.config import load_scan_config
from scan.resources import check_gpu_request, node_gpu_plan, rank_gpu_env
from slurm.gpus import check_scan_gpus

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ device of a rank


def test_own_gpu_from_the_placement_env_wins() -> None:
    env = {DEVICE_ENV: "2", "LOCAL_RANK": "0", "CUDA_VISIBLE_DEVICES": "4,5,6,7"}
    assert cuda_index(env, 4) == 2
    assert cuda_index({"LOCAL_RANK": "3"}, 1) == 0  # one visible GPU: that one
    assert cuda_index({"HOROVOD_LOCAL_RANK": "1"}, 2) == 1  # standalone horovodrun
    with pytest.raises(ConfigError, match="HEPSCAN_CUDA_DEVICE=4 but this process sees 4"):
        cuda_index({DEVICE_ENV: "4"}, 4)
    with pytest.raises(ConfigError, match="LOCAL_RANK=2 but this process sees only 2"):
        cuda_index({"LOCAL_RANK": "2"}, 2)  # more ranks than GPUs: no silent sharing


def test_resolve_device_on_a_cpu_machine() -> None:
    assert resolve_device("auto", {}, False, 0) == torch.device("cpu")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        resolve_device("cuda", {}, False, 0)
    assert resolve_device("cuda", {DEVICE_ENV: "1"}, True, 2) == torch.device("cuda", 1)
    assert resolve_device("cuda:3", {DEVICE_ENV: "1"}, True, 4) == torch.device("cuda", 3)


# ------------------------------------------------------------------ what each rank sees


def test_ranks_of_a_trial_on_a_node_see_all_its_gpus_and_pick_their_own() -> None:
    # 4 DDP ranks: ranks 0, 2 on node a (GPUs 3 and 1), ranks 1, 3 on node b (GPUs 0 and 2)
    plan = node_gpu_plan([("a", ["3"]), ("b", [0]), ("a", ["1"]), ("b", ["2"])])
    assert plan == [
        {"CUDA_VISIBLE_DEVICES": "3,1", DEVICE_ENV: "0"},
        {"CUDA_VISIBLE_DEVICES": "0,2", DEVICE_ENV: "0"},
        {"CUDA_VISIBLE_DEVICES": "3,1", DEVICE_ENV: "1"},
        {"CUDA_VISIBLE_DEVICES": "0,2", DEVICE_ENV: "1"},
    ]
    # the GPU each rank then trains on is its own Ray id
    for (node, own), env in zip(
        [("a", "3"), ("b", "0"), ("a", "1"), ("b", "2")], plan, strict=True
    ):
        visible = env["CUDA_VISIBLE_DEVICES"].split(",")
        assert visible[cuda_index(env, len(visible))] == own, node
    assert node_gpu_plan([("a", []), ("a", [])]) == [{}, {}]  # CPU ranks: nothing set
    # Horovod: the executor already shows the node's GPUs; a rank finds its own among them
    assert rank_gpu_env(["6"], ["4", "6"]) == {"CUDA_VISIBLE_DEVICES": "4,6", DEVICE_ENV: "1"}
    with pytest.raises(ConfigError, match="trains on one GPU"):
        rank_gpu_env(["0", "1"], ["0", "1"])
    with pytest.raises(ConfigError, match="not among the visible"):
        rank_gpu_env(["2"], ["0", "1"])


# ------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("workers", "gpus", "needle"),
    [
        (2, 0.5, "need a whole GPU each. Use gpus_per_worker: 1, or workers: 1"),
        (1, 2.0, "a rank trains on one GPU; for more GPUs per trial raise resources.workers"),
        (4, 2.0, "a rank trains on one GPU"),
    ],
)
def test_gpu_requests_a_trial_cannot_use_are_refused(
    workers: int, gpus: float, needle: str
) -> None:
    with pytest.raises(ConfigError, match=needle):
        check_gpu_request(workers, gpus)


def test_fractional_gpus_for_single_rank_trials_and_whole_for_many() -> None:
    check_gpu_request(1, 0.25)
    check_gpu_request(1, 1)
    check_gpu_request(8, 1)
    check_gpu_request(8, 0)


def test_scan_config_with_fractional_multi_rank_gpus_fails_at_load(tmp_path: Path) -> None:
    cfg = tmp_path / "s.yaml"
    cfg.write_text(
        "dataset: d\nfamily: unfold_bins\nbackend: ddp\n"
        "resources: {workers: 2, gpus_per_worker: 0.5}\n"
    )
    with pytest.raises(ConfigError, match=rf"{cfg}: resources: .*whole GPU each"):
        load_scan_config(cfg)


def test_shipped_gpu_configs_request_whole_gpus() -> None:
    from scan.trainable import trial_resources

    for name, workers, backend in (("unfold_zll_gpu", 4, "horovod"), ("flow_jets_gpu", 2, "ddp")):
        cfg = load_scan_config(REPO / "configs" / f"{name}.yaml")
        assert (cfg.resources.workers, cfg.resources.gpus_per_worker) == (workers, 1.0)
        assert cfg.backend == backend
        assert cfg.concurrency * workers == 64  # the 16 nodes x 4 GPUs of docs/gpu.md
        bundles = trial_resources(workers, cfg.resources.cpus_per_worker, 1.0).bundles
        ranks = [b for b in bundles if b.get("GPU")]
        assert len(ranks) == workers and all(b["GPU"] == 1.0 for b in ranks)


# ------------------------------------------------------------------ slurm submit


def test_slurm_gpus_cross_checks() -> None:
    with pytest.raises(ConfigError, match=r"requests no GPUs .* Set 'resources: \{workers"):
        check_scan_gpus("s.yaml", 2, 0, 4)
    with pytest.raises(ConfigError, match="--gpus-per-node is 0: no trial could start"):
        check_scan_gpus("s.yaml", 2, 1, 0)
    with pytest.raises(ConfigError, match="lower resources.workers to at most 4"):
        check_scan_gpus("s.yaml", 8, 1, 4)
    check_scan_gpus("s.yaml", 4, 1, 4)
    check_scan_gpus("s.yaml", 1, 0.25, 1)
    check_scan_gpus("s.yaml", 2, 0, 0)


def test_slurm_submit_refuses_gpu_nodes_for_a_cpu_scan_before_sbatch(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["slurm", "submit", "--cpus-per-node", "8", "--time", "01:00:00"]
    base += ["--run-dir", str(tmp_path / "run"), "--dry-run"]
    cpu = REPO / "configs" / "unfold_zll.yaml"
    with pytest.raises(SystemExit) as exc:
        main([*base[:2], str(cpu), *base[2:], "--gpus-per-node", "4"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "requests no GPUs" in err and "configs/unfold_zll_gpu.yaml" in err
    assert not (tmp_path / "run").exists()
    # the same scan with the driver's override is fine; the GPU config too
    main([*base[:2], str(cpu), *base[2:], "--gpus-per-node", "4", "--", "--set",
          "resources={workers: 2, gpus_per_worker: 1}"])  # fmt: skip
    gpu = REPO / "configs" / "unfold_zll_gpu.yaml"
    main([*base[:2], str(gpu), *base[2:], "--gpus-per-node", "4"])
    with pytest.raises(SystemExit):
        main([*base[:2], str(gpu), *base[2:], "--gpus-per-node", "2"])
    assert "lower resources.workers to at most 2" in capsys.readouterr().err


# ------------------------------------------------------------------ Ray's ids reach the ranks


@pytest.fixture(scope="module")
def ray_4gpus() -> Iterator[None]:
    import ray

    ray.init(
        num_cpus=2,
        num_gpus=4,
        include_dashboard=False,
        runtime_env={"env_vars": {"PYTHONPATH": os.environ.get("PYTHONPATH", str(REPO))}},
    )
    yield
    ray.shutdown()


KEYS = ["CUDA_VISIBLE_DEVICES", DEVICE_ENV, "RANK"]


def _group_envs(backend: str, workers: int) -> list[dict[str, Any]]:
    """Build a trial's rank group inside a placement group, as a trial does; each rank's env."""
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    bundles = [{"CPU": 0.1}] + [{"CPU": 0.25, "GPU": 1.0}] * workers
    pg = placement_group(bundles)
    ray.get(pg.ready())

    @ray.remote(num_cpus=0.1)
    def build() -> list[dict[str, Any]]:
        from scan.ranks import _DdpGroup, _HorovodGroup

        group: Any = (_DdpGroup if backend == "ddp" else _HorovodGroup)(workers, 0.25, 1.0, 60.0)
        try:
            if backend == "ddp":
                envs = ray.get([a.environment.remote(KEYS) for a in group.actors])
                ids = ray.get([a.gpu_ids.remote() for a in group.actors])
            else:
                envs = group.executor.execute(lambda w: w.environment(KEYS))
                ids = group.executor.execute(lambda w: w.gpu_ids())
            return [{**e, "own": i[1]} for e, i in zip(envs, ids, strict=True)]
        finally:
            group.shutdown()

    strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=0)
    try:
        return ray.get(build.options(scheduling_strategy=strategy).remote(), timeout=120)
    finally:
        remove_placement_group(pg)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["ddp", "horovod"])
def test_each_rank_gets_exactly_its_reserved_gpu(ray_4gpus: None, backend: str) -> None:
    envs = _group_envs(backend, 2)
    owns = [e["own"] for e in envs]
    assert all(len(o) == 1 for o in owns) and owns[0] != owns[1]  # one whole GPU each
    for e in envs:
        visible = e["CUDA_VISIBLE_DEVICES"].split(",")
        assert sorted(visible) == sorted(o[0] for o in owns)  # both GPUs of the trial
        assert visible[int(e[DEVICE_ENV])] == e["own"][0]  # and it trains on its own
