#!/usr/bin/env bash
# Tear down the local test cluster made by up.sh: cancel its jobs, stop the daemons it started,
# remove the namespaces, veths and bridge it created.  Nothing else is touched: a munged that
# was already running before up.sh stays up.
#
#   sudo slurm/testcluster/down.sh
set -uo pipefail

H="${HEPSCAN_SLURM_HOME:-/run/hepscan-slurm}"
CREATED="$H/created"
export SLURM_CONF="$H/slurm.conf"
log() { echo "down.sh: $*"; }

if [[ ! -f "$CREATED" ]]; then
    log "no test cluster recorded in $H; nothing to do"
    exit 0
fi
if [[ $EUID -ne 0 ]]; then
    echo "down.sh: must run as root" >&2; exit 1
fi

stop_pid() {  # stop_pid NAME PID: TERM, wait up to 10 s, then KILL
    local name="$1" pid="$2" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for i in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { log "stopped $name (pid $pid)"; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
    log "killed $name (pid $pid)"
}

# Jobs first, so their steps are cleaned up by slurmstepd while slurmd still runs.
if [[ -f "$H/run/slurmctld.pid" ]] && kill -0 "$(cat "$H/run/slurmctld.pid")" 2>/dev/null; then
    if [[ -n "$(squeue -h -o %i 2>/dev/null)" ]]; then
        scancel --full $(squeue -h -o %i) 2>/dev/null
        for _ in $(seq 100); do
            [[ -z "$(squeue -h -t running,completing -o %i 2>/dev/null)" ]] && break
            sleep 0.2
        done
    fi
fi

for f in "$H"/run/slurmd-*.pid; do
    [[ -f "$f" ]] || continue
    name="$(basename "$f" .pid)"
    stop_pid "$name" "$(cat "$f")"
    rm -f "$f"
done
if [[ -f "$H/run/slurmctld.pid" ]]; then
    stop_pid slurmctld "$(cat "$H/run/slurmctld.pid")"
    rm -f "$H/run/slurmctld.pid"
fi

# Leftover processes of our jobs inside our namespaces (slurmstepd, Ray, Dask) go with them.
tac "$CREATED" | while read -r kind name; do
    case "$kind" in
        netns)
            for pid in $(ip netns pids "$name" 2>/dev/null); do stop_pid "process in $name" "$pid"; done
            ip netns delete "$name" 2>/dev/null && log "removed netns $name" ;;
        veth) ip link delete "$name" 2>/dev/null && log "removed veth $name" ;;
        bridge) ip link delete "$name" 2>/dev/null && log "removed bridge $name" ;;
        munged)
            if [[ -f /run/munge/munged.pid ]]; then
                stop_pid munged "$(cat /run/munge/munged.pid)"
            fi ;;
        hosts)
            # only the line up.sh appended (it ends with the marker)
            # (rewritten in place, not renamed: /etc/hosts may be a bind mount)
            if grep -q " $name # hepscan-testcluster$" /etc/hosts; then
                kept="$(grep -v " $name # hepscan-testcluster$" /etc/hosts)"
                printf '%s\n' "$kept" > /etc/hosts && log "removed $name from /etc/hosts"
            fi ;;
        file) rm -f "$name" && log "removed $name" ;;
    esac
done

rm -rf "$H/spool" "$H/run" "$H/mode" "$H/env.sh" "$H/slurm.conf" "$CREATED"
log "test cluster down (logs kept in $H/log and $H/jobs)"
