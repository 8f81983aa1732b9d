"""Questions to the SLURM cluster: can the partition ever run this spec (``scontrol``), the state
of a job (``scontrol``, else ``sacct``), and the environment ``sbatch`` runs with."""

from __future__ import annotations

import os
import re
import shutil
import subprocess

from models.errors import ConfigError, HepscanError
from slurm.spec import JobSpec, JobStatus, time_to_seconds

__all__ = ["check_partition", "status"]


# sbatch's input variables override #SBATCH lines; drop those that would override ours.
_OVERRIDDEN = (
    "OUTPUT",
    "ERROR",
    "OPEN_MODE",
    "JOB_NAME",
    "TIMELIMIT",
    "SIGNAL",
    "REQUEUE",
    "NO_REQUEUE",
    "GPUS_PER_NODE",
)


def _sbatch_env(spec: JobSpec) -> dict[str, str]:
    env = dict(os.environ)
    drop = list(_OVERRIDDEN)
    drop += [
        k
        for k, v in (("PARTITION", spec.partition), ("ACCOUNT", spec.account), ("QOS", spec.qos))
        if v
    ]
    for key in drop:
        env.pop(f"SBATCH_{key}", None)
    return env


def _run(
    cmd: list[str], timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    if shutil.which(cmd[0]) is None:
        raise HepscanError(
            f"{cmd[0]} not found: run this where SLURM's client commands are installed "
            "(for the local test cluster: slurm/testcluster/up.sh, then "
            'eval "$(slurm/testcluster/env.sh)")'
        )
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, check=False, env=env
        )
    except subprocess.TimeoutExpired as exc:
        raise HepscanError(f"{' '.join(cmd)} did not answer in {timeout:.0f} s") from exc


def _kv(text: str) -> dict[str, str]:
    """``scontrol show -o`` output as a dict (values may not contain spaces except the last)."""
    out: dict[str, str] = {}
    for token in text.split():
        if "=" in token:
            key, _, value = token.partition("=")
            out[key] = value
    return out


def _partitions() -> dict[str, dict[str, str]]:
    proc = _run(["scontrol", "show", "partition", "-o"])
    if proc.returncode != 0:
        raise HepscanError(f"scontrol show partition failed: {proc.stderr.strip()}")
    parts = {}
    for line in proc.stdout.splitlines():
        if line.strip():
            info = _kv(line)
            parts[info.get("PartitionName", "")] = info
    return parts


def _node_info(nodelist: str) -> list[dict[str, str]]:
    proc = _run(["scontrol", "show", "node", "-o", nodelist])
    if proc.returncode != 0:
        return []
    return [_kv(line) for line in proc.stdout.splitlines() if line.strip()]


def _gpus_of(node: dict[str, str]) -> int:
    total = 0
    for item in node.get("Gres", "").split(","):
        m = re.match(r"gpu(?::[^:(]+)?:(\d+)", item)
        if m:
            total += int(m.group(1))
    return total


def check_partition(spec: JobSpec) -> str:
    """Fail now, with a message naming the option, for what the partition can never run."""
    parts = _partitions()
    wanted = spec.partition or os.environ.get("SBATCH_PARTITION")
    if wanted:
        name = wanted
        if name not in parts:
            known = ", ".join(sorted(parts)) or "none"
            raise ConfigError(f"--partition: unknown partition {name!r} (available: {known})")
    else:
        defaults = [n for n, p in parts.items() if p.get("Default") == "YES"]
        if not defaults:
            raise ConfigError(
                "--partition: the cluster has no default partition; name one "
                f"(available: {', '.join(sorted(parts)) or 'none'})"
            )
        name = defaults[0]
    part = parts[name]
    total_nodes = int(part.get("TotalNodes", "0") or 0)
    if spec.nodes > total_nodes:
        raise ConfigError(
            f"--nodes {spec.nodes}: partition {name!r} has only {total_nodes} node(s)"
        )
    max_nodes = part.get("MaxNodes", "UNLIMITED")
    if max_nodes.isdigit() and spec.nodes > int(max_nodes):
        raise ConfigError(f"--nodes {spec.nodes}: partition {name!r} allows at most {max_nodes}")
    max_time = part.get("MaxTime", "UNLIMITED")
    if max_time not in ("UNLIMITED", "INFINITE") and time_to_seconds(spec.time) > time_to_seconds(
        max_time
    ):
        raise ConfigError(f"--time {spec.time}: partition {name!r} allows at most {max_time}")
    nodes = _node_info(part.get("Nodes", ""))
    if nodes:
        fits = [
            n
            for n in nodes
            if int(n.get("CPUTot", "0") or 0) >= spec.cpus_per_node
            and _gpus_of(n) >= spec.gpus_per_node
        ]
        if len(fits) < spec.nodes:
            best_cpus = max(int(n.get("CPUTot", "0") or 0) for n in nodes)
            best_gpus = max(_gpus_of(n) for n in nodes)
            raise ConfigError(
                f"--nodes {spec.nodes} x (--cpus-per-node {spec.cpus_per_node}, "
                f"--gpus-per-node {spec.gpus_per_node}): partition {name!r} has "
                f"{len(fits)} node(s) that large (largest: {best_cpus} CPUs, {best_gpus} GPUs)"
            )
    return name


def status(job_id: str | int) -> JobStatus:
    """State of a job from ``scontrol`` (pending, running, recently finished), else ``sacct``."""
    jid = str(job_id)
    proc = _run(["scontrol", "show", "job", "-o", jid])
    if proc.returncode == 0 and proc.stdout.strip():
        info = _kv(proc.stdout.splitlines()[0])
        return JobStatus(
            job_id=jid,
            state=info.get("JobState", "UNKNOWN"),
            exit_code=info.get("ExitCode"),
            nodes=info.get("NodeList"),
            reason=info.get("Reason"),
            restarts=int(info.get("Restarts", "0") or 0),
            log_path=info.get("StdOut"),
            fields=info,
        )
    if shutil.which("sacct"):
        acct = _run(["sacct", "-j", jid, "-X", "-n", "-P", "-o", "JobID,State,ExitCode,NodeList"])
        line = acct.stdout.strip().splitlines()[0] if acct.stdout.strip() else ""
        if acct.returncode == 0 and line:
            _jid, state, exit_code, nodes = (line.split("|") + ["", "", "", ""])[:4]
            return JobStatus(jid, state, exit_code, nodes, None, 0, None, {})
    raise HepscanError(f"job {jid}: unknown to scontrol and sacct ({proc.stderr.strip()})")
