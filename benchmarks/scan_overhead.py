"""Scan overhead on the real path: hepscan's ``scan.launch`` vs plain Ray Tune, same CPU work.

.. code-block:: bash

    python benchmarks/scan_overhead.py                  # Horovod ranks, ~4 min on 2 cores
    python benchmarks/scan_overhead.py --backend ddp    # torch DDP ranks
    python benchmarks/scan_overhead.py --quick          # fewer trials/epochs, ~1.5 min
    python benchmarks/scan_overhead.py --smoke --no-peer  # the test's mode (tests/test_benchmarks.py)

**Workload.** A scan of ``--trials`` trials of the benchmark family
:mod:`benchmarks.cpu_family` (a user plug-in family, reached by its import string), each trial
2 ranks (``resources: {workers: 2, cpus_per_worker: 1}``, one placement group per trial) on a
2-CPU local Ray, searcher TPE (OptunaSearch), ASHA (``grace_period=1``,
``reduction_factor=2``, ``max_t=--epochs``), a checkpoint after every epoch, every trial an MLflow
child run (sqlite store). An epoch is ``steps`` SGD steps of a fixed-size MLP on every rank
(:mod:`benchmarks.cpu_work`), with the backend's gradient all-reduce at every step.

**Calibration (same run, before and after the scans).** Two bare processes (no Ray, one torch
thread each, running at the same time as the two ranks do) time the MLP step; ``steps`` is set so
an epoch is ``--epoch-s`` (default 1 s) of work per rank; then a bare 2-rank group with the
backend's all-reduce runs 3 epochs of ``steps`` steps, once before the scans and once after them.
The median of those six epochs is the *measured epoch time* ``E``: on this shared 2-core machine
one calibration alone swung by 42 % between runs, more than anything the product changed.

**Ideal and concurrency.** A trial holds 2 CPUs (2 ranks x 1 CPU) and the machine has 2, so
one trial runs at a time: the trial concurrency is 1 while both cores work (a rank is the unit
of CPU concurrency, and the calibration already ran its 2 ranks side by side). Ideal wall time
= (epochs actually run, summed over trials; ASHA decides how many) x ``E`` / 1.
``ratio = wall / ideal``. The bare Horovod group gets Horovod's documented cycle time and
response cache (``horovod.runner.run`` exports them as ``'(None,)'``, i.e. 0: a busy background
loop; before that was corrected here it measured E = 2.58 s against 1.66-1.86 s inside Ray ranks,
which flattered the Horovod ratio). Each side also prints ``wall / (its own rank
work)`` and ``wall / (epochs x compute-only epoch)``. Wall time runs from before ``ray.init`` to after ``ray.shutdown`` and
includes the MLflow parent-run set-up, and everything else ``scan.launch`` does.

**Peer.** Plain Ray Tune on the same workload: ``tune.Tuner`` + ``OptunaSearch`` (TPE, same
seed) + the same ASHA, a hand-written class trainable that starts the same 2 ranks (Horovod's
``RayExecutor`` or 2 DDP actors) in its placement group, runs the same ``work_epoch``,
checkpoints every epoch (``torch.save`` of rank 0's state) and logs to MLflow with Ray's
``MLflowLoggerCallback``; ``reuse_actors=True``; no hepscan import. Its ratio is printed as
``peer ratio``.

**Breakdown** (both sides, from the per-epoch work timestamps in ``result.json``): cluster start
(``ray.init``), set-up before the first trial (hepscan: config, MLflow parent run, Tuner), first
trial start (trial actor + rank group + session until the first step), mean start of later trials
(last step of one trial to first step of the next), mean per-epoch gap (report + checkpoint +
MLflow + validation between two epochs of a trial), shutdown (last step to return; hepscan's
includes publishing the winner to MLflow, printed on its own line: work plain Ray Tune does not do,
left in hepscan's wall).
Last line: ``ratio=<hepscan wall / ideal>`` (goal <= 1.10 and below the peer's).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FAMILY = "benchmarks.cpu_family:FAMILY"
WIDTH, DEPTH, ROWS = 256, 3, 2048
SEED = 0


# -- calibration -------------------------------------------------------------------------------


def _bare_rank(args: tuple[int, int, int]) -> list[float]:
    """One bare process: per-step time (steps=0) or the wall times of ``epochs`` epochs."""
    steps, epochs, _rank = args
    import torch

    from benchmarks.cpu_work import make_mlp, work_epoch

    torch.set_num_threads(1)
    net, x, y = make_mlp(WIDTH, DEPTH, ROWS)
    opt = torch.optim.SGD(net.parameters(), lr=0.01)

    def step(loss: torch.Tensor) -> None:
        opt.zero_grad()
        loss.backward()
        opt.step()

    work_epoch(net, x, y, 5, step)  # warm-up
    if steps == 0:
        _, t0, t1 = work_epoch(net, x, y, 30, step)
        return [(t1 - t0) / 30]
    out = []
    for _ in range(epochs):
        _, t0, t1 = work_epoch(net, x, y, steps, step)
        out.append(t1 - t0)
    return out


def _collective_epochs(
    backend: str, steps: int, epochs: int, rank: int = 0, world: int = 2, port: int = 0
) -> list[float]:
    """Epoch wall times of one rank of a bare 2-rank group (no Ray) with ``backend``'s
    gradient all-reduce at every step, as the ranks of a trial run it."""
    import torch

    from benchmarks.cpu_work import make_mlp, work_epoch

    torch.set_num_threads(1)
    net, x, y = make_mlp(WIDTH, DEPTH, ROWS)
    opt: Any = torch.optim.SGD(net.parameters(), lr=0.01)
    model: Any = net
    if backend == "horovod":
        import horovod.torch as hvd

        from jobs.backends import horovod_env

        # horovod.runner.run exports HOROVOD_CYCLE_TIME / HOROVOD_CACHE_CAPACITY as '(None,)'
        # (read as 0: a busy background loop, no response cache); the bare group gets what
        # hepscan's ranks get, so the reference epoch is not slowed by that bug.
        os.environ.update(horovod_env())
        hvd.init()
        hvd.broadcast_parameters(net.state_dict(), root_rank=0)
        opt = hvd.DistributedOptimizer(opt, named_parameters=net.named_parameters())
    else:
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel

        dist.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
        )
        model = DistributedDataParallel(net)

    def step(loss: torch.Tensor) -> None:
        opt.zero_grad()
        loss.backward()
        opt.step()

    work_epoch(model, x, y, 3, step)  # warm-up
    out = []
    for _ in range(epochs):
        _, t0, t1 = work_epoch(model, x, y, steps, step)
        out.append(t1 - t0)
    return out


def _ddp_rank(args: tuple[int, int, int, int]) -> list[float]:
    steps, epochs, rank, port = args
    return _collective_epochs("ddp", steps, epochs, rank, 2, port)


def calibrate(epoch_s: float, backend: str, ranks: int = 2) -> tuple[int, float, list[float]]:
    """(steps per epoch, E_compute, group epochs): steps so that the compute of an epoch is
    ``epoch_s`` per rank (``ranks`` bare processes side by side); E_compute the median epoch of
    that compute alone; then 3 epochs of a bare 2-rank group with the backend's all-reduce
    (:func:`group_epochs`)."""
    ctx = mp.get_context("spawn")
    with ctx.Pool(ranks) as pool:
        per_step = max(r[0] for r in pool.map(_bare_rank, [(0, 0, i) for i in range(ranks)]))
        steps = max(1, round(epoch_s / per_step))
        runs = pool.map(_bare_rank, [(steps, 3, i) for i in range(ranks)], chunksize=1)
        compute = statistics.median(max(r[i] for r in runs) for i in range(3))
    return steps, compute, group_epochs(backend, steps, ranks)


def group_epochs(backend: str, steps: int, ranks: int = 2, epochs: int = 3) -> list[float]:
    """Wall times of ``epochs`` epochs of a bare ``ranks``-rank group (no Ray) with the
    backend's all-reduce; an epoch of the group ends when its slowest rank ends. The benchmark
    runs it before and after the scans, and ``E`` is the median of both (one noisy calibration
    on a shared machine must not set the ratio alone)."""
    import socket

    if backend == "horovod":
        import horovod

        runs = horovod.run(
            _collective_epochs,
            args=("horovod", steps, epochs),
            np=ranks,
            use_gloo=True,
            hosts=f"localhost:{ranks}",
            verbose=0,
        )
    else:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        with mp.get_context("spawn").Pool(ranks) as pool:
            runs = pool.map(
                _ddp_rank, [(steps, epochs, r, port) for r in range(ranks)], chunksize=1
            )
    return [max(r[i] for r in runs) for i in range(epochs)]


# -- breakdown -----------------------------------------------------------------------------------


def read_results(storage: Path) -> list[dict[str, Any]]:
    """Every reported epoch (Tune's result.json lines) under ``storage``."""
    rows = []
    for f in storage.rglob("result.json"):
        for line in f.read_text().splitlines():
            if line.strip():
                rows.append(json.loads(line))
    return rows


def breakdown(rows: list[dict[str, Any]], t_start: float, t_end: float) -> dict[str, float]:
    """Work and the gaps around it; times are ``time.time()``."""
    trials: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        trials.setdefault(r["trial_id"], []).append(r)
    spans = []  # (first step, last step end, per-epoch gaps)
    for epochs in trials.values():
        epochs.sort(key=lambda r: r["training_iteration"])
        t0 = [float(r["train_t0"]) for r in epochs]
        t1 = [float(r["train_t1"]) for r in epochs]
        spans.append((t0[0], t1[-1], [a - b for a, b in zip(t0[1:], t1[:-1], strict=True)]))
    spans.sort()
    starts = [b[0] - a[1] for a, b in zip(spans[:-1], spans[1:], strict=True)]
    gaps = [g for s in spans for g in s[2]]
    return {
        "epochs": float(len(rows)),
        "trials": float(len(trials)),
        "work": sum(float(r["train_t1"]) - float(r["train_t0"]) for r in rows),
        "first_start": spans[0][0] - t_start,
        "trial_start": statistics.mean(starts) if starts else 0.0,
        "trial_start_total": sum(starts),
        "epoch_gap": statistics.mean(gaps) if gaps else 0.0,
        "epoch_gap_total": sum(gaps),
        "shutdown": t_end - max(s[1] for s in spans),
    }


def report(
    name: str,
    wall: float,
    parts: dict[str, float],
    marks: dict[str, float],
    e: float,
    compute: float,
) -> float:
    ideal = parts["epochs"] * e
    print(
        f"{name}: wall={wall:.2f}s trials={parts['trials']:.0f} epochs={parts['epochs']:.0f} "
        f"ideal={ideal:.2f}s work={parts['work']:.2f}s ({parts['work'] / parts['epochs']:.3f}s/epoch)"
    )
    print(f"  cluster start (ray.init): {marks.get('ray_init', float('nan')):.2f}s")
    if "setup" in marks:
        print(
            f"  set-up before Tuner.fit (config, MLflow parent run, Tuner): {marks['setup']:.2f}s"
        )
    print(
        f"  first trial start (from t=0; trial actor + rank group + session): "
        f"{parts['first_start']:.2f}s"
    )
    print(
        f"  per-trial start (later trials, last step to next first step): "
        f"{parts['trial_start'] * 1000:.0f}ms mean, {parts['trial_start_total']:.2f}s total"
    )
    print(
        f"  per-epoch report + checkpoint + MLflow + validation: {parts['epoch_gap'] * 1000:.0f}ms "
        f"mean, {parts['epoch_gap_total']:.2f}s total"
    )
    print(f"  shutdown (last step to return, incl. ray.shutdown): {parts['shutdown']:.2f}s")
    if "publish" in marks:
        print(
            f"    of which publishing the winner (bundle + dataset logged to MLflow; plain Ray "
            f"Tune does not): {marks['publish']:.2f}s"
        )
    print(
        f"  other ideals: wall / (epochs x compute-only epoch) = "
        f"{wall / (parts['epochs'] * compute):.3f}; wall / (this side's own rank work) = "
        f"{wall / parts['work']:.3f}"
    )
    return wall / ideal


# -- hepscan -------------------------------------------------------------------------------------


def run_hepscan(
    args: argparse.Namespace, steps: int, tmp: Path, dataset: Path
) -> tuple[float, dict[str, float], dict[str, float]]:
    import scan.driver as driver
    import scan.publish as publish
    from scan import launch

    marks: dict[str, float] = {}
    init_ray, make_tuner = driver._init_ray, driver._tuner

    def timed(fn: Any, mark: str) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            t = time.time()
            try:
                return fn(*a, **k)
            finally:
                marks[mark] = time.time() - t
                marks[f"{mark}_end"] = time.time()

        return wrapper

    def timed_tuner(*a: Any, **k: Any) -> Any:
        out = make_tuner(*a, **k)
        marks["setup"] = time.time() - marks["ray_init_end"]
        return out

    publish_at_end = publish.publish_at_end
    timed_init, timed_publish = timed(init_ray, "ray_init"), timed(publish_at_end, "publish")

    # timing only
    driver._init_ray, driver._tuner, publish.publish_at_end = timed_init, timed_tuner, timed_publish
    os.environ["HEPSCAN_RAY_CPUS"] = "2"
    cfg = {
        "name": "overhead",
        "dataset": str(dataset),
        "family": FAMILY,
        "search_space": {"x": {"type": "uniform", "low": 0.0, "high": 1.0}},
        "fixed": {
            "steps": steps,
            "width": WIDTH,
            "depth": DEPTH,
            "rows": ROWS,
            "batch_size": 4096,  # one batch per rank per epoch; the family does the steps
            "lr": 0.01,
            "patience": 0,
        },
        "objective": {"metric": "val_loss", "mode": "min"},
        "searcher": "tpe",
        "scheduler": {"type": "asha", "grace_period": 1, "reduction_factor": 2},
        "num_trials": args.trials,
        "concurrency": 1,
        "resources": {"workers": 2, "cpus_per_worker": 1},
        "backend": args.backend,
        "max_epochs": args.epochs,
        "seed": SEED,
    }
    scan_dir = tmp / "hepscan"
    t_start = time.time()
    try:
        launch(cfg, scan_dir=scan_dir, tracking_uri=f"sqlite:///{tmp / 'hepscan.db'}", verbose=0)
    finally:
        driver._init_ray, driver._tuner = init_ray, make_tuner
        publish.publish_at_end = publish_at_end
    t_end = time.time()
    return t_end - t_start, breakdown(read_results(scan_dir), t_start, t_end), marks


# -- plain Ray Tune ------------------------------------------------------------------------------


class _PlainRank:
    """One rank of the plain trainable (Horovod executable or DDP actor)."""

    def __init__(self, backend: str = "horovod", rank: int = 0, world: int = 1) -> None:
        self.backend, self.rank, self.world = backend, rank, world

    def init_ddp(self, addr: str, port: int) -> None:
        import torch.distributed as dist

        dist.init_process_group(
            "gloo", init_method=f"tcp://{addr}:{port}", rank=self.rank, world_size=self.world
        )

    def address(self) -> tuple[str, int]:
        import socket

        import ray

        with socket.socket() as s:
            s.bind(("", 0))
            return ray.util.get_node_ip_address(), int(s.getsockname()[1])

    def build(self, config: dict[str, Any], state: dict[str, Any] | None) -> None:
        import torch

        from benchmarks.cpu_work import make_mlp

        torch.set_num_threads(1)
        net, self.x, self.y = make_mlp(WIDTH, DEPTH, ROWS)
        if state is not None:
            net.load_state_dict(state)
        opt = torch.optim.SGD(net.parameters(), lr=config["lr"])
        if self.backend == "horovod":
            import horovod.torch as hvd

            hvd.init()
            hvd.broadcast_parameters(net.state_dict(), root_rank=0)
            opt = hvd.DistributedOptimizer(opt, named_parameters=net.named_parameters())
            self.model = net
        else:
            from torch.nn.parallel import DistributedDataParallel

            self.model = DistributedDataParallel(net)
        self.net, self.opt, self.xval = net, opt, float(config["x"])

    def epoch(self, steps: int) -> dict[str, float]:
        from benchmarks.cpu_work import work_epoch

        def step(loss: Any) -> None:
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()

        loss, t0, t1 = work_epoch(self.model, self.x, self.y, steps, step)
        return {
            "val_loss": (self.xval - 0.3) ** 2,
            "train_loss": loss,
            "train_t0": t0,
            "train_t1": t1,
        }

    def state(self) -> dict[str, Any]:
        return {k: v.clone() for k, v in self.net.state_dict().items()}


def _plain_trainable(backend: str, steps: int) -> Any:
    import ray
    from ray import tune

    class Plain(tune.Trainable):
        group: list[Any] | None = None
        executor: Any = None

        def setup(self, config: dict[str, Any]) -> None:
            self.config_ = config
            self.state_: dict[str, Any] | None = None
            self.built = False
            if backend == "horovod":
                from horovod.ray import RayExecutor

                self.executor = RayExecutor(
                    RayExecutor.create_settings(timeout_s=60),
                    num_workers=2,
                    cpus_per_worker=1,
                    use_gpu=False,
                    use_current_placement_group=True,
                )
                self.executor.start(
                    executable_cls=_PlainRank, executable_kwargs={"backend": "horovod"}
                )
            else:
                from ray.util.placement_group import get_current_placement_group
                from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

                pg = get_current_placement_group()
                assert pg is not None, "the trainable runs in its placement group"
                strategy = PlacementGroupSchedulingStrategy(pg)
                remote: Any = ray.remote(_PlainRank)
                self.group = [
                    remote.options(num_cpus=1, scheduling_strategy=strategy).remote("ddp", r, 2)
                    for r in range(2)
                ]
                addr, port = ray.get(self.group[0].address.remote())
                ray.get([a.init_ddp.remote(addr, port) for a in self.group])

        def _call(self, method: str, *a: Any) -> list[Any]:
            if self.executor is not None:
                return list(self.executor.execute(lambda w: getattr(w, method)(*a)))
            assert self.group is not None
            return list(ray.get([getattr(w, method).remote(*a) for w in self.group]))

        def step(self) -> dict[str, Any]:
            if not self.built:
                self._call("build", self.config_, self.state_)
                self.built = True
            out = self._call("epoch", steps)
            return {
                **out[0],
                "train_t0": sum(o["train_t0"] for o in out) / len(out),
                "train_t1": sum(o["train_t1"] for o in out) / len(out),
            }

        def save_checkpoint(self, checkpoint_dir: str) -> None:
            import torch

            state = (
                self.executor.execute_single(lambda w: w.state())
                if self.executor is not None
                else ray.get(self.group[0].state.remote())  # type: ignore[index]
            )
            torch.save(state, Path(checkpoint_dir, "model.pt"))

        def load_checkpoint(self, checkpoint: Any) -> None:
            import torch

            self.state_ = torch.load(Path(checkpoint, "model.pt"))
            self.built = False

        def reset_config(self, new_config: dict[str, Any]) -> bool:
            self.config_, self.state_, self.built = new_config, None, False
            return True

        def cleanup(self) -> None:
            if self.executor is not None:
                self.executor.shutdown()
            for a in self.group or []:
                ray.kill(a)

    return tune.with_resources(
        Plain, tune.PlacementGroupFactory([{"CPU": 0}, {"CPU": 1}, {"CPU": 1}])
    )


def run_plain(
    args: argparse.Namespace, steps: int, tmp: Path
) -> tuple[float, dict[str, float], dict[str, float]]:
    import optuna
    import ray
    from ray import tune
    from ray.air.integrations.mlflow import MLflowLoggerCallback
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    marks: dict[str, float] = {}
    storage = tmp / "plain"
    t_start = time.time()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    marks["ray_init"] = time.time() - t_start
    tuner = tune.Tuner(
        _plain_trainable(args.backend, steps),
        param_space={"x": tune.uniform(0.0, 1.0), "lr": 0.01},
        tune_config=tune.TuneConfig(
            search_alg=OptunaSearch(
                metric="val_loss", mode="min", sampler=optuna.samplers.TPESampler(seed=SEED)
            ),
            scheduler=ASHAScheduler(
                time_attr="training_iteration",
                metric="val_loss",
                mode="min",
                max_t=args.epochs,
                grace_period=1,
                reduction_factor=2,
            ),
            num_samples=args.trials,
            max_concurrent_trials=1,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name="plain",
            storage_path=str(storage),
            callbacks=[
                MLflowLoggerCallback(
                    tracking_uri=f"sqlite:///{tmp / 'plain.db'}", experiment_name="plain"
                )
            ],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2, checkpoint_frequency=1),
            stop={"training_iteration": args.epochs},
            verbose=0,
        ),
    )
    grid = tuner.fit()
    errors = grid.errors
    ray.shutdown()
    t_end = time.time()
    if errors:
        raise RuntimeError(f"plain Tune trials failed: {errors}")
    return t_end - t_start, breakdown(read_results(storage), t_start, t_end), marks


