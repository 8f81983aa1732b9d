"""Launch and resume scans: Ray Tune ``Tuner`` + ``OptunaSearch`` + ``ASHAScheduler``, MLflow.

.. code-block:: bash

    hepscan scan configs/unfold_zll.yaml --set num_trials=24 --scan-dir scans/zll
    hepscan resume scans/zll          # after SIGTERM/SIGINT (exit code 3) or a crash
    hepscan report scans/zll

.. code-block:: python

    from scan import launch, resume
    result = launch("configs/unfold_zll.yaml", overrides={"num_trials": 24})
    result.best_config, result.best_metrics, result.trials, result.parent_run_id

Ray is started locally (``ray.init()``) unless ``address`` is given (``"auto"`` or
``host:port`` of a running cluster, e.g. the one slurm/scan.sbatch starts).

The scan directory's layout is described in :mod:`scan.state`; the click commands are in
:mod:`scan.commands`, the MLflow callback in :mod:`scan.callback`.

Interruption (:mod:`scan.signals`): SIGTERM or SIGINT makes Tune stop its loop and write the
experiment state one last time; running trial runs are marked KILLED (``hepscan.stopped_by=interrupt``) and the
command exits with code 3. ``hepscan resume`` restores the Tuner (searcher state included),
restarts unfinished trials from their last checkpoint and reopens their MLflow runs, so the scan
ends with exactly ``num_trials`` trials, one MLflow run each; a restored trial does not log
again the epochs MLflow already has (its steps stay 1, 2, ..., N).

One driver per scan directory (:mod:`scan.lock`): ``launch`` and ``resume`` hold
``SCAN_DIR/.driver.lock`` (flock) and ``SCAN_DIR/driver.json`` (host, pid, SLURM job id) while
they run; a second driver fails at once with :class:`scan.lock.ScanLocked` naming the holder.

Tracking-server outages (:mod:`scan.outbox`): MLflow writes are buffered and retried with
backoff; after ``tracking_outage_timeout_s`` the scan stops (Tune state saved), the pending
writes go to ``SCAN_DIR/tracking_outbox.json`` and :class:`scan.outbox.TrackingUnavailable` is
raised; ``hepscan resume`` writes them first.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from models.errors import ConfigError, InputError, require
from scan.callback import (
    _LOGGED,
    _NOSPACE,
    _OUTBOXES,
    _TRACKERS,
    _make_callback,
    _make_result_logger,
    _outbox,
    _tracker,
)
from scan.config import ScanConfig, load_scan_config
from scan.diskspace import (
    RETRY_FILE,
    NoSpace,
    allocate_reserve,
    drop_stale_decisions,
    no_space_error,
    release_reserve,
    save_retry,
    take_retry,
)
from scan.lock import check_free, hold
from scan.outbox import OUTBOX_FILE, Outbox, TrackingUnavailable, quick_http_client
from scan.report import ScanResult, collect_result
from scan.signals import _INTERRUPT, EXIT_INTERRUPTED, ScanInterrupted, _interruptible
from scan.state import CONFIG_FILE, TUNE_DIR, load_saved_config, save_config, trial_params

__all__ = [
    "EXIT_INTERRUPTED",
    "ScanInterrupted",
    "check_cluster",
    "launch",
    "load_saved_config",
    "resume",
    "trial_params",
]

log = logging.getLogger(__name__)


def _static(cfg: ScanConfig) -> dict[str, Any]:
    primary = cfg.objective_list[0]
    from models.registry import get_family

    family = get_family(cfg.family)
    # Early stopping and best.pt follow the primary objective when the loop can monitor it.
    monitorable = {"val_loss", "train_loss", *family.metrics}
    monitor, mode = (primary.metric, primary.mode)
    if monitor not in monitorable:
        monitor, mode = "val_loss", "min"
    return {
        "dataset": cfg.dataset,
        "family": cfg.family,
        "fixed": dict(cfg.fixed),
        "workers": cfg.resources.workers,
        "cpus_per_worker": cfg.resources.cpus_per_worker,
        "gpus_per_worker": cfg.resources.gpus_per_worker,
        "collective_timeout_s": cfg.resources.collective_timeout_s,
        "backend": cfg.backend,
        "max_epochs": cfg.max_epochs,
        "seed": cfg.seed,
        "monitor": monitor,
        "mode": mode,
        "objectives": [[o.metric, o.mode] for o in cfg.objective_list],
    }


# What the driver imports next, after ray.init: loaded in a thread while ray.init starts the
# cluster, when the driver mostly waits on its new processes (measured on 2 cores: ray.init +
# these imports 13.9 s one after the other, 10.3 s overlapped).
_WARM_IMPORTS = ("mlflow", "mlflow.store.tracking.sqlalchemy_store", "optuna")
_WARM_IMPORTS_TUNE = ("ray.tune.search.optuna", "ray.tune.schedulers")


def _warm_imports(names: tuple[str, ...]) -> None:
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - the real import raises it where it is needed
            log.debug("warm import of %s failed (%s)", name, exc)


def _init_ray(
    address: str | None, scan_dir: Path, verbose: int = 1, warm: tuple[str, ...] = ()
) -> bool:
    """Start or join Ray; True if this call started it (and should shut it down). ``warm``:
    modules imported in a thread meanwhile (done when this returns)."""
    import threading

    ray = require("ray")

    if ray.is_initialized():
        return False
    root = str(Path(__file__).resolve().parents[1])
    # Workers must import this checkout even when the project is not pip-installed.
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *parts])
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Worker output (per-checkpoint INFO lines) only at verbose >= 2; trial errors reach the
    # driver through Tune either way.
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": verbose >= 2}
    if address is None:
        cpus = os.environ.get("HEPSCAN_RAY_CPUS")
        if cpus:
            kwargs["num_cpus"] = int(cpus)
    else:
        kwargs["runtime_env"] = {"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}}
    # the imports run under the same filter: warnings.catch_warnings is process-wide, so the
    # thread must not set its own, and it is joined before the filters are restored
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        thread = threading.Thread(target=_warm_imports, args=(warm,), name="hepscan-imports")
        thread.start()
        try:
            ray.init(address=address, **kwargs)
        finally:
            thread.join()
    return True


def check_cluster(cfg: ScanConfig, where: str = "scan config") -> None:
    """A trial's resources must fit the running Ray cluster (checked before any trial starts)."""
    ray = require("ray")

    have = ray.cluster_resources()
    res = cfg.resources
    cpus, gpus = float(have.get("CPU", 0.0)), float(have.get("GPU", 0.0))
    if res.cpus > cpus + 1e-9:
        raise ConfigError(
            f"{where}: resources: {res.workers} workers x {res.cpus_per_worker} cpus_per_worker "
            f"= {res.cpus:g} CPUs per trial, but the Ray cluster has {cpus:g} CPUs"
        )
    if res.gpus > gpus + 1e-9:
        raise ConfigError(
            f"{where}: resources: {res.workers} workers x {res.gpus_per_worker} gpus_per_worker "
            f"= {res.gpus:g} GPUs per trial, but the Ray cluster has {gpus:g} GPUs"
        )
    if res.workers > 1 and cfg.backend == "single":
        raise ConfigError(
            f"{where}: backend: 'single' cannot run resources.workers={res.workers}; "
            "use horovod or ddp"
        )
    if cfg.backend == "horovod" and res.workers > 1:
        try:
            import horovod.torch  # noqa: F401
        except ImportError as exc:
            raise ConfigError(
                f"{where}: backend: horovod is not importable ({exc}); install it "
                "(.ci/install-horovod.sh) or use backend: ddp"
            ) from None


