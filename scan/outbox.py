"""The scan driver's MLflow writes, buffered and retried while the tracking server is away.

Every write the Tune callback makes (a trial's run, its per-epoch metrics, tags, artifacts, its
end) is queued here as a JSON-able operation and applied in order.  While the server cannot be
reached (connection refused or reset, a timeout, HTTP 502/503/504) or its store is full
(ENOSPC, sqlite's "database or disk is full"), the queue keeps the
operations and is retried with exponential backoff (0.5 s doubling to 15 s) from the Tune loop;
trials keep training meanwhile.  When the server answers again the queue is written out in its
original order, so the metrics in MLflow are the same as without the outage (each metric keeps
the timestamp of its epoch).

Bounds:

* memory: at most :data:`MAX_BUFFERED` operations (one per trial report or lifecycle event,
  ~1-2 kB each, so < 20 MB); one more fails the scan like a timeout;
* time: an outage longer than ``tracking_outage_timeout_s`` (scan config, default 300 s) makes
  the driver stop Tune gracefully (the experiment state is saved as on SIGTERM), write the
  queue to ``SCAN_DIR/tracking_outbox.json`` and fail with :class:`TrackingUnavailable`
  (exit 2).  ``hepscan resume SCAN_DIR`` with the server back writes the saved queue first,
  then continues the scan: no metric is lost and no run stays RUNNING after the resume.  Runs
  that were RUNNING when the server went away stay RUNNING in the server's store until then
  (nothing can end them while it is unreachable).

MLflow's own HTTP retries would block the Tune loop for minutes per request (7 retries,
backoff factor 2, 120 s timeout by default); :func:`quick_http_client` sets
``MLFLOW_HTTP_REQUEST_MAX_RETRIES=0``, ``MLFLOW_HTTP_REQUEST_TIMEOUT=10`` (unless set) so
that this queue does the retrying.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from models.errors import HepscanError

__all__ = [
    "MAX_BUFFERED",
    "OUTBOX_FILE",
    "Outbox",
    "TrackingUnavailable",
    "is_no_space",
    "is_unreachable",
    "quick_http_client",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BUFFERED = 10_000
OUTBOX_FILE = "tracking_outbox.json"
BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 15.0


class TrackingUnavailable(HepscanError):
    """The MLflow tracking server stayed unreachable longer than allowed."""


def quick_http_client(tracking_uri: str | None) -> None:
    """Let a request to an unreachable server fail in seconds (this module retries it)."""
    if tracking_uri and tracking_uri.startswith(("http://", "https://")):
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")


_UNREACHABLE_TEXT = (
    "failed with exception",  # mlflow.utils.rest_utils: requests' ConnectionError & co.
    "failed with timeout exception",
    "max retries exceeded",
    "connection refused",
    "connection reset",
    "connection aborted",
    "remote end closed connection",
    "failed with error code 502",
    "failed with error code 503",
    "failed with error code 504",
    "temporarily_unavailable",
)


def is_unreachable(exc: BaseException) -> bool:
    """True when ``exc`` says the tracking server could not be reached (worth retrying)."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ConnectionError | TimeoutError):
            return True
        mod = type(e).__module__
        if mod.startswith(("requests", "urllib3")) and type(e).__name__ in (
            "ConnectionError",
            "ConnectTimeout",
            "ReadTimeout",
            "Timeout",
            "MaxRetryError",
            "NewConnectionError",
            "ProtocolError",
        ):
            return True
        text = str(e).lower()
        if "api request to" in text and any(t in text for t in _UNREACHABLE_TEXT):
            return True
        if getattr(e, "error_code", None) == "TEMPORARILY_UNAVAILABLE":
            return True
        e = e.__cause__ or e.__context__
    return False


def is_no_space(exc: BaseException | str) -> bool:
    """True when ``exc`` (or an error text) says a filesystem is full (ENOSPC, sqlite's
    "database or disk is full", a quota)."""
    if isinstance(exc, str):
        text = exc.lower()
        return any(t in text for t in ("no space left", "enospc", "disk is full", "quota exc"))
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if is_no_space(str(e)):
            return True
        e = e.__cause__ or e.__context__
    return False


def _retryable(exc: BaseException) -> bool:
    return is_unreachable(exc) or is_no_space(exc)


