"""Models, datasets and applications in MLflow: log a bundle as a pyfunc model into a run,
register it, record dataset inputs, and track one ``hepscan apply`` as a run.

.. code-block:: python

    from tracking.model import log_bundle, log_dataset, ApplyRun
    info = log_bundle(uri, trial_run_id, "bundle_dir", example_df, register_as="demo_unfold_zll",
                      tags={"hepscan.trial_id": "abc"})
    info["model_uri"], info["version"]                     # "models:/demo_unfold_zll/1", "1"
    log_dataset(uri, [parent_id, *child_ids], name="zll", digest="…", source="/data/zll",
                schema={"feat_reco_mass": "float32", ...})
    with ApplyRun(uri, "demo_unfold_zll-apply", tags={...}) as run:
        run.log(params={...}, metrics={...}, artifacts_dir=tmp)   # FAILED on an exception

Loading a registered model back needs none of ``scan``/Ray/Horovod: :mod:`tracking.pyfunc`.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.errors import InputError, require
from tracking.store import (
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    TrialStatus,
    _client,
    _param_value,
    _retry,
    _tag_value,
    flatten,
)

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "ApplyRun",
    "MODEL_NAME",
    "TAG_MODEL_RANK",
    "download_bundle",
    "log_bundle",
    "log_dataset",
    "resolve_model_uri",
]

MODEL_NAME = "model"  # the logged model's name inside a run (runs:/<id>/model)
TAG_MODEL_RANK = "hepscan.rank"
TAG_PARENT = "hepscan.parent_run_id"
_ENV_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR")


@contextlib.contextmanager
def _fluent(tracking_uri: str) -> Iterator[Any]:
    """The fluent MLflow API pointed at ``tracking_uri`` for the block (restored after)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The ``noload`` loader strategy is deprecated")
        _client(tracking_uri)  # imports mlflow (and its sqlalchemy store) quietly
        import mlflow

    import logging

    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    # The raw settings (None when unset): set_tracking_uri() also exports the URI as
    # MLFLOW_TRACKING_URI, which must not outlive the block (a later default would follow it).
    saved_env = {k: os.environ.get(k) for k in _ENV_KEYS}
    old_tracking = tracking_utils._tracking_uri
    old_registry = registry_utils._registry_uri
    os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    log = logging.getLogger("mlflow")
    level = log.level
    log.setLevel(logging.ERROR)  # "Created version '1'", the CloudPickle advice: not ours
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield mlflow
    finally:
        mlflow.set_tracking_uri(old_tracking)  # type: ignore[arg-type]  # None: unset
        registry_utils._registry_uri = old_registry
        log.setLevel(level)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _registry_client(tracking_uri: str) -> Any:
    """A client whose model registry is the tracking store (MLflow's default registry URI
    follows the process-wide setting, not the client's tracking URI)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"The ``noload`` loader strategy is deprecated")
        _client(tracking_uri)
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _pyfunc() -> Any:
    """:mod:`tracking.pyfunc`, imported with mlflow.pyfunc's import-time warnings silenced
    (mlflow 3 warns about its own type hints when ``mlflow.pyfunc`` is first imported)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        require("mlflow")
        import tracking.pyfunc

    return tracking.pyfunc


def _code_paths() -> list[str]:
    """The packages a pyfunc model needs at load time (copied into the model)."""
    root = Path(__file__).resolve().parents[1]
    return [str(root / "models"), str(root / "tracking")]


