"""hepscan scans: search spaces, the Ray Tune driver, launch/resume and reports.

``import scan`` stays light: Ray, Optuna and MLflow load only when a scan is launched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["launch", "resume"]

if TYPE_CHECKING:
    from scan.driver import launch, resume


def __getattr__(name: str) -> Any:
    if name in __all__:
        import importlib

        return getattr(importlib.import_module("scan.driver"), name)
    raise AttributeError(f"module 'scan' has no attribute {name!r}")
