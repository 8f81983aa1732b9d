"""MLflow bookkeeping of a scan: one parent run per scan, one nested child run per trial.

Only the scan driver writes (trials report to the driver through Ray Tune and a Tune callback
in ``scan/`` calls this module), so one :class:`ScanTracker` with one ``MlflowClient`` owns all
writes.  Explicit run ids are used instead of MLflow's fluent active-run stack because many
trials are open at the same time in one thread.  Ray's own MLflow callback is not used: it
cannot nest runs and does not survive a restore.

The run-id mapping (parent run + one run per trial id) is kept in ``<scan_dir>/tracking.json``
and written atomically, so a resumed scan reuses its runs instead of creating duplicates.

Tracking store: by default ``sqlite:///<scan_dir>/mlflow.db`` with artifacts under
``<scan_dir>/mlartifacts``; review it with::

    mlflow ui --backend-store-uri sqlite:///<scan_dir>/mlflow.db --port 5000

or pass ``tracking_uri="http://host:5000"`` for a shared ``mlflow server``.

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
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure
    from mlflow import MlflowClient
    from mlflow.entities import Run

__all__ = [
    "ScanTracker",
    "TrialStatus",
    "default_tracking_uri",
    "runs_of_scan",
    "ui_command",
]

T = TypeVar("T")

MAPPING_FILE = "tracking.json"
TAG_TRIAL_ID = "trial_id"
TAG_SCAN_DIR = "hepscan.scan_dir"
TAG_KIND = "hepscan.kind"  # "scan" on the parent, "trial" on children
TAG_STOPPED_BY = "hepscan.stopped_by"
TAG_ERROR = "hepscan.error"
TAG_END_REASON = "hepscan.end_reason"
TAG_NONFINITE = "hepscan.nonfinite."
PARENT_TAG = "mlflow.parentRunId"
# Without it the MLflow 3 UI opens an experiment on its GenAI trace overview, not the runs table.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"

# MLflow rejects longer values (params: 6000 chars, tags: 8000) and larger batches.
_MAX_PARAM_LEN = 6000
_MAX_TAG_LEN = 8000
_MAX_PARAMS_PER_BATCH = 100
_MAX_METRICS_PER_BATCH = 1000
_LOCK_RETRY_S = 60.0


class TrialStatus(str, Enum):
    """Terminal MLflow run statuses used by hepscan."""

    FINISHED = "FINISHED"
    FAILED = "FAILED"
    KILLED = "KILLED"


def default_tracking_uri(scan_dir: str | Path) -> str:
    """The embedded store of a scan: a sqlite file inside the scan directory."""
    return f"sqlite:///{Path(scan_dir).resolve() / 'mlflow.db'}"


def ui_command(tracking_uri: str, port: int = 5000) -> str:
    """The exact command to review a scan's runs in the MLflow UI."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    return f"mlflow ui --backend-store-uri {tracking_uri} --port {port}"


def _client(tracking_uri: str) -> MlflowClient:
    # mlflow's sqlalchemy store triggers a SQLAlchemy 2.1 deprecation warning at import time;
    # it is mlflow's, not ours, and must not turn into an error under `-W error`.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The ``noload`` loader strategy is deprecated")
        if tracking_uri.startswith("sqlite:"):
            import mlflow.store.tracking.sqlalchemy_store  # noqa: F401
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=tracking_uri)


