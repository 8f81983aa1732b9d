"""One driver per scan directory: an ``flock`` lock file plus a JSON record naming the holder.

.. code-block:: python

    from scan.lock import hold, check_free
    with hold(scan_dir, "hepscan scan"):      # ScanLocked if a live driver holds scan_dir
        ...                                   # run the scan
    check_free(scan_dir)                      # hepscan slurm submit: refuse, take nothing

Files in the scan directory:

* ``.driver.lock`` — held with ``flock(LOCK_EX | LOCK_NB)`` while the driver runs (the kernel
  drops it when the process dies, however it dies); never renamed or deleted.
* ``driver.json`` — the holder: host, pid, process start time, ``$SLURM_JOB_ID``, command,
  start date; written atomically, removed on a clean release.

A second ``hepscan scan``/``resume``/``slurm submit`` on the directory fails at once with
:class:`ScanLocked` naming the holder.  ``flock`` may not reach across nodes on every shared
filesystem (Lustre without ``-o flock``), so the record is checked as well: a record left behind
(lock free, or held on another node) is *stale* and taken over, with a message, when

* its host is this host and its pid is gone (or now belongs to another process: the start time
  in ``/proc/<pid>/stat`` differs), or
* it names a SLURM job that ``squeue -h -j ID -o %T`` (else ``scontrol show job``) reports as
  not RUNNING/PENDING/CONFIGURING/COMPLETING/SUSPENDED, or that is the current
  ``$SLURM_JOB_ID`` itself (a requeued job's earlier run).

A record from another host without a SLURM job id cannot be checked from here: it counts as
live (the message says so and names the file to delete once the holder is known to be gone).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from models.errors import HepscanError

__all__ = ["HOLDER_FILE", "LOCK_FILE", "Holder", "ScanLocked", "check_free", "hold"]

LOCK_FILE = ".driver.lock"
HOLDER_FILE = "driver.json"
# SLURM job states in which the job's driver may still run (or start).
_LIVE_JOB_STATES = {"RUNNING", "PENDING", "CONFIGURING", "COMPLETING", "SUSPENDED", "REQUEUED"}


class ScanLocked(HepscanError):
    """Another live driver holds the scan directory."""


@dataclass(frozen=True)
class Holder:
    """Who holds a scan directory."""

    host: str
    pid: int
    start_ticks: int | None = None  # field 22 of /proc/<pid>/stat (guards against pid reuse)
    slurm_job_id: str | None = None
    command: str = ""
    since: str = ""

    def describe(self) -> str:
        job = f", SLURM job {self.slurm_job_id}" if self.slurm_job_id else ""
        what = f" ({self.command}, since {self.since})" if self.command else ""
        return f"host {self.host}, pid {self.pid}{job}{what}"


def _start_ticks(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat.rsplit(")", 1)[-1].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _me(command: str) -> Holder:
    pid = os.getpid()
    return Holder(
        host=socket.gethostname(),
        pid=pid,
        start_ticks=_start_ticks(pid),
        slurm_job_id=os.environ.get("SLURM_JOB_ID") or None,
        command=command,
        since=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )


def _read(scan_dir: Path) -> Holder | None:
    try:
        data = json.loads((scan_dir / HOLDER_FILE).read_text())
        return Holder(
            host=str(data["host"]),
            pid=int(data["pid"]),
            start_ticks=data.get("start_ticks"),
            slurm_job_id=data.get("slurm_job_id"),
            command=str(data.get("command", "")),
            since=str(data.get("since", "")),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        # Unreadable record: the flock decides; a free lock means nobody holds the directory.
        return None


def _write(scan_dir: Path, holder: Holder) -> None:
    tmp = scan_dir / f".{HOLDER_FILE}.{os.getpid()}.tmp"
    with open(tmp, "w") as fh:
        json.dump(asdict(holder), fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, scan_dir / HOLDER_FILE)


def _pid_alive(pid: int, start_ticks: int | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, another user's
    if start_ticks is not None:
        now = _start_ticks(pid)
        if now is not None and now != start_ticks:
            return False  # the pid was reused by another process
    return True


def slurm_job_state(job_id: str) -> str | None:
    """The job's state from ``squeue`` (else ``scontrol``); ``""`` if SLURM no longer knows
    it; None when neither command is available (state unknown)."""
    if shutil.which("squeue"):
        try:
            out = subprocess.run(
                ["squeue", "-h", "-j", job_id, "-o", "%T"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            out = None
        if out is not None:
            if out.returncode == 0:
                return out.stdout.strip().split("\n")[0].strip()
            if "invalid job id" in (out.stderr or "").lower():
                return ""
    if shutil.which("scontrol"):
        try:
            out = subprocess.run(
                ["scontrol", "show", "job", job_id],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        if out.returncode != 0:
            return "" if "invalid job id" in (out.stderr or "").lower() else None
        for word in out.stdout.split():
            if word.startswith("JobState="):
                return word.split("=", 1)[1]
        return ""
    return None


def _stale_reason(holder: Holder) -> str | None:
    """Why the recorded holder is certainly gone, or None when it may be alive."""
    me_job = os.environ.get("SLURM_JOB_ID")
    same_job = bool(me_job) and holder.slurm_job_id == me_job
    elsewhere = holder.host != socket.gethostname()
    if same_job and (elsewhere or not _pid_alive(holder.pid, holder.start_ticks)):
        return f"an earlier run of this SLURM job {me_job} (requeued)"
    if holder.host == socket.gethostname():
        if not _pid_alive(holder.pid, holder.start_ticks):
            return f"pid {holder.pid} is no longer running on {holder.host}"
        return None
    if holder.slurm_job_id:
        state = slurm_job_state(holder.slurm_job_id)
        if state is not None:
            word = state.split()[0] if state.strip() else ""
            if word in _LIVE_JOB_STATES:
                return None
            return f"SLURM job {holder.slurm_job_id} is {word or 'no longer known to SLURM'}"
    return None


def _refuse(scan_dir: Path, holder: Holder | None) -> ScanLocked:
    who = holder.describe() if holder is not None else "another process (no holder record)"
    hint = ""
    if holder is not None and holder.host != socket.gethostname() and not holder.slurm_job_id:
        hint = (
            f"; it runs on another host and cannot be checked from here: once it is known to "
            f"be gone, delete {scan_dir / HOLDER_FILE}"
        )
    elif holder is not None and holder.slurm_job_id:
        hint = f"; wait for it or stop it (scancel {holder.slurm_job_id})"
    elif holder is not None:
        hint = f"; wait for it or stop it (kill {holder.pid})"
    return ScanLocked(f"scan_dir {scan_dir} is in use by a live driver: {who}{hint}")


def _default_notify(message: str) -> None:
    print(f"hepscan: {message}", file=sys.stderr, flush=True)


def check_free(scan_dir: str | os.PathLike[str]) -> None:
    """Raise :class:`ScanLocked` when a live driver holds ``scan_dir`` (takes nothing)."""
    d = Path(scan_dir)
    if not d.is_dir():
        return
    holder = _read(d)
    lock_path = d / LOCK_FILE
    if lock_path.exists():
        try:
            fd = os.open(lock_path, os.O_RDONLY)
        except OSError:
            fd = None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise _refuse(d, holder) from None
                raise
            finally:
                os.close(fd)
    if holder is not None and _stale_reason(holder) is None:
        raise _refuse(d, holder)


@contextlib.contextmanager
def hold(
    scan_dir: str | os.PathLike[str],
    command: str,
    notify: Callable[[str], Any] = _default_notify,
) -> Iterator[Holder]:
    """Hold ``scan_dir`` for this driver (creating it) until the block ends.

    Raises :class:`ScanLocked` at once when a live driver holds it; a stale holder is taken
    over and ``notify`` (stderr by default) says whose lock was taken and why.
    """
    d = Path(scan_dir)
    d.mkdir(parents=True, exist_ok=True)
    fd = os.open(d / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise _refuse(d, _read(d)) from None
            raise
        old = _read(d)
        if old is not None and not (old.host == socket.gethostname() and old.pid == os.getpid()):
            reason = _stale_reason(old)
            if reason is None:
                # The flock is free here but the record names a holder that may be alive on
                # another node (flock does not reach across every shared filesystem).
                raise _refuse(d, old)
            notify(f"taking over the stale lock of {d}: {old.describe()}; {reason}")
        me = _me(command)
        _write(d, me)
        try:
            yield me
        finally:
            current = _read(d)
            if current is not None and current.pid == me.pid and current.host == me.host:
                with contextlib.suppress(OSError):
                    (d / HOLDER_FILE).unlink()
    finally:
        os.close(fd)  # releases the flock
