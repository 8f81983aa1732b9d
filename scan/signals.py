"""SIGTERM/SIGINT during a scan: Tune's graceful stop, then :class:`ScanInterrupted` (exit 3).

Tune handles SIGUSR1 inside its loop (stop, save the experiment state, return from fit); the
handlers here route SIGTERM and SIGINT to it, once the loop runs (the Tune callback calls
:func:`_forward_interrupt` at every step). A second signal raises ``KeyboardInterrupt``.
"""

from __future__ import annotations

import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from models.errors import HepscanError

__all__ = ["EXIT_INTERRUPTED", "ScanInterrupted"]

log = logging.getLogger(__name__)

EXIT_INTERRUPTED = 3


class ScanInterrupted(HepscanError):
    """The scan was stopped by SIGTERM/SIGINT; it can be resumed with ``hepscan resume``."""

    def __init__(self, scan_dir: Path) -> None:
        super().__init__(
            f"scan interrupted; state saved in {scan_dir}; continue with: hepscan resume {scan_dir}"
        )
        self.scan_dir = scan_dir


_INTERRUPT = {"requested": False, "forwarded": False}


def _forward_interrupt() -> None:
    """Hand a pending SIGTERM/SIGINT to Tune once its loop runs (Tune handles SIGUSR1 there:
    stop, save the experiment state, return from fit)."""
    if _INTERRUPT["requested"] and not _INTERRUPT["forwarded"]:
        _INTERRUPT["forwarded"] = _request_tune_stop()


def _request_tune_stop() -> bool:
    """Ask a running Tune loop to stop gracefully (save its state, return from fit); False
    when its SIGUSR1 handler is not installed yet."""
    handler = signal.getsignal(signal.SIGUSR1)
    if callable(handler) and handler is not _ignore:
        signal.raise_signal(signal.SIGUSR1)
        return True
    return False


def _ignore(signum: int, frame: Any) -> None:
    """SIGUSR1 placeholder until Tune installs its handler (the default action would kill us)."""


@contextmanager
def _interruptible() -> Iterator[dict[str, bool]]:
    """SIGTERM/SIGINT -> Tune's graceful stop; a second signal raises KeyboardInterrupt."""
    _INTERRUPT.update(requested=False, forwarded=False)
    sigs = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
    old = {s: signal.getsignal(s) for s in sigs}

    def handler(signum: int, frame: Any) -> None:
        if _INTERRUPT["requested"]:
            raise KeyboardInterrupt
        _INTERRUPT["requested"] = True
        log.warning("signal %d: stopping the scan after saving its state", signum)
        _forward_interrupt()  # now if Tune's loop runs, else at its next step (callback)

    # Tune would install its own SIGINT handler (graceful once, then the previous one); ours
    # routes SIGINT and SIGTERM the same way, through SIGUSR1 which Tune always handles.
    prev_env = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGUSR1, _ignore)
    state = {"interrupted": False}
    try:
        yield state
    finally:
        state["interrupted"] = _INTERRUPT["requested"]
        for s, h in old.items():
            signal.signal(s, h)
        if prev_env is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = prev_env
