"""What a SLURM job asks for (:class:`JobSpec`, validated on construction) and what comes back
(:class:`SubmitResult`, :class:`JobStatus`); SLURM time strings (:func:`time_to_seconds`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from models.errors import ConfigError

__all__ = ["JobSpec", "JobStatus", "SubmitResult", "time_to_seconds"]

HERE = Path(__file__).resolve().parent
TEMPLATES = {"scan": HERE / "scan.sbatch", "preprocess": HERE / "preprocess.sbatch"}
LIB = HERE / "lib.sh"


@dataclass
class JobSpec:
    """What one ``hepscan slurm submit`` asks for.  Paths may be relative to the cwd."""

    config: str | Path
    cpus_per_node: int
    time: str
    kind: Literal["scan", "preprocess"] = "scan"
    nodes: int = 1
    gpus_per_node: int = 0
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    job_name: str | None = None
    run_dir: str | Path | None = None
    scan_dir: str | Path | None = None
    out: str | Path | None = None
    # None: min(300, a fifth of --time)
    signal_seconds: int | None = None
    requeue: bool = True
    tracking_uri: str | None = None
    # an `mlflow server` in the job as a live viewer of the scan's store
    mlflow_server: bool = False
    # its bind address; None: 127.0.0.1 on one node, the head node's address on several
    mlflow_host: str | None = None
    python: str = field(default_factory=lambda: sys.executable)
    node_tmp: str = "/tmp"
    port_base: int = 0
    interface: str | None = None
    dask_workers_per_node: int = 0
    join_timeout: int = 180
    head_reserved_cpus: int = 0
    command: str | None = None
    driver_args: tuple[str, ...] = ()
    sbatch_args: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in TEMPLATES:
            raise ConfigError(f"--kind: unknown job kind {self.kind!r} (scan or preprocess)")
        if self.nodes < 1:
            raise ConfigError(f"--nodes must be >= 1 (got {self.nodes})")
        if self.cpus_per_node < 1:
            raise ConfigError(f"--cpus-per-node must be >= 1 (got {self.cpus_per_node})")
        if self.gpus_per_node < 0:
            raise ConfigError(f"--gpus-per-node must be >= 0 (got {self.gpus_per_node})")
        limit = time_to_seconds(self.time)
        if limit <= 0:
            raise ConfigError(f"--time must be positive (got {self.time!r})")
        if self.signal_seconds is not None and not 0 <= self.signal_seconds < limit:
            raise ConfigError(
                f"--signal-seconds {self.signal_seconds} must be >= 0 and shorter than "
                f"--time {self.time} ({limit} s)"
            )
        if self.mlflow_server and self.tracking_uri and self.tracking_uri.startswith("http"):
            raise ConfigError(
                f"--mlflow-server: --tracking-uri {self.tracking_uri} is already a server; "
                "give a database URI (sqlite:///..., postgresql://...) or drop --mlflow-server"
            )
        if self.kind == "preprocess" and self.out is None and self.command is None:
            raise ConfigError("--out is required for --kind preprocess")

    @property
    def name(self) -> str:
        return self.job_name or f"hepscan-{self.kind}-{Path(self.config).stem}"

    @property
    def signal_lead(self) -> int:
        """Seconds before the time limit at which the batch script gets USR1 (0: never)."""
        if self.signal_seconds is not None:
            return self.signal_seconds
        return min(300, time_to_seconds(self.time) // 5)

    @property
    def uses_mlflow_server(self) -> bool:
        return self.kind == "scan" and self.mlflow_server


@dataclass
class SubmitResult:
    job_id: str | None
    script: str
    script_path: Path | None
    run_dir: Path
    log_path: Path
    scan_dir: Path | None
    tracking: str


@dataclass
class JobStatus:
    job_id: str
    state: str
    exit_code: str | None
    nodes: str | None
    reason: str | None
    restarts: int
    log_path: str | None
    fields: dict[str, str]


def time_to_seconds(value: str) -> int:
    """SLURM time (``MM``, ``MM:SS``, ``HH:MM:SS``, ``D-HH:MM:SS``, ``D-HH:MM``) in seconds."""
    text = value.strip()
    if text.upper() in ("UNLIMITED", "INFINITE"):
        return 10**12
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        if not d.isdigit():
            raise ConfigError(f"--time: cannot read {value!r} (use HH:MM:SS or D-HH:MM:SS)")
        days = int(d)
        parts = text.split(":")
        if not 1 <= len(parts) <= 3:
            raise ConfigError(f"--time: cannot read {value!r} (use HH:MM:SS or D-HH:MM:SS)")
        parts += ["0"] * (3 - len(parts))
    else:
        parts = text.split(":")
        if len(parts) == 1:
            parts = ["0", parts[0], "0"]
        elif len(parts) == 2:
            parts = ["0", *parts]
        elif len(parts) != 3:
            raise ConfigError(f"--time: cannot read {value!r} (use HH:MM:SS or D-HH:MM:SS)")
    if not all(p.isdigit() for p in parts):
        raise ConfigError(f"--time: cannot read {value!r} (use HH:MM:SS or D-HH:MM:SS)")
    h, m, s = (int(p) for p in parts)
    return ((days * 24 + h) * 60 + m) * 60 + s
