"""MLflow tracking of scans (parent run per scan, nested child run per trial) and trial plots.

``import tracking`` stays light: mlflow and matplotlib load only when a tracker or a plot is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "ScanTracker",
    "TrialStatus",
    "default_tracking_uri",
    "plot_generated",
    "plot_resolution",
    "plot_unfolded",
    "ratio",
    "runs_of_scan",
    "save_png",
    "ui_command",
]

_WHERE = {
    "ScanTracker": "tracking.runs",
    "TrialStatus": "tracking.store",
    "default_tracking_uri": "tracking.store",
    "runs_of_scan": "tracking.store",
    "ui_command": "tracking.store",
    "plot_generated": "tracking.plots",
    "plot_resolution": "tracking.plots",
    "plot_unfolded": "tracking.plots",
    "ratio": "tracking.plots",
    "save_png": "tracking.plots",
}

if TYPE_CHECKING:
    from tracking.plots import plot_generated, plot_resolution, plot_unfolded, ratio, save_png
    from tracking.runs import ScanTracker
    from tracking.store import TrialStatus, default_tracking_uri, runs_of_scan, ui_command


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'tracking' has no attribute {name!r}")