def _check_dataset(cfg: ScanConfig) -> None:
    """Manifest readable and matching the family (fails before Ray starts)."""
    from jobs.train import prepare, train_config_from_dict
    from scan.trainable import build_train_config

    tc = build_train_config(_static(cfg), {})
    tc["workers"], tc["backend"] = 1, "single"
    try:
        prepare(train_config_from_dict(tc, "scan config"))
    except ConfigError as exc:
        raise ConfigError(f"scan config: dataset/fixed: {exc}") from None
    except InputError as exc:
        raise InputError(f"scan config: dataset: {exc}") from None


def _trainable(cfg: ScanConfig) -> Any:
    tune = require("ray.tune")

    from scan.trainable import ScanTrainable, trial_resources

    r = cfg.resources
    return tune.with_resources(
        ScanTrainable, trial_resources(r.workers, r.cpus_per_worker, r.gpus_per_worker)
    )


def _tuner(cfg: ScanConfig, scan_dir: Path, tracking_uri: str | None, verbose: int) -> Any:
    tune = require("ray.tune")
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from scan.space import DefineByRun, make_sampler
    from scan.state import STATIC_KEY
    from scan.trainable import trial_dirname

    multi = cfg.multi_objective
    searcher = OptunaSearch(
        space=DefineByRun(cfg.space),
        metric=cfg.metrics if multi else cfg.metrics[0],
        mode=cfg.modes if multi else cfg.modes[0],  # type: ignore[arg-type]
        sampler=make_sampler(cfg),
    )
    scheduler: Any
    if cfg.scheduler.type == "asha":
        scheduler = ASHAScheduler(
            time_attr="training_iteration",
            metric=cfg.metrics[0],
            mode=cfg.modes[0],
            max_t=cfg.max_epochs,
            grace_period=min(cfg.scheduler.grace_period, cfg.max_epochs),
            reduction_factor=cfg.scheduler.reduction_factor,
        )
    else:
        scheduler = FIFOScheduler()
    tune_config = tune.TuneConfig(
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=cfg.num_trials,
        max_concurrent_trials=cfg.concurrency,
        reuse_actors=True,
        time_budget_s=cfg.time_budget_s,
        trial_name_creator=trial_dirname,
        trial_dirname_creator=trial_dirname,
    )
    run_config = tune.RunConfig(
        name=TUNE_DIR,
        storage_path=str(scan_dir),
        # result.json only (reports read it; Tune's JsonLoggerCallback, keeping its reports
        # across trial retries): Tune's default CSV and TensorBoard loggers cost ~0.15 s per
        # trial on 2 cores (benchmarks/scan_overhead.py).
        callbacks=[_make_result_logger(), _make_callback(cfg, scan_dir, tracking_uri)],
        failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
        checkpoint_config=tune.CheckpointConfig(
            num_to_keep=2, checkpoint_frequency=1, checkpoint_at_end=True
        ),
        stop={"training_iteration": cfg.max_epochs},
        verbose=verbose,
    )
    return tune.Tuner(
        _trainable(cfg),
        param_space={STATIC_KEY: _static(cfg)},
        tune_config=tune_config,
        run_config=run_config,
    )


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    # Optuna flags multivariate/grouped TPE as experimental; that is a choice made here, not an
    # error (pytest runs with warnings as errors).
    optuna = require("optuna")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        yield


