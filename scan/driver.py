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

Scan directory layout::

    SCAN_DIR/scan.json        the validated config (resume reads it back)
    SCAN_DIR/tune/            Ray Tune experiment: searcher state, trial checkpoints
    SCAN_DIR/mlflow.db        embedded MLflow store (unless a tracking URI is given)
    SCAN_DIR/mlartifacts/     its artifacts; SCAN_DIR/tracking.json: trial -> MLflow run

Interruption: SIGTERM or SIGINT makes Tune stop its loop and write the experiment state one
last time; running trial runs are marked KILLED (``hepscan.stopped_by=interrupt``) and the
command exits with code 3. ``hepscan resume`` restores the Tuner (searcher state included),
restarts unfinished trials from their last checkpoint and reopens their MLflow runs, so the scan
ends with exactly ``num_trials`` trials, one MLflow run each.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import sys
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from models.errors import ConfigError, HepscanError, InputError
from scan.config import ScanConfig, load_scan_config, parse_override
from scan.report import ScanResult, collect_result

log = logging.getLogger(__name__)

CONFIG_FILE = "scan.json"
TUNE_DIR = "tune"
EXIT_INTERRUPTED = 3
EXIT_NO_RESULT = 1
_TRACKERS: dict[str, Any] = {}  # scan_dir -> ScanTracker of this driver process


class ScanInterrupted(HepscanError):
    """The scan was stopped by SIGTERM/SIGINT; it can be resumed with ``hepscan resume``."""

    def __init__(self, scan_dir: Path) -> None:
        super().__init__(
            f"scan interrupted; state saved in {scan_dir}; continue with: hepscan resume {scan_dir}"
        )
        self.scan_dir = scan_dir


# ------------------------------------------------------------------------------ tracking hook


def _tracker(scan_dir: str, tracking_uri: str | None, experiment: str) -> Any:
    t = _TRACKERS.get(scan_dir)
    if t is None:
        from tracking.runs import ScanTracker

        t = ScanTracker(scan_dir, tracking_uri=tracking_uri, experiment=experiment)
        _TRACKERS[scan_dir] = t
    return t


def _numeric(result: Mapping[str, Any]) -> dict[str, float]:
    skip = {"done", "training_iteration", "trial_id", "date", "hostname", "node_ip", "pid"}
    out = {}
    for k, v in result.items():
        if k in skip or isinstance(v, bool) or not isinstance(v, int | float):
            continue
        if k.startswith(("config", "timesteps", "episodes")) or k in ("timestamp",):
            continue
        out[k] = float(v)
    return out


