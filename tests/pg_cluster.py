"""A throw-away PostgreSQL cluster for tests: Debian's server binaries (package postgresql,
which .ci/run installs), `initdb` and `pg_ctl` in a private temporary folder, listening on
127.0.0.1 on a free port (and on a socket in that folder). No mock of the database.

    with PostgresCluster() as pg:          # or the `postgres_cluster` fixture
        pg.psql("CREATE DATABASE llm_router")
        url = pg.url("llm_router")         # postgresql://postgres@127.0.0.1:PORT/llm_router
        pg.stop_server(); pg.start_server()  # an outage, the data kept

PostgreSQL refuses to run as root, and CI runs as root: the cluster then runs as an
unprivileged user (`postgres` where the package created it, else `nobody`) through
`runuser`. Its folder is made with mkdtemp under the system's temporary directory, not in
pytest's tmp_path, which that user could not traverse. Authentication is `trust` on
loopback and the socket: a throw-away cluster for one test run, never a server.

Where the binaries are missing, tests skip with the reason, except under CI, where
.ci/run sets LLM_ROUTER_POSTGRES_REQUIRED=1 and a missing server fails the test instead.
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

REQUIRED = os.environ.get("LLM_ROUTER_POSTGRES_REQUIRED") == "1"
# Settings that make a test cluster fast and quiet; never for a real server.
_TEST_SETTINGS = {
    "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
    "shared_buffers": "16MB", "max_connections": "100", "log_min_messages": "warning",
}


def server_bindir() -> Path | None:
    """The folder of initdb, pg_ctl and psql: $PG_BINDIR, else Debian's newest
    /usr/lib/postgresql/<major>/bin, else wherever pg_ctl is on PATH."""
    candidates = []
    if os.environ.get("PG_BINDIR"):
        candidates.append(Path(os.environ["PG_BINDIR"]))
    debian = Path("/usr/lib/postgresql")
    if debian.is_dir():
        majors = sorted((p for p in debian.iterdir() if p.name.isdigit()), key=lambda p: int(p.name), reverse=True)
        candidates += [p / "bin" for p in majors]
    if shutil.which("pg_ctl"):
        candidates.append(Path(shutil.which("pg_ctl")).resolve().parent)
    for folder in candidates:
        if all((folder / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def unavailable_reason() -> str | None:
    if server_bindir() is None:
        return ("PostgreSQL's server binaries (initdb, pg_ctl, postgres) are not installed: "
                "apt-get install postgresql (.ci/run does), or set PG_BINDIR")
    if os.geteuid() == 0 and _run_as_user() is None:
        return "running as root and no unprivileged user (postgres, nobody) to run PostgreSQL as"
    return None


def skip_unless_available() -> None:
    """Skip the calling test without a PostgreSQL server here; fail under CI
    (LLM_ROUTER_POSTGRES_REQUIRED=1), where .ci/run has installed one."""
    reason = unavailable_reason()
    if reason:
        (pytest.fail if REQUIRED else pytest.skip)(reason)


def _run_as_user() -> pwd.struct_passwd | None:
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PostgresCluster:
    """One cluster: `start()` runs initdb (once) and the server; `close()` stops it and
    removes its folder."""

    def __init__(self, settings: dict[str, str] | None = None) -> None:
        skip_unless_available()
        self.bindir = server_bindir()
        self.user = _run_as_user() if os.geteuid() == 0 else None
        self.port = _free_port()
        self.host = "127.0.0.1"
        self.superuser = "postgres"
        self.settings = {**_TEST_SETTINGS, **(settings or {})}
        self.dir = Path(tempfile.mkdtemp(prefix="test-pg-cluster-"))
        if self.user is not None:
            os.chown(self.dir, self.user.pw_uid, self.user.pw_gid)
        self.data = self.dir / "data"
        self.log_path = self.dir / "server.log"

    # --- running commands as the cluster's owner -------------------------------------------

    def _command(self, *args: str) -> list[str]:
        command = [str(a) for a in args]
        return ["runuser", "-u", self.user.pw_name, "--", *command] if self.user is not None else command

    def _run(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(self._command(*args), cwd=self.dir, capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            log = self.log_path.read_text()[-2000:] if self.log_path.exists() else ""
            raise RuntimeError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n{log}")
        return result

    # --- lifecycle ----------------------------------------------------------------------

    def start(self) -> PostgresCluster:
        if not self.data.exists():
            self._run(self.bindir / "initdb", "-D", self.data, "-U", self.superuser, "-A", "trust", "-E", "UTF8",
                      "--locale=C", "--no-sync")
        self.start_server()
        return self

    def start_server(self) -> None:
        """Start (or restart after stop_server) the server on the same port and data."""
        options = [f"-c listen_addresses={self.host}", f"-p {self.port}", f"-c unix_socket_directories={self.dir}"]
        options += [f"-c {key}={value}" for key, value in self.settings.items()]
        self._run(self.bindir / "pg_ctl", "-D", self.data, "-l", self.log_path, "-w", "-t", "60",
                  "-o", " ".join(options), "start")

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data (mode: smart, fast or immediate, as pg_ctl)."""
        self._run(self.bindir / "pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "60", "stop", check=False)

    def close(self) -> None:
        if self.data.exists():
            self.stop_server("immediate")
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc) -> None:
        self.close()

    # --- using it -----------------------------------------------------------------------

    def url(self, database: str = "postgres", user: str | None = None) -> str:
        return f"postgresql://{user or self.superuser}@{self.host}:{self.port}/{database}"

    def psql(self, sql: str, database: str = "postgres") -> str:
        """Run SQL with psql (client package postgresql-client); the tuples only, unaligned."""
        result = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", self.host,
             "-p", str(self.port), "-U", self.superuser, "-d", database, "-c", sql],
            capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr}")
        return result.stdout.strip()


@pytest.fixture(scope="module")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """A running throw-away cluster for the module's tests (skips, or fails under CI,
    where PostgreSQL is missing)."""
    with PostgresCluster() as cluster:
        yield cluster
