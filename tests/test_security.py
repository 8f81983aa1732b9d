"""Services of a SLURM job refuse anyone without the job's credentials (issue 15, items 7-8).

The services are started by the job scripts' own code: the rendered ``preprocess.sbatch`` /
``scan.sbatch`` text is cut at its section comments and run with bash on loopback (no SLURM
needed), so what is tested is what a job runs.

- Dask: ``dask scheduler``/``dask worker`` with the job's TLS certificates
  (jobs/preprocess/security.py); a client with them computes, a plain ``tcp://`` client, a
  ``tls://`` client without certificates and one with certificates from another CA are refused.
- MLflow: ``mlflow server --app-name basic-auth`` with the job's admin account
  (slurm/credentials.py); no credentials or a wrong password get 401, the scan's tracking client
  works with MLFLOW_TRACKING_USERNAME/PASSWORD, a scan whose tracking URI holds
  ``user:password@`` keeps the password out of every param, tag and the scan directory's
  world-readable files.
- File modes (job script 0700, token/credentials 0600 in 0700 directories) and command lines
  (no password or store URI in any argv).

Run: ``python -m pytest -q tests/test_security.py`` (~100 s: one MLflow server, one Dask
cluster, one small Ray scan).
"""

from __future__ import annotations

import base64
import gc
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from models.errors import ConfigError, HepscanError
from slurm.credentials import read_credentials
from slurm.render import render_script
from slurm.spec import JobSpec
from slurm.submit import write_script

REPO = Path(__file__).resolve().parents[1]
# the job scripts run `dask` and `mlflow` from the environment, as a job with the venv active
VENV_PATH = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
JOB_ID = "4242"


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def _free_base(span: tuple[int, ...]) -> int:
    """A port base B in 20000-29999 with B + s free for every s in ``span``."""
    for _ in range(200):
        base = 20000 + int.from_bytes(os.urandom(2), "big") % 9000
        ok = True
        for s in span:
            with socket.socket() as sock:
                try:
                    sock.bind(("127.0.0.1", base + s))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port block")


def _section(script: str, start: str, end: str | None) -> str:
    i = script.index(start)
    j = script.index(end, i) if end else len(script)
    return script[i:j]


def _prefix(script: str, end: str) -> str:
    """The job script up to ``end``: its exported settings and the shared shell functions."""
    return script[: script.index(end)]


def _glue(**env: str) -> str:
    lines = [f"export SLURM_JOB_ID={JOB_ID}", "HS_PORTS=$HS_PORT_BASE; export HS_PORTS"]
    lines += ["NODES=(localhost); HEAD=localhost; HEAD_IP=127.0.0.1"]
    lines += [f"export {k}={v}" for k, v in env.items()]
    return "\n".join(lines) + "\n"


def _kill_group(pgid: int) -> None:
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 50)):  # x 0.1 s
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        for _ in range(grace):
            try:
                os.killpg(pgid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.1)