class Outbox:
    """An ordered queue of tracking operations applied by ``apply(name, kwargs)``."""

    def __init__(
        self,
        apply: Callable[[str, Mapping[str, Any]], None],
        timeout_s: float,
        where: str = "the MLflow tracking server",
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        self._apply = apply
        self.timeout_s = float(timeout_s)
        self.where = where
        self.max_buffered = int(max_buffered)
        self._ops: deque[tuple[str, dict[str, Any]]] = deque()
        self._outage_since: float | None = None
        self._delay = BACKOFF_START_S
        self._next_try = 0.0
        self.failed: str | None = None
        # statistics (reported in the log and by tests)
        self.retries = 0
        self.outages = 0
        self.max_backlog = 0
        self.longest_outage_s = 0.0

    def __len__(self) -> int:
        return len(self._ops)

    @property
    def pending(self) -> list[tuple[str, dict[str, Any]]]:
        return list(self._ops)

    # ------------------------------------------------------------------ queueing
    def submit(self, name: str, **kwargs: Any) -> None:
        """Queue one operation and write what the server takes now (never blocks for long)."""
        if len(self._ops) >= self.max_buffered and self.failed is None:
            self.failed = (
                f"{self.where} unreachable and {len(self._ops)} tracking writes buffered "
                f"(the cap is {self.max_buffered})"
            )
        self._ops.append((name, kwargs))
        self.max_backlog = max(self.max_backlog, len(self._ops))
        self.flush()

    def flush(self, force: bool = False) -> bool:
        """Apply queued operations in order; True once the queue is empty."""
        if self.failed is not None:
            return False
        if not force and time.monotonic() < self._next_try:
            return not self._ops
        while self._ops:
            name, kwargs = self._ops[0]
            try:
                self._apply(name, kwargs)
            except Exception as exc:
                if not _retryable(exc):
                    self._ops.popleft()
                    raise
                self._failure(exc)
                return False
            self._ops.popleft()
        self._recovered()
        return True

    def drain(self) -> None:
        """Block until every queued operation is written; TrackingUnavailable on timeout."""
        while not self.flush():
            if self.failed is not None:
                raise TrackingUnavailable(self.failed)
            time.sleep(max(0.0, self._next_try - time.monotonic()))

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one direct write (after draining the queue) with the same retry policy."""
        self.drain()
        while True:
            try:
                out = fn(*args, **kwargs)
            except Exception as exc:
                if not _retryable(exc):
                    raise
                self._failure(exc)
                if self.failed is not None:
                    raise TrackingUnavailable(self.failed) from None
                time.sleep(max(0.0, self._next_try - time.monotonic()))
                continue
            self._recovered()
            return out

    # ------------------------------------------------------------------ outage bookkeeping
    def _failure(self, exc: BaseException) -> None:
        now = time.monotonic()
        self.retries += 1
        if self._outage_since is None:
            self._outage_since = now
            self._delay = BACKOFF_START_S
            self.outages += 1
            log.warning(
                "%s unreachable (%s); buffering tracking writes, retrying with backoff for up "
                "to %.0f s",
                self.where,
                str(exc).splitlines()[0][:200],
                self.timeout_s,
            )
        else:
            self._delay = min(self._delay * 2, BACKOFF_MAX_S)
        down = now - self._outage_since
        self.longest_outage_s = max(self.longest_outage_s, down)
        if down >= self.timeout_s:
            self.failed = (
                f"{self.where} unreachable for {down:.0f} s (tracking_outage_timeout_s="
                f"{self.timeout_s:g}); last error: {str(exc).splitlines()[0][:300]}"
            )
            return
        # never sleep past the deadline
        self._next_try = now + min(self._delay, max(0.05, self.timeout_s - down))

    def _recovered(self) -> None:
        if self._outage_since is not None:
            down = time.monotonic() - self._outage_since
            self.longest_outage_s = max(self.longest_outage_s, down)
            log.warning(
                "%s reachable again after %.1f s; buffered writes flushed (%d retries so far)",
                self.where,
                down,
                self.retries,
            )
        self._outage_since = None
        self._delay = BACKOFF_START_S
        self._next_try = 0.0

    # ------------------------------------------------------------------ persistence
    def save(self, path: Path) -> int:
        """Write the queue to ``path`` (atomically); returns the number of operations."""
        ops = [{"op": name, "args": kwargs} for name, kwargs in self._ops]
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(ops, default=str))
        os.replace(tmp, path)
        return len(ops)

    def load(self, path: Path) -> int:
        """Queue the operations saved in ``path`` (before anything submitted later)."""
        ops = json.loads(path.read_text())
        for item in reversed(ops):
            self._ops.appendleft((str(item["op"]), dict(item["args"])))
        self.max_backlog = max(self.max_backlog, len(self._ops))
        return len(ops)