def _requirements() -> list[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for pkg in ("torch", "numpy", "pandas", "mlflow", "zuko"):
        try:
            out.append(f"{pkg}=={version(pkg)}")
        except PackageNotFoundError:
            continue
    return out


def log_bundle(
    tracking_uri: str,
    run_id: str,
    bundle_dir: str | os.PathLike[str],
    example: pd.DataFrame,
    *,
    register_as: str | None = None,
    tags: Mapping[str, Any] | None = None,
    output: str | None = None,
) -> dict[str, Any]:
    """Log ``bundle_dir`` as the pyfunc model ``model`` of ``run_id`` (signature inferred from
    ``example`` and its prediction), and register it as ``register_as`` when given.

    The run keeps its status (a finished trial stays FINISHED). Returns ``model_uri`` (the
    registered version's ``models:/NAME/V``, else ``runs:/<run>/model``), ``run_uri``,
    ``name``, ``version``."""
    from models.bundle import ModelBundle

    pyfunc = _pyfunc()
    from mlflow.models import infer_signature

    bundle = ModelBundle.load(bundle_dir)
    pred = bundle.predict(example, output=output)
    import pandas as pd

    params = {"output": output or "", "seed": 0}
    signature = infer_signature(example, pd.DataFrame(pred), params=params)
    client = _registry_client(tracking_uri)
    before = _retry(client.get_run, run_id)
    status = before.info.status
    str_tags = {str(k): _tag_value(v) for k, v in (tags or {}).items() if v is not None}
    with _fluent(tracking_uri) as mlflow, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mlflow's own deprecation/future warnings
        with mlflow.start_run(run_id=run_id):
            info = mlflow.pyfunc.log_model(
                name=MODEL_NAME,
                python_model=pyfunc.BundleModel(),
                artifacts={pyfunc.BUNDLE_ARTIFACT: str(bundle_dir)},
                code_paths=_code_paths(),
                signature=signature,
                input_example=example,
                pip_requirements=_requirements(),
                tags=str_tags or None,
            )
    # start_run/end_run reopened the run and ended it FINISHED: restore what it was
    if status != "RUNNING":
        _retry(client.set_terminated, run_id, status, before.info.end_time)
    out: dict[str, Any] = {
        "run_uri": f"runs:/{run_id}/{MODEL_NAME}",
        "model_uri": info.model_uri,
        "model_id": getattr(info, "model_id", None),
        "name": None,
        "version": None,
    }
    if register_as:
        with _fluent(tracking_uri) as mlflow, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quiet = io.StringIO()  # "Successfully registered model ..." is printed, not logged
            with contextlib.redirect_stdout(quiet), contextlib.redirect_stderr(quiet):
                mv = mlflow.register_model(info.model_uri, register_as, tags=str_tags or None)
        _retry(client.update_model_version, register_as, mv.version, _description(bundle))
        out.update(name=register_as, version=str(mv.version))
        out["model_uri"] = f"models:/{register_as}/{mv.version}"
    return out


def _description(bundle: Any) -> str:
    info = bundle.info
    return (
        f"hepscan {bundle.family} model, trial {info.get('trial_id')} of scan "
        f"{info.get('scan_name')} ({info.get('monitor')} = {info.get('best')}); "
        f"dataset {info.get('dataset')} (digest {info.get('dataset_digest')})"
    )


def log_dataset(
    tracking_uri: str,
    run_ids: Sequence[str],
    *,
    name: str,
    digest: str,
    source: str,
    schema: Mapping[str, str],
    context: str = "training",
) -> None:
    """Record a dataset (name, digest, source path, column schema) as an input of each run."""
    import numpy as np
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.types import ColSpec, Schema

    def col(n: str, dtype: str) -> ColSpec:
        kind = np.dtype(dtype).kind if dtype != "bool" else "b"
        t = {"f": "double", "i": "long", "u": "long", "b": "boolean"}.get(kind, "string")
        if dtype == "float32":
            t = "float"
        elif dtype in ("int32", "int16", "int8"):
            t = "integer"
        return ColSpec(t, n)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        src = resolve_dataset_source(str(source))
    ds = MetaDataset(  # type: ignore[abstract]
        source=src,
        name=name,
        digest=digest,
        schema=Schema([col(n, d) for n, d in schema.items()]),
    )
    entity = ds._to_mlflow_entity()
    client = _client(tracking_uri)
    for run_id in run_ids:
        _retry(
            client.log_inputs,
            run_id,
            [DatasetInput(entity, [InputTag("mlflow.data.context", context)])],
        )


def resolve_model_uri(tracking_uri: str, uri: str) -> dict[str, Any]:
    """``runs:/<id>/…``, ``models:/NAME/V`` or ``models:/NAME@alias`` -> ``{"uri", "name",
    "version", "run_id", "tags"}``; an InputError names the URI when it does not exist."""
    client = _registry_client(tracking_uri)
    if uri.startswith("runs:/"):
        run_id = uri[len("runs:/") :].split("/")[0]
        try:
            _retry(client.get_run, run_id)
        except Exception as exc:  # noqa: BLE001 - MlflowException for an unknown run
            raise InputError(f"{uri}: no such run in {tracking_uri} ({_first(exc)})") from None
        return {"uri": uri, "name": None, "version": None, "run_id": run_id, "tags": {}}
    if not uri.startswith("models:/"):
        raise InputError(f"{uri}: not an MLflow model URI (runs:/… or models:/…)")
    rest = uri[len("models:/") :]
    try:
        if "@" in rest:
            name, alias = rest.split("@", 1)
            mv = _retry(client.get_model_version_by_alias, name, alias)
        else:
            name, _, version = rest.partition("/")
            if not version or "/" in version:
                raise InputError(f"{uri}: expected models:/NAME/VERSION or models:/NAME@ALIAS")
            mv = _retry(client.get_model_version, name, version)
    except InputError:
        raise
    except Exception as exc:  # noqa: BLE001 - MlflowException: unknown name/version/alias
        raise InputError(
            f"{uri}: no such model version in {tracking_uri} ({_first(exc)})"
        ) from None
    return {
        "uri": f"models:/{mv.name}/{mv.version}",
        "name": mv.name,
        "version": str(mv.version),
        "run_id": mv.run_id,
        "tags": dict(mv.tags or {}),
    }


def _first(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def download_bundle(tracking_uri: str, uri: str, dest: str | os.PathLike[str]) -> Path:
    """Download the bundle directory of the model at ``uri`` into ``dest``; returns its path."""
    bundle_artifact = _pyfunc().BUNDLE_ARTIFACT
    with _fluent(tracking_uri) as mlflow, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            local = mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest))
        except Exception as exc:  # noqa: BLE001 - MlflowException: no such artifact
            raise InputError(f"{uri}: cannot download the model ({_first(exc)})") from None
    root = Path(local)
    for candidate in (root / "artifacts" / bundle_artifact, root / "bundle"):
        if (candidate / "bundle.json").exists():
            return candidate
    found = sorted(root.rglob("bundle.json"))
    if not found:
        raise InputError(f"{uri}: not a hepscan model (no bundle artifact)")
    return found[0].parent