def trial_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The searched and fixed hyperparameters of a trial (the scan's static settings dropped)."""
    from scan.trainable import STATIC_KEY

    static = config.get(STATIC_KEY, {})
    params = {k: v for k, v in config.items() if k != STATIC_KEY and v is not None}
    return {**static.get("fixed", {}), **params}


def _make_callback(cfg: ScanConfig, scan_dir: Path, tracking_uri: str | None) -> Any:
    from ray import tune

    class TrackingCallback(tune.Callback):
        """Mirrors Tune's trial lifecycle into MLflow child runs (driver process only)."""

        def __init__(self) -> None:
            self.scan_dir = str(scan_dir)
            self.tracking_uri = tracking_uri
            self.experiment = cfg.experiment
            self.max_epochs = cfg.max_epochs
            self.scheduler = cfg.scheduler.type
            self.objectives = cfg.metrics
            self._checkpoints: dict[str, str] = {}
            self._hosts: dict[str, tuple[str, str]] = {}

        @property
        def tracker(self) -> Any:
            return _tracker(self.scan_dir, self.tracking_uri, self.experiment)

        def _start(self, trial: Any) -> None:
            tags = {"mlflow.runName": f"trial-{trial.trial_id}", "hepscan.trial_name": str(trial)}
            self.tracker.start_trial(trial.trial_id, trial_params(trial.config), tags)

        def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
            _forward_interrupt()

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._start(trial)

        def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._start(trial)

        def on_trial_result(
            self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
        ) -> None:
            step = int(result.get("training_iteration", 0))
            self.tracker.log_epoch(trial.trial_id, step, _numeric(result))
            # Which node ran the trial: on a multi-node allocation this is how a user (and the
            # SLURM test) sees that the cluster was really used.
            host = (str(result.get("hostname", "")), str(result.get("node_ip", "")))
            if host[0] and self._hosts.get(trial.trial_id) != host:
                self._hosts[trial.trial_id] = host
                self.tracker.set_trial_tags(
                    trial.trial_id, {"hepscan.host": host[0], "hepscan.node_ip": host[1]}
                )

        def on_checkpoint(
            self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any
        ) -> None:
            path = getattr(checkpoint, "path", None)
            if path and os.path.isdir(path):
                self._checkpoints[trial.trial_id] = str(path)

        def _artifacts(self, trial: Any) -> None:
            # Plots and the checkpoint are conveniences: a failure here must not stop the scan.
            ckpt_dir = self._checkpoints.get(trial.trial_id)
            if ckpt_dir is None:
                latest = getattr(trial, "checkpoint", None)
                ckpt_dir = getattr(latest, "path", None)
            if not ckpt_dir:
                return
            best = Path(ckpt_dir, "best.pt")
            if not best.exists():
                best = Path(ckpt_dir, "last.pt")
            if not best.exists():
                return
            try:
                self.tracker.log_trial_artifacts(trial.trial_id, [best], "checkpoint")
                import matplotlib.pyplot as plt

                from scan.figures import trial_figures

                for name, fig in trial_figures(best).items():
                    self.tracker.log_trial_figure(trial.trial_id, fig, name)
                    plt.close(fig)
            except Exception as exc:  # noqa: BLE001
                log.warning("trial %s: artifacts not logged: %s", trial.trial_id, exc)

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            from scan.trainable import FINISHED_KEY
            from tracking.runs import TrialStatus

            last = dict(trial.last_result or {})
            epochs = int(last.get("training_iteration", 0))
            finished = bool(last.get(FINISHED_KEY)) or epochs >= self.max_epochs
            self._artifacts(trial)
            # Final metrics were logged with the last epoch (incl. best_<objective>); logging them
            # again would duplicate that step in the metric history.
            if finished:
                self.tracker.end_trial(trial.trial_id, TrialStatus.FINISHED)
            else:
                reason = "asha" if self.scheduler == "asha" else "stopped"
                self.tracker.end_trial(trial.trial_id, TrialStatus.KILLED, reason=reason)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            from tracking.runs import TrialStatus

            reason = _error_text(trial)
            self._artifacts(trial)
            self.tracker.end_trial(trial.trial_id, TrialStatus.FAILED, None, reason=reason)

        def __getstate__(self) -> dict[str, Any]:
            return {k: v for k, v in self.__dict__.items() if k != "_checkpoints"}

        def __setstate__(self, state: dict[str, Any]) -> None:
            self.__dict__.update(state)
            self._checkpoints = {}

    return TrackingCallback()


def _error_text(trial: Any) -> str:
    path = getattr(trial, "error_file", None) or ""
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    # The last line of a traceback names the exception; keep it short for the tag.
    return (lines[-1] if lines else "trial raised an exception")[:500]


# ------------------------------------------------------------------------------ engine set-up


def _static(cfg: ScanConfig) -> dict[str, Any]:
    primary = cfg.objective_list[0]
    from models.registry import REGISTRY

    family = REGISTRY[cfg.family]
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
        "backend": cfg.backend,
        "max_epochs": cfg.max_epochs,
        "seed": cfg.seed,
        "monitor": monitor,
        "mode": mode,
        "objectives": [[o.metric, o.mode] for o in cfg.objective_list],
    }


def _init_ray(address: str | None, scan_dir: Path, verbose: int = 1) -> bool:
    """Start or join Ray; True if this call started it (and should shut it down)."""
    import ray

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
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ray.init(address=address, **kwargs)
    return True


def check_cluster(cfg: ScanConfig, where: str = "scan config") -> None:
    """A trial's resources must fit the running Ray cluster (checked before any trial starts)."""
    import ray

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
    from ray import tune

    from scan.trainable import ScanTrainable, trial_resources

    r = cfg.resources
    return tune.with_resources(
        ScanTrainable, trial_resources(r.workers, r.cpus_per_worker, r.gpus_per_worker)
    )


