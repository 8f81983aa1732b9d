"""Per-job secrets of a SLURM job, as 0600 files in 0700 directories on the shared filesystem:
the Ray cluster's auth token and the admin account of the job's ``mlflow server`` (MLflow's
basic-auth app).  Only file paths travel in the environment; no secret is ever on a command
line (``ps``, ``scontrol show job``) or in the job's log.  (Dask's TLS certificates:
:mod:`jobs.preprocess.security`.)

Shell (what ``slurm/scan.sbatch`` runs)::

    python -m slurm.credentials ray-token "$HS_RUN_DIR/ray/auth_token.$SLURM_JOB_ID"
    python -m slurm.credentials mlflow-auth "$HS_RUN_DIR/mlflow-auth.$SLURM_JOB_ID"
    # -> DIR/basic_auth.ini (MLFLOW_AUTH_CONFIG_PATH of the server: admin user + password,
    #    auth database DIR/auth.db), DIR/flask_secret (MLFLOW_FLASK_SERVER_SECRET_KEY),
    #    DIR/credentials (MLFLOW_TRACKING_USERNAME=... / MLFLOW_TRACKING_PASSWORD=... for clients)

A client of the job's server::

    set -a; . RUN_DIR/mlflow-auth.JOBID/credentials; set +a     # MLflow reads these two
    python -c 'import mlflow; print(mlflow.MlflowClient("http://HEAD:PORT").search_experiments())'
"""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from jobs.preprocess.security import private_dir, write_private
from models.errors import OutputError

__all__ = ["MlflowAuth", "mlflow_auth", "ray_token", "read_credentials"]

MLFLOW_ADMIN = "hepscan"
AUTH_CONFIG = "basic_auth.ini"
AUTH_DB = "auth.db"
FLASK_SECRET = "flask_secret"
CREDENTIALS = "credentials"


@dataclass(frozen=True)
class MlflowAuth:
    """The files of one job's MLflow basic-auth setup (all 0600, in a 0700 directory)."""

    directory: Path
    username: str
    password: str

    @property
    def config(self) -> Path:
        """The server's ``MLFLOW_AUTH_CONFIG_PATH``."""
        return self.directory / AUTH_CONFIG

    @property
    def flask_secret(self) -> Path:
        """The server's ``MLFLOW_FLASK_SERVER_SECRET_KEY`` (CSRF protection of its forms)."""
        return self.directory / FLASK_SECRET

    @property
    def credentials(self) -> Path:
        """``MLFLOW_TRACKING_USERNAME=...`` / ``MLFLOW_TRACKING_PASSWORD=...`` for clients."""
        return self.directory / CREDENTIALS


def ray_token(path: str | os.PathLike[str]) -> Path:
    """A fresh random token for Ray's ``RAY_AUTH_MODE=token`` in ``path`` (0600, replaced
    if it exists, whatever the umask); the directory is created 0700 if missing."""
    p = Path(path).absolute()
    try:
        if not p.parent.exists():
            private_dir(p.parent)
        write_private(p, (secrets.token_hex(32) + "\n").encode())
    except OSError as exc:
        raise OutputError(f"{p}: cannot write the Ray auth token ({exc})") from exc
    return p


def mlflow_auth(directory: str | os.PathLike[str], username: str = MLFLOW_ADMIN) -> MlflowAuth:
    """A new admin account (random password) for ``mlflow server --app-name basic-auth`` in
    ``directory`` (0700): the server's auth config, its Flask secret, and the credentials file
    for clients.  A previous auth database there is removed: MLflow creates the admin from the
    config only on an empty one, so a requeued job would otherwise keep the old password."""
    auth = MlflowAuth(Path(directory).absolute(), username, secrets.token_urlsafe(24))
    try:
        private_dir(auth.directory)
        (auth.directory / AUTH_DB).unlink(missing_ok=True)
        write_private(
            auth.config,
            (
                "[mlflow]\n"
                # nobody but the admin: the job's scan is one user's
                "default_permission = NO_PERMISSIONS\n"
                f"database_uri = sqlite:///{auth.directory / AUTH_DB}\n"
                f"admin_username = {auth.username}\n"
                f"admin_password = {auth.password}\n"
                "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                "grant_default_workspace_access = false\n"
            ).encode(),
        )
        write_private(auth.flask_secret, (secrets.token_hex(32) + "\n").encode())
        write_private(
            auth.credentials,
            (
                f"MLFLOW_TRACKING_USERNAME={auth.username}\n"
                f"MLFLOW_TRACKING_PASSWORD={auth.password}\n"
            ).encode(),
        )
    except OSError as exc:
        raise OutputError(f"{auth.directory}: cannot write the MLflow credentials ({exc})") from exc
    return auth


def read_credentials(path: str | os.PathLike[str]) -> dict[str, str]:
    """The ``KEY=VALUE`` lines of a credentials file (``MLFLOW_TRACKING_USERNAME``, ...), to put
    into a client's environment."""
    out: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() and not key.lstrip().startswith("#"):
            out[key.strip()] = value.strip()
    return out


_USAGE = "usage: python -m slurm.credentials ray-token FILE | mlflow-auth DIR"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("ray-token", "mlflow-auth"):
        print(_USAGE, file=sys.stderr)
        return 2
    if args[0] == "ray-token":
        ray_token(args[1])
    else:
        mlflow_auth(args[1])
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OutputError as _exc:
        sys.exit(f"error: {_exc}")