class ApplyRun:
    """One ``hepscan apply`` as a run of experiment ``experiment``; ends FAILED (tag
    ``hepscan.error``) when the block raises, FINISHED otherwise."""

    def __init__(self, tracking_uri: str, experiment: str, tags: Mapping[str, Any]) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.tags = dict(tags)
        self.run_id: str | None = None

    def __enter__(self) -> ApplyRun:
        client = _client(self.tracking_uri)
        exp = _retry(client.get_experiment_by_name, self.experiment)
        if exp is None:
            exp_id = _retry(
                client.create_experiment,
                self.experiment,
                tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
            )
        else:
            exp_id = exp.experiment_id
        tags = {k: _tag_value(v) for k, v in self.tags.items() if v is not None}
        tags["hepscan.kind"] = "apply"
        run = _retry(client.create_run, exp_id, tags=tags, run_name=self.tags.get("mlflow.runName"))
        self.run_id = run.info.run_id
        return self

    def log(
        self,
        *,
        params: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        tags: Mapping[str, Any] | None = None,
        artifacts_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        import math

        from mlflow.entities import Metric, Param, RunTag

        assert self.run_id is not None
        client = _client(self.tracking_uri)
        p = [Param(k, _param_value(v)) for k, v in flatten(dict(params or {})).items()]
        m = []
        for k, v in (metrics or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                m.append(Metric(k, float(v), 0, 0))
        t = [RunTag(k, _tag_value(v)) for k, v in (tags or {}).items() if v is not None]
        for i in range(0, max(len(p), len(m), len(t)), 100):
            _retry(
                client.log_batch,
                self.run_id,
                metrics=m[i : i + 100],
                params=p[i : i + 100],
                tags=t[i : i + 100],
            )
        if artifacts_dir is not None:
            _retry(client.log_artifacts, self.run_id, str(artifacts_dir))

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if self.run_id is None:
            return
        client = _client(self.tracking_uri)
        if exc is None:
            _retry(client.set_terminated, self.run_id, TrialStatus.FINISHED.value)
            return
        with contextlib.suppress(Exception):  # the original error matters more
            _retry(client.set_tag, self.run_id, "hepscan.error", _tag_value(_first(exc)))
        with contextlib.suppress(Exception):
            _retry(client.set_terminated, self.run_id, TrialStatus.FAILED.value)