def _tuner(cfg: ScanConfig, scan_dir: Path, tracking_uri: str | None, verbose: int) -> Any:
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search.optuna import OptunaSearch

    from scan.space import DefineByRun, make_sampler
    from scan.trainable import STATIC_KEY, trial_dirname

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
    from ray.tune.logger import JsonLoggerCallback

    run_config = tune.RunConfig(
        name=TUNE_DIR,
        storage_path=str(scan_dir),
        # result.json only (reports read it): Tune's default CSV and TensorBoard loggers cost
        # ~0.15 s per trial on 2 cores (benchmarks/scan_overhead.py).
        callbacks=[JsonLoggerCallback(), _make_callback(cfg, scan_dir, tracking_uri)],
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


# ------------------------------------------------------------------------------ signals


_INTERRUPT = {"requested": False, "forwarded": False}


def _forward_interrupt() -> None:
    """Hand a pending SIGTERM/SIGINT to Tune once its loop runs (Tune handles SIGUSR1 there:
    stop, save the experiment state, return from fit)."""
    if _INTERRUPT["requested"] and not _INTERRUPT["forwarded"]:
        handler = signal.getsignal(signal.SIGUSR1)
        if callable(handler) and handler is not _ignore:
            _INTERRUPT["forwarded"] = True
            signal.raise_signal(signal.SIGUSR1)


def _ignore(signum: int, frame: Any) -> None:
    """SIGUSR1 placeholder until Tune installs its handler (the default action would kill us)."""


@contextmanager
def _interruptible() -> Iterator[dict[str, bool]]:
    """SIGTERM/SIGINT -> Tune's graceful stop; a second signal raises KeyboardInterrupt."""
    _INTERRUPT.update(requested=False, forwarded=False)
    sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    old = {s: signal.getsignal(s) for s in sigs}

    def handler(signum: int, frame: Any) -> None:
        if _INTERRUPT["requested"]:
            raise KeyboardInterrupt
        _INTERRUPT["requested"] = True
        log.warning("signal %d: stopping the scan after saving its state", signum)
        _forward_interrupt()  # now if Tune's loop runs, else at its next step (callback)

    # Tune would install its own SIGINT handler (graceful once, then the previous one); ours
    # routes SIGINT and SIGTERM the same way, through SIGUSR1 which Tune always handles.
    prev_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGUSR1, _ignore)
    state = {"interrupted": False}
    try:
        yield state
    finally:
        state["interrupted"] = _INTERRUPT["requested"]
        for s, h in old.items():
            signal.signal(s, h)
        if prev_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = prev_env


@contextmanager
def _quiet_optuna() -> Iterator[None]:
    # Optuna flags multivariate/grouped TPE as experimental; that is a choice made here, not an
    # error (pytest runs with warnings as errors).
    import optuna

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        yield


# ------------------------------------------------------------------------------ launch / resume


def _default_scan_dir(cfg: ScanConfig) -> Path:
    return Path("scans", f"{cfg.name}-{time.strftime('%Y%m%d-%H%M%S')}").absolute()


def _save_config(cfg: ScanConfig, scan_dir: Path) -> None:
    scan_dir.mkdir(parents=True, exist_ok=True)
    tmp = scan_dir / f".{CONFIG_FILE}.tmp"
    tmp.write_text(json.dumps(cfg.to_dict(), indent=2))
    os.replace(tmp, scan_dir / CONFIG_FILE)


def load_saved_config(scan_dir: str | os.PathLike[str]) -> ScanConfig:
    d = Path(scan_dir)
    path = d / CONFIG_FILE
    if not path.exists():
        raise InputError(
            f"{path}: not a scan directory (no {CONFIG_FILE}; start with hepscan scan)"
        )
    return load_scan_config(json.loads(path.read_text()), check_registry=True)


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
    if (d / TUNE_DIR).exists() or (d / CONFIG_FILE).exists():
        raise ConfigError(
            f"scan_dir: {d} already holds a scan; continue it with 'hepscan resume {d}' "
            "or choose another --scan-dir"
        )
    _check_dataset(cfg)
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
    _check_dataset(cfg)
    return _run(cfg, d, address=address, restore=True, verbose=verbose)


