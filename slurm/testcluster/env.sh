#!/usr/bin/env bash
# Print the environment that points SLURM clients at the local test cluster:
#   eval "$(slurm/testcluster/env.sh)"
H="${HEPSCAN_SLURM_HOME:-/run/hepscan-slurm}"
if [[ ! -f "$H/env.sh" ]]; then
    echo "env.sh: no test cluster in $H; run slurm/testcluster/up.sh first" >&2
    exit 1
fi
cat "$H/env.sh"