# -- main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--backend", choices=["horovod", "ddp"], default="horovod")
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--epochs", type=int, default=4, help="max epochs per trial (ASHA max_t)")
    ap.add_argument("--epoch-s", type=float, default=1.0, help="work per rank per epoch")
    ap.add_argument("--quick", action="store_true", help="6 trials x up to 3 epochs")
    ap.add_argument("--smoke", action="store_true", help="2 trials x 2 epochs of 0.2 s (tests)")
    ap.add_argument("--no-peer", action="store_true", help="skip plain Ray Tune")
    args = ap.parse_args(argv)
    if args.quick:
        args.trials, args.epochs = 6, 3
    if args.smoke:
        args.trials, args.epochs, args.epoch_s = 2, 2, 0.2
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Ray workers (trial actors, ranks) import this checkout: the family and the plain trainable.
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(REPO) not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(REPO), *paths])

    from jobs.train_synthetic import write_unfold_dataset

    steps, compute, before = calibrate(args.epoch_s, args.backend)
    print(
        f"cpus={os.cpu_count()} backend={args.backend} trials={args.trials} "
        f"max_epochs={args.epochs} mlp={DEPTH}x{WIDTH} rows={ROWS} steps/epoch={steps} "
        "concurrency=1 trial (2 ranks x 1 CPU on 2 CPUs)"
    )
    print(
        f"calibration before the scans (bare processes, no Ray): compute per rank "
        f"{compute:.3f}s/epoch, 2-rank {args.backend} epochs "
        + ", ".join(f"{e:.3f}" for e in before)
        + "s"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="hepscan-overhead-") as d:
        tmp = Path(d)
        dataset = write_unfold_dataset(tmp / "data", rows=200, n_bins=2)
        if not args.no_peer:
            results.append(("plain Ray Tune", run_plain(args, steps, tmp)))
        results.append(("hepscan", run_hepscan(args, steps, tmp, dataset)))
    after = group_epochs(args.backend, steps)
    epoch = statistics.median(before + after)
    print(
        f"calibration after the scans: 2-rank {args.backend} epochs "
        + ", ".join(f"{e:.3f}" for e in after)
        + f"s; measured epoch E={epoch:.3f}s (median of all six; before "
        f"{statistics.median(before):.3f}s, after {statistics.median(after):.3f}s)"
    )
    ratios = {}
    for name, (wall, parts, marks) in results:
        ratios[name] = report(name, wall, parts, marks, epoch, compute)
        if name != "hepscan":
            print(f"peer ratio (plain Ray Tune wall / ideal) = {ratios[name]:.3f}")
    ratio = ratios["hepscan"]
    print(f"ratio={ratio:.3f}")


if __name__ == "__main__":
    main()