def _default_scan_dir(cfg: ScanConfig) -> Path:
    return Path("scans", f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}").absolute()


def launch(
    config: str | os.PathLike[str] | Mapping[str, Any] | ScanConfig,
    overrides: Mapping[str, Any] | None = None,
    *,
    scan_dir: str | os.PathLike[str] | None = None,
    address: str | None = None,
    tracking_uri: str | None = None,
    verbose: int = 1,
) -> ScanResult:
    """Validate ``config`` (YAML path, mapping or ScanConfig), run the scan, return its result.

    Raises :class:`models.errors.ConfigError` (naming the key) before any trial starts, and
    :class:`ScanInterrupted` after SIGTERM/SIGINT (the scan is then resumable).
    """
    extra = dict(overrides or {})
    if scan_dir is not None:
        extra["scan_dir"] = str(scan_dir)
    if tracking_uri is not None:
        extra["tracking_uri"] = tracking_uri
    if isinstance(config, ScanConfig):
        cfg = load_scan_config(config.to_dict(), extra)
    else:
        cfg = load_scan_config(config, extra)
    d = Path(cfg.scan_dir) if cfg.scan_dir else _default_scan_dir(cfg)
    cfg = cfg.model_copy(update={"scan_dir": str(d)})
    check_free(d)  # a live driver on d is named before anything else is said about d
    if (d / TUNE_DIR).exists() or (d / CONFIG_FILE).exists():
        raise ConfigError(
            f"scan_dir: {d} already holds a scan; continue it with 'hepscan resume {d}' "
            "or choose another --scan-dir"
        )
    _check_dataset(cfg)
    with hold(d, "hepscan scan"):
        return _run(cfg, d, address=address, restore=False, verbose=verbose)


