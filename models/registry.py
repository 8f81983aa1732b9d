"""Model families by name or import string; the training loop and the scan look them up here.

.. code-block:: python

    from models.registry import get_family, make_config
    family = get_family("unfold_bins")              # a registered name
    family = get_family("mypkg.models:FAMILY")      # any importable module, no registration
    spec = family.data_spec(manifest)               # models.manifest.Manifest
    model = family.build(make_config(family, {"alpha": 8, "p": 2}), spec.dims)

Your own family, two ways (both are validated with :func:`models.contract.validate_family`):

* ``family: "mypkg.models:FAMILY"`` in a scan or train config. ``ATTR`` is a
  :class:`~models.base.Family` or a zero-argument function returning one. This is the form
  that reaches every process: each Ray worker, Horovod/DDP rank and SLURM node imports the
  module itself. The module must be importable there: installed in the venv, or its directory
  on ``PYTHONPATH``. When the driver imports it from elsewhere (the current directory, which is
  searched last for an import string as uvicorn does, or the directory of a script calling
  ``scan.launch``), that directory is prepended to ``PYTHONPATH`` in ``os.environ`` so that
  the processes started afterwards (local Ray, Horovod, DDP) import the same module.
* :func:`register_family` adds a name to :data:`REGISTRY` *in this process*. Ray workers are
  separate processes: a name registered in the driver is unknown there unless the module that
  registers it is imported on the worker too (e.g. by the import string of a family in it).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

from models import (
    flow,
    gan,
    param_classifier,
    regression,
    resolution,
    unfold_bins,
    unfold_migration,
    vae,
)
from models.base import Family
from models.contract import validate_family
from models.errors import ConfigError

__all__ = [
    "REGISTRY",
    "UnknownFamilyError",
    "get_family",
    "import_family",
    "is_import_string",
    "make_config",
    "register_family",
]

REGISTRY: dict[str, Family] = {
    "unfold_bins": unfold_bins.FAMILY,
    "unfold_migration": unfold_migration.FAMILY,
    "resolution": resolution.FAMILY,
    "gan": gan.FAMILY,
    "flow": flow.FAMILY,
    "param_classifier": param_classifier.FAMILY,
    "vae": vae.FAMILY,
    "regression": regression.FAMILY,
}


class UnknownFamilyError(ConfigError):
    """A family name that is not registered (a ValueError, and a HepscanError for the CLI)."""


def is_import_string(name: str) -> bool:
    """``"package.module:ATTR"`` (a family defined outside hepscan) rather than a name."""
    return ":" in name


def get_family(name: str) -> Family:
    """The family registered as ``name``, or imported from ``"package.module:ATTR"``."""
    if is_import_string(name):
        return import_family(name)
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownFamilyError(
            f"unknown model family {name!r}; valid families: {', '.join(sorted(REGISTRY))} "
            "(or 'package.module:ATTR' for a family defined in your own module)"
        ) from None


def register_family(family: Family, *, name: str | None = None, replace: bool = False) -> Family:
    """Add ``family`` to :data:`REGISTRY` under ``name`` (default ``family.name``); returns it.

    Validated first. Registering a different family under a taken name needs ``replace=True``.
    Only this process sees the registration: for scans, use an import string (module docstring).
    """
    key = family.name if name is None and isinstance(family, Family) else name
    validate_family(family, f"register_family({key!r})")
    assert key is not None
    if not key or is_import_string(key):
        raise ConfigError(f"register_family: name {key!r} must be non-empty and without ':'")
    if REGISTRY.get(key, family) is not family and not replace:
        raise ConfigError(
            f"register_family: {key!r} is already registered ({REGISTRY[key].description or key}); "
            "pass replace=True to replace it"
        )
    REGISTRY[key] = family
    return family


def import_family(spec: str) -> Family:
    """Import ``"package.module:ATTR"`` (``ATTR`` may be dotted), call it when it is a
    zero-argument function, validate the result; errors name what is missing."""
    module_name, _, attr = spec.partition(":")
    where = f"family {spec!r}"
    if not module_name or not attr or ":" in attr:
        raise ConfigError(f"{where}: expected 'package.module:ATTR'")
    module = _import_module(module_name, where)
    obj: Any = module
    for i, part in enumerate(attr.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            owner = ".".join([module_name, *attr.split(".")[:i]])
            raise ConfigError(
                f"{where}: {owner!r} ({getattr(module, '__file__', '?')}) has no attribute "
                f"{part!r}; its Family objects: {_families_in(module)}"
            ) from None
    if not isinstance(obj, Family) and callable(obj) and not isinstance(obj, type):
        try:
            obj = obj()
        except Exception as exc:  # the user's factory: report what it raised
            raise ConfigError(
                f"{where}: calling {attr}() raised {type(exc).__name__}: {exc}"
            ) from exc
    family = validate_family(obj, where)
    _share_module_path(module_name)
    return family


def _import_module(module_name: str, where: str) -> ModuleType:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        missing_is_ours = exc.name is not None and (
            module_name == exc.name or module_name.startswith(exc.name + ".")
        )
        if not missing_is_ours:
            raise ConfigError(
                f"{where}: importing {module_name!r} failed: {exc} (a dependency of your module?)"
            ) from exc
        cwd = os.getcwd()
        if cwd not in sys.path and "" not in sys.path:
            # As uvicorn and gunicorn do: a module next to where the command runs is found
            # (``python -m`` puts the cwd on sys.path; the ``hepscan`` script does not).
            sys.path.append(cwd)
            return _import_module(module_name, where)
        raise ConfigError(
            f"{where}: cannot import module {module_name!r} ({exc}); install it in the venv "
            "or add its directory to PYTHONPATH (it must be importable on every worker)"
        ) from None
    except Exception as exc:  # SyntaxError, or whatever the user's module raises on import
        raise ConfigError(
            f"{where}: importing {module_name!r} raised {type(exc).__name__}: {exc}"
        ) from exc


def _families_in(module: ModuleType) -> list[str]:
    return sorted(k for k, v in vars(module).items() if isinstance(v, Family))


def _share_module_path(module_name: str) -> None:
    """Prepend the directory the module was imported from to ``PYTHONPATH`` (unless it is
    there already or is an installed location), so processes started later import it too."""
    top = sys.modules.get(module_name.split(".")[0])
    file = getattr(top, "__file__", None)
    paths = list(getattr(top, "__path__", []) or [])
    if file is not None:
        pkg = Path(file).resolve().parent
        root = pkg.parent if Path(file).stem == "__init__" else pkg
    elif paths:  # namespace package
        root = Path(paths[0]).resolve().parent
    else:
        return
    if any(p in ("site-packages", "dist-packages") for p in root.parts):
        return
    for prefix in {sys.prefix, sys.base_prefix}:
        if root.is_relative_to(Path(prefix).resolve() / "lib"):
            return
    entries = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if any(Path(p).resolve() == root for p in entries):
        return
    os.environ["PYTHONPATH"] = os.pathsep.join([str(root), *entries])


def make_config(family: Family, params: Mapping[str, Any] | None = None) -> Any:
    """``family.config_cls(**params)``, rejecting unknown keys with a message naming them.

    Extra keys of the scan (e.g. ``lr``, ``batch_size``) must be removed before the call."""
    params = dict(params or {})
    fields = {f.name for f in dataclasses.fields(family.config_cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ConfigError(
            f"model family {family.name!r}: unknown parameter(s) {unknown}; valid: {sorted(fields)}"
        )
    try:
        return family.config_cls(**params)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model family {family.name!r}: {exc}") from None
