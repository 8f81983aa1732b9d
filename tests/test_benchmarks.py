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
