"""The MLflow store: run statuses, the default sqlite URI, a client retried through sqlite locks,
MLflow's value limits, and reading a scan's runs back (:func:`runs_of_scan`).

Tracking store: by default ``sqlite:///<scan_dir>/mlflow.db`` with artifacts under
``<scan_dir>/mlartifacts``; review it with::

    mlflow ui --backend-store-uri sqlite:///<scan_dir>/mlflow.db --port 5000

``import tracking.store`` imports no MLflow; :func:`_client` does, through ``require``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from models.errors import HepscanError, InputError, require

if TYPE_CHECKING:
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities import Run

__all__ = [
    "MAPPING_FILE",
    "TrialStatus",
    "default_tracking_uri",
    "flatten",
    "read_mapping",
    "redact_uri",
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


_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?P<user>[^/@:\s]*):[^/@\s]*@")


def redact_uri(text: str) -> str:
    """``text`` with the password of every ``scheme://user:password@host`` in it replaced by
    ``***`` (``postgresql://me:***@db/mlflow``): what may be logged, printed or tagged."""
    return _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)


def _redact_value(value: Any) -> Any:
    """``value`` with :func:`redact_uri` applied to every string inside it."""
    if isinstance(value, str):
        return redact_uri(value)
    if isinstance(value, Mapping):
        return {k: _redact_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_redact_value(v) for v in value)
    return value


def read_mapping(path: Path) -> dict[str, Any]:
    """The content of a scan's ``tracking.json`` (parent run, trial -> run id, store URI);
    ``{}`` when the file does not exist.  A file that exists but cannot be read or is not a
    JSON object is an :class:`~models.errors.InputError` naming it: reading it as ``{}`` would
    make a resume open a second parent run and duplicate every trial's run."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise InputError(f"{path}: cannot read the scan's MLflow run mapping ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{path}: corrupt MLflow run mapping ({exc}); restore it from a backup, or move it "
            "away to start the scan's MLflow runs afresh"
        ) from None
    if not isinstance(data, dict):
        raise InputError(
            f"{path}: corrupt MLflow run mapping (a JSON object expected, found "
            f"{type(data).__name__})"
        )
    return data


def is_not_found(exc: BaseException) -> bool:
    """Whether an MLflow error says the run/experiment does not exist (and nothing else)."""
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def tracking_error(uri: str, what: str, exc: BaseException) -> HepscanError:
    """One clear error for an unexpected failure of the MLflow store (password redacted)."""
    return HepscanError(
        f"MLflow store {redact_uri(uri)}: {what} failed ({type(exc).__name__}: "
        f"{redact_uri(str(exc))})"
    )


def ui_command(tracking_uri: str, port: int = 5000) -> str:
    """The exact command to review a scan's runs in the MLflow UI (any password as ``***``)."""
    tracking_uri = redact_uri(tracking_uri)
    if tracking_uri.startswith(("http://", "https://")):
        return f"open {tracking_uri}"
    return f"mlflow ui --backend-store-uri {tracking_uri} --port {port}"


def _client(tracking_uri: str) -> MlflowClient:
    # mlflow's sqlalchemy store triggers a SQLAlchemy 2.1 deprecation warning at import time;
    # it is mlflow's, not ours, and must not turn into an error under `-W error`.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The ``noload`` loader strategy is deprecated")
        mlflow = require("mlflow")
        if tracking_uri.startswith("sqlite:"):
            import mlflow.store.tracking.sqlalchemy_store  # noqa: F401

        if redact_uri(tracking_uri) != tracking_uri:
            # MLflow prints "View run ... at: <tracking URI>/#/..." to stdout when a run ends
            # on an HTTP server: with user:password@ in the URI, the password in the job log.
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        client: MlflowClient = mlflow.MlflowClient(tracking_uri=tracking_uri)
        return client


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
    """A param's text: JSON for containers, any URI password as ``***``, cut to MLflow's limit."""
    value = _redact_value(value)
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
    text = redact_uri(str(value))
    return text if len(text) <= _MAX_TAG_LEN else text[: _MAX_TAG_LEN - 3] + "..."


def _json(data: Any) -> str:
    """An artifact's JSON text, any URI password as ``***``."""
    return json.dumps(_redact_value(data), default=str, indent=2, sort_keys=True)


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
