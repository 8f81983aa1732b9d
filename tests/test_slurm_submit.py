"""Rendering and validation of ``hepscan slurm submit`` that need no cluster.

Run: ``.venv/bin/python -m pytest tests/test_slurm_submit.py``.  The tests against the real local
SLURM cluster are in tests/test_slurm_cluster.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from models.errors import ConfigError
from scan.cli import main
from slurm.submit import JobSpec, render_script, submit, time_to_seconds

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture()
def config(tmp_path: Path) -> Path:
    path = tmp_path / "scan.yaml"
    path.write_text("name: t\n")
    return path


def _sbatch_lines(script: str) -> list[str]:
    return [line[len("#SBATCH ") :] for line in script.splitlines() if line.startswith("#SBATCH ")]


def test_dry_run_renders_options_into_sbatch_lines(
    config: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config.write_text("name: t\nresources: {workers: 4, gpus_per_worker: 1}\n")
    main(
        [
            "slurm", "submit", str(config), "--nodes", "3", "--gpus-per-node", "4",
            "--cpus-per-node", "16", "--time", "02:00:00", "--partition", "gpu",
            "--account", "hep", "--signal-seconds", "600", "--run-dir", str(tmp_path / "run"),
            "--sbatch-arg=--constraint=a100", "--dry-run", "--", "--set", "num_trials=24",
        ]
    )  # fmt: skip
    script = capsys.readouterr().out
    lines = _sbatch_lines(script)
    assert lines == [
        "--job-name=hepscan-scan-scan",
        "--nodes=3",
        "--ntasks-per-node=1",
        "--cpus-per-task=16",
        "--time=02:00:00",
        f"--output={tmp_path / 'run'}/logs/%x-%j.out",
        "--open-mode=append",
        "--gpus-per-node=4",
        "--partition=gpu",
        "--account=hep",
        "--signal=B:USR1@600",
        "--requeue",
        "--constraint=a100",
    ]
    assert script.startswith("#!/bin/bash\n")
    assert "@@" not in script
    assert f"export HS_CONFIG={config}" in script
    assert f"export HS_SCAN_DIR={tmp_path / 'run' / 'scan'}" in script
    assert "HS_DRIVER_ARGS=(--set num_trials=24)" in script
    # the venv the job activates is the one submitting
    assert f"export HS_VENV_BIN={Path(sys.executable).absolute().parent}" in script
    # shell-valid, with the shared helpers pasted in
    assert "hs_node_addr()" in script
    check = subprocess.run(["bash", "-n"], input=script, text=True, capture_output=True)
    assert check.returncode == 0, check.stderr
    # nothing was written by a dry run
    assert not (tmp_path / "run").exists()


def test_nothing_site_specific_in_templates() -> None:
    for name in ("scan.sbatch", "preprocess.sbatch"):
        text = (ROOT / "slurm" / name).read_text()
        directives = [line for line in text.splitlines() if line.startswith("#SBATCH")]
        assert directives == [], f"{name} hard-codes {directives}"
        assert "@@SBATCH_LINES@@" in text
        assert not re.search(r"--partition|--account|/work/main|hsnode|10\.77\.", text)


def test_defaults_and_preprocess_kind(tmp_path: Path) -> None:
    cfg = tmp_path / "prep.yaml"
    cfg.write_text("sample: zll\n")
    spec = JobSpec(
        config=cfg, kind="preprocess", out=tmp_path / "out", cpus_per_node=4,
        time="00:10:00", nodes=2, run_dir=tmp_path / "run", dask_workers_per_node=2,
    )  # fmt: skip
    script = render_script(spec)
    lines = _sbatch_lines(script)
    assert "--signal=B:USR1@120" in lines  # a fifth of 10 min (at most 300 s)
    assert not any("requeue" in line for line in lines)
    assert not any(line.startswith("--gpus") for line in lines)
    assert f"export HS_OUT={tmp_path / 'out'}" in script
    assert "export HS_DASK_WORKERS=2" in script
    assert "dask worker" in script and "scan.cli preprocess" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_paths_with_spaces_are_quoted(tmp_path: Path) -> None:
    d = tmp_path / "my scans"
    d.mkdir()
    cfg = d / "a b.yaml"
    cfg.write_text("x: 1\n")
    script = render_script(JobSpec(config=cfg, cpus_per_node=1, time="10", run_dir=d / "r"))
    assert f"export HS_CONFIG='{cfg}'" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_time_parsing() -> None:
    assert time_to_seconds("10") == 600
    assert time_to_seconds("05:30") == 330
    assert time_to_seconds("01:02:03") == 3723
    assert time_to_seconds("2-00") == 2 * 86400
    assert time_to_seconds("1-02:03:04") == 86400 + 7384
    with pytest.raises(ConfigError, match="--time"):
        time_to_seconds("1:2:3:4")
    with pytest.raises(ConfigError, match="--time"):
        time_to_seconds("soon")


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"nodes": 0}, "--nodes must be >= 1"),
        ({"cpus_per_node": 0}, "--cpus-per-node"),
        ({"gpus_per_node": -1}, "--gpus-per-node"),
        ({"time": "00:01:00", "signal_seconds": 60}, "--signal-seconds 60"),
        ({"time": "xx"}, "--time"),
        ({"kind": "preprocess"}, "--out is required"),
        ({"kind": "train"}, "--kind"),
        ({"mlflow_server": True, "tracking_uri": "http://db:5000"}, "--mlflow-server"),
    ],
)
def test_bad_options_name_the_option(config: Path, changes: dict, needle: str) -> None:
    args = {"config": config, "cpus_per_node": 2, "time": "01:00:00", **changes}
    with pytest.raises(ConfigError, match=re.escape(needle)):
        submit(JobSpec(**args), dry_run=True)


def test_missing_config_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SystemExit) as exc:
        main(["slurm", "submit", str(missing), "--cpus-per-node", "1", "--time", "5", "--dry-run"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"hepscan: error: config file not found: {missing}" in err


def test_default_run_dir_lies_next_to_the_results_not_in_the_checkout(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    scan = submit(
        JobSpec(config=config, cpus_per_node=1, time="10", scan_dir=tmp_path / "scans" / "zll"),
        dry_run=True,
    )
    assert scan.run_dir.parent == tmp_path / "scans" / "hepscan-slurm"
    assert scan.run_dir.name.startswith("hepscan-scan-scan-")
    assert scan.scan_dir == tmp_path / "scans" / "zll"
    prep = submit(
        JobSpec(config=config, kind="preprocess", out=tmp_path / "data" / "zll", cpus_per_node=1,
                time="10"),
        dry_run=True,
    )  # fmt: skip
    assert prep.run_dir.parent == tmp_path / "data" / "hepscan-slurm"
    bare = submit(JobSpec(config=config, cpus_per_node=1, time="10"), dry_run=True)
    assert bare.run_dir.parent == tmp_path / "hepscan-slurm"
    assert bare.scan_dir == bare.run_dir / "scan"
    # the fallback inside a checkout is ignored by git
    assert "/hepscan-slurm/" in (ROOT / ".gitignore").read_text().splitlines()
