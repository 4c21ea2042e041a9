"""The state store in PostgreSQL, for several router replicas (selected by a postgresql://
URL in state.url or $LLM_ROUTER_STATE_URL; the password from libpq's PGPASSWORD or
~/.pgpass, never in the URL). Same tables and the same guarantees as SQLiteStore
(state.py); docs/state-store.md is the operator's side.

One connection per process. Every call comes from the store's one native OS thread
(concurrency.NativeThread), one at a time: a pool would hand out the same single
connection, and psycopg_pool's maintenance workers are `threading` threads - greenlets on
the gevent hub, opening connections there for use on another thread. A connection that
fails is dropped and the next call opens a new one; the ledger retries with its back-off
(charges wait in the journal meanwhile), so this module only turns psycopg's errors into
StoreError.

Waiting under gevent: psycopg chooses its wait functions at import, and where gevent has
patched `select` it avoids its C wait (which blocks the OS thread) for the patched
select.poll and selectors, which run on gevent's hub - in our native thread that means a
second hub and loop in that thread, which gevent's thread pool documents as unsupported
("only dispatch ... functions that do not use the gevent hub"); resolving a host name
likewise goes through gevent's resolver. Here blocking the native thread is the point,
so `_native_waits` puts back what psycopg uses without gevent: its C wait (poll() with
the GIL released), a poll() loop for connecting, and the C library's getaddrinfo.
tests/unit/test_state_pg_gevent.py and tests/live/test_replicas.py prove the thread
never starts a hub and a gevent worker keeps serving while a store call waits.
"""

from __future__ import annotations

import logging
import os
import select as _select
import socket as _socket_module
import time
import types
from collections.abc import Callable
from urllib.parse import urlsplit

import psycopg
from psycopg import conninfo as pg_conninfo
from psycopg import waiting

from . import concurrency
from .state import Charge, Crossing, Store, StoreError

_log = logging.getLogger("llm_router.events")

# Each entry migrates the schema from the version before it to its own; a new database
# runs them all, in one transaction per start, under an advisory lock so that replicas
# starting together migrate once (schema_migrations records what ran, and when).
# Money is double precision, like SQLite's REAL and Python's float: the same additions
# in the same order give the same bits in both stores (docs/state-store.md, "Numbers").
# Text keys compare bytewise (COLLATE "C"), as SQLite's BINARY does.
MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE spend (
    tenant text COLLATE "C" NOT NULL, month text COLLATE "C" NOT NULL,
    usd double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, month)
);
CREATE TABLE faults (
    model text COLLATE "C" PRIMARY KEY, spec text NOT NULL, expires_at double precision NOT NULL
);
CREATE TABLE charges (
    charge_id text COLLATE "C" PRIMARY KEY, request_id text COLLATE "C" NOT NULL,
    tenant text COLLATE "C" NOT NULL, model text COLLATE "C" NOT NULL,
    created double precision NOT NULL, input_tokens integer NOT NULL, output_tokens integer NOT NULL,
    cost_usd double precision NOT NULL, code integer NOT NULL, feedback_score double precision
);
CREATE INDEX charges_request ON charges (request_id, tenant);
CREATE INDEX charges_created ON charges (created);
""",
}
SCHEMA_VERSION = max(MIGRATIONS)
# pg_advisory_xact_lock's key for migrations: "llmroutr" as a big-endian int64.
MIGRATION_LOCK = int.from_bytes(b"llmroutr", "big", signed=True)

# Defaults a URL may override (?connect_timeout=...). A statement that waits longer than
# this (a lock held elsewhere, a server that stopped answering) fails, and the ledger
# retries; keepalives notice a server that vanished from the network.
CONNECTION_DEFAULTS = {
    "connect_timeout": "5",
    "application_name": "llm-router",
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "5",
    "keepalives_count": "3",
}
STATEMENT_TIMEOUT_MS = 10_000


# --- waiting on the native thread ------------------------------------------------------------

def _original(module: str, name: str):
    """The standard library's own function, even after gevent patched it."""
    if concurrency.green():
        from gevent import monkey

        return monkey.get_original(module, name)
    return getattr(__import__(module), name)


_POLL_MASKS = {waiting.WAIT_R: _select.POLLIN, waiting.WAIT_W: _select.POLLOUT,
               waiting.WAIT_RW: _select.POLLIN | _select.POLLOUT}


def _wait_conn_native(gen, interval: float = 0.0, timeout: float | None = None):
    """psycopg's wait_conn with the OS's poll(): connecting blocks this thread only."""
    poll = _original("select", "poll")
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        fileno, wanted = next(gen)
        while True:
            wait = interval if deadline is None else max(0.0, min(interval, deadline - time.monotonic()))
            poller = poll()
            poller.register(fileno, _POLL_MASKS[wanted])
            events = poller.poll(int(wait * 1000))
            if not events:
                gen.send(waiting.READY_NONE)
            else:
                mask = events[0][1]
                ready = waiting.READY_NONE
                if mask & (_select.POLLIN | _select.POLLERR | _select.POLLHUP):
                    ready |= waiting.READY_R
                if mask & (_select.POLLOUT | _select.POLLERR | _select.POLLHUP):
                    ready |= waiting.READY_W
                fileno, wanted = gen.send(ready)
            if deadline is not None and time.monotonic() >= deadline:
                raise psycopg.errors.ConnectionTimeout("connection timeout expired")
    except StopIteration as stop:
        return stop.value


