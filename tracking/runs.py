"""MLflow bookkeeping of a scan: one parent run per scan, one nested child run per trial.

Only the scan driver writes (trials report to the driver through Ray Tune and a Tune callback
in ``scan/`` calls this module), so one :class:`ScanTracker` with one ``MlflowClient`` owns all
writes.  Explicit run ids are used instead of MLflow's fluent active-run stack because many
trials are open at the same time in one thread.  Ray's own MLflow callback is not used: it
cannot nest runs and does not survive a restore.

The run-id mapping (parent run + one run per trial id) is kept in ``<scan_dir>/tracking.json``
and written atomically, so a resumed scan reuses its runs instead of creating duplicates.
Driver sequence::

    tracker = ScanTracker(scan_dir)                         # or tracking_uri=...
    tracker.start_scan(name, config, search_space)          # new or resumed parent run
    tracker.start_trial(trial_id, params)                   # Tune callback: on_trial_start
    tracker.log_epoch(trial_id, step, metrics)              # on_trial_result
    tracker.end_trial(trial_id, TrialStatus.KILLED, reason="asha")   # stopped by the scheduler
    tracker.end_trial(trial_id, TrialStatus.FAILED, reason=str(exc))  # on_trial_error
    tracker.end_trial(trial_id, TrialStatus.FINISHED, final_metrics)  # on_trial_complete
    tracker.close_dangling(TrialStatus.KILLED, "interrupt")            # SIGTERM/SIGINT handler
    tracker.end_scan(TrialStatus.FINISHED, summary)

The store, its URI and the retried client are in :mod:`tracking.store`; the low-level writes in
:mod:`tracking.writer`.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracking.store import (
    MAPPING_FILE,
    PARENT_TAG,
    TAG_END_REASON,
    TAG_ERROR,
    TAG_KIND,
    TAG_SCAN_DIR,
    TAG_STOPPED_BY,
    TAG_TRIAL_ID,
    TrialStatus,
    _git_sha,
    _hepscan_version,
    _json,
    _quote,
    _retry,
    _tag_value,
    _write_json_atomic,
    default_tracking_uri,
    flatten,
    read_mapping,
    runs_of_scan,
    ui_command,
)
from tracking.writer import RunWriter

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient
    from mlflow.entities import Run

__all__ = [
    "MAPPING_FILE",
    "ScanTracker",
    "TrialStatus",
    "default_tracking_uri",
    "flatten",
    "runs_of_scan",
    "ui_command",
]


class ScanTracker(RunWriter):
    """Writes one scan's parent run and its nested trial runs to MLflow.

    Thread-safe (one lock around the client) and resume-safe: construct it again on the same
    ``scan_dir`` and :meth:`start_scan` / :meth:`start_trial` reuse the runs already recorded.
    """

    def __init__(
        self,
        scan_dir: str | Path,
        tracking_uri: str | None = None,
        experiment: str = "hepscan",
    ) -> None:
        self.scan_dir = Path(scan_dir).resolve()
        self.scan_dir.mkdir(parents=True, exist_ok=True)
        self._mapping_path = self.scan_dir / MAPPING_FILE
        self._state = self._load_state()
        stored_uri = self._state.get("tracking_uri")
        # A resume without --tracking-uri goes back to the store the scan started with.
        self.tracking_uri: str = tracking_uri or stored_uri or default_tracking_uri(self.scan_dir)
        self.experiment_name = self._state.get("experiment") or experiment
        if tracking_uri and stored_uri and tracking_uri != stored_uri:
            # Runs of the old store are unknown to the new one: start a fresh mapping.
            self._state = {}
            self.experiment_name = experiment
        self.artifact_location = (self.scan_dir / "mlartifacts").as_uri()
        self._lock = threading.RLock()
        self._client_obj: MlflowClient | None = None
        self._experiment_id: str | None = self._state.get("experiment_id")
        self._last_step: dict[str, int] = {}

    # ---------------------------------------------------------------- state & client
    def _load_state(self) -> dict[str, Any]:
        return read_mapping(self._mapping_path)

    def _save_state(self) -> None:
        self._state["tracking_uri"] = self.tracking_uri
        self._state["experiment"] = self.experiment_name
        self._state["experiment_id"] = self._experiment_id
        self._state.setdefault("trials", {})
        _write_json_atomic(self._mapping_path, self._state)

    @property
    def parent_run_id(self) -> str | None:
        value = self._state.get("parent_run_id")
        return str(value) if value else None

    def trial_run_id(self, trial_id: str) -> str | None:
        """The MLflow run id of a trial, if one was started."""
        value = self._state.get("trials", {}).get(str(trial_id))
        return str(value) if value else None

    @property
    def trial_run_ids(self) -> dict[str, str]:
        return dict(self._state.get("trials", {}))

    # ---------------------------------------------------------------- scan
    def start_scan(
        self,
        name: str,
        config: Mapping[str, Any],
        search_space: Mapping[str, Any],
        tags: Mapping[str, str] | None = None,
    ) -> str:
        """Create the parent run, or reopen it (as RUNNING) when the scan directory has one.

        On reuse, trial runs left RUNNING by a driver that died without clean-up are marked
        KILLED (``hepscan.stopped_by=interrupt``); Tune reopens the ones it resumes.
        """
        with self._lock:
            self._experiment_id = self._ensure_experiment()
            run = self._get_run(self.parent_run_id)
            if run is None:
                # Mapping file lost: find the parent through its scan-directory tag.
                found = [
                    r
                    for r in self._search(f"tags.`{TAG_KIND}` = 'scan'")
                    if r.data.tags.get(TAG_SCAN_DIR) == str(self.scan_dir)
                ]
                run = found[0] if found else None
            space_json = json.dumps(search_space, default=str, sort_keys=True)
            sha = _git_sha()
            base_tags: dict[str, Any] = {
                TAG_KIND: "scan",
                TAG_SCAN_DIR: str(self.scan_dir),
                "hepscan.version": _hepscan_version(),
                "hepscan.host": socket.gethostname(),
                "mlflow.source.git.commit": sha,
                "hepscan.git_sha": sha,
                "hepscan.slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            }
            base_tags.update(tags or {})
            if run is None:
                run = _retry(
                    self.client.create_run,
                    self.experiment_id,
                    run_name=name,
                    tags={k: _tag_value(v) for k, v in base_tags.items() if v is not None},
                )
                resumed = False
            else:
                self._reopen(run)
                resumed = True
                base_tags["hepscan.resumed_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
                self._set_tags(run.info.run_id, base_tags)
            run_id = run.info.run_id
            self._state["parent_run_id"] = run_id
            self._save_state()
            existing = run.data.params if resumed else {}
            self._log_params(run_id, {**flatten(config), "search_space": space_json}, existing)
            if not resumed:
                _retry(self.client.log_text, run_id, _json(config), "config.json")
                _retry(self.client.log_text, run_id, _json(search_space), "search_space.json")
            else:
                self._close_children(TrialStatus.KILLED, "interrupt", only_running=True)
            return str(run_id)

    def end_scan(self, status: TrialStatus, summary: Mapping[str, Any] | None = None) -> None:
        """Terminate the parent run; numeric summary entries become metrics, others tags."""
        status = TrialStatus(status)
        with self._lock:
            run_id = self._require_parent()
            if summary:
                numeric = {
                    k: v
                    for k, v in flatten(summary).items()
                    if isinstance(v, (int, float)) and not isinstance(v, bool)
                }
                other = {
                    f"hepscan.summary.{k}": v
                    for k, v in flatten(summary).items()
                    if k not in numeric
                }
                self._log_metrics(run_id, numeric, step=0)
                self._set_tags(run_id, other)
                _retry(self.client.log_text, run_id, _json(summary), "summary.json")
            _retry(self.client.set_terminated, run_id, status.value)

    def log_scan_artifacts(
        self, paths: Iterable[str | Path], artifact_path: str | None = None
    ) -> None:
        """Copy files or directories (report, Optuna study, plots) into the parent run."""
        with self._lock:
            self._log_paths(self._require_parent(), paths, artifact_path)

    def log_scan_figure(self, fig_or_png_path: Figure | str | Path, name: str) -> None:
        """Store a Figure or PNG as ``plots/<name>.png`` of the parent run."""
        with self._lock:
            self._log_figure(self._require_parent(), fig_or_png_path, name)

    def _require_parent(self) -> str:
        run_id = self.parent_run_id
        if run_id is None:
            raise RuntimeError("ScanTracker: start_scan() must be called first")
        return run_id

    # ---------------------------------------------------------------- trials
    def _find_trial_run(self, trial_id: str) -> Run | None:
        run = self._get_run(self.trial_run_id(trial_id))
        if run is not None:
            return run
        parent = self._require_parent()
        flt = f"tags.`{PARENT_TAG}` = '{parent}'"
        literal = _quote(trial_id)
        if literal is not None:
            flt += f" and tags.`{TAG_TRIAL_ID}` = {literal}"
        found = [r for r in self._search(flt) if r.data.tags.get(TAG_TRIAL_ID) == trial_id]
        return found[0] if found else None

    def _trial_run(self, trial_id: str) -> str:
        run_id = self.trial_run_id(trial_id)
        if run_id is None:
            run = self._find_trial_run(trial_id)
            if run is None:
                raise KeyError(f"ScanTracker: no run for trial {trial_id!r}; call start_trial()")
            run_id = run.info.run_id
            self._state.setdefault("trials", {})[trial_id] = run_id
            self._save_state()
        return run_id

    def start_trial(
        self, trial_id: str, params: Mapping[str, Any], tags: Mapping[str, Any] | None = None
    ) -> str:
        """Create the child run of a trial, or reopen the one it already has (resume, retry)."""
        trial_id = str(trial_id)
        with self._lock:
            parent = self._require_parent()
            run = self._find_trial_run(trial_id)
            all_tags: dict[str, Any] = {
                PARENT_TAG: parent,
                TAG_TRIAL_ID: trial_id,
                TAG_KIND: "trial",
                TAG_SCAN_DIR: str(self.scan_dir),
            }
            all_tags.update(tags or {})
            if run is None:
                run = _retry(
                    self.client.create_run,
                    self.experiment_id,
                    run_name=str(all_tags.pop("mlflow.runName", trial_id)),
                    tags={k: _tag_value(v) for k, v in all_tags.items() if v is not None},
                )
                existing: Mapping[str, str] = {}
            else:
                self._reopen(run)
                self._set_tags(run.info.run_id, all_tags)
                existing = run.data.params
            run_id = str(run.info.run_id)
            self._state.setdefault("trials", {})[trial_id] = run_id
            self._save_state()
            self._log_params(run_id, params, existing)
            if not existing:
                _retry(self.client.log_text, run_id, _json(params), "trial_config.json")
            return run_id

    def log_epoch(
        self,
        trial_id: str,
        step: int,
        metrics: Mapping[str, float],
        timestamp_ms: int | None = None,
    ) -> None:
        """Per-epoch metrics with their step (and time: now unless given, e.g. by a write
        retried after a tracking outage); NaN/inf values are skipped and tagged."""
        trial_id = str(trial_id)
        with self._lock:
            run_id = self._trial_run(trial_id)
            self._log_metrics(run_id, metrics, step, timestamp_ms)
            self._last_step[trial_id] = max(self._last_step.get(trial_id, int(step)), int(step))

    def log_trial_artifacts(
        self,
        trial_id: str,
        paths: Iterable[str | Path],
        artifact_path: str | None = None,
    ) -> None:
        """Copy files or directories (checkpoint, config, plots) into the trial run."""
        with self._lock:
            self._log_paths(self._trial_run(str(trial_id)), paths, artifact_path)

    def log_trial_figure(
        self, trial_id: str, fig_or_png_path: Figure | str | Path, name: str
    ) -> None:
        """Store a matplotlib Figure or an existing PNG as ``plots/<name>.png`` of the trial."""
        with self._lock:
            self._log_figure(self._trial_run(str(trial_id)), fig_or_png_path, name)

    def set_trial_tags(self, trial_id: str, tags: Mapping[str, Any]) -> None:
        """Extra tags on a trial run (e.g. the checkpoint directory, the Tune trial dir)."""
        with self._lock:
            self._set_tags(self._trial_run(str(trial_id)), tags)

    def end_trial(
        self,
        trial_id: str,
        status: TrialStatus,
        final_metrics: Mapping[str, Any] | None = None,
        reason: str | None = None,
    ) -> None:
        """Terminate a trial run.

        KILLED: ``hepscan.stopped_by=<reason>`` ("asha", "interrupt", ...).  FAILED:
        ``hepscan.error=<reason>``.  Final metrics are logged at the trial's last epoch step, so
        the UI's "latest value" columns show them.
        """
        trial_id = str(trial_id)
        status = TrialStatus(status)
        with self._lock:
            run_id = self._trial_run(trial_id)
            tags: dict[str, Any] = {}
            if status is TrialStatus.KILLED:
                tags[TAG_STOPPED_BY] = reason or "unknown"
            elif status is TrialStatus.FAILED:
                tags[TAG_ERROR] = reason or "unknown error"
            if reason:
                tags[TAG_END_REASON] = reason
            if final_metrics:
                step = self._last_step.get(trial_id)
                if step is None:
                    step = self._max_logged_step(run_id)
                self._log_metrics(run_id, final_metrics, step)
            if tags:
                self._set_tags(run_id, tags)
            _retry(self.client.set_terminated, run_id, status.value)

    def _max_logged_step(self, run_id: str) -> int:
        run = self._get_run(run_id)
        if run is None or not run.data.metrics:
            return 0
        steps = [
            m.step
            for key in run.data.metrics
            for m in _retry(self.client.get_metric_history, run_id, key)
        ]
        return max(steps, default=0)

    # ---------------------------------------------------------------- clean-up
    def _close_children(self, status: TrialStatus, reason: str, only_running: bool) -> int:
        parent = self.parent_run_id
        if parent is None:
            return 0
        flt = f"tags.`{PARENT_TAG}` = '{parent}'"
        if only_running:
            flt += " and attributes.status = 'RUNNING'"
        n = 0
        for run in self._search(flt):
            if run.info.status != "RUNNING":
                continue
            self._mark(run.info.run_id, status, reason)
            n += 1
        return n

    def _mark(self, run_id: str, status: TrialStatus, reason: str) -> None:
        tags: dict[str, Any] = {TAG_END_REASON: reason}
        if status is TrialStatus.KILLED:
            tags[TAG_STOPPED_BY] = reason
        elif status is TrialStatus.FAILED:
            tags[TAG_ERROR] = reason
        self._set_tags(run_id, tags)
        _retry(self.client.set_terminated, run_id, status.value)

    def close_dangling(
        self,
        status: TrialStatus = TrialStatus.KILLED,
        reason: str = "interrupted",
        include_parent: bool = True,
    ) -> int:
        """Set every run of this scan still RUNNING (children, and the parent unless
        ``include_parent=False``) to ``status``; returns how many were closed."""
        status = TrialStatus(status)
        with self._lock:
            n = self._close_children(status, reason, only_running=True)
            if include_parent:
                run = self._get_run(self.parent_run_id)
                if run is not None and run.info.status == "RUNNING":
                    self._mark(run.info.run_id, status, reason)
                    n += 1
            return n
