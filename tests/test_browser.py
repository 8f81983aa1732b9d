"""Real-browser check: the MLflow UI, served by ``mlflow server``, shows a scan's parent run and,
once its row is expanded, the nested trial runs — rendered by headless Chromium.

    .venv/bin/python -m pytest tests/test_browser.py -q -m slow

Needs Debian's ``chromium`` (``apt-get install -y chromium``) and ``websocket-client``: the
browser is driven over the Chrome DevTools Protocol because the UI is a React single-page app
whose nested rows only appear after a click.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tracking.runs import ScanTracker, TrialStatus

pytestmark = pytest.mark.slow

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
PARENT_NAME = "browser-scan-7f3a"
TRIALS = ["trial_7f3a_00000", "trial_7f3a_00001"]
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1600,1000",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """End a process we started in its own session, with all its children."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)


def _tail(path: Path, n: int = 3000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


class DevTools:
    """Minimal Chrome DevTools Protocol client: commands by id, events ignored."""

    def __init__(self, ws_url: str) -> None:
        import websocket

        # Chromium rejects DevTools websockets that carry an Origin it was not told to allow.
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.next_id = 0

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.next_id += 1
        msg_id = self.next_id
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"CDP {method}: {msg['error']}")
                return dict(msg.get("result", {}))

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"JS error: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for_text(self, needles: list[str], timeout: float) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.evaluate("document.body ? document.body.innerText : ''") or ""
            if all(n in text for n in needles):
                return text
            time.sleep(0.5)
        raise AssertionError(f"page never showed {needles}; it shows:\n{text[:3000]}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ws.close()


@pytest.fixture
def store(tmp_path: Path) -> tuple[str, str, str]:
    """A scan store with one parent and two trial runs; returns (uri, experiment id, parent)."""
    tracker = ScanTracker(tmp_path / "scan")
    parent = tracker.start_scan(PARENT_NAME, {"family": "unfolding"}, {"lr": {"type": "float"}})
    for i, tid in enumerate(TRIALS):
        tracker.start_trial(tid, {"lr": 10.0 ** -(i + 2)})
        for step in range(3):
            tracker.log_epoch(tid, step, {"loss": 1.0 / (step + 1 + i)})
        if i == 0:
            tracker.end_trial(tid, TrialStatus.FINISHED, {"chi2_ndf": 1.1})
        else:
            tracker.end_trial(tid, TrialStatus.KILLED, reason="asha")
    tracker.end_scan(TrialStatus.FINISHED, {"best_chi2_ndf": 1.1})
    return tracker.tracking_uri, tracker.experiment_id, parent


@pytest.fixture
def server(store: tuple[str, str, str], tmp_path: Path) -> Iterator[str]:
    uri = store[0]
    port = _free_port()
    log = tmp_path / "mlflow-server.log"
    mlflow_exe = Path(sys.executable).with_name("mlflow")
    cmd = [str(mlflow_exe)] if mlflow_exe.exists() else [sys.executable, "-m", "mlflow"]
    cmd += [
        "server",
        "--backend-store-uri",
        uri,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=tmp_path, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"mlflow server exited {proc.returncode}:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"mlflow server not healthy after 120 s:\n{_tail(log)}")
            time.sleep(0.5)
        yield base
    finally:
        _stop(proc)


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[DevTools]:
    assert Path(CHROMIUM).exists(), "Debian package `chromium` is required"
    profile = tmp_path / "chromium-profile"
    profile.mkdir()
    log = tmp_path / "chromium.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [
                CHROMIUM,
                *CHROME_FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "about:blank",
            ],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    devtools: DevTools | None = None
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"chromium did not start:\n{_tail(log)}")
            time.sleep(0.2)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            targets = json.load(resp)
        page = next(t for t in targets if t.get("type") == "page")
        devtools = DevTools(page["webSocketDebuggerUrl"])
        devtools.call("Page.enable")
        devtools.call("Runtime.enable")
        yield devtools
    finally:
        if devtools is not None:
            with contextlib.suppress(Exception):
                devtools.call("Browser.close")
            devtools.close()
        _stop(proc)


# Clicks the expander in the parent run's name cell (nested runs start collapsed).
EXPAND_JS = """
(() => {
  const link = document.querySelector('a[href*="/runs/%s"]');
  if (!link) return 'no parent link';
  const cell = link.closest('[role="gridcell"]') || link.parentElement.parentElement;
  const button = cell.querySelector('button');
  if (!button) return 'no expander';
  button.click();
  return 'clicked';
})()
"""


def test_mlflow_ui_shows_parent_and_child_runs(
    store: tuple[str, str, str], server: str, browser: DevTools
) -> None:
    _, experiment_id, parent = store
    browser.call("Page.navigate", url=f"{server}/#/experiments/{experiment_id}/runs")
    text = browser.wait_for_text([PARENT_NAME], timeout=120)
    assert "hepscan" in text  # the experiment's name in the page header

    if not all(t in text for t in TRIALS):
        assert browser.evaluate(EXPAND_JS % parent) == "clicked"
    text = browser.wait_for_text([PARENT_NAME, *TRIALS], timeout=60)

    # The children are rows of the runs table linking to their own run pages.
    hrefs = browser.evaluate(
        "Array.from(document.querySelectorAll('a[href*=\"/runs/\"]')).map(a => a.textContent)"
    )
    assert PARENT_NAME in hrefs
    assert set(TRIALS) <= set(hrefs)
