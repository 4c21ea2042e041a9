"""State every worker and replica must agree on: month-to-date spend per tenant, the
ledger of charged requests (the answered ones can be rated through /v1/feedback), and
injected faults.

One interface, two stores: SQLite on one host (the embedded default: one file in
$LLM_ROUTER_STATE_DIR shared by the workers of one server) and PostgreSQL for several
replicas (state_pg.py, selected by LLM_ROUTER_STATE_URL). Both give the same guarantees:

- a charge is stored once, whatever retries or replays happen (its id is the key), so a
  process that crashed after storing a batch but before forgetting it charges nobody twice;
- spend is added in the same transaction, and the totals before and after each batch come
  back, so each budget threshold is crossed exactly once across every process;
- the schema is created and migrated by the router itself (versioned, no hand step).

Every call runs on one native thread per process (concurrency.NativeThread): SQLite and
libpq block in C, and must not stall a gevent worker's loop.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import random
import sqlite3
import stat
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .concurrency import NativeThread

STATE_DIR_ENV = "LLM_ROUTER_STATE_DIR"
STATE_URL_ENV = "LLM_ROUTER_STATE_URL"
SQLITE_FILE = "router-state.sqlite3"
_log = logging.getLogger("llm_router.events")


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or Path(tempfile.gettempdir()) / f"llm-router-state-{os.getuid()}")


_MONTH = [0.0, 0.0, ""]  # [start, end, "YYYY-MM"] of the month last asked for


def current_month(now: float | None = None) -> str:
    """The UTC month of ``now`` as YYYY-MM (asked on every budget check and charge: the
    month last computed is kept with its bounds)."""
    now = time.time() if now is None else now
    start, end, month = _MONTH
    if start <= now < end:
        return month
    moment = datetime.fromtimestamp(now, timezone.utc)
    first = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = first.replace(year=first.year + 1, month=1) if first.month == 12 else first.replace(month=first.month + 1)
    _MONTH[:] = [first.timestamp(), following.timestamp(), first.strftime("%Y-%m")]
    return _MONTH[2]


def private_directory(path: Path) -> Path:
    """Create ``path`` as a 0700 directory of this user, or check that it is one.

    The state directory holds the ledger: a directory another user owns, or a symlink
    planted where a predictable name would be, must not be used (O_NOFOLLOW semantics).
    """
    path = Path(path)
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise PermissionError(f"{path} is not a directory (a symlink or a file is refused)")
    if info.st_uid != os.geteuid():
        raise PermissionError(f"{path} belongs to uid {info.st_uid}, not to this user ({os.geteuid()})")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700, follow_symlinks=False)
    return path


class StoreError(Exception):
    """The state store failed (unreachable, unwritable, full, locked...)."""


class StateCorrupt(StoreError):
    """The state file cannot be read as a database: the router must not start on it."""


def charge_usd(input_tokens: int, output_tokens: int, price_in_per_1k: float, price_out_per_1k: float) -> float:
    """What tokens cost at a model's prices: the one formula the metrics, the live charge and
    a replayed charge all use, so they agree to the bit."""
    return input_tokens / 1000 * price_in_per_1k + output_tokens / 1000 * price_out_per_1k


@dataclass(frozen=True)
class Charge:
    """One request's charge, as written in a process's journal (ledger.py)."""

    charge_id: str
    request_id: str
    tenant: str
    model: str
    created: float
    input_tokens: int
    output_tokens: int
    cost_usd: float
    code: int

    @property
    def month(self) -> str:
        return current_month(self.created)


@dataclass(frozen=True)
class Crossing:
    """A tenant's month-to-date spend before and after one stored batch."""

    tenant: str
    month: str
    before: float
    after: float


