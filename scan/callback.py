"""The Tune callback that mirrors every trial's lifecycle into MLflow child runs (driver only)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.errors import require
from scan.config import ScanConfig
from scan.signals import _forward_interrupt
from scan.state import trial_finished, trial_params

__all__: list[str] = []

log = logging.getLogger(__name__)

_TRACKERS: dict[str, Any] = {}  # scan_dir -> ScanTracker of this driver process


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
            self._checkpoints: dict[str, str] = {}
            self._hosts: dict[str, tuple[str, str]] = {}

        @property
        def tracker(self) -> Any:
            return _tracker(self.scan_dir, self.tracking_uri, self.experiment)

        def _start(self, trial: Any) -> None:
            tags = {"mlflow.runName": f"trial-{trial.trial_id}", "hepscan.trial_name": str(trial)}
            params = {"family": cfg.family, **trial_params(trial.config)}
            self.tracker.start_trial(trial.trial_id, params, tags)

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
            from tracking.store import TrialStatus

            finished = trial_finished(dict(trial.last_result or {}), self.max_epochs)
            self._artifacts(trial)
            # Final metrics were logged with the last epoch (incl. best_<objective>); logging them
            # again would duplicate that step in the metric history.
            if finished:
                self.tracker.end_trial(trial.trial_id, TrialStatus.FINISHED)
            else:
                reason = "asha" if self.scheduler == "asha" else "stopped"
                self.tracker.end_trial(trial.trial_id, TrialStatus.KILLED, reason=reason)

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            from tracking.store import TrialStatus

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
