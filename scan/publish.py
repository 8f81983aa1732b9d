"""The end of a scan in MLflow: dataset inputs on every run, the best model logged and registered.

At the end of ``hepscan scan`` and ``hepscan resume`` (:mod:`scan.driver`):

1. the scan's dataset (name = the manifest's sample, digest from its checksums, source = the
   dataset directory, schema = its columns) becomes an MLflow dataset input of the parent run
   and of every trial run — the UI's *Dataset* column;
2. the best ``register_top`` trials (config key, ``--register-top K``; by the primary
   objective, trials that reported it and have a checkpoint) are bundled
   (:func:`jobs.apply.bundle_from_checkpoint`: the trial's ``best.pt`` + the manifest) and
   logged as the pyfunc model ``model`` of their trial run (:func:`tracking.model.log_bundle`),
   and registered under the scan's ``name`` (``register: true``, the default), another name
   (``register: other_name``) or not at all (``register: false``). Version tags link the parent
   run, the trial, its rank and the git sha.

What was published is kept in ``SCAN_DIR/models.json`` (:func:`published_models`); a resumed
scan that ends with the same best checkpoints does not register them again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.errors import InputError

if TYPE_CHECKING:
    from scan.config import ScanConfig
    from scan.report import ScanResult

__all__ = ["MODELS_FILE", "publish", "published_models", "ranked_checkpoints", "trial_checkpoint"]

log = logging.getLogger(__name__)

MODELS_FILE = "models.json"
EXAMPLE_ROWS = 5


def registered_name(cfg: ScanConfig) -> str | None:
    """The Model Registry name of a scan (None: ``register: false``)."""
    reg = cfg.register_model
    if reg is False or reg == "":
        return None
    return cfg.name if reg is True else str(reg)


def trial_checkpoint(scan_dir: Path, trial_id: str) -> Path | None:
    """The newest Tune checkpoint directory of a trial holding ``best.pt`` or ``last.pt``."""
    from scan.state import TUNE_DIR

    trial_dir = scan_dir / TUNE_DIR / f"trial_{trial_id}"
    found = sorted(trial_dir.glob("checkpoint_*"), key=lambda p: p.name, reverse=True)
    for d in found:
        if (d / "best.pt").exists() or (d / "last.pt").exists():
            return d
    return None


def ranked_checkpoints(result: ScanResult, k: int) -> list[tuple[int, str, Path, dict[str, float]]]:
    """(rank, trial id, checkpoint dir, best objective metrics) of the ``k`` best trials."""
    out: list[tuple[int, str, Path, dict[str, float]]] = []
    objectives = [m for m, _ in result.objectives]
    for _, row in result.ranked().iterrows():
        value = row.get(f"best_{objectives[0]}") if objectives else None
        if not isinstance(value, float | int) or not math.isfinite(float(value)):
            continue
        ckpt = trial_checkpoint(result.scan_dir, str(row["trial_id"]))
        if ckpt is None:
            continue
        metrics = {
            f"best_{m}": float(row[f"best_{m}"])
            for m in objectives
            if math.isfinite(float(row.get(f"best_{m}", math.nan)))
        }
        out.append((len(out) + 1, str(row["trial_id"]), ckpt, metrics))
        if len(out) >= k:
            break
    return out


def published_models(scan_dir: str | Path) -> list[dict[str, Any]]:
    """The models a scan logged/registered (``SCAN_DIR/models.json``), best first."""
    p = Path(scan_dir) / MODELS_FILE
    try:
        data = json.loads(p.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    return list(data.get("models", [])) if isinstance(data, dict) else []


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _log_datasets(cfg: ScanConfig, tracker: Any) -> None:
    from jobs.manifest import load_manifest
    from models.bundle import manifest_digest
    from tracking.model import log_dataset

    manifest = load_manifest(cfg.dataset)
    runs = [tracker.parent_run_id, *tracker.trial_run_ids.values()]
    log_dataset(
        tracker.tracking_uri,
        [r for r in runs if r],
        name=manifest.sample or Path(cfg.dataset).name,
        digest=manifest_digest(manifest.raw),
        source=str(manifest.root.resolve()),
        schema=manifest.columns,
    )


def _example(bundle: Any) -> Any:
    """A few raw validation rows: the input example and signature of the logged model."""
    import pandas as pd

    from jobs.apply.inputs import load_inputs

    inputs = load_inputs(bundle, None, split="validation")
    cols = bundle.input_columns()
    return pd.DataFrame({c: inputs.columns[c][:EXAMPLE_ROWS] for c in cols})


def publish(cfg: ScanConfig, result: ScanResult, tracker: Any) -> list[dict[str, Any]]:
    """Dataset inputs, then log (and register) the best trials; see the module docstring."""
    from jobs.apply.bundle import bundle_from_checkpoint, checkpoint_file, git_sha
    from tracking.model import TAG_MODEL_RANK, TAG_PARENT, log_bundle
    from tracking.store import _write_json_atomic

    _log_datasets(cfg, tracker)
    name = registered_name(cfg)
    previous = {
        (m["trial_id"], m.get("checkpoint_sha"), m.get("name")): m
        for m in published_models(result.scan_dir)
    }
    models: list[dict[str, Any]] = []
    sha = git_sha()
    for rank, trial_id, ckpt_dir, metrics in ranked_checkpoints(result, cfg.register_top):
        ckpt = checkpoint_file(ckpt_dir)
        ckpt_sha = _sha(ckpt)
        old = previous.get((trial_id, ckpt_sha, name))
        if old is not None:
            models.append({**old, "rank": rank})
            continue
        run_id = tracker.trial_run_id(trial_id)
        if run_id is None:
            raise InputError(f"{result.scan_dir}: trial {trial_id} has no MLflow run")
        info = {
            "scan_name": cfg.name,
            "scan_dir": str(result.scan_dir),
            "trial_id": trial_id,
            "rank": rank,
            "parent_run_id": tracker.parent_run_id,
            "trial_run_id": run_id,
            "metrics": metrics,
            "git_sha": sha,
        }
        bundle = bundle_from_checkpoint(ckpt, info=info)
        tags = {
            TAG_PARENT: tracker.parent_run_id,
            "hepscan.trial_id": trial_id,
            "hepscan.trial_run_id": run_id,
            TAG_MODEL_RANK: rank,
            "hepscan.scan_name": cfg.name,
            "hepscan.family": bundle.family,
            "hepscan.git_sha": sha,
            "hepscan.dataset_digest": bundle.info.get("dataset_digest"),
            **{f"hepscan.{k}": v for k, v in metrics.items()},
        }
        with tempfile.TemporaryDirectory(prefix="hepscan-bundle-") as tmp:
            bundle_dir = bundle.save(Path(tmp) / "bundle")
            logged = log_bundle(
                tracker.tracking_uri,
                run_id,
                bundle_dir,
                _example(bundle),
                register_as=name,
                tags=tags,
            )
        entry = {
            "rank": rank,
            "trial_id": trial_id,
            "run_id": run_id,
            "checkpoint": str(ckpt),
            "checkpoint_sha": ckpt_sha,
            "metrics": metrics,
            **logged,
        }
        models.append(entry)
        log.info("trial %s: model %s", trial_id, entry["model_uri"])
    _write_json_atomic(
        result.scan_dir / MODELS_FILE,
        {"registered_name": name, "tracking_uri": tracker.tracking_uri, "models": models},
    )
    if models and tracker.parent_run_id:
        best = models[0]
        tracker._set_tags(
            tracker.parent_run_id,
            {
                "hepscan.best_model_uri": best["model_uri"],
                "hepscan.best_trial_id": best["trial_id"],
            },
        )
    return models


def publish_at_end(cfg: ScanConfig, result: ScanResult, tracker: Any) -> list[dict[str, Any]]:
    """:func:`publish` for the driver: a failure is a warning on stderr and the parent run's
    ``hepscan.publish_error`` tag, not a failed scan (its trials and results stand)."""
    if result.best_trial_id is None:
        return []
    try:
        return publish(cfg, result, tracker)
    except Exception as exc:  # noqa: BLE001 - reported, the scan itself succeeded
        msg = f"the best model was not logged/registered: {exc}"
        log.warning(msg)
        import sys

        print(f"hepscan: warning: {msg}", file=sys.stderr)
        if tracker.parent_run_id:
            tracker._set_tags(tracker.parent_run_id, {"hepscan.publish_error": str(exc)[:500]})
        return []
