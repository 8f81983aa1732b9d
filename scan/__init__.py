"""hepscan scans: search spaces, the Ray Tune driver, launch/resume and reports.

``import scan`` stays light: Ray, Optuna and MLflow load only when a scan is launched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["apply", "launch", "resume"]
_WHERE = {"apply": "scan.application", "launch": "scan.driver", "resume": "scan.driver"}

if TYPE_CHECKING:
    from scan.application import apply
    from scan.driver import launch, resume


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'scan' has no attribute {name!r}")