_NATIVE = [False]


def _native_waits() -> None:
    """Make psycopg wait the way it does without gevent (see the module's docstring).

    Process-wide: psycopg is used by this store alone, and only from its native thread. A
    no-op where gevent has not patched anything (psycopg then chose its C wait itself)."""
    if _NATIVE[0] or not concurrency.green():
        return
    if not hasattr(waiting, "wait_c"):
        raise StoreError("psycopg without its C extension: install psycopg[binary] (service/pyproject.toml)")
    waiting.wait = waiting.wait_c
    waiting.wait_conn = _wait_conn_native
    from psycopg import _conninfo_attempts

    native_socket = types.SimpleNamespace(**{name: getattr(_socket_module, name) for name in dir(_socket_module)
                                              if not name.startswith("__")})
    native_socket.getaddrinfo = _original("socket", "getaddrinfo")
    _conninfo_attempts.socket = native_socket
    _NATIVE[0] = True


# --- the store ---------------------------------------------------------------------------------

def _where(url: str) -> str:
    """host:port/db of a URL, for messages (never a password)."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"


class PostgresStore(Store):
    """Spend, the ledger of charges and faults in PostgreSQL (see the module's docstring)."""

    kind = "postgresql"

    def __init__(self, url: str, observe: Callable[[str, float, bool], None] | None = None,
                 migrations: dict[int, str] | None = None) -> None:
        super().__init__(observe)
        parts = urlsplit(url)
        if parts.password:
            raise StoreError("the state store URL holds a password: give it in PGPASSWORD or ~/.pgpass instead "
                             "(docs/state-store.md)")
        try:
            params = pg_conninfo.conninfo_to_dict(url)
        except psycopg.Error as error:
            raise StoreError(f"state store URL {_where(url)}: {error}") from None
        self.url = url
        self.where = _where(url)
        self._params = {**CONNECTION_DEFAULTS, **params}
        self._migrations = dict(MIGRATIONS if migrations is None else migrations)
        self._conn: psycopg.Connection | None = None
        # Connected on first use, not here: a router whose database is down at start
        # serves, journals its charges and stores them once the database answers.

    # --- connection (on the store's thread) --------------------------------------------

    def _connect(self) -> psycopg.Connection:
        _native_waits()
        conn = psycopg.Connection.connect(autocommit=True, **self._params)
        try:
            conn.execute(f"SET statement_timeout = {STATEMENT_TIMEOUT_MS}")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        self._conn = conn
        return conn

    def _migrate(self, conn: psycopg.Connection) -> None:
        with conn.transaction():
            # A migration (or waiting for another replica's) may take longer than the
            # statement timeout meant for the hot path.
            conn.execute("SET LOCAL statement_timeout = 0")
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version integer PRIMARY KEY, "
                         "applied_at timestamptz NOT NULL DEFAULT now())")
            version = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]
            latest = max(self._migrations, default=0)
            for target in range(version + 1, latest + 1):
                conn.execute(self._migrations[target])
                conn.execute("INSERT INTO schema_migrations (version) VALUES (%s)", (target,))
            if version < latest:
                _log.info("state store schema migrated from version %d to %d", version, latest,
                          extra={"event": "state_schema_migrated", "store": self.kind, "from_version": version,
                                 "to_version": latest})
            elif version > latest:  # a rolling upgrade under way: migrations only add
                _log.warning("state store schema is at version %d, newer than this router's %d; carrying on",
                             version, latest)

    def _database(self) -> tuple[psycopg.Connection, bool]:
        """The connection, and whether it was opened just now."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            return conn, False
        self._drop()
        return self._connect(), True

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 (closing a broken connection)
                pass

    def _do(self, fn):
        """Run ``fn(conn)``; psycopg's errors as StoreError. A connection that was idle may
        have been closed by a server restart meanwhile: that is retried once on a new
        connection (every operation here may run twice: charges are keyed by id)."""
        for attempt in (1, 2):
            reused = False
            try:
                conn, fresh = self._database()
                reused = not fresh
                return fn(conn)
            except psycopg.Error as error:
                broken = self._conn is None or self._conn.closed or self._conn.broken
                if broken or isinstance(error, psycopg.OperationalError):
                    self._drop()
                if attempt == 1 and broken and reused:
                    continue
                raise StoreError(f"PostgreSQL {self.where}: {str(error).strip() or type(error).__name__}") from None
        raise AssertionError("unreachable")

    # --- operations ----------------------------------------------------------------------

    def _apply(self, charges: list[Charge]) -> tuple[list[Crossing], set[str]]:
        unique: dict[str, Charge] = {}
        for charge in charges:
            unique.setdefault(charge.charge_id, charge)
        # Rows are locked in key order (charges by id, spend by tenant and month), so two
        # transactions that touch the same rows wait for each other and never deadlock.
        ordered = sorted(unique.values(), key=lambda c: c.charge_id.encode())

        def apply(conn: psycopg.Connection) -> tuple[list[Crossing], set[str]]:
            with conn.transaction():
                rows = conn.execute(
                    "INSERT INTO charges (charge_id, request_id, tenant, model, created, input_tokens, output_tokens, "
                    "cost_usd, code) SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], "
                    "%s::float8[], %s::int4[], %s::int4[], %s::float8[], %s::int4[]) "
                    "ON CONFLICT (charge_id) DO NOTHING RETURNING charge_id",
                    [[c.charge_id for c in ordered], [c.request_id for c in ordered], [c.tenant for c in ordered],
                     [c.model for c in ordered], [float(c.created) for c in ordered],
                     [int(c.input_tokens) for c in ordered], [int(c.output_tokens) for c in ordered],
                     [float(c.cost_usd) for c in ordered], [int(c.code) for c in ordered]],
                ).fetchall()
                inserted = {row[0] for row in rows}
                # Summed in the caller's order, as SQLiteStore does: the same bits.
                added: dict[tuple[str, str], float] = {}
                for c in charges:
                    if c.charge_id in inserted and c.cost_usd and unique[c.charge_id] is c:
                        key = (c.tenant, c.month)
                        added[key] = added.get(key, 0.0) + c.cost_usd
                crossings = []
                for (tenant, month), usd in sorted(added.items(), key=lambda item: (item[0][0].encode(),
                                                                                    item[0][1].encode())):
                    after = conn.execute(
                        "INSERT INTO spend (tenant, month, usd) VALUES (%s, %s, %s) ON CONFLICT (tenant, month) "
                        "DO UPDATE SET usd = spend.usd + excluded.usd RETURNING usd",
                        (tenant, month, usd),
                    ).fetchone()[0]
                    crossings.append(Crossing(tenant, month, after - usd, after))
            return crossings, inserted

        if not charges:
            return [], set()
        return self._do(apply)

    def _spend_totals(self, month: str) -> dict[str, float]:
        rows = self._do(lambda conn: conn.execute("SELECT tenant, usd FROM spend WHERE month = %s",
                                                  (month,)).fetchall())
        return {tenant: float(usd) for tenant, usd in rows}

    def _set_fault(self, model: str, spec: str, expires_at: float) -> None:
        self._do(lambda conn: conn.execute(
            "INSERT INTO faults (model, spec, expires_at) VALUES (%s, %s, %s) ON CONFLICT (model) "
            "DO UPDATE SET spec = excluded.spec, expires_at = excluded.expires_at", (model, spec, expires_at)))

    def _clear_faults(self, model: str | None) -> int:
        if model is None:
            return self._do(lambda conn: conn.execute("DELETE FROM faults").rowcount)
        return self._do(lambda conn: conn.execute("DELETE FROM faults WHERE model = %s", (model,)).rowcount)

    def _active_faults(self, now: float) -> list[tuple[str, str, float]]:
        return self._do(lambda conn: conn.execute(
            "SELECT model, spec, expires_at FROM faults WHERE expires_at > %s", (now,)).fetchall())

    def _rate(self, request_id: str, tenant: str, score: float, not_before: float) -> tuple[str, str | None]:
        def rate(conn: psycopg.Connection) -> tuple[str, str | None]:
            with conn.transaction():
                # FOR UPDATE: two replicas rating the same answer at once take turns, and
                # the second sees the first's score (READ COMMITTED re-reads the row).
                row = conn.execute(
                    "SELECT charge_id, model, feedback_score FROM charges WHERE request_id = %s AND tenant = %s "
                    "AND code = 200 AND created >= %s ORDER BY created, charge_id LIMIT 1 FOR UPDATE",
                    (request_id, tenant, not_before),
                ).fetchone()
                if row is None:
                    return "unknown", None
                charge_id, model, rated = row
                if rated is not None:
                    return "already_rated", model
                conn.execute("UPDATE charges SET feedback_score = %s WHERE charge_id = %s", (score, charge_id))
                return "rated", model

        return self._do(rate)

    def _prune(self, before: float) -> int:
        return self._do(lambda conn: conn.execute("DELETE FROM charges WHERE created < %s", (before,)).rowcount)

    def _charges(self) -> list[Charge]:
        rows = self._do(lambda conn: conn.execute(
            "SELECT charge_id, request_id, tenant, model, created, input_tokens, output_tokens, cost_usd, code "
            "FROM charges ORDER BY created, charge_id").fetchall())
        return [Charge(*row) for row in rows]

    def _close(self) -> None:
        self._drop()

    def schema_version(self) -> int:
        """The version schema_migrations records (tests, `llm-router` tooling)."""
        return self._thread.call(lambda: self._do(lambda conn: conn.execute(
            "SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]))
