"""Import-string selections: your own Python function as the selection of ``hepscan preprocess``.

Config::

    selection:
      kind: "zsel:select_dimuons"     # package.module:function
      branches: [Muon_pt, Muon_eta, Muon_phi, Muon_charge]   # what the function gets
      options: {pt_min: 20.0}          # keyword arguments for the function (JSON values)
      reco_ok: false                   # true: it also returns a boolean 'reco_ok' column

The function, called once per chunk (one Dask partition of one file)::

    def select_dimuons(events: ak.Array, **options) -> Mapping[str, ArrayLike]: ...

``events`` is an awkward record array with one record per entry of the chunk and one field per
listed branch (jagged branches as ``var *`` lists; the config's ``branches:`` mapping can read
another branch under a listed name). It returns one row per selected object, as a dict (or an
awkward record array) of one-dimensional numeric columns of equal length:

* ``entry``: integer index of the row's entry in ``events`` (``0 <= entry < len(events)``,
  non-decreasing; several rows may share an entry). The pipeline derives event ids, the split
  and the weights from it, exactly as for the built-in kinds;
* every column the config's ``features``, ``unfold``, ``resolution`` and ``generative`` keys
  name (converted to float64; columns nobody asks for are ignored);
* ``reco_ok`` (bool) when ``reco_ok: true`` (rows that are unreconstructed/unmatched, for the
  inefficiency class of resolution targets).

Entries without a row count as ``failed_selection``. The function sees every entry of the
chunk; entries with NaN/inf in a read branch or in a returned column are dropped afterwards
and counted (``nan_policy: drop``) or stop the run naming the branch/column (``error``).
A selection that does not import, raises, returns another type, lacks a column, has columns
of different lengths or a bad ``entry`` column stops the run with one message naming the
selection, the input file and the column; nothing is written.

Making it importable: the driver imports the module while planning, and every Dask worker
imports it again, so put its directory on ``PYTHONPATH`` (the workers of the local cluster
inherit the environment; on a SLURM allocation export it in the job) or ``pip install`` the
package::

    PYTHONPATH=examples/user_selection hepscan preprocess \\
        examples/user_selection/config.yaml --input nano.root --out OUT

The manifest records ``selection`` (the import string) and ``selection_source`` (the module's
file name and the sha256 of its source); a worker that imports a module file with another
sha256 (a stale copy on a node) stops the run. A worked example: ``examples/user_selection``.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from jobs.manifest import sha256_file
from jobs.preprocess.common import KindSpec
from models.errors import ConfigError, InputError, require

__all__ = ["call", "check_source", "load", "source_record", "spec"]


def spec(sel: Any) -> KindSpec:
    """The listed branches under their own names; the columns are known only after a call."""
    return KindSpec(branches={b: b for b in sel.branches}, columns=None)


def _resolve(kind: str) -> tuple[Any, Callable[..., Any]]:
    """(module, function) of ``package.module:function``; raises what the import raises."""
    mod_name, _, qual = kind.partition(":")
    module = importlib.import_module(mod_name)
    obj: Any = module
    for part in qual.split("."):
        obj = getattr(obj, part)
    return module, obj


def load(sel: Any, source: str) -> Callable[..., Any]:
    """Import the selection on the driver; :class:`ConfigError` naming ``source`` if it fails."""
    try:
        _, fn = _resolve(sel.kind)
    except Exception as exc:
        raise ConfigError(
            f"{source}: selection.kind: selection {sel.kind!r} does not import "
            f"({type(exc).__name__}: {exc}); make its module importable on the driver and on "
            f"every Dask worker (PYTHONPATH=DIR or pip install the package)"
        ) from None
    if not callable(fn):
        raise ConfigError(
            f"{source}: selection.kind: {sel.kind!r} is a {type(fn).__name__}, not a function"
        )
    return fn


def source_record(sel: Any) -> dict[str, Any]:
    """``{"import", "file", "sha256"}`` of the selection's module (file: base name)."""
    module, _ = _resolve(sel.kind)
    path = getattr(module, "__file__", None)
    return {
        "import": sel.kind,
        "file": os.path.basename(path) if path else None,
        "sha256": sha256_file(path) if path else None,
    }


