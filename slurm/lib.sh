# Shell helpers shared by slurm/scan.sbatch and slurm/preprocess.sbatch.  `hepscan slurm submit`
# pastes this file into the rendered job script, so the job needs nothing from the source tree.
# Everything site-specific comes from the variables set above it in the rendered script.

hs_log() { echo "[hepscan $(date '+%H:%M:%S') ${SLURMD_NODENAME:-$(hostname)}] $*"; }

# This node's address, the one other nodes of the allocation reach it on.  With an interface
# (--interface ib0) that interface's IPv4 address; otherwise SLURM's NodeAddr for the node (what
# slurmctld itself uses to reach slurmd, so it is routable inside the cluster), resolved to an
# IPv4 address.  Ray and Dask cannot guess this on nodes without a default route.
hs_node_addr() {
    local node="${1:-${SLURMD_NODENAME:-$(hostname -s)}}" addr=""
    if [[ -n "${HS_INTERFACE:-}" ]]; then
        addr="$(ip -4 -o addr show dev "$HS_INTERFACE" 2>/dev/null | awk '{split($4, a, "/"); print a[1]; exit}')"
    fi
    if [[ -z "$addr" ]]; then
        addr="$(scontrol show node "$node" 2>/dev/null | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)"
        [[ -n "$addr" ]] || addr="$node"
    fi
    if [[ ! "$addr" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]]; then
        addr="$(getent ahostsv4 "$addr" | awk 'NR == 1 {print $1}')"
    fi
    if [[ -z "$addr" ]]; then
        addr="$(hostname -I 2>/dev/null | awk '{print $1}')"
    fi
    echo "$addr"
}

# All nodes of the allocation, the batch host (where this script runs) first.
hs_nodes() {
    local head="${SLURMD_NODENAME:-$(hostname -s)}" n
    echo "$head"
    for n in $(scontrol show hostnames "$SLURM_JOB_NODELIST"); do
        [[ "$n" == "$head" ]] || echo "$n"
    done
}

# Pinned ports.  One block of 200 ports per job, below the kernel's ephemeral range (32768+),
# chosen from the job id unless --port-base fixed it, so two jobs sharing a node rarely collide
# and a firewall rule can name the range (10000-29999).
hs_port_base() {
    if [[ "${HS_PORT_BASE:-0}" -gt 0 ]]; then
        echo "$HS_PORT_BASE"
    else
        echo $(( 10000 + (SLURM_JOB_ID % 100) * 200 ))
    fi
}

# Wait until host:port accepts TCP connections (bash's /dev/tcp, no extra tools); with a pid,
# give up as soon as that process (the server) has exited.
hs_wait_port() {
    local host="$1" port="$2" timeout="${3:-120}" pid="${4:-}" i
    for ((i = 0; i < timeout * 2; i++)); do
        if (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null; then return 0; fi
        if [[ -n "$pid" ]] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
        sleep 0.5
    done
    return 1
}

# Steps (srun) and servers this job started, stopped at exit in reverse order.
HS_STEP_PIDS=()
HS_SERVER_PGIDS=()
hs_stop_all() {
    local pid step i alive
    # Steps first (Ray/Dask workers), then the servers they talk to (scheduler, mlflow).
    # SIGTERM through slurmstepd reaches every process of a step so they shut down cleanly; a
    # SIGTERM to srun itself would make it SIGKILL the step.
    for step in $(squeue -h -s -j "$SLURM_JOB_ID" -o %i 2>/dev/null | grep -E "^$SLURM_JOB_ID\.[0-9]+\$"); do
        scancel --signal=TERM "$step" 2>/dev/null || true
    done
    for ((i = 0; i < 60; i++)); do
        alive=0
        for pid in "${HS_STEP_PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [[ $alive -eq 0 ]] && break
        sleep 0.5
    done
    for pid in "${HS_STEP_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${HS_SERVER_PGIDS[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
    for ((i = 0; i < 40; i++)); do
        alive=0
        for pid in "${HS_STEP_PIDS[@]}" "${HS_SERVER_PGIDS[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [[ $alive -eq 0 ]] && break
        sleep 0.5
    done
    for pid in "${HS_SERVER_PGIDS[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
    HS_STEP_PIDS=()
    HS_SERVER_PGIDS=()
}

# Run a function on one node as a SLURM step, in the background.  The step gets the node's
# share of the allocation (one task, all its CPUs and GPUs); --overlap lets later steps (the
# driver's own srun calls, if any) share the node.
#   hs_step NODE FUNCTION [ARGS...]
hs_step() {
    local node="$1"; shift
    local gpu_opt=()
    [[ "${HS_GPUS_PER_NODE:-0}" -gt 0 ]] && gpu_opt=(--gpus-per-node="$HS_GPUS_PER_NODE")
    srun --nodes=1 --ntasks=1 --cpus-per-task="$HS_CPUS_PER_NODE" "${gpu_opt[@]}" \
        --overlap --kill-on-bad-exit=0 -w "$node" \
        bash -c "$(declare -f hs_log hs_node_addr hs_step_gpus "$1"); $(printf '%q ' "$@")" &
    HS_STEP_PIDS+=($!)
}

# Number of GPUs this step sees: SLURM's CUDA_VISIBLE_DEVICES when it set one, else the request.
hs_step_gpus() {
    if [[ "${HS_GPUS_PER_NODE:-0}" -gt 0 && -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
        awk -F, '{print NF}' <<< "$CUDA_VISIBLE_DEVICES"
    else
        echo "${HS_GPUS_PER_NODE:-0}"
    fi
}

hs_activate() {
    if [[ -f "$HS_VENV_BIN/activate" ]]; then
        # shellcheck disable=SC1091
        source "$HS_VENV_BIN/activate"
    fi
    export PATH="$HS_VENV_BIN:$PATH"
    if [[ -n "${HS_PYTHONPATH:-}" ]]; then
        export PYTHONPATH="$HS_PYTHONPATH${PYTHONPATH:+:$PYTHONPATH}"
    fi
}

# The driver runs where the job was submitted, so relative paths in its arguments
# (`-- --set dataset=data/zll`, `-- --input 'data/*.root'`) mean what they meant there.
hs_enter_submit_dir() {
    local dir="${SLURM_SUBMIT_DIR:-$HS_RUN_DIR}"
    if ! cd "$dir" 2>/dev/null; then
        hs_log "cannot enter the submit directory $dir on this node; running from $HS_RUN_DIR"
        cd "$HS_RUN_DIR" || exit 1
    fi
}
