"""Per-job TLS credentials for a Dask cluster: scheduler, workers and client all speak ``tls://``
with mutual authentication, and anything without the job's certificate is refused.

Dask runs pickled functions, so whoever reaches a plain ``tcp://`` scheduler runs code as the
job's user.  ``slurm/preprocess.sbatch`` therefore creates, for every job, a fresh CA and one
certificate signed by it into a 0700 directory on the shared filesystem (the job's run
directory), exports Dask's TLS settings as environment variables (paths only: no key material
on a command line or in the environment) and starts ``dask scheduler --protocol tls`` and
``dask worker``; the driver's ``Client`` reads the same settings.  The CA's private key is never
written, so nobody, the job included, can sign another certificate.

Shell (what the job script runs)::

    eval "$(python -m jobs.preprocess.security "$HS_RUN_DIR/dask/tls.$SLURM_JOB_ID")"
    dask scheduler --protocol tls --host "$HEAD_IP" --port "$PORT" ...   # reads DASK_* above
    hepscan preprocess CONFIG --out OUT --scheduler "tls://$HEAD_IP:$PORT"

Python::

    from jobs.preprocess.security import security, write_credentials
    files = write_credentials(run_dir / "dask" / "tls")   # or reuse the job's directory
    client = distributed.Client("tls://HOST:PORT", security=security(files.directory))
"""

from __future__ import annotations

import datetime as _dt
import os
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.errors import OutputError, require

__all__ = [
    "TLSFiles",
    "dask_environ",
    "private_dir",
    "security",
    "write_credentials",
    "write_private",
]

CA_FILE = "ca.pem"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
HTTP_ROUTES = '["distributed.http.health"]'


@dataclass(frozen=True)
class TLSFiles:
    """The credentials of one job: the CA certificate and one certificate + key that every
    scheduler, worker and client of the job presents."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / CA_FILE

    @property
    def cert(self) -> Path:
        return self.directory / CERT_FILE

    @property
    def key(self) -> Path:
        return self.directory / KEY_FILE


def private_dir(directory: Path) -> None:
    """``directory`` exists, is ours and is 0700 (created so: no window where it is not)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    try:
        directory.mkdir(mode=0o700)
    except FileExistsError:
        st = directory.lstat()
        if not directory.is_dir() or directory.is_symlink():
            raise OutputError(f"{directory}: exists and is not a directory") from None
        if st.st_uid != os.getuid():
            raise OutputError(f"{directory}: owned by uid {st.st_uid}, not by this user") from None
    directory.chmod(0o700)


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` as a 0600 file (a fresh file, renamed into place)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def write_credentials(directory: str | os.PathLike[str], *, days: int = 30) -> TLSFiles:
    """A new CA and a certificate signed by it (usable as TLS server and client), in
    ``directory`` (created 0700; files 0600).  Existing files there are replaced."""
    x509 = require("cryptography.x509", "data")
    hashes = require("cryptography.hazmat.primitives.hashes", "data")
    serialization = require("cryptography.hazmat.primitives.serialization", "data")
    ec = require("cryptography.hazmat.primitives.asymmetric.ec", "data")
    NameOID = x509.oid.NameOID
    ExtendedKeyUsageOID = x509.oid.ExtendedKeyUsageOID

    files = TLSFiles(Path(directory).absolute())
    try:
        private_dir(files.directory)
        now = _dt.datetime.now(_dt.timezone.utc)
        start, end = now - _dt.timedelta(minutes=5), now + _dt.timedelta(days=days)
        job = os.environ.get("SLURM_JOB_ID", str(os.getpid()))

        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"hepscan dask CA {job}")])
        ca_cert = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=False,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"hepscan dask job {job}")])
            )
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        write_private(files.ca, ca_cert.public_bytes(pem))
        write_private(files.cert, cert.public_bytes(pem))
        write_private(
            files.key,
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()),
        )
    except OSError as exc:
        raise OutputError(
            f"{files.directory}: cannot write the Dask TLS credentials ({exc})"
        ) from exc
    return files


def dask_environ(files: TLSFiles) -> dict[str, str]:
    """Dask's configuration for ``files`` as environment variables (paths only): every
    scheduler, worker, nanny and client started with them uses TLS and refuses anything else."""
    env = {
        "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True",
        "DASK_DISTRIBUTED__COMM__DEFAULT_SCHEME": "tls",
        "DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(files.ca),
        # Scheduler and workers always open an HTTP server (even with --no-dashboard), with no
        # TLS and no authentication: keep only its health check (no task names, no metrics).
        "DASK_DISTRIBUTED__SCHEDULER__HTTP__ROUTES": HTTP_ROUTES,
        "DASK_DISTRIBUTED__WORKER__HTTP__ROUTES": HTTP_ROUTES,
    }
    for role in ("SCHEDULER", "WORKER", "CLIENT"):
        env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__CERT"] = str(files.cert)
        env[f"DASK_DISTRIBUTED__COMM__TLS__{role}__KEY"] = str(files.key)
    return env


def security(directory: str | os.PathLike[str]) -> Any:
    """A ``distributed.Security`` for a client (or a server) of the job whose credentials are
    in ``directory``."""
    distributed = require("distributed", "data")
    files = TLSFiles(Path(directory).absolute())
    for p in (files.ca, files.cert, files.key):
        if not p.is_file():
            raise OutputError(f"{p}: Dask TLS credential missing (see jobs/preprocess/security.py)")
    return distributed.Security(
        tls_ca_file=str(files.ca),
        tls_client_cert=str(files.cert),
        tls_client_key=str(files.key),
        tls_scheduler_cert=str(files.cert),
        tls_scheduler_key=str(files.key),
        tls_worker_cert=str(files.cert),
        tls_worker_key=str(files.key),
        require_encryption=True,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m jobs.preprocess.security DIR``: write the credentials, print ``export``
    lines for the shell (paths only)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m jobs.preprocess.security DIR", file=sys.stderr)
        return 2
    files = write_credentials(args[0])
    for name, value in dask_environ(files).items():
        print(f"export {name}={shlex.quote(value)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OutputError as _exc:
        sys.exit(f"error: {_exc}")