def resume(
    scan_dir: str | os.PathLike[str],
    *,
    address: str | None = None,
    tracking_uri: str | None = None,
    verbose: int = 1,
) -> ScanResult:
    """Continue an interrupted scan in ``scan_dir`` up to its ``num_trials`` trials in total."""
    d = Path(scan_dir).absolute()
    cfg = load_saved_config(d)
    if tracking_uri is not None:
        cfg = cfg.model_copy(update={"tracking_uri": tracking_uri})
    with hold(d, "hepscan resume"):
        _check_dataset(cfg)
        return _run(cfg, d, address=address, restore=True, verbose=verbose)


def _tracking_gone(box: Outbox, scan_dir: Path, reason: str) -> TrackingUnavailable:
    """Save the writes the server did not take; the error says how to continue."""
    saved = scan_dir / OUTBOX_FILE
    n = box.save(saved)
    return TrackingUnavailable(
        f"{reason}. The scan stopped; its Tune state in {scan_dir / TUNE_DIR} is intact and "
        f"{n} tracking writes not yet in MLflow were saved to {saved}. Once the server is "
        f"back: hepscan resume {scan_dir}"
    )


def _replay_saved(box: Outbox, scan_dir: Path) -> None:
    """Write the queue an earlier driver saved when the server went away (resume)."""
    saved = scan_dir / OUTBOX_FILE
    if saved.exists():
        n = box.load(saved)
        try:
            box.drain()
        except TrackingUnavailable:
            box.save(saved)  # what is still not written
            raise
        saved.unlink()
        log.warning("wrote %d tracking writes saved during a tracking-server outage", n)


