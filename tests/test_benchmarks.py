"""The benchmarks run and print their breakdown and ``ratio=`` (no speed assertions here).

Run: ``python -m pytest -q tests/test_benchmarks.py`` (Ray + MLflow; under the heavy lock).
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _run_benchmark(script: str, *args: str, timeout: float = 120) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    proc = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def _last_ratio(out: str) -> float:
    last = out.strip().splitlines()[-1]
    m = re.fullmatch(r"ratio=(\S+)", last)
    assert m, f"last line is not ratio=...: {last!r}"
    return float(m.group(1))


# --- scan overhead (benchmarks/scan_overhead.py) ----------------------------------------------


def test_scan_overhead_smoke_prints_breakdown_and_ratio() -> None:
    out = _run_benchmark("scan_overhead.py", "--smoke", "--no-peer", "--backend", "ddp")
    for line in (
        "measured epoch E=",
        "hepscan: wall=",
        "cluster start (ray.init):",
        "set-up before Tuner.fit",
        "first trial start",
        "per-trial start",
        "per-epoch report + checkpoint + MLflow",
        "shutdown",
        "other ideals:",
    ):
        assert line in out, f"{line!r} missing from:\n{out}"
    m = re.search(r"hepscan: wall=\S+s trials=(\d+) epochs=(\d+)", out)
    assert m and int(m.group(1)) == 2 and 2 <= int(m.group(2)) <= 4, out
    ratio = _last_ratio(out)
    assert math.isfinite(ratio) and ratio > 0


# ------------------------------------------------------------------------------------------
# Training, search efficiency, Horovod vs DDP (benchmarks/train.py, search_efficiency.py,
# horovod_vs_ddp.py)


def _value(out: str, key: str) -> float:
    """The number of the line ``key=<number>``; finite and positive."""
    m = re.search(rf"^{re.escape(key)}=(\S+)$", out, re.MULTILINE)
    assert m, f"no '{key}=' line in:\n{out}"
    v = float(m.group(1))
    assert math.isfinite(v) and v > 0, f"{key}={v}"
    return v


def _numbers(line: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+(?:\.\d+)?(?:e[-+]?\d+)?", line)]


def test_train_benchmark_prints_loop_and_epoch_ratios(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import train

    train.main(["--quick", "--rows", "3000", "--repeats", "1"])
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[-1].startswith("ratio=") and lines[-2].startswith("epoch_ratio=")
    _value(out, "ratio")
    _value(out, "epoch_ratio")
    for side in ("hepscan train()", "bare torch loop"):
        (row,) = [ln for ln in lines if ln.startswith(side)]
        nums = _numbers(row[len(side) :])
        assert len(nums) >= 4 and all(math.isfinite(v) and v > 0 for v in nums), row


def test_horovod_vs_ddp_benchmark_prints_both_throughputs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from benchmarks import horovod_vs_ddp

    horovod_vs_ddp.main(["--smoke"])
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[-1].startswith("ratio=")
    _value(out, "ratio")
    for backend in ("horovod", "ddp"):
        (row,) = [ln for ln in lines if re.fullmatch(rf"{backend}\s+2\s+\d+", ln)]
        (sps,) = _numbers(row[len(backend) :])[1:]
        assert math.isfinite(sps) and sps > 0, row


def test_search_efficiency_figure_counts_epochs_to_randoms_first_best() -> None:
    from benchmarks.search_efficiency import figure

    rnd = [(1, 5.0), (2, 3.0), (3, 3.0), (4, 2.0), (5, 2.0), (6, 2.0)]
    tpe = [(1, 4.0), (2, 1.5), (3, 1.0)]
    o = figure("zll", 0, rnd, tpe)
    assert (o.target, o.random_first, o.random_total, o.tpe_epochs) == (2.0, 4, 6, 2)
    assert o.reached and o.ratio == pytest.approx(0.5) and o.old_ratio == pytest.approx(1 / 3)
    missed = figure("zll", 0, rnd, [(1, 4.0), (2, 3.0)])
    assert not missed.reached and missed.tpe_epochs == 2


def test_search_efficiency_benchmark_prints_ratio(capsys: pytest.CaptureFixture[str]) -> None:
    from benchmarks import search_efficiency

    search_efficiency.main(
        ["--quick", "--datasets", "zll", "--events", "800", "--trials", "2", "--epochs", "1"]
    )
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[-1].startswith("ratio=")
    _value(out, "ratio")
    (row,) = [ln for ln in lines if ln.startswith("zll  ") and "±" in ln]
    assert len(_numbers(row)) >= 8, row


# --- preprocessing (benchmarks/preprocess.py; issue 14, items 2 and 5) ---------------------


def _positive(line: str) -> float:
    v = float(line.split("=", 1)[1].split()[0])
    assert math.isfinite(v) and v > 0, line
    return v


def test_preprocess_benchmark_quick(tmp_path: Path) -> None:
    out = _run_benchmark("preprocess.py", "--quick", "--workdir", str(tmp_path), timeout=120)
    lines = out.strip().splitlines()
    rates = {}
    for name in (
        "raw_1proc",
        "raw_2proc",
        "pipeline_2workers",
        "raw_1proc_cold",
        "raw_2proc_cold",
        "pipeline_2workers_cold",
    ):
        (line,) = [ln for ln in lines if ln.startswith(f"{name}: ")]
        m = re.search(r"in ([0-9.]+) s.* = ([0-9,]+) events/s", line)
        assert m, line
        rates[name] = float(m.group(2).replace(",", ""))
        assert float(m.group(1)) > 0 and rates[name] > 0, line
    (breakdown,) = [ln for ln in lines if ln.strip().startswith("breakdown pipeline_2workers:")]
    for phase in ("inputs validated", "cluster ready", "read + select", "shards written"):
        m = re.search(re.escape(phase) + r" ([0-9.]+) s", breakdown)
        assert m and math.isfinite(float(m.group(1))), (phase, breakdown)
    cpu = [float(x) for x in re.findall(r"([0-9.]+)", breakdown.split("cpu:")[1])]
    assert len(cpu) == 3 and all(c > 0 for c in cpu), breakdown
    ratios = {ln.split("=")[0]: _positive(ln) for ln in lines if re.match(r"ratio\w*=", ln)}
    assert set(ratios) == {
        "ratio_cold",
        "ratio_cold_fair",
        "ratio_warm_fair",
        "ratio_warm",
        "ratio",
    }
    assert lines[-1].startswith("ratio=")
    assert ratios["ratio"] == ratios["ratio_warm"]
    assert abs(ratios["ratio"] - rates["pipeline_2workers"] / rates["raw_1proc"]) < 0.01
