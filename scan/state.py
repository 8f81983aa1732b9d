"""The scan directory's state, shared by the driver (writer) and reports (readers).

Scan directory layout::

    SCAN_DIR/scan.json        the validated config (resume reads it back)
    SCAN_DIR/tune/            Ray Tune experiment: searcher state, trial checkpoints
    SCAN_DIR/mlflow.db        embedded MLflow store (unless a tracking URI is given)
    SCAN_DIR/mlartifacts/     its artifacts; SCAN_DIR/tracking.json: trial -> MLflow run

Nothing here imports Ray, Optuna or MLflow.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from models.errors import InputError
from scan.config import ScanConfig, load_scan_config
from tracking.store import MAPPING_FILE, default_tracking_uri, read_mapping, redact_uri

__all__ = [
    "CONFIG_FILE",
    "FINISHED_KEY",
    "STATIC_KEY",
    "TUNE_DIR",
    "load_saved_config",
    "save_config",
    "tracking_mapping",
    "tracking_state",
    "tracking_uri_of",
    "trial_finished",
    "trial_params",
]

CONFIG_FILE = "scan.json"
TUNE_DIR = "tune"
STATIC_KEY = "_static"  # param_space key holding the scan's fixed settings (not a hyperparameter)
# Result key set on the epoch where training itself ended (epochs exhausted or early stopping);
# Tune also sets "done" when its scheduler stops a trial, so "done" alone cannot tell them apart.
FINISHED_KEY = "trial_finished"


def save_config(cfg: ScanConfig, scan_dir: Path) -> None:
    """Write ``scan.json`` atomically (creating ``scan_dir``).  A tracking URI with a password
    is left out: it is kept in ``tracking.json`` (0600) only, where a resume finds it."""
    scan_dir.mkdir(parents=True, exist_ok=True)
    data = cfg.to_dict()
    uri = data.get("tracking_uri")
    if isinstance(uri, str) and redact_uri(uri) != uri:
        data["tracking_uri"] = None
    tmp = scan_dir / f".{CONFIG_FILE}.tmp"
    tmp.write_text(json.dumps(data, indent=2))
    os.replace(tmp, scan_dir / CONFIG_FILE)


def load_saved_config(scan_dir: str | os.PathLike[str]) -> ScanConfig:
    d = Path(scan_dir)
    path = d / CONFIG_FILE
    if not path.exists():
        raise InputError(
            f"{path}: not a scan directory (no {CONFIG_FILE}; start with hepscan scan)"
        )
    return load_scan_config(json.loads(path.read_text()), check_registry=True)


def trial_params(config: Mapping[str, Any]) -> dict[str, Any]:
    """The searched and fixed hyperparameters of a trial (the scan's static settings dropped)."""
    static = config.get(STATIC_KEY, {})
    params = {k: v for k, v in config.items() if k != STATIC_KEY and v is not None}
    return {**static.get("fixed", {}), **params}


def trial_finished(last_result: Mapping[str, Any], max_epochs: int) -> bool:
    """A trial that ended ran to the end (or early-stopped itself); otherwise it was stopped
    (ASHA, time budget) and counts as KILLED."""
    epochs = int(last_result.get("training_iteration", 0) or 0)
    return bool(last_result.get(FINISHED_KEY)) or epochs >= max_epochs


def tracking_state(d: Path) -> dict[str, Any]:
    """The content of ``SCAN_DIR/tracking.json`` (parent run, trial -> run id), ``{}`` when
    there is none; a corrupt one is an :class:`~models.errors.InputError` naming it."""
    return read_mapping(d / MAPPING_FILE)


def tracking_mapping(d: Path) -> dict[str, str]:
    """Trial id -> MLflow run id of a scan directory."""
    return dict(tracking_state(d).get("trials", {}) or {})


def tracking_uri_of(d: Path) -> str:
    """The MLflow store the scan wrote to: the recorded URI, else the embedded sqlite store."""
    return str(tracking_state(d).get("tracking_uri") or default_tracking_uri(d))
