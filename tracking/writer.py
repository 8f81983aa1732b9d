"""Low-level writes into one MLflow experiment (params, tags, metrics, artifacts), each retried
while sqlite reports a lock; :class:`tracking.runs.ScanTracker` builds the scan's runs on it."""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tracking.store import (
    _MAX_METRICS_PER_BATCH,
    _MAX_PARAMS_PER_BATCH,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    TAG_END_REASON,
    TAG_ERROR,
    TAG_NONFINITE,
    TAG_STOPPED_BY,
    _chunks,
    _client,
    _is_locked,
    _now_ms,
    _param_value,
    _retry,
    _tag_value,
    flatten,
    is_not_found,
    tracking_error,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from mlflow import MlflowClient
    from mlflow.entities import Run

__all__ = ["RunWriter"]


class RunWriter:
    """The MLflow client of one experiment and the writes every run of it needs."""

    tracking_uri: str
    experiment_name: str
    artifact_location: str
    _client_obj: MlflowClient | None
    _experiment_id: str | None

    @property
    def client(self) -> MlflowClient:
        if self._client_obj is None:
            self._client_obj = _client(self.tracking_uri)
        return self._client_obj

    @property
    def experiment_id(self) -> str:
        if self._experiment_id is None:
            self._experiment_id = self._ensure_experiment()
        return self._experiment_id

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
            # Only "no such run" means no run (a store that was replaced, a deleted run); a lock
            # that outlasted the retries, a server error or a broken connection is an error,
            # not a reason to open a duplicate run.
            if is_not_found(exc):
                return None
            if _is_locked(exc):
                raise
            raise tracking_error(self.tracking_uri, f"reading run {run_id}", exc) from exc
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

    def _log_metrics(
        self, run_id: str, metrics: Mapping[str, Any], step: int, timestamp_ms: int | None = None
    ) -> list[str]:
        """Log finite numeric metrics; returns the keys skipped as non-finite."""
        from mlflow.entities import Metric

        ts = _now_ms() if timestamp_ms is None else int(timestamp_ms)
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
