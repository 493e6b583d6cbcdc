"""Throwaway servers for the backend tests: a PostgreSQL 15 cluster and a moto S3 server.

Both are started once per test session, on this machine only (PostgreSQL on a unix socket in a
temp dir, no TCP; moto on 127.0.0.1 with a free port), and stopped at the end. Each test gets its own
database / bucket, so tests never see each other's data.

    postgres_server   session: the cluster (skips with the reason when PostgreSQL is not installed)
    pg_url            function: a fresh, empty database -> "postgresql+psycopg://..."
    s3_server         session: the moto server; sets dummy AWS credentials and endpoint env vars so
                      subprocesses (ckpt CLI, distributed ranks) reach it too
    s3_url            function: a fresh, empty bucket -> "s3://bucket/store"

Set CKPT_TEST_PG_BIN to a PostgreSQL bin directory to choose the binaries.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from dataclasses import dataclass

import pytest

# --------------------------------------------------------------------------------------- PostgreSQL


def _pg_bindir() -> str | None:
    candidates = []
    if os.environ.get("CKPT_TEST_PG_BIN"):
        candidates.append(os.environ["CKPT_TEST_PG_BIN"])
    found = shutil.which("pg_ctl")
    if found:
        candidates.append(os.path.dirname(found))

    def version(path: str) -> float:
        try:
            return float(path.rstrip("/").split("/")[-2])
        except ValueError:
            return 0.0
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True)
    candidates += ["/usr/local/pgsql/bin", "/usr/pgsql-15/bin", "/opt/homebrew/opt/postgresql@15/bin"]
    for d in candidates:
        if all(os.access(os.path.join(d, b), os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _pg_user() -> pwd.struct_passwd | None:
    """initdb refuses to run as root: pick (or make) an unprivileged account to own the cluster."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody", "ckpt-pg"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "ckpt-pg"],
                   check=True, capture_output=True)
    return pwd.getpwnam("ckpt-pg")


@dataclass
class PgServer:
    bindir: str
    root: str
    socket_dir: str
    port: int
    user: pwd.struct_passwd | None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@/{database}?host={self.socket_dir}&port={self.port}"

    def connect(self, database: str = "postgres"):  # type: ignore[no-untyped-def]
        import psycopg
        return psycopg.connect(host=self.socket_dir, port=self.port, user="postgres", dbname=database,
                               autocommit=True)

    def create_database(self) -> str:
        name = f"t_{uuid.uuid4().hex[:16]}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name


def _run_as(user: pwd.struct_passwd | None, argv: list[str], **kw) -> subprocess.CompletedProcess:
    if user is not None:
        kw.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
    return subprocess.run(argv, capture_output=True, text=True, timeout=180, **kw)


@pytest.fixture(scope="session")
def postgres_server():
    bindir = _pg_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL binaries (initdb, pg_ctl, postgres) not found; install PostgreSQL 15 "
                    "(e.g. apt-get install postgresql-15) or set CKPT_TEST_PG_BIN")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        pytest.skip("psycopg is not installed: pip install 'psycopg[binary]'")
    user = _pg_user()
    root = tempfile.mkdtemp(prefix="ckpt-pg-")  # short path: unix socket names are limited to ~100 bytes
    data, sock = os.path.join(root, "data"), os.path.join(root, "sock")
    os.makedirs(sock)
    if user is not None:
        for p in (root, sock):
            os.chown(p, user.pw_uid, user.pw_gid)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}
    env.pop("PGDATA", None)
    out = _run_as(user, [os.path.join(bindir, "initdb"), "-D", data, "-U", "postgres", "--auth=trust",
                         "-E", "UTF8", "--locale=C", "--no-sync"], env=env, cwd=root)
    if out.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"initdb failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    port = 54000 + os.getpid() % 1000
    opts = (f"-c listen_addresses='' -k {sock} -p {port} -c fsync=off -c synchronous_commit=off "
            f"-c full_page_writes=off -c max_connections=300 -c shared_buffers=32MB")
    start = _run_as(user, [os.path.join(bindir, "pg_ctl"), "-D", data, "-l", os.path.join(root, "log"),
                           "-o", opts, "-w", "-t", "120", "start"], env=env, cwd=root)
    if start.returncode != 0:
        log = open(os.path.join(root, "log")).read() if os.path.exists(os.path.join(root, "log")) else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"pg_ctl start failed:\n{start.stdout}\n{start.stderr}\n{log[-4000:]}")
    server = PgServer(bindir, root, sock, port, user)
    try:
        yield server
    finally:
        _run_as(user, [os.path.join(bindir, "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"],
                env=env, cwd=root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_url(postgres_server):
    """A fresh empty database on the session's PostgreSQL server."""
    return postgres_server.url(postgres_server.create_database())


# ------------------------------------------------------------------------------------------- S3


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class S3Server:
    endpoint: str

    @property
    def storage_options(self) -> dict:
        return {"endpoint_url": self.endpoint, "key": "testing", "secret": "testing"}

    def client(self):  # type: ignore[no-untyped-def]
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="testing",
                            aws_secret_access_key="testing", region_name="us-east-1")

    def create_bucket(self) -> str:
        name = f"ckpt-{uuid.uuid4().hex[:20]}"
        self.client().create_bucket(Bucket=name)
        return name


S3_ENV = {
    "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    # Small parts so that multipart uploads are exercised by megabyte-sized packs.
    "CKPT_S3_PART_SIZE": str(1 << 20),
}


@pytest.fixture(scope="session")
def s3_server():
    try:
        import moto.server  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"S3 tests need moto[server] and s3fs: {exc}")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = tempfile.NamedTemporaryFile(prefix="ckpt-moto-", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, **S3_ENV, "S3_UPLOAD_PART_MIN_SIZE": str(256 << 10)})
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=5).read()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"moto server did not start: {open(log.name).read()[-4000:]}")
            time.sleep(0.2)
    saved = {k: os.environ.get(k) for k in [*S3_ENV, "FSSPEC_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"]}
    os.environ.update(S3_ENV)
    os.environ["FSSPEC_S3_ENDPOINT_URL"] = endpoint  # read by fsspec at import: ranks and CLI subprocesses
    os.environ["AWS_ENDPOINT_URL_S3"] = endpoint     # read by botocore itself
    old_part = os.environ.get("CKPT_S3_PART_SIZE")
    os.environ["CKPT_S3_PART_SIZE"] = str(5 << 20)  # S3's smallest part: multipart paths run on small states
    try:
        yield S3Server(endpoint)
    finally:
        if old_part is None:
            os.environ.pop("CKPT_S3_PART_SIZE", None)
        else:
            os.environ["CKPT_S3_PART_SIZE"] = old_part
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.kill()  # a throwaway in-memory server: nothing to flush
        proc.wait(timeout=60)
        os.unlink(log.name)


@pytest.fixture
def s3_url(s3_server):
    """A fresh empty bucket on the session's moto server, as an s3:// store URL."""
    return f"s3://{s3_server.create_bucket()}/store"
