#!/usr/bin/env bash
# Bring up a real local SLURM cluster on this machine, for tests and for trying the SLURM path
# on a laptop.  Needs root (apt-get, network namespaces, daemons as root).
#
#   sudo slurm/testcluster/up.sh [--nodes 1|2]     # default 2
#   eval "$(slurm/testcluster/env.sh)"             # SLURM_CONF for sinfo/sbatch/hepscan slurm
#   sinfo
#   sudo slurm/testcluster/down.sh                 # removes exactly what up.sh created
#
# 1-node mode: one slurmd ("hsnode1") on the machine itself, node address 127.0.0.1.
# 2-node mode: two slurmds ("hsnode1", "hsnode2"), each in its own network + UTS namespace with
# its own address on a bridge made here (10.77.0.11, 10.77.0.12; slurmctld on 10.77.0.1).  The
# namespaces are entered with `nsenter --net` + `unshare --uts` rather than `ip netns exec`
# because the latter remounts /sys and hides /sys/fs/cgroup from slurmd.  Both slurmds share the
# machine's cores, its filesystem (the "shared filesystem") and the munge socket.
#
# Idempotent: a second `up.sh` with the same mode only reports status; a different mode tears
# the running one down first.  Everything created is recorded in $HEPSCAN_SLURM_HOME/created so
# down.sh removes only that.
#
# Environment knobs (all optional):
#   HEPSCAN_SLURM_HOME   state dir (config, spool, logs, pids)      default /run/hepscan-slurm
#   HEPSCAN_SLURM_NET    /24 prefix for the bridge in 2-node mode    default 10.77.0
#   HEPSCAN_SLURM_CTLD_PORT / HEPSCAN_SLURM_SLURMD_PORT              default 6817 / 6818
#   HEPSCAN_SLURM_PARTITION                                           default debug
#   HEPSCAN_SLURM_MEM_MB  RealMemory declared per node                default 4000
set -euo pipefail

NODES=2
while [[ $# -gt 0 ]]; do
    case "$1" in
        --nodes) NODES="$2"; shift 2 ;;
        --nodes=*) NODES="${1#--nodes=}"; shift ;;
        -h|--help) sed -n '2,27p' "$0"; exit 0 ;;
        *) echo "up.sh: unknown argument: $1" >&2; exit 2 ;;
    esac
done
if [[ "$NODES" != 1 && "$NODES" != 2 ]]; then
    echo "up.sh: --nodes must be 1 or 2 (got '$NODES')" >&2; exit 2
fi
if [[ $EUID -ne 0 ]]; then
    echo "up.sh: must run as root (daemons, namespaces, apt-get)" >&2; exit 1
fi

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
H="${HEPSCAN_SLURM_HOME:-/run/hepscan-slurm}"
NET="${HEPSCAN_SLURM_NET:-10.77.0}"
CTLD_PORT="${HEPSCAN_SLURM_CTLD_PORT:-6817}"
SLURMD_PORT="${HEPSCAN_SLURM_SLURMD_PORT:-6818}"
PARTITION="${HEPSCAN_SLURM_PARTITION:-debug}"
MEM_MB="${HEPSCAN_SLURM_MEM_MB:-4000}"
BRIDGE=hsbr0
CONF="$H/slurm.conf"
CREATED="$H/created"
export SLURM_CONF="$CONF"

log() { echo "up.sh: $*"; }
record() { echo "$*" >> "$CREATED"; }
recorded() { [[ -f "$CREATED" ]] && grep -qxF "$*" "$CREATED"; }
HOSTS_MARK="# hepscan-testcluster"  # ends each /etc/hosts line up.sh adds; down.sh removes them
pid_alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }
pidfile_alive() { [[ -f "$1" ]] && pid_alive "$(cat "$1")"; }

