"""Searched parameters of a scan and the pure helpers on a space of them (no engine imported).

``scan.config`` validates a scan config with them and ``scan.space`` translates a space to
Optuna; both import this module, which imports neither.

.. code-block:: python

    from scan.params import Param, sample_order
    space = {"batchnorm": Param(type="choice", values=[True, False]),
             "dropout": Param(type="uniform", low=0.0, high=0.3, when={"batchnorm": False})}
    sample_order(space)   # ['batchnorm', 'dropout']: conditions first
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

__all__ = [
    "GRID_INT_LIMIT",
    "Param",
    "Scalar",
    "StrictModel",
    "grid_size",
    "grid_values",
    "is_active",
    "sample_order",
]

GRID_INT_LIMIT = 64  # an int range wider than this is not a sensible grid axis


class StrictModel(BaseModel):
    """Frozen, and an unknown key is an error (so a typo never passes silently)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Scalar = bool | int | float | str


class Param(StrictModel):
    """One searched parameter."""

    type: Literal["uniform", "loguniform", "int", "choice"]
    low: float | None = None
    high: float | None = None
    values: list[Scalar | None] | None = None
    # Sample this parameter only when every named parameter has one of the given values.
    when: dict[str, Scalar | list[Scalar]] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        # [type, low, high] / [choice, [values]] as in models.base.SearchSpace tuples
        if isinstance(data, list | tuple):
            if len(data) == 2 and data[0] == "choice":
                return {"type": "choice", "values": list(data[1])}
            if len(data) == 3:
                return {"type": data[0], "low": data[1], "high": data[2]}
            raise ValueError(
                "expected [uniform|loguniform|int, low, high] or [choice, [values...]]"
            )
        return data

    @model_validator(mode="after")
    def _bounds(self) -> Param:
        if self.type == "choice":
            if not self.values:
                raise ValueError("'choice' needs a non-empty 'values' list")
            if self.low is not None or self.high is not None:
                raise ValueError("'choice' takes 'values', not 'low'/'high'")
            return self
        if self.values is not None:
            raise ValueError(f"{self.type!r} takes 'low'/'high', not 'values'")
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type!r} needs 'low' and 'high'")
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"needs finite low < high (got low={self.low}, high={self.high})")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"'loguniform' needs low > 0 (got {self.low})")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"'int' needs integer bounds (got {self.low}, {self.high})")
        return self

    def condition(self) -> dict[str, list[Scalar]]:
        """``when`` with every value as a list of allowed values."""
        if not self.when:
            return {}
        return {k: (list(v) if isinstance(v, list) else [v]) for k, v in self.when.items()}


def sample_order(space: Mapping[str, Param]) -> list[str]:
    """Parameter names so that every condition's parameters come before the conditioned one.

    Ties keep the config's order. Raises ValueError on a dependency cycle.
    """
    order: list[str] = []
    done: set[str] = set()
    pending = list(space)
    while pending:
        progressed = False
        for name in list(pending):
            deps = set(space[name].condition())
            if deps <= done:
                order.append(name)
                done.add(name)
                pending.remove(name)
                progressed = True
        if not progressed:
            raise ValueError(f"conditions form a cycle between {sorted(pending)}")
    return order


def is_active(param: Param, values: Mapping[str, Any]) -> bool:
    """Whether a conditional parameter applies given the values sampled so far."""
    return all(k in values and values[k] in allowed for k, allowed in param.condition().items())


def grid_values(param: Param) -> list[Any]:
    """The grid axis of one parameter (choice values or every int in range)."""
    if param.type == "choice":
        return list(param.values or [])
    if param.type == "int":
        assert param.low is not None and param.high is not None
        lo, hi = int(param.low), int(param.high)
        if hi - lo + 1 > GRID_INT_LIMIT:
            raise ValueError(
                f"int range {lo}..{hi} is too wide for a grid (max {GRID_INT_LIMIT} values); "
                "use 'choice' with the values you want"
            )
        return list(range(lo, hi + 1))
    raise ValueError(
        f"searcher 'grid' needs 'choice' or 'int' parameters, not {param.type!r} "
        "(list the grid points with 'choice')"
    )


def grid_size(space: Mapping[str, Param]) -> int:
    return math.prod(len(grid_values(p)) for p in space.values())