class Store:
    """The interface both stores implement; every public call runs on the store's thread
    and is timed and counted per operation (llm_router_state_operation_duration_seconds,
    llm_router_state_errors_total)."""

    kind = "abstract"

    def __init__(self, observe: Callable[[str, float, bool], None] | None = None) -> None:
        self._thread = NativeThread(f"{self.kind}-store")
        self.observe = observe or (lambda operation, seconds, ok: None)

    def _run(self, operation: str, fn, *args):
        started = time.perf_counter()
        ok = False
        try:
            result = self._thread.call(fn, *args)
            ok = True
            return result
        finally:
            self.observe(operation, time.perf_counter() - started, ok)

    # --- the interface -------------------------------------------------------------------

    def apply(self, charges: list[Charge]) -> tuple[list[Crossing], set[str]]:
        """Store charges not stored yet (by charge id) and add them to the spend totals, in
        one transaction; returns each touched tenant's total before and after, and the ids
        of the charges this call stored (the others were stored before)."""
        return self._run("apply", self._apply, charges)

    def spend_totals(self, month: str | None = None) -> dict[str, float]:
        return self._run("read_spend", self._spend_totals, month or current_month())

    def spend(self, tenant: str, month: str | None = None) -> float:
        return self.spend_totals(month).get(tenant, 0.0)

    def set_fault(self, model: str, spec: dict, duration_seconds: float) -> None:
        self._run("write_faults", self._set_fault, model, json.dumps(spec, sort_keys=True), time.time() + duration_seconds)

    def clear_faults(self, model: str | None = None) -> int:
        return self._run("write_faults", self._clear_faults, model)

    def active_faults(self) -> dict[str, tuple[dict, float]]:
        rows = self._run("read_faults", self._active_faults, time.time())
        return {model: (json.loads(spec), expires_at) for model, spec, expires_at in rows}

    def rate_response(self, request_id: str, tenant: str, score: float, not_before: float) -> tuple[str, str | None]:
        """Store the feedback score of an answered request, once.

        Returns ("rated", model), ("already_rated", model) or ("unknown", None); answers
        older than ``not_before`` count as unknown even before they are pruned. A request id
        reused by a client names its first answer.
        """
        return self._run("feedback", self._rate, request_id, tenant, score, not_before)

    def prune(self, before: float) -> int:
        """Forget ledger rows (and their feedback) older than ``before``; totals stay."""
        return self._run("prune", self._prune, before)

    def charges(self) -> list[Charge]:
        """Every charge row (tests and reconciliation)."""
        return self._run("read_charges", self._charges)

    def close(self) -> None:
        try:
            self._thread.call(self._close)
        finally:
            self._thread.close()

    # Implemented by each store, run on its thread.
    def _apply(self, charges: list[Charge]) -> tuple[list[Crossing], set[str]]: raise NotImplementedError
    def _spend_totals(self, month: str) -> dict[str, float]: raise NotImplementedError
    def _set_fault(self, model: str, spec: str, expires_at: float) -> None: raise NotImplementedError
    def _clear_faults(self, model: str | None) -> int: raise NotImplementedError
    def _active_faults(self, now: float) -> list[tuple[str, str, float]]: raise NotImplementedError
    def _rate(self, request_id: str, tenant: str, score: float, not_before: float): raise NotImplementedError
    def _prune(self, before: float) -> int: raise NotImplementedError
    def _charges(self) -> list[Charge]: raise NotImplementedError
    def _close(self) -> None: raise NotImplementedError


# --- SQLite ------------------------------------------------------------------------------

# Each entry migrates the schema from the version before it to its own; a new database
# runs them all. PRAGMA user_version holds the version (0: a new file, or a file of the
# router before versioning, whose tables "CREATE ... IF NOT EXISTS" leaves alone).
_SQLITE_MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE IF NOT EXISTS spend (
    tenant TEXT NOT NULL, month TEXT NOT NULL, usd REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, month)
);
CREATE TABLE IF NOT EXISTS faults (
    model TEXT PRIMARY KEY, spec TEXT NOT NULL, expires_at REAL NOT NULL
);
""",
    # The ledger: one row per charged request (and per answered one, rateable), keyed by
    # the charge id its journal gave it. It replaces `responses`, whose rows carry over.
    2: """