def _cmdlines(session: int) -> list[str]:
    """The argv (as ``ps`` shows it) of every process of a session."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if os.getsid(int(d.name)) != session:
                continue
            out.append((d / "cmdline").read_bytes().replace(b"\0", b" ").decode())
        except (OSError, ProcessLookupError):
            continue
    return out


# ============================================================================ Dask over TLS


@pytest.fixture(scope="module")
def dask_job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Scheduler + one worker started by the rendered preprocess.sbatch's own code."""
    run = tmp_path_factory.mktemp("dask-job")
    (run / "prep.yaml").write_text("{}\n")
    base = _free_base((0, 2))
    spec = JobSpec(
        config=run / "prep.yaml",
        kind="preprocess",
        out=run / "out",
        cpus_per_node=1,
        time="00:10:00",
        run_dir=run,
        port_base=base,
        interface="lo",
        dask_workers_per_node=1,
        node_tmp=str(run / "node"),
    )
    script = render_script(spec)
    text = (
        _prefix(script, '\nHS_DRIVER_PID=""\n')
        + _glue()
        + 'mkdir -p "$HS_RUN_DIR/dask" "$HS_NODE_TMP"\n'
        + _section(script, 'SCHEDULER="tls://', 'for node in "${NODES[@]}"; do')
        + 'echo "${HS_SERVER_PGIDS[0]}" > "$HS_RUN_DIR/scheduler.pgid"\n'
        + "hs_dask_node\n"
    )
    (run / "job.sh").write_text(text)
    log = open(run / "job.log", "w")  # noqa: SIM115 - closed at teardown
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": VENV_PATH}
    job = subprocess.Popen(
        ["bash", str(run / "job.sh")],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    sched_file = run / "dask" / f"scheduler.{JOB_ID}.json"
    tls = run / "dask" / f"tls.{JOB_ID}"
    info = {"run": run, "tls": tls, "address": f"tls://127.0.0.1:{base}", "base": base}
    try:
        deadline = time.monotonic() + 60
        while not (sched_file.exists() and (run / "scheduler.pgid").exists()):
            assert job.poll() is None, (run / "job.log").read_text()
            assert time.monotonic() < deadline, (run / "job.log").read_text()
            time.sleep(0.2)
        info["scheduler_pgid"] = int((run / "scheduler.pgid").read_text())
        info["job_pgid"] = job.pid
        yield info
    finally:
        _kill_group(job.pid)
        if "scheduler_pgid" in info:
            _kill_group(info["scheduler_pgid"])
        job.wait(timeout=30)
        log.close()


def _said(what: str, exc: BaseException) -> None:
    """The refusal, as the test output's record (-s) of what a client without credentials gets."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    print(f"refused ({what}): {type(exc).__name__}: {first[:300]}")


def _collect_failed_clients() -> None:
    """Finalise the half-built Client a refused connection leaves behind, now: collected later,
    its ``__del__`` can run inside the next Client's start and deadlock on distributed's loop
    lock (seen once in ~10 runs)."""
    gc.collect()


def _tls_client(dask_job: dict[str, Any]) -> Any:
    from distributed import Client

    from jobs.preprocess.security import security

    return Client(dask_job["address"], security=security(dask_job["tls"]), timeout=30)


def test_dask_credentials_are_private(dask_job: dict[str, Any]) -> None:
    tls = dask_job["tls"]
    assert _mode(tls) == 0o700
    assert sorted(p.name for p in tls.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
    assert {p.name: _mode(p) for p in tls.iterdir()} == {
        n: 0o600 for n in ("ca.pem", "cert.pem", "key.pem")
    }
    # the CA's key is never written: nobody can sign another certificate for this job
    assert "PRIVATE KEY" not in (tls / "ca.pem").read_text()
    # the scheduler advertises tls:// only
    sched = json.loads((dask_job["run"] / "dask" / f"scheduler.{JOB_ID}.json").read_text())
    assert sched["address"] == dask_job["address"]


def test_dask_client_with_the_job_credentials_computes(dask_job: dict[str, Any]) -> None:
    with _tls_client(dask_job) as client:
        client.wait_for_workers(1, timeout=60)
        assert client.submit(sum, [1, 2, 3]).result(timeout=30) == 6
        workers = client.scheduler_info(n_workers=-1)["workers"]
        assert workers and all(addr.startswith("tls://") for addr in workers)


def test_dask_plain_tcp_client_is_refused(dask_job: dict[str, Any]) -> None:
    from distributed import Client

    plain = dask_job["address"].replace("tls://", "tcp://")
    with pytest.raises(OSError, match="Connection reset by peer|closed|Timed out") as info:
        Client(plain, timeout=5)
    _said("plain tcp:// client", info.value)
    _collect_failed_clients()


def test_dask_tls_client_without_certificates_is_refused(dask_job: dict[str, Any]) -> None:
    from distributed import Client

    with pytest.raises(TypeError, match="TLS expects a `ssl_context` argument") as info:
        Client(dask_job["address"], timeout=5)
    _said("tls:// client without certificates", info.value)
    _collect_failed_clients()
    # what `hepscan preprocess --scheduler tls://...` says outside the job
    from jobs.preprocess.driver import _dask_client

    with (
        pytest.raises(
            ConfigError, match="a tls:// scheduler needs the job's TLS credentials"
        ) as refused,
        _dask_client(dask_job["address"], None, 1),
    ):
        pass
    _said("hepscan preprocess --scheduler tls://... outside the job", refused.value)
    _collect_failed_clients()


def test_dask_client_with_another_ca_is_refused(dask_job: dict[str, Any], tmp_path: Path) -> None:
    """An attacker on the cluster makes their own CA and certificate: the handshake fails."""
    from distributed import Client

    from jobs.preprocess.security import security, write_credentials

    mine = write_credentials(tmp_path / "attacker")
    with pytest.raises(OSError, match="TLS certificate does not match") as info:
        Client(dask_job["address"], security=security(mine.directory), timeout=5)
    _said("client with another CA", info.value)
    _collect_failed_clients()
    with _tls_client(dask_job) as client:  # and the job's own clients still work
        assert client.submit(len, "abc").result(timeout=30) == 3


def test_dask_http_endpoints_are_loopback_health_only(dask_job: dict[str, Any]) -> None:
    url = f"http://127.0.0.1:{dask_job['base'] + 2}"
    with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
        assert r.read() == b"ok"
    for path in ("/metrics", "/json/identity.json", "/info/main/workers.html"):
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(url + path, timeout=5)
        assert info.value.code == 404
        info.value.close()
    listening = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True).stdout
    pids = {
        str(p)
        for p in _session_pids(dask_job["scheduler_pgid"]) | _session_pids(dask_job["job_pgid"])
    }
    for line in listening.splitlines():
        if any(f"pid={p}," in line for p in pids):
            local = line.split()[3]
            assert local.startswith("127.0.0.1:"), line  # nothing on 0.0.0.0 or another address


def _session_pids(session: int) -> set[int]:
    pids = set()
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if os.getsid(int(d.name)) == session:
                    pids.add(int(d.name))
            except (OSError, ProcessLookupError):
                continue
    return pids


# ============================================================================ MLflow basic auth


@pytest.fixture(scope="module")
def mlflow_job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """``mlflow server --app-name basic-auth`` started by the rendered scan.sbatch's own code."""
    run = tmp_path_factory.mktemp("mlflow-job")
    (run / "scan.yaml").write_text("{}\n")
    store = run / "store"
    store.mkdir()
    base = _free_base((9,))
    spec = JobSpec(
        config=run / "scan.yaml",
        cpus_per_node=1,
        time="00:10:00",
        run_dir=run,
        scan_dir=run / "scan",
        port_base=base,
        tracking_uri=f"sqlite:///{store}/mlflow.db",
        mlflow_server=True,
        mlflow_host="127.0.0.1",
    )
    script = render_script(spec)
    text = (
        _prefix(
            script,
            "# ---------------------------------------------------------------------------- per-node Ray",
        )
        + _glue()
        + 'mkdir -p "$HS_RUN_DIR/ray" "$HS_RUN_DIR/logs"\n'
        + _section(script, "# The token lives in a 0600 file", 'hs_step "$HEAD" hs_ray_node head')
        + 'echo "${HS_SERVER_PGIDS[0]}" > "$HS_RUN_DIR/mlflow.pgid"\n'
    )
    (run / "job.sh").write_text(text)
    env = {**os.environ, "PYTHONPATH": str(REPO), "PATH": VENV_PATH}
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        env.pop(key, None)
    proc = subprocess.run(
        ["bash", str(run / "job.sh")], capture_output=True, text=True, env=env, timeout=200
    )
    pgid = int((run / "mlflow.pgid").read_text()) if (run / "mlflow.pgid").exists() else None
    try:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        url = (run / "mlflow_server_url").read_text().strip()
        assert url == f"http://127.0.0.1:{base + 9}", proc.stdout
        auth_dir = run / f"mlflow-auth.{JOB_ID}"
        yield {
            "run": run,
            "url": url,
            "auth_dir": auth_dir,
            "creds": read_credentials(auth_dir / "credentials"),
            "pgid": pgid,
            "log": proc.stdout + proc.stderr,
            "store": str(store),
        }
    finally:
        if pgid is not None:
            _kill_group(pgid)


def _get(url: str, auth: tuple[str, str] | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url)
    if auth is not None:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read().decode()


SEARCH = "/api/2.0/mlflow/experiments/search?max_results=10"


def test_mlflow_unauthenticated_request_is_refused(mlflow_job: dict[str, Any]) -> None:
    code, body = _get(mlflow_job["url"] + SEARCH)
    assert code == 401, body
    assert "You are not authenticated" in body
    print(f"refused (MLflow REST without credentials): HTTP {code} {body.strip()}")
    user = mlflow_job["creds"]["MLFLOW_TRACKING_USERNAME"]
    code, body = _get(mlflow_job["url"] + SEARCH, (user, "not-the-password"))
    assert code == 401, body
    code, _ = _get(mlflow_job["url"] + "/", None)  # the UI too
    assert code == 401


def test_mlflow_authenticated_request_works(mlflow_job: dict[str, Any]) -> None:
    creds = mlflow_job["creds"]
    code, body = _get(
        mlflow_job["url"] + SEARCH,
        (creds["MLFLOW_TRACKING_USERNAME"], creds["MLFLOW_TRACKING_PASSWORD"]),
    )
    assert code == 200, body
    assert "experiments" in json.loads(body)


def test_scan_tracker_works_through_env_credentials(
    mlflow_job: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tracking.runs import ScanTracker
    from tracking.store import _client

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(
        Exception, match="401|not authenticated|UNAUTHENTICATED|Unauthorized"
    ) as info:
        _client(mlflow_job["url"]).search_experiments()
    mlflow_job["refusal_client"] = str(info.value)
    _said("MLflow client without credentials", info.value)
    for key, value in mlflow_job["creds"].items():
        monkeypatch.setenv(key, value)
    tracker = ScanTracker(tmp_path / "scan", tracking_uri=mlflow_job["url"], experiment="auth-env")
    parent = tracker.start_scan("auth", {"lr": 0.1}, {"lr": ["uniform", 0.0, 1.0]})
    tracker.start_trial("t0", {"lr": 0.1})
    tracker.log_epoch("t0", 1, {"val_loss": 0.5})
    tracker.end_trial("t0", "FINISHED", {"val_loss": 0.5})
    run = _client(mlflow_job["url"]).get_run(tracker.trial_run_id("t0"))
    assert run.data.metrics["val_loss"] == 0.5
    assert run.data.tags["mlflow.parentRunId"] == parent


def test_mlflow_files_and_command_lines_hold_no_secret(mlflow_job: dict[str, Any]) -> None:
    run, auth_dir = mlflow_job["run"], mlflow_job["auth_dir"]
    password = mlflow_job["creds"]["MLFLOW_TRACKING_PASSWORD"]
    assert len(password) >= 24
    assert _mode(auth_dir) == 0o700
    for name in ("basic_auth.ini", "credentials", "flask_secret"):
        assert _mode(auth_dir / name) == 0o600, name
    token = run / "ray" / f"auth_token.{JOB_ID}"
    assert _mode(token) == 0o600
    assert re.fullmatch(r"[0-9a-f]{64}\n", token.read_text())
    secret = (auth_dir / "flask_secret").read_text().strip()
    argv = _cmdlines(mlflow_job["pgid"])
    assert any("mlflow server" in a or "uvicorn" in a for a in argv), argv
    for a in argv:
        assert "--app-name basic-auth" in a or "basic-auth" not in a
        for s in (password, secret, token.read_text().strip(), mlflow_job["store"]):
            assert s not in a, a
    assert password not in mlflow_job["log"]
    assert f"ssh -N -L {mlflow_job['url'].rsplit(':', 1)[1]}:127.0.0.1:" in mlflow_job["log"]


def test_ray_token_is_0600_whatever_the_umask(tmp_path: Path) -> None:
    token = tmp_path / "ray" / "auth_token.1"
    token.parent.mkdir()
    token.write_text("old\n")
    token.chmod(0o644)
    proc = subprocess.run(
        ["bash", "-c", f"umask 000; {sys.executable} -m slurm.credentials ray-token {token}"],
        env={**os.environ, "PYTHONPATH": str(REPO), "PATH": VENV_PATH},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert _mode(token) == 0o600 and token.read_text() != "old\n"


def test_job_script_is_written_0700(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        path = tmp_path / "scan.sbatch"
        path.write_text("old")
        path.chmod(0o755)
        write_script(path, "#!/bin/bash\necho hi\n")
    finally:
        os.umask(old)
    assert _mode(path) == 0o700
    assert path.read_text() == "#!/bin/bash\necho hi\n"


def test_driver_gets_the_tracking_uri_through_its_environment(tmp_path: Path) -> None:
    """The rendered scan.sbatch's driver section, with a stub python that records its argv and
    environment: the password is in neither argv nor the job log."""
    uri = "postgresql://scan:hunter2-Secret@db.example:5432/mlflow"
    stub = tmp_path / "python"
    stub.write_text(
        "#!/bin/bash\n"
        f'printf "%s\\n" "$@" > {tmp_path}/argv\n'
        f'printf "%s" "$HEPSCAN_TRACKING_URI" > {tmp_path}/uri\n'
    )
    stub.chmod(0o700)
    (tmp_path / "scan.yaml").write_text("{}\n")
    for resume in (False, True):
        spec = JobSpec(
            config=tmp_path / "scan.yaml",
            cpus_per_node=1,
            time="00:10:00",
            run_dir=tmp_path / "run",
            scan_dir=tmp_path / "scan",
            tracking_uri=uri,
            python=str(stub),
            driver_args=("--set", "num_trials=2"),
        )
        if resume:
            (tmp_path / "scan").mkdir()
            (tmp_path / "scan" / "scan.json").write_text("{}")
        script = render_script(spec)
        text = (
            _prefix(
                script,
                "# ---------------------------------------------------------------------------- per-node Ray",
            )
            + _glue(RAY_ADDRESS="127.0.0.1:1", SLURM_SUBMIT_DIR=str(tmp_path))
            + "HS_INTERRUPTED=0; HS_DRIVER_PID=''\n"
            + _section(
                script,
                "# ---------------------------------------------------------------------------- driver",
                "hs_stop_all\n",
            )
        )
        proc = subprocess.run(["bash", "-c", text], capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        argv = (tmp_path / "argv").read_text()
        assert ("resume" in argv) is resume and "scan.cli" in argv
        assert "hunter2" not in argv and "--tracking-uri" not in argv
        assert (tmp_path / "uri").read_text() == uri
        assert "hunter2" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_scan_with_a_password_in_its_tracking_uri(
    mlflow_job: dict[str, Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """A real scan (Ray, 1 trial) logging to the basic-auth server through
    ``http://user:password@host``: the password is in no param or tag of its runs, not in
    scan.json or the driver's output (the job log), and tracking.json (which must hold it for
    a resume) is 0600."""
    from jobs.train_synthetic import write_unfold_dataset
    from scan.driver import launch
    from tracking.store import _client

    creds = mlflow_job["creds"]
    user, password = creds["MLFLOW_TRACKING_USERNAME"], creds["MLFLOW_TRACKING_PASSWORD"]
    for key in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("HEPSCAN_RAY_CPUS", "2")
    host = mlflow_job["url"].removeprefix("http://")
    uri = f"http://{user}:{password}@{host}"
    data = write_unfold_dataset(tmp_path / "data", rows=600, n_bins=4)
    cfg = {
        "name": "secret-uri",
        "dataset": str(data),
        "family": "unfold_bins",
        "search_space": {"alpha": ["loguniform", 0.5, 4.0]},
        "fixed": {"batch_size": 128, "lr": 0.003, "patience": 0},
        "objective": {"metric": "val_loss", "mode": "min"},
        "scheduler": {"type": "none"},
        "num_trials": 1,  # every request pays the server's password check (~0.5-1 s here)
        "concurrency": 1,
        "max_epochs": 1,
        "seed": 2,
        "experiment": "secret-uri",
    }
    monkeypatch.setenv("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "false")  # as by default
    result = launch(cfg, scan_dir=tmp_path / "scan", tracking_uri=uri, verbose=0)
    said = capfd.readouterr()
    # the driver's output is the job log: MLflow's "View run ... at: <URI>" must not show it
    assert password not in said.out + said.err
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", user)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", password)
    client = _client(mlflow_job["url"])
    parent = client.get_run(result.parent_run_id)
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
    )
    assert len(children) == 1
    for run in [parent, *children]:
        for key, value in {**run.data.params, **run.data.tags}.items():
            assert password not in value, key
    assert parent.data.params["tracking_uri"] == f"http://{user}:***@{host}"
    scan_dir = tmp_path / "scan"
    assert password not in (scan_dir / "scan.json").read_text()
    assert _mode(scan_dir / "tracking.json") == 0o600
    assert json.loads((scan_dir / "tracking.json").read_text())["tracking_uri"] == uri


def test_redact_uri() -> None:
    from tracking.store import redact_uri, ui_command

    assert redact_uri("postgresql://me:p%40ss@db/x") == "postgresql://me:***@db/x"
    assert redact_uri("http://host:5000/x") == "http://host:5000/x"
    assert redact_uri("sqlite:////a/b.db") == "sqlite:////a/b.db"
    assert "s3cret" not in ui_command("http://u:s3cret@h:1")
    with pytest.raises(HepscanError):
        raise HepscanError(redact_uri("x://a:b@c"))
