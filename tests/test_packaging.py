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

    assert scan.__all__ == ["apply", "launch", "resume"]
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        _ = scan.nonexistent  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "module", ["models", "models.errors", "models.manifest", "jobs", "jobs.preprocess"]
)
def test_errors_and_preprocessing_do_not_import_torch(module: str) -> None:
    """Every Dask preprocessing worker imports jobs.preprocess (and so models.errors): torch
    there cost ~3 s per worker process."""
    code = f"import sys, {module}\nprint('torch' in sys.modules)\n"
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert out == "False", f"importing {module} loaded torch"


def test_models_names_load_lazily() -> None:
    import models

    assert models.get_family("unfold_bins").name == "unfold_bins"
    for name in models.__all__:  # every public name resolves to its home module's object
        assert getattr(models, name) is getattr(sys.modules[models._HOME[name]], name)
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        _ = models.nonexistent  # type: ignore[attr-defined]