def _is_locked(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "database is locked" in text or "database table is locked" in text


def _retry(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Call ``fn`` and retry with backoff while sqlite reports a lock (another writer, the UI)."""
    deadline = time.monotonic() + _LOCK_RETRY_S
    delay = 0.05
    while True:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            if not _is_locked(exc) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def flatten(d: Mapping[str, Any], prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Nested mappings to one level with dotted keys; lists stay values (rendered as JSON)."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        full = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten(value, full, sep))
        else:
            out[full] = value
    return out


def _param_value(value: Any) -> str:
    if isinstance(value, str):
        text = value
    elif isinstance(value, Enum):
        text = str(value.value)
    elif isinstance(value, (list, tuple, dict)):
        text = json.dumps(value, default=str, sort_keys=True)
    else:
        text = str(value)
    return text if len(text) <= _MAX_PARAM_LEN else text[: _MAX_PARAM_LEN - 3] + "..."


def _tag_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= _MAX_TAG_LEN else text[: _MAX_TAG_LEN - 3] + "..."


def _json(data: Any) -> str:
    return json.dumps(data, default=str, indent=2, sort_keys=True)


def _quote(value: str) -> str | None:
    """A string literal for an MLflow search filter; None when the value holds both quote
    characters (the filter syntax has no escapes), and the caller must compare in Python."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return None


def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _git_sha() -> str | None:
    here = Path(__file__).resolve().parent
    for cwd in (here, Path.cwd()):
        try:
            out = subprocess.run(
                ["git", "rev-parse", "HEAD"],
                cwd=cwd,
                capture_output=True,
                text=True,
                timeout=5,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            continue
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    return None


def _hepscan_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hepscan")
    except PackageNotFoundError:
        return "unknown"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class ScanTracker:
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
        if not self._mapping_path.exists():
            return {}
        try:
            data = json.loads(self._mapping_path.read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return data if isinstance(data, dict) else {}

    def _save_state(self) -> None:
        self._state["tracking_uri"] = self.tracking_uri
        self._state["experiment"] = self.experiment_name
        self._state["experiment_id"] = self._experiment_id
        self._state.setdefault("trials", {})
        _write_json_atomic(self._mapping_path, self._state)

    @property
    def client(self) -> MlflowClient:
        if self._client_obj is None:
            self._client_obj = _client(self.tracking_uri)
        return self._client_obj

    @property
    def parent_run_id(self) -> str | None:
        value = self._state.get("parent_run_id")
        return str(value) if value else None

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = self._ensure_experiment()
        return self._experiment_id

    def trial_run_id(self, trial_id: str) -> str | None:
        """The MLflow run id of a trial, if one was started."""
        value = self._state.get("trials", {}).get(str(trial_id))
        return str(value) if value else None

    @property
    def trial_run_ids(self) -> dict[str, str]:
        return dict(self._state.get("trials", {}))

    def _ensure_experiment(self) -> str:
        exp = _retry(self.client.get_experiment_by_name, self.experiment_name)
        if exp is not None:
            if exp.lifecycle_stage == "deleted":
                _retry(self.client.restore_experiment, exp.experiment_id)
            if EXPERIMENT_KIND_TAG not in exp.tags:
                _retry(
                    self.client.set_experiment_tag,
                    exp.experiment_id,
                    EXPERIMENT_KIND_TAG,
                    EXPERIMENT_KIND,
                )
            return str(exp.experiment_id)
        # Artifacts live next to the embedded store; a remote server chooses its own location.
        location: str | None = None
        if not self.tracking_uri.startswith(("http://", "https://", "databricks")):
            location = self.artifact_location
        try:
            return str(
                _retry(
                    self.client.create_experiment,
                    self.experiment_name,
                    artifact_location=location,
                    tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
                )
            )
        except Exception:
            # Another driver created it between the lookup and the create.
            exp = _retry(self.client.get_experiment_by_name, self.experiment_name)
            if exp is None:
                raise
            return str(exp.experiment_id)

    def _get_run(self, run_id: str | None) -> Run | None:
        if not run_id:
            return None
        try:
            run = _retry(self.client.get_run, run_id)
        except Exception as exc:
            if _is_locked(exc):
                raise
            return None
        if run.info.lifecycle_stage == "deleted":
            return None
        return run

    def _search(self, filter_string: str) -> list[Run]:
        runs: list[Run] = []
        token: str | None = None
        while True:
            page = _retry(
                self.client.search_runs,
                [self.experiment_id],
                filter_string=filter_string,
                max_results=1000,
                page_token=token,
            )
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    # ---------------------------------------------------------------- writing helpers
    def _log_params(
        self, run_id: str, params: Mapping[str, Any], existing: Mapping[str, str]
    ) -> None:
        from mlflow.entities import Param

        # MLflow params are immutable: on resume only keys not yet logged are written.
        items = [
            Param(str(k), _param_value(v))
            for k, v in flatten(params).items()
            if str(k) not in existing
        ]
        for chunk in _chunks(items, _MAX_PARAMS_PER_BATCH):
            _retry(self.client.log_batch, run_id, params=chunk)

    def _set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        items = [RunTag(str(k), _tag_value(v)) for k, v in tags.items() if v is not None]
        for chunk in _chunks(items, _MAX_PARAMS_PER_BATCH):
            _retry(self.client.log_batch, run_id, tags=chunk)

    def _log_metrics(self, run_id: str, metrics: Mapping[str, Any], step: int) -> list[str]:
        """Log finite numeric metrics; returns the keys skipped as non-finite."""
        from mlflow.entities import Metric

        ts = _now_ms()
        good: list[Metric] = []
        bad: list[str] = []
        for key, value in metrics.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                continue
            if math.isfinite(number):
                good.append(Metric(str(key), number, ts, int(step)))
            else:
                bad.append(str(key))
        for chunk in _chunks(good, _MAX_METRICS_PER_BATCH):
            _retry(self.client.log_batch, run_id, metrics=chunk)
        if bad:
            # NaN/inf break the UI's charts; record where they happened instead.
            self._set_tags(run_id, {f"{TAG_NONFINITE}{k}": f"step {step}" for k in bad})
        return bad

    def _delete_tags(self, run: Run, keys: Iterable[str]) -> None:
        for key in keys:
            if key in run.data.tags:
                _retry(self.client.delete_tag, run.info.run_id, key)

    def _reopen(self, run: Run) -> None:
        if run.info.status != "RUNNING":
            _retry(self.client.update_run, run.info.run_id, status="RUNNING")
        self._delete_tags(run, (TAG_STOPPED_BY, TAG_ERROR, TAG_END_REASON))

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

    def _log_paths(
        self, run_id: str, paths: Iterable[str | Path], artifact_path: str | None
    ) -> None:
        for p in paths:
            path = Path(p)
            if path.is_dir():
                sub = f"{artifact_path}/{path.name}" if artifact_path else path.name
                _retry(self.client.log_artifacts, run_id, str(path), sub)
            elif path.is_file():
                _retry(self.client.log_artifact, run_id, str(path), artifact_path)
            else:
                raise FileNotFoundError(f"ScanTracker: artifact {path} does not exist")

    def _log_figure(self, run_id: str, fig_or_png_path: Figure | str | Path, name: str) -> None:
        stem = name[:-4] if name.endswith(".png") else name
        with tempfile.TemporaryDirectory() as tmp:
            dst = Path(tmp) / f"{stem}.png"
            if isinstance(fig_or_png_path, (str, Path)):
                src = Path(fig_or_png_path)
                if not src.is_file():
                    raise FileNotFoundError(f"ScanTracker: figure {src} does not exist")
                shutil.copyfile(src, dst)
            else:
                fig_or_png_path.savefig(dst, format="png", dpi=100)
            self._log_paths(run_id, [dst], "plots")

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

    def log_epoch(self, trial_id: str, step: int, metrics: Mapping[str, float]) -> None:
        """Per-epoch metrics with their step; NaN/inf values are skipped and tagged."""
        trial_id = str(trial_id)
        with self._lock:
            run_id = self._trial_run(trial_id)
            self._log_metrics(run_id, metrics, step)
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


def _runs_to_frame(runs: list[Run]) -> pd.DataFrame:
    import pandas as pd

    rows = []
    for run in runs:
        row: dict[str, Any] = {
            "run_id": run.info.run_id,
            "experiment_id": run.info.experiment_id,
            "status": run.info.status,
            "artifact_uri": run.info.artifact_uri,
            "start_time": pd.to_datetime(run.info.start_time, unit="ms", utc=True),
            "end_time": (
                pd.to_datetime(run.info.end_time, unit="ms", utc=True)
                if run.info.end_time
                else pd.NaT
            ),
            "run_name": run.info.run_name,
        }
        row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
        row.update({f"params.{k}": v for k, v in run.data.params.items()})
        row.update({f"tags.{k}": v for k, v in run.data.tags.items()})
        rows.append(row)
    columns = [
        "run_id",
        "experiment_id",
        "status",
        "artifact_uri",
        "start_time",
        "end_time",
        "run_name",
    ]
    return pd.DataFrame(rows, columns=None if rows else columns)


def runs_of_scan(tracking_uri: str, parent_run_id: str) -> pd.DataFrame:
    """All child runs of a scan, one row each, with the columns of ``mlflow.search_runs``
    (``run_id``, ``status``, ``metrics.*``, ``params.*``, ``tags.*``)."""
    client = _client(tracking_uri)
    parent = _retry(client.get_run, parent_run_id)
    runs: list[Run] = []
    token: str | None = None
    while True:
        page = _retry(
            client.search_runs,
            [parent.info.experiment_id],
            filter_string=f"tags.`{PARENT_TAG}` = '{parent_run_id}'",
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            break
    return _runs_to_frame(runs)
