"""The house rules, checked on the source: which room imports which, no import cycles, no
oversized modules, and optional engines that fail with the extra to install.

Run: ``python -m pytest -q tests/test_architecture.py`` (no engine needed; parses with ``ast``).
Rooms and arrows: shared/DESIGN.md. Every import counts, also those inside functions (lazy)
and under ``if TYPE_CHECKING:``; importing ``a.b.c`` is an arrow to ``a.b.c`` only, not to the
package ``a.b`` whose ``__init__`` Python runs first (a package re-exporting its submodules would
otherwise be a cycle with each of them).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from models.errors import EngineMissingError, require

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("models", "tracking", "jobs", "scan", "slurm")
MAX_LINES = 600

# Arrows that must not exist: room -> rooms it may not import (shared/DESIGN.md).
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "models": ("jobs", "scan", "slurm", "tracking"),
    "tracking": ("jobs", "scan", "slurm"),
    "jobs": ("scan", "slurm", "tracking"),
}
# slurm/ may import scan's config and its directory lock only (and the rooms below scan).
SLURM_MAY_IMPORT_FROM_SCAN = ("scan.config", "scan.lock")

# Known violations owned by other work, each still checked to be real so the list cannot go
# stale: delete an entry once it is fixed (the test then fails until you do).
KNOWN_CYCLES: list[set[str]] = []
KNOWN_OVERSIZE: set[str] = set()


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files(root: Path) -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((root / package).rglob("*.py"))


def _imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[str, int]]:
    """(dotted name, line) of every import in ``tree``; ``from a import b`` gives ``a.b``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join([*base, node.module] if node.module else base)
            else:
                prefix = node.module or ""
            for alias in node.names:
                yield f"{prefix}.{alias.name}", node.lineno


def import_graph(root: Path) -> dict[str, dict[str, int]]:
    """module -> {imported project module: first line}, for every module of PACKAGES."""
    files = {module_name(p, root): p for p in source_files(root)}
    graph: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        edges: dict[str, int] = {}
        for name, line in _imported_names(tree, module, path.name == "__init__.py"):
            # the longest prefix that is a project module: "from a.b import C" -> a.b,
            # "from a import b" -> a.b when b is a module
            target = name
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                scc.append(w)
                if w == v:
                    break
            if len(scc) > 1:
                out.append(sorted(scc))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def _describe(scc: list[str], graph: dict[str, dict[str, int]]) -> str:
    inside = set(scc)
    arrows = [f"{a} -> {b} (line {graph[a][b]})" for a in scc for b in graph[a] if b in inside]
    return "{" + ", ".join(scc) + "}: " + "; ".join(arrows)


def room_violations(graph: dict[str, dict[str, int]]) -> list[str]:
    bad = []
    for module, edges in sorted(graph.items()):
        room = module.split(".")[0]
        for target, line in edges.items():
            target_room = target.split(".")[0]
            if target_room in FORBIDDEN.get(room, ()):
                bad.append(
                    f"{module} (line {line}) imports {target}: {room}/ is below {target_room}/"
                )
            if (
                room == "slurm"
                and target_room == "scan"
                and not target.startswith(SLURM_MAY_IMPORT_FROM_SCAN)
            ):
                bad.append(
                    f"{module} (line {line}) imports {target}: slurm/ may use scan.config, scan.lock only"
                )
    return bad


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph(ROOT)


def test_rooms_import_only_downwards(graph: dict[str, dict[str, int]]) -> None:
    assert room_violations(graph) == []


def test_no_import_cycles(graph: dict[str, dict[str, int]]) -> None:
    found = cycles(graph)
    known = [scc for scc in found if set(scc) in KNOWN_CYCLES]
    stale = [sorted(k) for k in KNOWN_CYCLES if k not in [set(s) for s in found]]
    unexpected = [_describe(scc, graph) for scc in found if scc not in known]
    assert not unexpected, "import cycles:\n" + "\n".join(unexpected)
    assert not stale, f"fixed, remove from KNOWN_CYCLES: {stale}"


def test_no_module_over_the_size_limit() -> None:
    sizes = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in source_files(ROOT)}
    over = {k: n for k, n in sizes.items() if n > MAX_LINES}
    unexpected = {k: n for k, n in over.items() if k not in KNOWN_OVERSIZE}
    assert not unexpected, f"modules over {MAX_LINES} lines (split them): {unexpected}"
    stale = sorted(KNOWN_OVERSIZE - set(over))
    assert not stale, f"now within {MAX_LINES} lines, remove from KNOWN_OVERSIZE: {stale}"


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    """A tree with an upward arrow (jobs -> scan, lazily), a cycle through a function-level
    import and a relative import, and an oversized module: each check reports it."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "jobs" / "sim.py").write_text("def main():\n    from scan.cli import main\n")
    (tmp_path / "scan" / "cli.py").write_text("main = 1\n")
    (tmp_path / "scan" / "driver.py").write_text("from scan.report import collect\n")
    (tmp_path / "scan" / "report.py").write_text("def collect():\n    from . import driver\n")
    (tmp_path / "tracking" / "runs.py").write_text("import scan.cli\n")
    g = import_graph(tmp_path)
    assert g["jobs.sim"] == {"scan.cli": 2}
    assert cycles(g) == [["scan.driver", "scan.report"]]
    assert "scan.report -> scan.driver (line 2)" in _describe(cycles(g)[0], g)
    bad = room_violations(g)
    assert len(bad) == 2
    assert any(b.startswith("jobs.sim (line 2) imports scan.cli") for b in bad)
    assert any(b.startswith("tracking.runs (line 1) imports scan.cli") for b in bad)


def test_require_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes the import fail with ModuleNotFoundError, as when not installed
    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(EngineMissingError, match=r"'optuna'.*pip install 'hepscan\[tune\]'"):
        require("optuna")
    monkeypatch.setitem(sys.modules, "ray", None)
    monkeypatch.setitem(sys.modules, "ray.tune", None)  # also when an earlier test imported it
    with pytest.raises(EngineMissingError, match=r"'ray\.tune'.*hepscan\[tune\]"):
        require("ray.tune")
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(EngineMissingError, match=r"hepscan\[tracking\]"):
        require("mlflow")
    monkeypatch.setitem(sys.modules, "horovod", None)
    monkeypatch.setitem(sys.modules, "horovod.torch", None)
    with pytest.raises(EngineMissingError, match=r"'horovod\.torch'.*install-horovod\.sh"):
        require("horovod.torch")
    # an EngineMissingError is an ImportError (callers that catch ImportError keep working)
    # and a HepscanError (the CLI prints it without a traceback)
    assert issubclass(EngineMissingError, ImportError)


def test_require_shows_a_missing_dependency_of_the_engine_itself(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "hepscan_fake_engine.py").write_text("import hepscan_fake_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "hepscan_fake_engine", raising=False)
    with pytest.raises(ModuleNotFoundError) as exc:
        require("hepscan_fake_engine")
    assert not isinstance(exc.value, EngineMissingError)
    assert exc.value.name == "hepscan_fake_dependency"


def test_missing_engine_reaches_the_user_as_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where scan/ first needs Optuna, a missing Optuna is an EngineMissingError naming the extra."""
    from scan.driver import _quiet_optuna

    monkeypatch.setitem(sys.modules, "optuna", None)
    with pytest.raises(EngineMissingError, match=r"hepscan\[tune\]"), _quiet_optuna():
        pass
