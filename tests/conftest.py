"""Shared test set-up: headless plotting and a repository-root working directory."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

REPO_ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MPLBACKEND", "Agg")
# Ray's usage-stats prompt and dashboard are noise in tests on a closed network.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
