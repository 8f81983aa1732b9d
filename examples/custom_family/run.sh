#!/usr/bin/env bash
# Your own model family, scanned end to end in about a minute: simulate a small Z->ll sample,
# preprocess it, run a 2-trial scan of the family in resmlp.py, report the scan.
#
#   . .venv/bin/activate                       # the project's venv (make install)
#   examples/custom_family/run.sh [WORKDIR]    # WORKDIR default: a new temporary directory
#
# Without an activated venv the script uses $PYTHON, else .venv/bin/python of this checkout.
# The family reaches the scan, and every Ray worker, by the import string in scan.yaml
# (family: "resmlp:FAMILY"); resmlp is importable because this directory is put on PYTHONPATH.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
    if [ -n "${VIRTUAL_ENV:-}" ]; then PYTHON="$VIRTUAL_ENV/bin/python"
    elif [ -x "$repo/.venv/bin/python" ]; then PYTHON="$repo/.venv/bin/python"
    else PYTHON=python3
    fi
fi
work="${1:-$(mktemp -d "${TMPDIR:-/tmp}/hepscan-custom-family.XXXXXX")}"
mkdir -p "$work"
export PYTHONPATH="$here${PYTHONPATH:+:$PYTHONPATH}"
export RAY_USAGE_STATS_ENABLED=0
step() { echo "== [${SECONDS}s] hepscan $1"; "$PYTHON" -m scan.cli "$@"; }

echo "== work directory: $work"
step simulate zll --events "${EVENTS:-20000}" --seed 1 --out "$work/root" --no-progress
step preprocess "$repo/configs/preprocess_zll.yaml" --input "$work/root/*.root" \
    --out "$work/data" --workers 1 --overwrite
step scan "$here/scan.yaml" --set dataset="$work/data" --scan-dir "$work/scan"
step report "$work/scan"
echo "== [${SECONDS}s] done: scan in $work/scan (MLflow: sqlite:///$work/scan/mlflow.db)"
