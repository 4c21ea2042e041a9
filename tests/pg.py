"""A throw-away PostgreSQL cluster for the tests: Debian's server binaries, initdb and pg_ctl
in a temporary folder, listening on a free port of 127.0.0.1 (and a unix socket in that
folder), stopped and deleted at the end. No mock of the database anywhere.

    cluster = Cluster.create()           # initdb; raises Unavailable when no binaries
    cluster.start()
    url = cluster.new_database()         # postgresql://llm_router@127.0.0.1:PORT/db_N
    env = cluster.client_env()           # PGPASSWORD for that role (never in the URL)
    cluster.stop("fast"); cluster.start()
    cluster.destroy()

Where the binaries are: $POSTGRES_BINDIR (`.ci/run` sets it after installing Debian's
`postgresql`: then the tests that need a server fail rather than skip when it cannot run),
else the newest /usr/lib/postgresql/*/bin, else initdb on PATH.

initdb and the server refuse to run as root: as root, both run as the `postgres` system
user that Debian's package creates (or `nobody`), through runuser; the folder is theirs.
The router connects over TCP as the role `llm_router` with a password (scram-sha-256),
the way a deployment does; the tests' own admin connection is the superuser on the socket.
"""

from __future__ import annotations

import glob
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

BINDIR_ENV = "POSTGRES_BINDIR"
ROLE = "llm_router"


class Unavailable(Exception):
    """No PostgreSQL server binaries here (the reason says what to install)."""


def required() -> bool:
    """True where CI said the server must be there ($POSTGRES_BINDIR set)."""
    return bool(os.environ.get(BINDIR_ENV))


def find_bindir() -> Path:
    configured = os.environ.get(BINDIR_ENV)
    if configured:
        path = Path(configured)
        if not (path / "initdb").exists():
            raise Unavailable(f"{BINDIR_ENV}={configured}: no initdb there")
        return path
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if candidates:
        return Path(candidates[-1]).parent
    initdb = shutil.which("initdb")
    if initdb:
        return Path(os.path.realpath(initdb)).parent
    raise Unavailable("no PostgreSQL server binaries (install Debian's `postgresql`; .ci/run does and sets "
                      f"{BINDIR_ENV})")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """One initdb'd cluster in a temporary folder (see the module's docstring)."""

    def __init__(self, bindir: Path, folder: Path, user: str | None, durable: bool = False) -> None:
        self.durable = durable
        self.bindir = bindir
        self.folder = folder
        self.data = folder / "data"
        self.user = user  # the OS user the server runs as (None: this one)
        self.password = secrets.token_urlsafe(16)
        self.port = free_port()
        self.log = folder / "server.log"
        self._databases = 0
        self._role_made = False

    @classmethod
    def create(cls, durable: bool = False) -> "Cluster":
        """initdb a new cluster; ``durable`` keeps PostgreSQL's defaults (fsync on), for
        measurements, where the tests' clusters skip fsync."""
        bindir = find_bindir()
        user = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    pwd.getpwnam(name)
                except KeyError:
                    continue
                user = name
                break
            else:
                raise Unavailable("running as root and no `postgres` or `nobody` user to run the server as")
        folder = Path(tempfile.mkdtemp(prefix="llm-router-pg-"))
        cluster = cls(bindir, folder, user, durable)
        try:
            if user is not None:
                info = pwd.getpwnam(user)
                os.chown(folder, info.pw_uid, info.pw_gid)
            cluster._initdb()
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return cluster

    def _as_server_user(self, command: list[str]) -> list[str]:
        if self.user is None:
            return command
        return ["runuser", "-u", self.user, "--", *command]

    def _run(self, command: list[str], timeout: float = 60) -> str:
        result = subprocess.run(self._as_server_user(command), capture_output=True, text=True, timeout=timeout,
                                cwd=self.folder, env={**os.environ, "LC_ALL": "C", "TZ": "UTC"})
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}\n"
                               f"{self.server_log()[-2000:]}")
        return result.stdout

    def _initdb(self) -> None:
        self._run([str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth-local=trust",
                   "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-instructions"], timeout=120)
        # Throw-away: no fsync (tests only; the figures in docs/state-store.md are measured
        # with the defaults). Quiet about what the tests do on purpose.
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write("\n# tests/pg.py\nlog_min_messages = warning\nmax_connections = 100\n")
            if not self.durable:
                conf.write("fsync = off\nfull_page_writes = off\nshared_buffers = 32MB\n")

    # --- server ------------------------------------------------------------------------

    def start(self, timeout: float = 60) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.folder}")
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", options,
                   "-w", "-t", str(int(timeout)), "start"], timeout=timeout + 10)
        if not self._role_made:
            self.admin(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{self.password}'")
            self._role_made = True

    def stop(self, mode: str = "fast", timeout: float = 60) -> None:
        """pg_ctl stop -m fast (clients are disconnected), or immediate."""
        if not (self.data / "postmaster.pid").exists():
            return
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "-t", str(int(timeout)),
                   "stop"], timeout=timeout + 10)

    @property
    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.folder, ignore_errors=True)

    def server_log(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    # --- clients -----------------------------------------------------------------------

    def admin(self, sql: str, database: str = "postgres") -> str:
        """Run SQL as the superuser over the socket (psql, no psycopg in the way)."""
        return self._run([str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                          "-h", str(self.folder), "-p", str(self.port), "-U", "postgres", "-d", database, "-c", sql])

    def admin_dsn(self, database: str = "postgres") -> str:
        """A libpq DSN for the superuser over the socket (for a test's own psycopg connection)."""
        return f"host={self.folder} port={self.port} user=postgres dbname={database}"

    def new_database(self) -> str:
        """A fresh, empty database owned by the router's role; its URL (no password)."""
        self._databases += 1
        name = f"db_{self._databases}_{secrets.token_hex(3)}"
        self.admin(f"CREATE DATABASE {name} OWNER {ROLE}")
        return self.url(name)

    def url(self, database: str) -> str:
        return f"postgresql://{ROLE}@127.0.0.1:{self.port}/{database}"

    def client_env(self) -> dict[str, str]:
        """What a router process needs besides the URL: the password, libpq's way."""
        return {"PGPASSWORD": self.password}


# --- pytest -------------------------------------------------------------------------------------

def start_cluster() -> Cluster:
    """A started cluster, or the test skips (fails where $POSTGRES_BINDIR says it must run)."""
    import pytest

    try:
        cluster = Cluster.create()
    except Unavailable as reason:
        if required():
            pytest.fail(f"PostgreSQL is required here ({BINDIR_ENV} is set) but unavailable: {reason}")
        pytest.skip(str(reason))
    try:
        cluster.start()
    except BaseException:
        cluster.destroy()
        raise
    return cluster


def _fixture(name: str, scope: str):
    import pytest

    @pytest.fixture(scope=scope, name=name)
    def cluster():
        started = start_cluster()
        yield started
        started.destroy()

    return cluster


# Import into a test module: `from pg import postgres, own_postgres`.
postgres = _fixture("postgres", "session")  # shared: a test that stops the server uses own_postgres
own_postgres = _fixture("own_postgres", "function")