# ---------------------------------------------------------------- packages
install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    command -v nsenter >/dev/null || missing+=(util-linux)
    command -v ip >/dev/null || missing+=(iproute2)
    if [[ ${#missing[@]} -gt 0 ]]; then
        log "installing ${missing[*]} with apt-get"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -q >/dev/null
        apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# ---------------------------------------------------------------- status / idempotency
node_names() {
    local i
    for ((i = 1; i <= $1; i++)); do echo "hsnode$i"; done
}

cluster_healthy() {
    [[ -f "$H/mode" ]] || return 1
    local mode; mode="$(cat "$H/mode")"
    pidfile_alive "$H/run/slurmctld.pid" || return 1
    local n
    for n in $(node_names "$mode"); do
        pidfile_alive "$H/run/slurmd-$n.pid" || return 1
        # 2-node mode: the node names resolve (see the network section)
        [[ "$mode" == 1 ]] || getent hosts "$n" >/dev/null || return 1
    done
    munge -n 2>/dev/null | unmunge >/dev/null 2>&1 || return 1
}

report_status() {
    log "cluster up in $(cat "$H/mode")-node mode; SLURM_CONF=$CONF"
    sinfo -N -o '%N %P %t %c %m %o' || true
}

if [[ -f "$H/mode" ]]; then
    running_mode="$(cat "$H/mode")"
    if [[ "$running_mode" != "$NODES" ]]; then
        log "a $running_mode-node cluster is up; switching to $NODES nodes (down.sh first)"
        "$HERE/down.sh"
    elif cluster_healthy; then
        report_status
        exit 0
    else
        log "cluster state found but some daemons are gone; restarting the missing ones"
    fi
fi

install_packages

mkdir -p "$H"/{spool/ctld,run,log,jobs}
touch "$CREATED"

# Refuse to fight a SLURM that someone else runs on this machine.
for daemon in slurmctld slurmd; do
    for pid in $(pgrep -x "$daemon" || true); do
        ours=0
        for f in "$H"/run/*.pid; do
            [[ -f "$f" && "$(cat "$f")" == "$pid" ]] && ours=1
        done
        if [[ $ours -eq 0 ]]; then
            echo "up.sh: a $daemon not started by this script is running (pid $pid); refusing to start a second cluster" >&2
            exit 1
        fi
    done
done

# ---------------------------------------------------------------- munge
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    install -d -o munge -g munge -m 0700 /etc/munge
    mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    record "file /etc/munge/munge.key"
fi
if munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    recorded munged || log "using the munged already running on this machine"
else
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/log/munge /var/lib/munge
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    for _ in $(seq 50); do
        munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break
        sleep 0.1
    done
    munge -n | unmunge >/dev/null
    recorded munged || record munged
    log "started munged (pid $(cat /run/munge/munged.pid))"
fi

# ---------------------------------------------------------------- network (2-node mode)
if [[ "$NODES" == 2 ]]; then
    CTLD_ADDR="$NET.1"
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        if ip -4 addr | grep -q "inet $NET\."; then
            echo "up.sh: $NET.0/24 is already used on this machine; set HEPSCAN_SLURM_NET" >&2
            exit 1
        fi
        ip link add "$BRIDGE" type bridge
        record "bridge $BRIDGE"
        ip addr add "$CTLD_ADDR/24" dev "$BRIDGE"
        ip link set "$BRIDGE" up
    fi
    for i in 1 2; do
        ns="hepscan-n$i"
        if [[ ! -e "/var/run/netns/$ns" ]]; then
            ip netns add "$ns"
            record "netns $ns"
        fi
        if ! ip link show "hsv$i" >/dev/null 2>&1; then
            ip link add "hsv$i" type veth peer name "hsv${i}p"
            record "veth hsv$i"
            ip link set "hsv${i}p" netns "$ns"
            ip link set "hsv$i" master "$BRIDGE" up
            ip -n "$ns" addr add "$NET.1$i/24" dev "hsv${i}p"
            ip -n "$ns" link set "hsv${i}p" up
            ip -n "$ns" link set lo up
        fi
    done
    # Node names must resolve, as on a real cluster: Horovod's gloo looks its own host up and
    # crashes (SIGSEGV in gloo::transport::tcp::CreateDeviceAttr) when it cannot.
    for i in 1 2; do
        if ! grep -q "^$NET.1$i hsnode$i " /etc/hosts; then
            echo "$NET.1$i hsnode$i $HOSTS_MARK" >> /etc/hosts
            recorded "hosts hsnode$i" || record "hosts hsnode$i"
        fi
    done
    NODE_LINES="NodeName=hsnode1 NodeAddr=$NET.11 NodeHostname=hsnode1 CPUs=$(env -u OMP_NUM_THREADS nproc) RealMemory=$MEM_MB State=UNKNOWN
NodeName=hsnode2 NodeAddr=$NET.12 NodeHostname=hsnode2 CPUs=$(env -u OMP_NUM_THREADS nproc) RealMemory=$MEM_MB State=UNKNOWN"
else
    CTLD_ADDR=127.0.0.1
    NODE_LINES="NodeName=hsnode1 NodeAddr=127.0.0.1 NodeHostname=$(hostname -s) CPUs=$(env -u OMP_NUM_THREADS nproc) RealMemory=$MEM_MB State=UNKNOWN"
fi

# ---------------------------------------------------------------- config
tmpconf="$(mktemp "$H/slurm.conf.XXXXXX")"
sed -e "s|@CTLD_HOST@|$(hostname -s)|" -e "s|@CTLD_ADDR@|$CTLD_ADDR|" \
    -e "s|@CTLD_PORT@|$CTLD_PORT|" -e "s|@SLURMD_PORT@|$SLURMD_PORT|" \
    -e "s|@HOME@|$H|g" -e "s|@PARTITION@|$PARTITION|" \
    "$HERE/slurm-template.conf" | awk -v nodes="$NODE_LINES" '{ if ($0 == "@NODES@") print nodes; else print }' > "$tmpconf"
chmod 0644 "$tmpconf"
mv "$tmpconf" "$CONF"
echo "$NODES" > "$H/mode"

# ---------------------------------------------------------------- daemons
if ! pidfile_alive "$H/run/slurmctld.pid"; then
    # -c: start from a clean job table; a fresh test cluster should not inherit old jobs
    /usr/sbin/slurmctld -c -f "$CONF"
    recorded slurmctld || record slurmctld
    log "started slurmctld"
fi

for n in $(node_names "$NODES"); do
    pidfile_alive "$H/run/slurmd-$n.pid" && continue
    mkdir -p "$H/spool/$n"
    if [[ "$NODES" == 2 ]]; then
        ns="hepscan-n${n#hsnode}"
        nsenter --net="/var/run/netns/$ns" unshare --uts \
            sh -c "hostname $n && exec /usr/sbin/slurmd -N $n -f '$CONF'"
    else
        /usr/sbin/slurmd -N "$n" -f "$CONF"
    fi
    recorded "slurmd $n" || record "slurmd $n"
    log "started slurmd $n"
done

# ---------------------------------------------------------------- wait for idle nodes
want="$NODES"
for i in $(seq 120); do
    idle="$(sinfo -h -N -t idle -o '%N' 2>/dev/null | sort -u | wc -l)"
    [[ "$idle" -ge "$want" ]] && break
    # a node that registered as down (e.g. after a mode switch) is put back in service
    for n in $(sinfo -h -N -t down,drain -o '%N' 2>/dev/null | sort -u); do
        scontrol update nodename="$n" state=resume 2>/dev/null || true
    done
    sleep 0.5
    if [[ $i -eq 120 ]]; then
        echo "up.sh: nodes did not become idle within 60 s; logs in $H/log" >&2
        sinfo -N -l >&2 || true
        tail -n 20 "$H"/log/*.log >&2 || true
        exit 1
    fi
done

cat > "$H/env.sh" <<EOF
export SLURM_CONF=$CONF
export SBATCH_OUTPUT=$H/jobs/slurm-%j.out
EOF
report_status