def check_source(sel: Any, expected: dict[str, Any] | None, where: str) -> Callable[..., Any]:
    """Import the selection on a worker and check that it is the driver's source."""
    try:
        module, fn = _resolve(sel.kind)
    except Exception as exc:
        raise InputError(
            f"{where}: selection {sel.kind!r} does not import on Dask worker "
            f"(pid {os.getpid()}) ({type(exc).__name__}: {exc}); the driver imported it: put its "
            f"directory on the workers' PYTHONPATH or pip install it there "
            f"(worker sys.path: {sys.path})"
        ) from None
    path = getattr(module, "__file__", None)
    if expected is not None and path and expected.get("sha256") != sha256_file(path):
        raise InputError(
            f"{where}: selection {sel.kind!r}: the Dask worker imports {path} whose sha256 "
            f"differs from the driver's {expected.get('file')} (a stale copy on that node?)"
        )
    return fn


def call(
    sel: Any,
    fn: Callable[..., Any],
    events: Any,
    columns: tuple[str, ...],
    has_ok: bool,
    nan_policy: str,
    where: str,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    """Run the selection on one chunk and validate what it returns.

    Returns the float64 ``columns`` (``reco_ok`` included when asked for), the row -> entry map
    and the entries whose returned values are NaN/inf (to drop under ``nan_policy: drop``).
    """
    name = sel.kind
    n = len(events)
    try:
        out = fn(events, **sel.options)
    except Exception as exc:
        frames = traceback.extract_tb(exc.__traceback__)
        at = f" at {os.path.basename(frames[-1].filename)}:{frames[-1].lineno}" if frames else ""
        raise InputError(
            f"{where}: selection {name!r} raised {type(exc).__name__}{at}: {exc}"
        ) from None
    got = _as_columns(out, name, where)
    wanted = ["entry", *columns]
    for col in wanted:
        if col not in got:
            have = ", ".join(sorted(got)) or "none"
            raise InputError(
                f"{where}: selection {name!r} returned no column {col!r} (returned: {have})"
            )
    arrays = {col: _array(got[col], col, name, where) for col in wanted}
    rows = arrays.pop("entry")
    for col, arr in arrays.items():
        if arr.size != rows.size:
            raise InputError(
                f"{where}: selection {name!r}: column {col!r} has {arr.size} rows but column "
                f"'entry' has {rows.size}"
            )
    if rows.dtype.kind not in "iu":
        raise InputError(
            f"{where}: selection {name!r}: column 'entry' must hold integers (entry indices "
            f"in the chunk), got dtype {rows.dtype}"
        )
    rows = rows.astype(np.int64)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise InputError(
            f"{where}: selection {name!r}: column 'entry' holds {int(rows.min())}..."
            f"{int(rows.max())}, outside 0..{n - 1} (indices into the {n} entries of the chunk)"
        )
    if rows.size > 1 and np.any(np.diff(rows) < 0):
        raise InputError(
            f"{where}: selection {name!r}: column 'entry' must be non-decreasing (rows in "
            f"entry order)"
        )
    cols: dict[str, np.ndarray] = {}
    bad = np.zeros(n, dtype=bool)
    for col, arr in arrays.items():
        values = arr.astype(np.float64)
        nonfinite = ~np.isfinite(values)
        if nonfinite.any():
            first = int(rows[np.flatnonzero(nonfinite)[0]])
            if nan_policy == "error":
                raise InputError(
                    f"{where}: selection {name!r} returned NaN/inf in column {col!r} (first "
                    f"for chunk entry {first}); set 'nan_policy: drop' to drop such events"
                )
            bad[rows[nonfinite]] = True
        cols[col] = values
    if has_ok:
        cols["reco_ok"] = arrays["reco_ok"].astype(bool).astype(np.float64)
    return cols, rows, bad


def _as_columns(out: Any, name: str, where: str) -> dict[str, Any]:
    ak = require("awkward")

    if isinstance(out, ak.Array) and ak.fields(out):
        return {f: out[f] for f in ak.fields(out)}
    if isinstance(out, Mapping):
        return {str(k): v for k, v in out.items()}
    raise InputError(
        f"{where}: selection {name!r} returned a {type(out).__name__}; expected a dict of "
        f"columns (or an awkward record array) with an 'entry' column"
    )


def _array(value: Any, col: str, name: str, where: str) -> np.ndarray:
    ak = require("awkward")

    def bad(got: str) -> InputError:
        return InputError(
            f"{where}: selection {name!r}: column {col!r} must be one number per row, got {got}"
        )

    if isinstance(value, ak.Array) and value.ndim != 1:
        raise bad(f"type {value.type}")
    try:
        arr = ak.to_numpy(value) if isinstance(value, ak.Array) else np.asarray(value)
    except Exception as exc:
        raise bad(f"{type(exc).__name__}: {exc}") from None
    if arr.ndim != 1 or arr.dtype.kind not in "biuf":
        raise bad(f"shape {arr.shape} dtype {arr.dtype}")
    return arr