def _run(
    cfg: ScanConfig, scan_dir: Path, *, address: str | None, restore: bool, verbose: int
) -> ScanResult:
    from ray import tune

    from tracking.runs import TrialStatus

    # Snapshots after every checkpoint are wanted here (resume consistency); Tune warns about them.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    os.environ["TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"] = "1"  # see JsonLoggerCallback in _tuner
    started_ray = _init_ray(address, scan_dir, verbose)
    key = str(scan_dir)
    try:
        check_cluster(cfg)
        _save_config(cfg, scan_dir)
        tracker = _tracker(key, cfg.tracking_uri, cfg.experiment)
        tracker.start_scan(
            cfg.name,
            cfg.to_dict(),
            {k: v.model_dump(exclude_none=True) for k, v in cfg.space.items()},
            tags={"hepscan.family": cfg.family, "hepscan.searcher": cfg.searcher},
        )
        with _quiet_optuna(), _interruptible() as sig:
            tune_path = str(scan_dir / TUNE_DIR)
            if restore and tune.Tuner.can_restore(tune_path):
                tuner = tune.Tuner.restore(
                    tune_path,
                    trainable=_trainable(cfg),
                    resume_unfinished=True,
                    resume_errored=False,
                    restart_errored=False,
                )
            else:
                tuner = _tuner(cfg, scan_dir, cfg.tracking_uri, verbose)
            grid = tuner.fit()
        if sig["interrupted"] or _INTERRUPT["requested"]:
            tracker.close_dangling(TrialStatus.KILLED, "interrupt")
            raise ScanInterrupted(scan_dir)
        # Trials Tune never reported as complete (e.g. a time budget ran out) are not left open.
        tracker.close_dangling(TrialStatus.KILLED, "stopped", include_parent=False)
        result = collect_result(cfg, scan_dir, grid=grid, parent_run_id=tracker.parent_run_id)
        summary = result.summary()
        tracker.end_scan(TrialStatus.FINISHED, summary)
        return result
    except BaseException as exc:
        if isinstance(exc, ScanInterrupted) or not isinstance(exc, Exception | KeyboardInterrupt):
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
        if started_ray:
            import ray

            ray.shutdown()


# ------------------------------------------------------------------------------ CLI


def _print_result(result: ScanResult) -> None:
    from tracking.runs import ui_command

    click.echo(result.table())
    click.echo("")
    click.echo(f"best trial: {result.best_trial_id}  {result.best_metrics}")
    click.echo(f"best config: {json.dumps(result.best_config, default=str)}")
    click.echo(f"MLflow parent run: {result.parent_run_id}")
    click.echo(f"review: {ui_command(result.tracking_uri)}")


def _finish(result: ScanResult) -> None:
    """Print the result; a scan with nothing to show must not look like a success to sbatch."""
    _print_result(result)
    if result.best_trial_id is None:
        click.echo(
            f"hepscan: no trial reported the objective (every trial failed); their errors are "
            f"in {result.scan_dir / TUNE_DIR}/trial_*/error.txt",
            err=True,
        )
        sys.exit(EXIT_NO_RESULT)


@click.command("scan")
@click.argument("config_path", metavar="CONFIG", type=click.Path(dir_okay=False))
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="override a config key")
@click.option("--scan-dir", default=None, help="where the scan keeps its state")
@click.option("--address", default=None, help="Ray cluster address (default: start Ray locally)")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: sqlite in dir)")
def scan_command(
    config_path: str,
    sets: tuple[str, ...],
    scan_dir: str | None,
    address: str | None,
    tracking_uri: str | None,
) -> None:
    """Run a hyperparameter scan from a YAML scan config."""
    overrides = dict(parse_override(s) for s in sets)
    try:
        result = launch(
            config_path,
            overrides,
            scan_dir=scan_dir,
            address=address,
            tracking_uri=tracking_uri,
        )
    except ScanInterrupted as exc:
        click.echo(f"hepscan: {exc}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    _finish(result)


@click.command("resume")
@click.argument("scan_dir", metavar="DIR", type=click.Path(file_okay=False))
@click.option("--address", default=None, help="Ray cluster address (default: start Ray locally)")
@click.option("--tracking-uri", default=None, help="MLflow tracking URI (default: the scan's)")
def resume_command(scan_dir: str, address: str | None, tracking_uri: str | None) -> None:
    """Continue an interrupted scan."""
    try:
        result = resume(scan_dir, address=address, tracking_uri=tracking_uri)
    except ScanInterrupted as exc:
        click.echo(f"hepscan: {exc}", err=True)
        sys.exit(EXIT_INTERRUPTED)
    _finish(result)


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)
