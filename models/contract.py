"""The static part of the family contract, cheap enough to check whenever a family is looked up.

:func:`validate_family` runs when a scan config is loaded, when ``hepscan train`` resolves its
``family`` and in :func:`models.registry.register_family`, before any data is read or trial
started. It checks what can be checked without a dataset and names every problem at once:

.. code-block:: text

    family 'mypkg.models:FAMILY': not a valid model family:
      - config_cls MyConfig: field(s) ['width'] have no default (every hyperparameter needs one)
      - metrics: is empty; list the names evaluate() returns that a scan may optimise

What needs a dataset and a built network (shapes, gradients on every parameter, save/load,
seeded determinism) is checked by :mod:`models.testing`, which you run on your own family.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any

from models.base import Family
from models.errors import ConfigError

__all__ = ["InvalidFamilyError", "validate_family", "validate_search_space"]

MODES = ("min", "max")
RANGE_TYPES = ("uniform", "loguniform", "int")


class InvalidFamilyError(ConfigError):
    """A family object breaks the contract of :class:`models.base.Family`."""


def validate_family(obj: Any, where: str = "family") -> Family:
    """``obj`` if it is a valid :class:`~models.base.Family`; otherwise an
    :class:`InvalidFamilyError` that names every missing or malformed part."""
    if not isinstance(obj, Family):
        raise InvalidFamilyError(
            f"{where}: is a {type(obj).__module__}.{type(obj).__qualname__}, not a "
            "models.base.Family (define FAMILY = Family(name=..., config_cls=..., build=..., "
            "data_spec=..., search_space=..., metrics=...), or a function returning one)"
        )
    problems: list[str] = []
    if not isinstance(obj.name, str) or not obj.name or ":" in obj.name:
        problems.append(f"name: {obj.name!r} must be a non-empty string without ':'")
    fields = _check_config_cls(obj.config_cls, problems)
    for attr, args in (("build", "(config, dims)"), ("data_spec", "(manifest)")):
        _check_callable(getattr(obj, attr), attr, args, problems)
    _check_callable(obj.search_space, "search_space", "()", problems)
    _check_metrics(obj, problems)
    if callable(obj.search_space):
        try:
            space = obj.search_space()
        except Exception as exc:  # the user's code: report whatever it raised
            problems.append(f"search_space(): raised {type(exc).__name__}: {exc}")
        else:
            problems += validate_search_space(space, fields)
    if problems:
        listed = "\n".join(f"  - {p}" for p in problems)
        raise InvalidFamilyError(f"{where}: not a valid model family:\n{listed}")
    return obj


def _check_config_cls(config_cls: Any, problems: list[str]) -> set[str] | None:
    """The field names of a valid ``config_cls``; None (and a problem) otherwise."""
    if not (isinstance(config_cls, type) and dataclasses.is_dataclass(config_cls)):
        problems.append(
            f"config_cls: {config_cls!r} must be a @dataclass class (its fields are the "
            "hyperparameters; it is stored with every checkpoint)"
        )
        return None
    name = config_cls.__name__
    no_default = [
        f.name
        for f in dataclasses.fields(config_cls)
        if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    if no_default:
        problems.append(
            f"config_cls {name}: field(s) {no_default} have no default (every "
            "hyperparameter needs one)"
        )
    else:
        try:
            config_cls()
        except Exception as exc:
            problems.append(f"config_cls {name}(): the defaults are rejected: {exc}")
    return {f.name for f in dataclasses.fields(config_cls)}


def _check_callable(fn: Any, attr: str, args: str, problems: list[str]) -> None:
    if not callable(fn):
        problems.append(f"{attr}: {fn!r} is not callable; expected a function {attr}{args}")
        return
    n = args.count(",") + 1 if args != "()" else 0
    try:
        inspect.signature(fn).bind(*([None] * n))
    except TypeError:
        problems.append(f"{attr}: {_describe(fn)} cannot be called as {attr}{args}")
    except ValueError:  # no signature (some builtins): calling it will tell
        pass


def _describe(fn: Callable[..., Any]) -> str:
    try:
        return f"{getattr(fn, '__qualname__', fn)}{inspect.signature(fn)}"
    except (TypeError, ValueError):
        return repr(fn)


def _check_metrics(family: Family, problems: list[str]) -> None:
    metrics = family.metrics
    if isinstance(metrics, str) or not isinstance(metrics, tuple | list):
        problems.append(f"metrics: {metrics!r} must be a tuple of metric names")
        return
    if not metrics:
        problems.append(
            "metrics: is empty; list the names evaluate() returns that a scan may optimise "
            "(e.g. ('val_loss', 'accuracy'))"
        )
    bad = [m for m in metrics if not isinstance(m, str) or not m]
    if bad:
        problems.append(f"metrics: {bad} are not metric names (non-empty strings)")
    modes = family.metric_modes
    if not isinstance(modes, Mapping):
        problems.append(f"metric_modes: {modes!r} must map metric name -> 'min' | 'max'")
        return
    unknown = sorted(str(k) for k in modes if k not in metrics)
    if unknown:
        problems.append(f"metric_modes: {unknown} are not in metrics {list(metrics)}")
    wrong = {k: v for k, v in modes.items() if v not in MODES}
    if wrong:
        problems.append(f"metric_modes: {wrong}: each mode must be 'min' or 'max'")


def validate_search_space(space: Any, fields: set[str] | None) -> list[str]:
    """Problems of a :data:`models.base.SearchSpace` (empty list when valid).

    Entries: ``("uniform" | "loguniform" | "int", low, high)`` or ``("choice", [values])``,
    keyed by ``config_cls`` fields (``fields``; None skips that check)."""
    if not isinstance(space, Mapping):
        return [f"search_space(): returned {type(space).__name__}, expected a dict name -> entry"]
    problems = []
    for key, entry in space.items():
        at = f"search_space()[{key!r}]"
        if fields is not None and key not in fields:
            problems.append(f"{at}: not a field of config_cls (fields: {sorted(fields)})")
        if not isinstance(entry, tuple | list) or not entry:
            problems.append(f"{at}: {entry!r} must be a tuple like ('uniform', low, high)")
            continue
        kind = entry[0]
        if kind == "choice":
            if len(entry) != 2 or not isinstance(entry[1], list | tuple) or not entry[1]:
                problems.append(f"{at}: {entry!r} must be ('choice', [value, ...])")
        elif kind in RANGE_TYPES:
            ok = len(entry) == 3 and all(
                isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
                for v in entry[1:]
            )
            if not ok or entry[1] >= entry[2]:
                problems.append(f"{at}: {entry!r} must be ({kind!r}, low, high) with low < high")
            elif kind == "loguniform" and entry[1] <= 0:
                problems.append(f"{at}: 'loguniform' needs low > 0")
        else:
            problems.append(f"{at}: type {kind!r} is not one of {[*RANGE_TYPES, 'choice']}")
    return problems
