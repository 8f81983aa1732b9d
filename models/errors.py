"""Errors a user can act on: the CLI prints their message and exits non-zero, no traceback.

They live in the lowest room (``models``) so that every other room (``jobs``, ``tracking``,
``scan``, ``slurm``) can raise them without importing upwards. :func:`require` imports an
optional engine and, when it is missing, names the extra to install (as pyhf does).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = [
    "ConfigError",
    "EngineMissingError",
    "HepscanError",
    "InputError",
    "OutputError",
    "require",
]


class HepscanError(Exception):
    """Base class: the message names the file, key or branch at fault."""


class ConfigError(HepscanError, ValueError):
    """A configuration file or option is invalid (unknown key, bad value, mismatch)."""


class InputError(HepscanError):
    """An input file is unreadable, truncated, or lacks a tree/branch, or holds bad values."""


class OutputError(HepscanError):
    """The output location cannot be written."""


class EngineMissingError(HepscanError, ImportError):
    """An optional engine (Ray, MLflow, Dask, uproot, Horovod, ...) is not installed."""


# Which extra of ``pip install hepscan[...]`` brings each optional engine.
EXTRAS: dict[str, str] = {
    "uproot": "data",
    "awkward": "data",
    "dask": "data",
    "distributed": "data",
    "ray": "tune",
    "optuna": "tune",
    "mlflow": "tracking",
    "horovod": "horovod",
}


def require(module: str, extra: str | None = None) -> ModuleType:
    """``importlib.import_module(module)``, or an :class:`EngineMissingError` naming the extra.

    >>> require("ray.tune")  # doctest: +SKIP
    EngineMissingError: hepscan needs 'ray.tune' here: pip install 'hepscan[tune]'
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        top = module.split(".")[0]
        if exc.name is not None and exc.name.split(".")[0] != top:
            raise  # the engine is there but one of *its* dependencies is not: show that
        extra = extra or EXTRAS.get(top, "all")
        hint = (
            "build it with .ci/install-horovod.sh"
            if top == "horovod"
            else f"pip install 'hepscan[{extra}]'"
        )
        raise EngineMissingError(f"hepscan needs {module!r} here: {hint}") from None
