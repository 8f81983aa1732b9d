"""Packaging contracts: light imports, one CLI group, clear errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from scan.cli import SUBCOMMANDS, SUMMARIES, main

HEAVY_ENGINES = ("ray", "mlflow", "horovod", "dask", "uproot", "optuna")


@pytest.mark.parametrize("package", ["scan", "models", "jobs", "tracking", "slurm", "scan.cli"])
def test_import_does_not_start_engines(package: str) -> None:
    code = (
        f"import sys, {package}\n"
        f"loaded = [m for m in {HEAVY_ENGINES!r} if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert out == "", f"importing {package} loaded {out}"


def test_help_lists_every_subcommand_without_importing_them() -> None:
    code = (
        "import sys\nfrom scan.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        f"print('LOADED=' + ','.join(m for m in {HEAVY_ENGINES!r} if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    for name in SUBCOMMANDS:
        assert name in out
    assert "LOADED=\n" in out
    assert set(SUMMARIES) == set(SUBCOMMANDS)


def test_unknown_subcommand_exits_nonzero() -> None:
    with pytest.raises(SystemExit) as excinfo:
        main(["no-such-command"])
    assert excinfo.value.code != 0


def test_scan_exposes_launch_lazily() -> None:
    import scan

    assert scan.__all__ == ["launch", "resume"]
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        _ = scan.nonexistent  # type: ignore[attr-defined]
