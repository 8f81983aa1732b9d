"""The Tune callback that mirrors every trial's lifecycle into MLflow child runs (driver only).

Its writes go through the scan's :class:`scan.outbox.Outbox` (one per scan directory and driver
process, made by :func:`_outbox`): queued in order, applied at once while the tracking server
answers, buffered and retried with backoff while it does not.  An operation is a name in
:data:`OPERATIONS` plus JSON-able arguments, so a queue left by an outage is saved with the
scan and written by ``hepscan resume``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from models.errors import require
from scan.config import ScanConfig
from scan.diskspace import release_reserve
from scan.outbox import Outbox, is_no_space, is_unreachable
from scan.signals import _forward_interrupt, _request_tune_stop
from scan.state import trial_finished, trial_params

__all__: list[str] = []

log = logging.getLogger(__name__)

_TRACKERS: dict[str, Any] = {}  # scan_dir -> ScanTracker of this driver process
_OUTBOXES: dict[str, Outbox] = {}  # scan_dir -> its queue of tracking writes
_NOSPACE: dict[str, list[tuple[str, str]]] = {}  # scan_dir -> trials failed on ENOSPC
_LOGGED: dict[str, dict[str, int]] = {}  # resolved scan_dir -> trial id -> last step in MLflow
DEFAULT_OUTAGE_TIMEOUT_S = 300.0


def _tracker(scan_dir: str, tracking_uri: str | None, experiment: str) -> Any:
    t = _TRACKERS.get(scan_dir)
    if t is None:
        from tracking.runs import ScanTracker

        t = ScanTracker(scan_dir, tracking_uri=tracking_uri, experiment=experiment)
        _TRACKERS[scan_dir] = t
    return t


def _outbox(
    scan_dir: str,
    tracking_uri: str | None,
    experiment: str,
    timeout_s: float = DEFAULT_OUTAGE_TIMEOUT_S,
) -> Outbox:
    """The queue of tracking writes of ``scan_dir`` in this process (made on first use)."""
    box = _OUTBOXES.get(scan_dir)
    if box is None:

        def apply(name: str, kwargs: Mapping[str, Any]) -> None:
            OPERATIONS[name](_tracker(scan_dir, tracking_uri, experiment), **kwargs)

        uri = _tracker(scan_dir, tracking_uri, experiment).tracking_uri
        kind = "server" if uri.startswith(("http://", "https://")) else "store"
        box = Outbox(apply, timeout_s, where=f"MLflow tracking {kind} {uri}")
        _OUTBOXES[scan_dir] = box
    return box


def _start_trial(tracker: Any, trial_id: str, params: dict[str, Any], tags: dict[str, Any]) -> None:
    run_id = tracker.start_trial(trial_id, params, tags)
    # A trial restored from its checkpoint (resume, retry) re-runs the epochs after it; those
    # already in MLflow are not logged again (same seed and state: the same values), so the
    # run's steps stay 1, 2, ..., N without repeats.
    last = _last_logged_step(tracker, run_id)
    _LOGGED.setdefault(str(tracker.scan_dir), {})[str(trial_id)] = last


def _last_logged_step(tracker: Any, run_id: str) -> int:
    # One request: a run's latest metrics carry their (highest) step.  It raises while the
    # server is away, so the whole operation is retried by the outbox.
    run = tracker.client.get_run(run_id)
    objs = getattr(run.data, "_metric_objs", None)
    if objs is None:
        return int(tracker._max_logged_step(run_id))
    return max((int(m.step) for m in objs), default=0)


def _log_epoch(
    tracker: Any, trial_id: str, step: int, metrics: dict[str, float], timestamp_ms: int
) -> None:
    logged = _LOGGED.setdefault(str(tracker.scan_dir), {})
    if step <= logged.get(str(trial_id), 0):
        log.info("trial %s: step %d is already in MLflow (re-run after a restore)", trial_id, step)
        return
    tracker.log_epoch(trial_id, step, metrics, timestamp_ms=timestamp_ms)
    logged[str(trial_id)] = step


def _set_trial_tags(tracker: Any, trial_id: str, tags: dict[str, Any]) -> None:
    tracker.set_trial_tags(trial_id, tags)


def _end_trial(tracker: Any, trial_id: str, status: str, reason: str | None = None) -> None:
    from tracking.store import TrialStatus

    tracker.end_trial(trial_id, TrialStatus(status), None, reason=reason)


def _log_artifacts(tracker: Any, trial_id: str, ckpt_dir: str) -> None:
    """The trial's best (else last) checkpoint and its figures; conveniences: a failure other
    than an unreachable server is logged, not raised."""
    best = Path(ckpt_dir, "best.pt")
    if not best.exists():
        best = Path(ckpt_dir, "last.pt")
    if not best.exists():
        return
    try:
        tracker.log_trial_artifacts(trial_id, [best], "checkpoint")
        import matplotlib.pyplot as plt

        from scan.figures import trial_figures

        for name, fig in trial_figures(best).items():
            try:
                tracker.log_trial_figure(trial_id, fig, name)
            finally:
                plt.close(fig)
    except Exception as exc:  # noqa: BLE001
        if is_unreachable(exc) or is_no_space(exc):
            raise
        log.warning("trial %s: artifacts not logged: %s", trial_id, exc)


# name -> the write it stands for (arguments are JSON-able: a queue can be saved and replayed)
OPERATIONS: dict[str, Callable[..., None]] = {
    "start_trial": _start_trial,
    "log_epoch": _log_epoch,
    "set_trial_tags": _set_trial_tags,
    "end_trial": _end_trial,
    "artifacts": _log_artifacts,
}


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


def _make_callback(cfg: ScanConfig, scan_dir: Path, tracking_uri: str | None) -> Any:
    require("ray.tune")  # EngineMissingError naming the extra when Ray is not installed
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
            self.outage_timeout_s = cfg.tracking_outage_timeout_s
            self._checkpoints: dict[str, str] = {}
            self._hosts: dict[str, tuple[str, str]] = {}
            self._stop_requested = False

        @property
        def outbox(self) -> Outbox:
            timeout = getattr(self, "outage_timeout_s", DEFAULT_OUTAGE_TIMEOUT_S)
            return _outbox(self.scan_dir, self.tracking_uri, self.experiment, timeout)

        def _start(self, trial: Any) -> None:
            tags = {"mlflow.runName": f"trial-{trial.trial_id}", "hepscan.trial_name": str(trial)}
            params = {"family": cfg.family, **trial_params(trial.config)}
            self.outbox.submit("start_trial", trial_id=trial.trial_id, params=params, tags=tags)

        def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
            _forward_interrupt()
            box = self.outbox
            box.flush()  # buffered writes, once their backoff has passed
            if box.failed is not None and not getattr(self, "_stop_requested", False):
                # The server stayed away too long: stop Tune as on SIGTERM (its state is saved);
                # the driver saves the queue and fails with TrackingUnavailable.
                log.error("%s; stopping the scan", box.failed)
                self._stop_requested = _request_tune_stop()

        def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._start(trial)

        def on_trial_restore(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self._start(trial)

        def on_trial_result(
            self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
        ) -> None:
            from tracking.store import _now_ms

            step = int(result.get("training_iteration", 0))
            self.outbox.submit(
                "log_epoch",
                trial_id=trial.trial_id,
                step=step,
                metrics=_numeric(result),
                timestamp_ms=_now_ms(),
            )
            # Which node ran the trial: on a multi-node allocation this is how a user (and the
            # SLURM test) sees that the cluster was really used.
            host = (str(result.get("hostname", "")), str(result.get("node_ip", "")))
            if host[0] and self._hosts.get(trial.trial_id) != host:
                self._hosts[trial.trial_id] = host
                tags = {"hepscan.host": host[0], "hepscan.node_ip": host[1]}
                self.outbox.submit("set_trial_tags", trial_id=trial.trial_id, tags=tags)

        def on_checkpoint(
            self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any
        ) -> None:
            path = getattr(checkpoint, "path", None)
            if path and os.path.isdir(path):
                self._checkpoints[trial.trial_id] = str(path)

        def _artifacts(self, trial: Any) -> None:
            ckpt_dir = self._checkpoints.get(trial.trial_id)
            if ckpt_dir is None:
                latest = getattr(trial, "checkpoint", None)
                ckpt_dir = getattr(latest, "path", None)
            if ckpt_dir:
                self.outbox.submit("artifacts", trial_id=trial.trial_id, ckpt_dir=str(ckpt_dir))

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            finished = trial_finished(dict(trial.last_result or {}), self.max_epochs)
            self._artifacts(trial)
            # Final metrics were logged with the last epoch (incl. best_<objective>); logging them
            # again would duplicate that step in the metric history.
            if finished:
                self.outbox.submit("end_trial", trial_id=trial.trial_id, status="FINISHED")
            else:
                reason = "asha" if self.scheduler == "asha" else "stopped"
                self.outbox.submit(
                    "end_trial", trial_id=trial.trial_id, status="KILLED", reason=reason
                )

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            reason = _error_text(trial)
            if is_no_space(_error_text(trial, full=True)):
                # The scan directory is full: every trial would fail next.  Free the driver's
                # reserve (room for Tune's state and the tracking writes) and stop like SIGTERM.
                what = _no_space_text(trial, self.scan_dir)
                _NOSPACE.setdefault(self.scan_dir, []).append((trial.trial_id, what))
                release_reserve(Path(self.scan_dir))
                log.error("trial %s: no space left on device: %s", trial.trial_id, what)
                if not getattr(self, "_stop_requested", False):
                    self._stop_requested = _request_tune_stop()
            self._artifacts(trial)
            self.outbox.submit("end_trial", trial_id=trial.trial_id, status="FAILED", reason=reason)

        def __getstate__(self) -> dict[str, Any]:
            skip = ("_checkpoints", "_stop_requested")
            return {k: v for k, v in self.__dict__.items() if k not in skip}

        def __setstate__(self, state: dict[str, Any]) -> None:
            self.__dict__.update(state)
            self._checkpoints = {}
            self._stop_requested = False

    return TrackingCallback()


def _make_result_logger() -> Any:
    """Tune's ``JsonLoggerCallback`` (``result.json``) without its in-session rollback.

    Tune writes ``result.json`` into the driver's staging directory and copies that directory
    to the scan directory now and then (experiment-state syncs, throttled).  When a trial
    (re)starts from a checkpoint, Ray's logger copies the scan directory's ``result.json`` over
    the staging one (``LoggerCallback._restore_from_remote``): right for a new driver (``hepscan
    resume``: its staging directory is empty), wrong for a retry in the same driver, whose
    staging file is the newer one.  The reports since the last sync were then lost for good,
    although their checkpoint persisted (a resume does not re-run them): e.g. a trial failing
    with ENOSPC while the sync of its previous epoch failed too lost that epoch.  Here the
    staging file, when it exists, is kept; only a new driver restores the scan directory's copy.
    """
    require("ray.tune")
    from ray.tune.logger import JsonLoggerCallback

    class ResultLogger(JsonLoggerCallback):
        def _restore_from_remote(self, file_name: str, trial: Any) -> None:
            if Path(trial.local_path, file_name).exists():
                return  # this driver's own file: at least as new as the synced copy
            super()._restore_from_remote(file_name, trial)

    return ResultLogger()


def _error_text(trial: Any, full: bool = False) -> str:
    path = getattr(trial, "error_file", None) or ""
    try:
        text = Path(path).read_text() if path else ""
    except OSError:
        text = ""
    if full:
        return text
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    # The last line of a traceback names the exception; keep it short for the tag.
    return (lines[-1] if lines else "trial raised an exception")[:500]


def _no_space_text(trial: Any, scan_dir: str) -> str:
    """The ENOSPC line of a trial's error, with the path it names (else the scan directory)."""
    import re

    text = _error_text(trial, full=True)
    lines = [ln.strip() for ln in text.splitlines() if is_no_space(ln)]
    line = (lines[-1] if lines else _error_text(trial))[:300]
    paths = re.findall(r"(/[^\s'\"]+)", text)
    inside = [p for p in paths if p.startswith(scan_dir)]
    where = inside[-1] if inside else None
    return f"{line} (writing {where})" if where and where not in line else line