CREATE TABLE charges (
    charge_id TEXT PRIMARY KEY, request_id TEXT NOT NULL, tenant TEXT NOT NULL, model TEXT NOT NULL,
    created REAL NOT NULL, input_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL, code INTEGER NOT NULL, feedback_score REAL
);
CREATE INDEX charges_request ON charges (request_id, tenant);
CREATE INDEX charges_created ON charges (created);
CREATE TABLE IF NOT EXISTS responses (
    request_id TEXT NOT NULL, tenant TEXT NOT NULL, model TEXT NOT NULL, created REAL NOT NULL,
    feedback_score REAL, PRIMARY KEY (request_id, tenant)
);
INSERT INTO charges (charge_id, request_id, tenant, model, created, input_tokens, output_tokens, cost_usd, code,
                     feedback_score)
    SELECT 'legacy:' || tenant || ':' || request_id, request_id, tenant, model, created, 0, 0, 0, 200, feedback_score
    FROM responses;
DROP TABLE responses;
""",
}
SQLITE_SCHEMA_VERSION = max(_SQLITE_MIGRATIONS)


def check_sqlite_file(path: Path) -> None:
    """Raise StateCorrupt with what to do when ``path`` exists but is not a usable database."""
    if not path.exists():
        return
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
        try:
            result = db.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            db.close()
    except sqlite3.DatabaseError as error:
        result = str(error)
    if result != "ok":
        raise StateCorrupt(
            f"state file {path} is corrupt ({result}): stop the router, move the file aside "
            f"(it holds the month's spend), restore it from a backup or delete it to start from zero, "
            f"then start again"
        )


class SQLiteStore(Store):
    """One SQLite file in WAL mode, shared by the workers of one server.

    Deleted or replaced under a running router (an operator's `rm`, a restore): every write
    transaction first checks that the path still names the file its connection has open.
    If the file is gone, one process (under a lock on the directory) copies the database
    it still has open - the deleted inode lives on while a connection holds it - into a new
    file at the path, after a write transaction that lets every writer on the old file
    finish; the others then find the new file and reopen it. So spend is not reset and no
    stored charge is lost. A file deleted while no process had it open is gone: the router
    starts it afresh (and says so).
    """

    kind = "sqlite"
    # Workers start together and open the file at once: switching a new file to WAL takes
    # an exclusive lock that SQLite's busy timeout does not wait for, so that step retries.
    PREPARE_ATTEMPTS = 200

    def __init__(self, directory: Path | None = None, observe=None) -> None:
        super().__init__(observe)
        self.directory = private_directory(Path(directory or default_state_dir()))
        self.path = self.directory / SQLITE_FILE
        self.url = f"sqlite:///{self.path}"
        check_sqlite_file(self.path)
        self._db: sqlite3.Connection | None = None
        self._inode: tuple[int, int] | None = None
        self._thread.call(self._connect)

    # --- connection, schema, recovery (all on the store's thread) --------------------------

    def _connect(self) -> sqlite3.Connection:
        for attempt in range(1, self.PREPARE_ATTEMPTS + 1):
            try:
                db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
                if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    db.execute("PRAGMA journal_mode=WAL")
                # The journals (ledger.py) hold every charge until it is stored: losing the
                # last commit on a power cut is recovered from them, an fsync per commit is
                # not needed.
                db.execute("PRAGMA synchronous=NORMAL")
                self._migrate(db)
                break
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or attempt == self.PREPARE_ATTEMPTS:
                    raise
                time.sleep(0.02 + random.random() * 0.03)
        info = os.stat(self.path)
        self._db, self._inode = db, (info.st_dev, info.st_ino)
        return db

    @staticmethod
    def _migrate(db: sqlite3.Connection) -> None:
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version >= SQLITE_SCHEMA_VERSION:
            return
        db.execute("BEGIN IMMEDIATE")
        try:
            version = db.execute("PRAGMA user_version").fetchone()[0]  # another worker may have done it
            for target in range(version + 1, SQLITE_SCHEMA_VERSION + 1):
                for statement in _SQLITE_MIGRATIONS[target].split(";\n"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {target}")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        if version < SQLITE_SCHEMA_VERSION:  # the same line as state_pg's
            _log.info("state store schema migrated from version %d to %d", version, SQLITE_SCHEMA_VERSION,
                      extra={"event": "state_schema_migrated", "store": "sqlite", "from_version": version,
                             "to_version": SQLITE_SCHEMA_VERSION})

    def _same_file(self) -> bool:
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return False
        return (info.st_dev, info.st_ino) == self._inode

    def _database(self) -> sqlite3.Connection:
        """The connection, reopened (or the file recovered) if the path changed under it."""
        if self._db is None:
            return self._connect()
        if not self._same_file():
            self._recover()
        return self._db

    def _recover(self) -> None:
        """The path no longer names our file: restore it from our connection, or reopen the
        file another process restored (under a lock on the directory: one restorer)."""
        lock = os.open(self.directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if self._same_file():
                return
            old = self._db
            if self.path.exists():
                _log.warning("the state file %s was replaced; reopening it", self.path,
                             extra={"event": "state_file_reopened", "path": str(self.path)})
            else:
                self._restore(old)
            self._db = None
            if old is not None:
                old.close()
            self._connect()
        finally:
            os.close(lock)  # releases the lock

    def _restore(self, old: sqlite3.Connection | None) -> None:
        if old is None:
            return
        # Let every writer still on the deleted file finish (each checks the path inside
        # its transaction, so none writes there after this one).
        old.execute("BEGIN IMMEDIATE")
        old.execute("COMMIT")
        for suffix in ("-wal", "-shm"):  # strays of the deleted file must not meet the new one
            try:
                os.unlink(f"{self.path}{suffix}")
            except FileNotFoundError:
                pass
        temporary = self.directory / f".{SQLITE_FILE}.restore-{os.getpid()}"
        copy = sqlite3.connect(temporary)
        try:
            old.backup(copy)
        finally:
            copy.close()
        os.replace(temporary, self.path)
        _log.error(
            "the state file %s was deleted while the router ran; restored it from the copy still open",
            self.path, extra={"event": "state_file_restored", "path": str(self.path)},
        )

    def _write(self, fn):
        """Run ``fn(db)`` in a write transaction on the file the path names now."""
        for _ in range(3):
            db = self._database()
            db.execute("BEGIN IMMEDIATE")
            try:
                if not self._same_file():
                    db.execute("ROLLBACK")
                    self._recover()
                    continue
                result = fn(db)
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result
        raise StoreError(f"the state file {self.path} keeps changing under the router")

    # --- operations ----------------------------------------------------------------------

    def _apply(self, charges: list[Charge]) -> tuple[list[Crossing], set[str]]:
        def apply(db: sqlite3.Connection) -> tuple[list[Crossing], set[str]]:
            added: dict[tuple[str, str], float] = {}
            inserted: set[str] = set()
            for c in charges:
                cursor = db.execute(
                    "INSERT INTO charges (charge_id, request_id, tenant, model, created, input_tokens, output_tokens, "
                    "cost_usd, code) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (charge_id) DO NOTHING",
                    (c.charge_id, c.request_id, c.tenant, c.model, c.created, c.input_tokens, c.output_tokens,
                     c.cost_usd, c.code),
                )
                if cursor.rowcount == 1:
                    inserted.add(c.charge_id)
                    if c.cost_usd:
                        key = (c.tenant, c.month)
                        added[key] = added.get(key, 0.0) + c.cost_usd
            crossings = []
            for (tenant, month), usd in sorted(added.items()):
                after = db.execute(
                    "INSERT INTO spend (tenant, month, usd) VALUES (?, ?, ?) "
                    "ON CONFLICT (tenant, month) DO UPDATE SET usd = usd + excluded.usd RETURNING usd",
                    (tenant, month, usd),
                ).fetchone()[0]
                crossings.append(Crossing(tenant, month, after - usd, after))
            return crossings, inserted

        return self._guard(lambda: self._write(apply))

    def _guard(self, fn):
        """sqlite3's errors as StoreError (corruption as StateCorrupt)."""
        try:
            return fn()
        except sqlite3.DatabaseError as error:
            if "malformed" in str(error) or "not a database" in str(error):
                raise StateCorrupt(f"state file {self.path}: {error}") from None
            raise StoreError(f"state file {self.path}: {error}") from None
        except OSError as error:
            raise StoreError(f"state file {self.path}: {error}") from None

    def _read(self, sql: str, parameters: Iterable = ()) -> list[tuple]:
        return self._guard(lambda: self._database().execute(sql, tuple(parameters)).fetchall())

    def _spend_totals(self, month: str) -> dict[str, float]:
        return {tenant: float(usd) for tenant, usd in self._read("SELECT tenant, usd FROM spend WHERE month = ?", (month,))}

    def _set_fault(self, model: str, spec: str, expires_at: float) -> None:
        self._guard(lambda: self._write(lambda db: db.execute(
            "INSERT OR REPLACE INTO faults (model, spec, expires_at) VALUES (?, ?, ?)", (model, spec, expires_at))))

    def _clear_faults(self, model: str | None) -> int:
        if model is None:
            return self._guard(lambda: self._write(lambda db: db.execute("DELETE FROM faults").rowcount))
        return self._guard(lambda: self._write(lambda db: db.execute("DELETE FROM faults WHERE model = ?", (model,)).rowcount))

    def _active_faults(self, now: float) -> list[tuple[str, str, float]]:
        return self._read("SELECT model, spec, expires_at FROM faults WHERE expires_at > ?", (now,))

    def _rate(self, request_id: str, tenant: str, score: float, not_before: float) -> tuple[str, str | None]:
        def rate(db: sqlite3.Connection) -> tuple[str, str | None]:
            row = db.execute(
                "SELECT charge_id, model, feedback_score FROM charges WHERE request_id = ? AND tenant = ? "
                "AND code = 200 AND created >= ? ORDER BY created, charge_id LIMIT 1",
                (request_id, tenant, not_before),
            ).fetchone()
            if row is None:
                return "unknown", None
            charge_id, model, rated = row
            if rated is not None:
                return "already_rated", model
            db.execute("UPDATE charges SET feedback_score = ? WHERE charge_id = ?", (score, charge_id))
            return "rated", model

        return self._guard(lambda: self._write(rate))

    def _prune(self, before: float) -> int:
        return self._guard(lambda: self._write(lambda db: db.execute("DELETE FROM charges WHERE created < ?",
                                                                      (before,)).rowcount))

    def _charges(self) -> list[Charge]:
        rows = self._read("SELECT charge_id, request_id, tenant, model, created, input_tokens, output_tokens, cost_usd, "
                          "code FROM charges ORDER BY created, charge_id")
        return [Charge(*row) for row in rows]

    def _close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            db.close()


def state_url(configured: str | None = None) -> str:
    """The state store's URL: $LLM_ROUTER_STATE_URL, else the config's state.url ("": SQLite
    in the state directory)."""
    return (os.environ.get(STATE_URL_ENV) or configured or "").strip()


def sqlite_path(url: str, directory: Path | None = None) -> Path | None:
    """The SQLite file a state URL names (no URL: the one in ``directory``, default the
    state directory); None for PostgreSQL; StoreError for anything else."""
    if url.startswith(("postgresql://", "postgres://")):
        return None
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///")).parent / SQLITE_FILE
    if url:
        raise StoreError(f"{STATE_URL_ENV}={url!r}: use postgresql://... or sqlite:///path/{SQLITE_FILE}")
    return Path(directory or default_state_dir()) / SQLITE_FILE


def open_store(directory: Path | None = None, url: str | None = None, observe=None) -> Store:
    """The store the URL names (default: state_url()): PostgreSQL, else SQLite."""
    url = url if url is not None else state_url()
    path = sqlite_path(url, directory)
    if path is None:
        from .state_pg import PostgresStore

        return PostgresStore(url, observe)
    return SQLiteStore(path.parent, observe)