def _run(
    cfg: ScanConfig, scan_dir: Path, *, address: str | None, restore: bool, verbose: int
) -> ScanResult:
    from tracking.store import TrialStatus

    tune = require("ray.tune")

    # Snapshots after every checkpoint are wanted here (resume consistency); Tune warns about them.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # see _make_result_logger in _tuner
    warm: tuple[str, ...] = _WARM_IMPORTS + _WARM_IMPORTS_TUNE
    if cfg.backend == "horovod" and cfg.resources.workers > 1:
        warm += ("horovod.torch",)  # check_cluster imports it
    started_ray = _init_ray(address, scan_dir, verbose, warm)
    key = str(scan_dir)
    try:
        check_cluster(cfg)
        save_config(cfg, scan_dir)
        allocate_reserve(scan_dir)  # room to stop cleanly if the filesystem fills up
        retry = take_retry(scan_dir) if restore else None
        tracker = _tracker(key, cfg.tracking_uri, cfg.experiment)
        quick_http_client(tracker.tracking_uri)  # the outbox retries, not MLflow's client
        box = _outbox(key, cfg.tracking_uri, cfg.experiment, cfg.tracking_outage_timeout_s)
        box.call(
            tracker.start_scan,
            cfg.name,
            cfg.to_dict(),
            {k: v.model_dump(exclude_none=True) for k, v in cfg.space.items()},
            tags={"hepscan.family": cfg.family, "hepscan.searcher": cfg.searcher},
        )
        _replay_saved(box, scan_dir)
        with _quiet_optuna(), _interruptible() as sig:
            tune_path = str(scan_dir / TUNE_DIR)
            if restore and tune.Tuner.can_restore(tune_path):
                # Tune saved decisions for trials with a save in flight (a trial that failed
                # while saving its checkpoint: a stale STOP); they would stop resumed trials.
                stale = drop_stale_decisions(Path(tune_path))
                if stale:
                    log.info("dropped stale Tune decisions from the saved state: %s", stale)
                tuner = tune.Tuner.restore(
                    tune_path,
                    trainable=_trainable(cfg),
                    resume_unfinished=True,
                    # trials that failed because the disk was full continue from their last
                    # checkpoint (scan/diskspace.py); other failures stay failed
                    resume_errored=retry is not None,
                    restart_errored=False,
                )
                if retry is not None:
                    (scan_dir / RETRY_FILE).unlink(missing_ok=True)
                    log.warning("continuing trials that failed for lack of space: %s", retry)
            else:
                tuner = _tuner(cfg, scan_dir, cfg.tracking_uri, verbose)
            grid = tuner.fit()
        nospace = _NOSPACE.pop(key, None)
        if nospace:
            save_retry(scan_dir, [t for t, _ in nospace])
            with contextlib.suppress(Exception):  # best effort: the disk may still be full
                if box.flush(force=True):
                    tracker.close_dangling(TrialStatus.KILLED, "no space left on device")
                else:
                    box.save(scan_dir / OUTBOX_FILE)
            raise no_space_error(scan_dir, nospace)
        if box.failed is not None:
            raise _tracking_gone(box, scan_dir, box.failed)
        try:
            box.drain()
        except TrackingUnavailable as exc:
            raise _tracking_gone(box, scan_dir, str(exc)) from None
        if box.outages:
            log.warning(
                "tracking: %d outage(s), longest %.1f s, %d retries, up to %d writes buffered; "
                "all written",
                box.outages,
                box.longest_outage_s,
                box.retries,
                box.max_backlog,
            )
        if sig["interrupted"] or _INTERRUPT["requested"]:
            box.call(tracker.close_dangling, TrialStatus.KILLED, "interrupt")
            raise ScanInterrupted(scan_dir)
        # Trials Tune never reported as complete (e.g. a time budget ran out) are not left open.
        box.call(tracker.close_dangling, TrialStatus.KILLED, "stopped", include_parent=False)
        result = collect_result(cfg, scan_dir, grid=grid, parent_run_id=tracker.parent_run_id)
        from scan.publish import publish_at_end  # dataset inputs, best model -> registry

        publish_at_end(cfg, result, tracker)
        summary = result.summary()
        box.call(tracker.end_scan, TrialStatus.FINISHED, summary)
        return result
    except BaseException as exc:
        if isinstance(exc, ScanInterrupted | TrackingUnavailable | NoSpace) or not isinstance(
            exc, Exception | KeyboardInterrupt
        ):
            raise
        t = _TRACKERS.get(key)
        if t is not None and t.parent_run_id is not None:
            try:
                status = (
                    TrialStatus.KILLED
                    if isinstance(exc, KeyboardInterrupt)
                    else (TrialStatus.FAILED)
                )
                t.close_dangling(status, "interrupt" if status is TrialStatus.KILLED else "error")
            except Exception:  # noqa: BLE001 - keep the original error
                pass
        raise
    finally:
        _TRACKERS.pop(key, None)
        _OUTBOXES.pop(key, None)
        _NOSPACE.pop(key, None)
        release_reserve(scan_dir)
        _LOGGED.pop(str(scan_dir.resolve()), None)
        if started_ray:
            import ray

            ray.shutdown()
