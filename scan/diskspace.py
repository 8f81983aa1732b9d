"""A full scan directory (ENOSPC) stops the scan cleanly; ``hepscan resume`` continues it.

The driver keeps :data:`RESERVE_BYTES` allocated in ``SCAN_DIR/.space_reserve`` while it runs.
When a trial fails because the filesystem is full (its checkpoint could not be written), the
Tune callback releases the reserve and stops Tune as on SIGTERM: the reserve gives Tune room
for its final experiment state, MLflow's sqlite store room for the pending writes, and the
driver room for ``SCAN_DIR/retry_failed.json`` (the trials that failed for lack of space).
The driver then fails with :class:`models.errors.OutputError` naming the directory, ENOSPC and
the failing path.  ``hepscan resume SCAN_DIR``, once space is freed, continues those trials
from their last checkpoint (``resume_errored``) and the others as usual.

Before Tune restores, :func:`drop_stale_decisions` clears the scheduling decisions Tune saved in
its experiment state.  A trial that fails for good while its checkpoint is being saved (ENOSPC
is such a failure) leaves a cached ``STOP`` for itself in Tune's controller (Ray 2.x
``TuneController._schedule_trial_stop`` caches it "until the save resolves", which never
happens); the controller saves that dict with its state, and after ``resume_errored`` the stale
``STOP`` is applied at the resumed trial's first checkpoint: the trial ended TERMINATED one epoch
after the resume instead of running to ``max_epochs``.  A restored controller has no save or
training step in flight, so every saved decision is stale.

.. code-block:: bash

    hepscan scan cfg.yaml --scan-dir /small/fs/scan   # ... hepscan: error: ... ENOSPC ...
    rm /small/fs/big-file && hepscan resume /small/fs/scan
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from models.errors import OutputError

__all__ = [
    "RESERVE_BYTES",
    "RETRY_FILE",
    "NoSpace",
    "allocate_reserve",
    "drop_stale_decisions",
    "no_space_error",
    "release_reserve",
    "save_retry",
    "take_retry",
]

RESERVE_BYTES = 16 << 20


class NoSpace(OutputError):
    """The scan stopped because its directory's filesystem is full (resumable)."""


RESERVE_FILE = ".space_reserve"
RETRY_FILE = "retry_failed.json"


def allocate_reserve(scan_dir: Path, size: int = RESERVE_BYTES) -> bool:
    """Allocate the reserve (best effort: False when there is no room for it)."""
    path = scan_dir / RESERVE_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    except OSError:
        return False
    try:
        os.posix_fallocate(fd, 0, size)
        return True
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(path)
        return False
    finally:
        os.close(fd)


def release_reserve(scan_dir: Path) -> bool:
    """Free the reserve; True if there was one."""
    try:
        os.unlink(scan_dir / RESERVE_FILE)
        return True
    except OSError:
        return False


def save_retry(scan_dir: Path, trials: list[str]) -> None:
    """Record the trials that failed for lack of space (resume continues them)."""
    with contextlib.suppress(OSError):
        (scan_dir / RETRY_FILE).write_text(json.dumps(sorted(set(trials))))


def take_retry(scan_dir: Path) -> list[str] | None:
    """The trials recorded by :func:`save_retry` (the record is consumed), or None."""
    path = scan_dir / RETRY_FILE
    if not path.exists():
        return None
    try:
        trials = [str(t) for t in json.loads(path.read_text())]
    except (OSError, ValueError):
        trials = []
    return trials


def drop_stale_decisions(tune_dir: Path) -> dict[str, str]:
    """Clear the cached/queued trial decisions saved in Tune's experiment state files.

    Returns the dropped ``{trial_id: decision}``.  Raises :class:`OutputError` naming the file
    when it cannot be rewritten (the resumed trial would otherwise be stopped early).
    """
    dropped: dict[str, str] = {}
    for path in sorted(tune_dir.glob("experiment_state-*.json")):
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # Tune's restore names an unreadable state itself
        runner = state.get("runner_data") if isinstance(state, dict) else None
        if not isinstance(runner, dict):
            continue
        stale = {}
        for key in ("_cached_trial_decisions", "_queued_trial_decisions"):
            value = runner.get(key)
            if isinstance(value, dict) and value:
                stale.update({str(k): str(v) for k, v in value.items()})
                runner[key] = {}
        if not stale:
            continue
        tmp: str | None = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=path.name, suffix=".tmp", dir=tune_dir)
            with os.fdopen(fd, "w") as f:
                json.dump(state, f)
            os.replace(tmp, path)
        except OSError as exc:
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
            raise OutputError(f"{path}: cannot rewrite Tune's experiment state ({exc})") from None
        dropped.update(stale)
    return dropped


def no_space_error(scan_dir: Path, failures: list[tuple[str, str]]) -> NoSpace:
    """The error of a scan stopped because its filesystem is full."""
    try:
        free = f"{shutil.disk_usage(scan_dir).free / 2**20:.1f} MB free now"
    except OSError:
        free = "free space unknown"
    trial, text = failures[0]
    names = ", ".join(sorted({t for t, _ in failures}))
    return NoSpace(
        f"{scan_dir}: no space left on device (ENOSPC; {free}): trial {trial} failed writing "
        f"to the scan directory: {text}. The scan stopped with its state saved (failed for "
        f"lack of space: {names}); free space on that filesystem, then continue with: "
        f"hepscan resume {scan_dir}"
    )
