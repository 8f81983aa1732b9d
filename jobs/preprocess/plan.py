"""Planning and validation of ``hepscan preprocess``: everything checked before Dask starts.

:func:`make_plan` checks the config's column names against the selection and decides which
branches to read; :func:`validate_inputs` opens every input file and checks tree, branches and
basket extents, and sizes the partitions. Each failure is one
:class:`~models.errors.HepscanError` naming the file and the key or branch; nothing is written.

    from jobs.preprocess.config import load_config
    from jobs.preprocess.plan import expand, make_plan, validate_inputs

    cfg, base, source = load_config("configs/preprocess_zll.yaml")
    files, plan = validate_inputs(make_plan(cfg, source), expand(cfg.files, base, "files"))
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from jobs.preprocess.config import PreprocessConfig, UserSelection, step_size_bytes
from jobs.preprocess.select import KindSpec, kind_spec
from models.errors import ConfigError, InputError, require

__all__ = ["InputFile", "Plan", "expand", "make_plan", "validate_inputs"]


@dataclass(frozen=True)
class InputFile:
    display: str  # as written in the config / on the command line (stored in the manifest)
    path: str  # what we open
    size: int
    entries: int
    step: int  # entries per partition


@dataclass(frozen=True)
class Plan:
    cfg: PreprocessConfig
    source: str
    branches: dict[str, str]  # logical name -> branch (only those present / required)
    eid_branches: tuple[str, ...]
    weight_branch: str | None
    columns: tuple[str, ...]  # row columns the workers keep
    written: tuple[str, ...]  # continuous truth_/reco_ columns written to the shards
    has_ok: bool
    edges: tuple[float, ...] | None
    # import-string selections: {"import", "file", "sha256"} of the module (None: built-in)
    selection_source: dict[str, Any] | None = None

    @property
    def read_branches(self) -> list[str]:
        names = [*self.branches.values(), *self.eid_branches]
        if self.weight_branch:
            names.append(self.weight_branch)
        return sorted(set(names))


# shard columns the pipeline writes itself; a user selection's columns must not shadow them
_RESERVED = {"entry", "event_id", "weight", "truth_bin", "reco_bin", "migration"}


def _check_columns(
    cfg: PreprocessConfig, source: str, kind_columns: KindSpec
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    kind = cfg.selection.kind
    have = kind_columns.columns
    sel = cfg.selection
    has_ok = (
        "reco_ok" in have if have is not None else isinstance(sel, UserSelection) and sel.reco_ok
    )

    def need(key: str, name: str | None) -> None:
        if name is None:
            return
        if have is None:  # an import-string selection: any column but the pipeline's own
            if name in _RESERVED or name.startswith(("feat_", "res_")):
                raise ConfigError(
                    f"{source}: {key}: column name {name!r} is reserved for the pipeline's own "
                    f"shard columns; name the selection's column differently"
                )
            if name == "reco_ok" and not has_ok:
                raise ConfigError(f"{source}: {key}: 'reco_ok' needs 'selection.reco_ok: true'")
            return
        if name not in have:
            raise ConfigError(
                f"{source}: {key}: unknown column {name!r} for selection {kind!r} "
                f"(have {', '.join(have)})"
            )

    for i, f in enumerate(cfg.features):
        need(f"features[{i}]", f)
    written: list[str] = []
    if cfg.unfold is not None:
        need("unfold.truth", cfg.unfold.truth)
        need("unfold.reco", cfg.unfold.reco)
        written += [c for c in (cfg.unfold.truth, cfg.unfold.reco) if c]
    if cfg.resolution is not None:
        if not cfg.resolution.quantities:
            raise ConfigError(f"{source}: resolution.quantities: needs at least one quantity")
        for q, spec in cfg.resolution.quantities.items():
            need(f"resolution.quantities.{q}.truth", spec.truth)
            need(f"resolution.quantities.{q}.reco", spec.reco)
            written += [spec.truth, spec.reco]
    if cfg.generative is not None:
        for i, c in enumerate(cfg.generative.condition):
            need(f"generative.condition[{i}]", c)
        for i, c in enumerate(cfg.generative.target):
            need(f"generative.target[{i}]", c)
        written += [*cfg.generative.condition, *cfg.generative.target]
    if cfg.classify is not None:
        need("classify.label", cfg.classify.label)
        need("classify.mass", cfg.classify.mass)
        written += [c for c in (cfg.classify.label, cfg.classify.mass) if c]
    if cfg.regression is not None:
        for i, c in enumerate(cfg.regression.target):
            need(f"regression.target[{i}]", c)
        written += cfg.regression.target
    written_t = tuple(dict.fromkeys(c for c in written if c != "reco_ok"))
    used = [*cfg.features, *written_t]
    if has_ok:
        used.append("reco_ok")
    return tuple(dict.fromkeys(used)), written_t


def make_plan(cfg: PreprocessConfig, source: str) -> Plan:
    """Check the config's columns and branch names against its selection; nothing is read.

    An import-string selection is imported here (a failing import is a :class:`ConfigError`).
    """
    kind = cfg.selection.kind
    spec = kind_spec(cfg.selection)
    selection_source = None
    if isinstance(cfg.selection, UserSelection):
        from jobs.preprocess import user

        user.load(cfg.selection, source)
        selection_source = user.source_record(cfg.selection)
    for logical in cfg.branches:
        if logical not in spec.branches:
            raise ConfigError(
                f"{source}: branches.{logical}: unknown logical name for selection {kind!r} "
                f"(have {', '.join(spec.branches)})"
            )
    columns, written = _check_columns(cfg, source, spec)
    if isinstance(cfg.event_id, str):
        eid: tuple[str, ...] = (cfg.event_id,)
    elif isinstance(cfg.event_id, list):
        eid = tuple(cfg.event_id)
    else:
        eid = ()
    needed = spec.needs(columns)
    mapping = {**spec.branches, **cfg.branches}
    return Plan(
        cfg=cfg,
        source=source,
        branches={k: v for k, v in mapping.items() if k in needed},
        eid_branches=eid,
        weight_branch=cfg.weight,
        columns=columns,
        written=written,
        has_ok="reco_ok" in columns,
        edges=tuple(cfg.unfold.edge_values()) if cfg.unfold is not None else None,
        selection_source=selection_source,
    )


_TESTDATA = "skhep_testdata:"


def _testdata_path(pat: str, label: str) -> str:
    """``skhep_testdata:NAME`` -> the bundled scikit-hep-testdata file (kept as written)."""
    try:
        import skhep_testdata
    except ImportError:
        raise InputError(f"{label}: {pat!r} needs the scikit-hep-testdata package") from None
    try:
        return str(skhep_testdata.data_path(pat[len(_TESTDATA) :]))
    except Exception as exc:
        raise InputError(f"{label}: {pat!r} is not a scikit-hep-testdata file ({exc})") from None


def expand(patterns: list[str], base: Path, what: str) -> list[tuple[str, str]]:
    """(display, openable path) per file, sorted by display, duplicates removed."""
    found: dict[str, str] = {}
    for i, pat in enumerate(patterns):
        if pat.startswith(_TESTDATA):
            found.setdefault(pat, _testdata_path(pat, f"{what}[{i}]" if what == "files" else what))
            continue
        full = pat if os.path.isabs(pat) else str(base / pat)
        hits = sorted(glob.glob(full))
        if not hits:
            label = f"{what}[{i}]" if what == "files" else what
            raise InputError(f"{label}: {pat!r} matches no file")
        for hit in hits:
            display = hit if os.path.isabs(pat) else os.path.relpath(hit, base)
            found.setdefault(display, hit)
    return sorted(found.items())


def validate_inputs(plan: Plan, files: list[tuple[str, str]]) -> tuple[list[InputFile], Plan]:
    """Open every file and check tree, branches and basket extents; raises InputError.

    Returns the files and the plan with the optional branches that are present resolved.
    """
    uproot = require("uproot")

    kind = plan.cfg.selection.kind
    optional = kind_spec(plan.cfg.selection).optional
    out: list[InputFile] = []
    resolved: dict[str, str] | None = None
    for display, path in files:
        try:
            size = os.path.getsize(path)
        except OSError as exc:
            raise InputError(f"{display}: cannot read file ({exc.strerror or exc})") from None
        try:
            fobj = uproot.open(path)
        except Exception as exc:  # uproot raises many types for garbage and truncated files
            raise InputError(
                f"{display}: not a readable ROOT file ({type(exc).__name__}: {exc})"
            ) from None
        with fobj:
            end = int(getattr(fobj.file, "fEND", 0) or 0)
            if end > size:
                raise InputError(
                    f"{display}: truncated file: the ROOT header says {end} bytes, "
                    f"the file has {size}"
                )
            try:
                tree = fobj[plan.cfg.tree]
            except Exception:
                keys = sorted({k.split(";")[0] for k in fobj.keys(recursive=False)})
                raise InputError(
                    f"{display}: no tree {plan.cfg.tree!r} (tree; file has keys {keys})"
                ) from None
            if not isinstance(tree, uproot.TTree):
                raise InputError(
                    f"{display}: {plan.cfg.tree!r} is a {type(tree).__name__}, not a TTree (tree)"
                )
            present = set(tree.keys())
            mapping: dict[str, str] = {}
            for logical, branch in plan.branches.items():
                if branch in present:
                    mapping[logical] = branch
                elif logical in optional and logical not in plan.cfg.branches:
                    continue
                else:
                    raise InputError(
                        f"{display}: tree {plan.cfg.tree!r} has no branch {branch!r} "
                        f"(selection {kind!r} reads it as {logical!r}; map another branch "
                        f"with 'branches: {{{logical}: NAME}}')"
                    )
            for key, branch in [("event_id", b) for b in plan.eid_branches] + (
                [("weight", plan.weight_branch)] if plan.weight_branch else []
            ):
                if branch not in present:
                    raise InputError(
                        f"{display}: tree {plan.cfg.tree!r} has no branch {branch!r} "
                        f"(config key {key!r})"
                    )
            if resolved is None:
                resolved = mapping
            elif mapping != resolved:
                raise InputError(
                    f"{display}: optional branches differ from the first input "
                    f"({sorted(set(mapping) ^ set(resolved))})"
                )
            needed = sorted(
                set(mapping.values())
                | set(plan.eid_branches)
                | ({plan.weight_branch} if plan.weight_branch else set())
            )
            for name in needed:
                br = tree[name]
                nb = br.num_baskets
                if nb == 0:
                    continue
                seeks = np.asarray(br.member("fBasketSeek"))[:nb]
                nbytes = np.asarray(br.member("fBasketBytes"))[:nb]
                end = int((seeks.astype(np.int64) + nbytes.astype(np.int64)).max())
                if end > size:
                    raise InputError(
                        f"{display}: truncated file: branch {name!r} needs bytes up to {end} "
                        f"but the file has {size}"
                    )
            entries = int(tree.num_entries)
            # uproot.dask's partitioning: the entries that fit the memory step for these branches
            step = step_size_bytes(plan.cfg.step_size)
            per_step = max(1, int(tree.num_entries_for(step, filter_name=needed))) if entries else 1
            out.append(InputFile(display, path, size, entries, per_step))
    assert resolved is not None
    return out, replace(plan, branches=resolved)
