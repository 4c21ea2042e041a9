"""State that all gunicorn workers must agree on: month-to-date spend, injected faults and
the answered chat requests that can still be rated (feedback may land on any worker).

One SQLite file in a directory every worker of one server shares ($LLM_ROUTER_STATE_DIR).
SQLite gives atomic increments across processes, so a budget is crossed exactly once and
the spend survives restarts when the directory is on a volume.
"""

from __future__ import annotations

import json
import logging
import os
import random
import sqlite3
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

STATE_DIR_ENV = "LLM_ROUTER_STATE_DIR"
_log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spend (
    tenant TEXT NOT NULL, month TEXT NOT NULL, usd REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, month)
);
CREATE TABLE IF NOT EXISTS faults (
    model TEXT PRIMARY KEY, spec TEXT NOT NULL, expires_at REAL NOT NULL
);
-- One row per answered chat request (code 200) within feedback.retention_hours. The key
-- includes the tenant: request ids may come from clients (X-Request-ID), and one tenant's
-- id must neither shadow nor reveal another's.
CREATE TABLE IF NOT EXISTS responses (
    request_id TEXT NOT NULL, tenant TEXT NOT NULL, model TEXT NOT NULL, created REAL NOT NULL,
    feedback_score REAL,
    PRIMARY KEY (request_id, tenant)
);
-- Pruning deletes by age: without this index every prune would scan the table.
CREATE INDEX IF NOT EXISTS responses_created ON responses (created);
"""


def default_state_dir() -> Path:
    return Path(os.environ.get(STATE_DIR_ENV) or Path(tempfile.gettempdir()) / f"llm-router-state-{os.getuid()}")


def current_month(now: float | None = None) -> str:
    return datetime.fromtimestamp(now if now is not None else time.time(), timezone.utc).strftime("%Y-%m")


class StateStore:
    def __init__(self, directory: Path | None = None) -> None:
        self.directory = Path(directory or default_state_dir())
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "router-state.sqlite3"
        # One connection per thread: sqlite3 connections must not cross threads.
        self._local = threading.local()
        self._prepare()

    # Workers start together and open the file at once: switching a new file to WAL takes
    # an exclusive lock that SQLite's busy timeout does not wait for, so that step retries.
    PREPARE_ATTEMPTS = 200

    def _prepare(self) -> None:
        """WAL mode (a property of the file, kept once set) and the schema."""
        for attempt in range(1, self.PREPARE_ATTEMPTS + 1):
            try:
                db = self._connect()
                if db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
                return
            except sqlite3.OperationalError as error:
                if "locked" not in str(error) or attempt == self.PREPARE_ATTEMPTS:
                    raise
                time.sleep(0.02 + random.random() * 0.03)

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            # Spend is a running total, not a ledger: losing the last write on a power cut
            # is acceptable, an fsync per request is not.
            db.execute("PRAGMA synchronous=NORMAL")
            self._local.db = db
        return db

    # --- spend -------------------------------------------------------------------------

    def add_spend(self, tenant: str, usd: float, month: str | None = None) -> tuple[float, float]:
        """Atomically add ``usd``; return the month's spend before and after."""
        month = month or current_month()
        row = self._connect().execute(
            "INSERT INTO spend (tenant, month, usd) VALUES (?, ?, ?) "
            "ON CONFLICT (tenant, month) DO UPDATE SET usd = usd + excluded.usd RETURNING usd",
            (tenant, month, usd),
        ).fetchone()
        after = float(row[0])
        return after - usd, after

    def spend(self, tenant: str, month: str | None = None) -> float:
        row = self._connect().execute(
            "SELECT usd FROM spend WHERE tenant = ? AND month = ?", (tenant, month or current_month())
        ).fetchone()
        return float(row[0]) if row else 0.0

    # --- faults ------------------------------------------------------------------------

    def set_fault(self, model: str, spec: dict, duration_seconds: float) -> None:
        self._connect().execute(
            "INSERT OR REPLACE INTO faults (model, spec, expires_at) VALUES (?, ?, ?)",
            (model, json.dumps(spec, sort_keys=True), time.time() + duration_seconds),
        )

    def clear_faults(self, model: str | None = None) -> int:
        if model is None:
            return self._connect().execute("DELETE FROM faults").rowcount
        return self._connect().execute("DELETE FROM faults WHERE model = ?", (model,)).rowcount

    def active_faults(self) -> dict[str, tuple[dict, float]]:
        rows = self._connect().execute(
            "SELECT model, spec, expires_at FROM faults WHERE expires_at > ?", (time.time(),)
        ).fetchall()
        return {model: (json.loads(spec), expires_at) for model, spec, expires_at in rows}

    # --- answered requests and their feedback ------------------------------------------

    def add_response(self, request_id: str, tenant: str, model: str, created: float) -> None:
        """Remember an answered request. A reused id keeps its first answer."""
        self.add_responses([(request_id, tenant, model, created)])

    def add_responses(self, rows: list[tuple[str, str, str, float]]) -> None:
        """Remember answered requests (request_id, tenant, model, created), in one transaction."""
        db = self._connect()
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT INTO responses (request_id, tenant, model, created) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (request_id, tenant) DO NOTHING",
                rows,
            )
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def prune_responses(self, before: float) -> int:
        return self._connect().execute("DELETE FROM responses WHERE created < ?", (before,)).rowcount

    def rate_response(self, request_id: str, tenant: str, score: float, not_before: float) -> tuple[str, str | None]:
        """Store the feedback score of a response, once.

        Returns ("rated", model), ("already_rated", model) or ("unknown", None); rows older
        than ``not_before`` count as unknown even before they are pruned.
        """
        db = self._connect()
        row = db.execute(
            "UPDATE responses SET feedback_score = ? "
            "WHERE request_id = ? AND tenant = ? AND created >= ? AND feedback_score IS NULL RETURNING model",
            (score, request_id, tenant, not_before),
        ).fetchone()
        if row is not None:
            return "rated", row[0]
        row = db.execute(
            "SELECT model FROM responses WHERE request_id = ? AND tenant = ? AND created >= ?",
            (request_id, tenant, not_before),
        ).fetchone()
        return ("already_rated", row[0]) if row is not None else ("unknown", None)


class PeriodicWriter:
    """Runs ``flush`` every ``period()`` seconds on a daemon thread, started on first use
    (so in the process that serves, after gunicorn's fork); ``close`` stops the thread and
    flushes what is left. A failed flush is logged and retried the next period: the
    flusher keeps what it could not store."""

    def __init__(self, name: str, flush, period, what: str) -> None:
        self.name, self.flush, self.period, self.what = name, flush, period, what
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.period()):
            try:
                self.flush()
            except Exception:  # noqa: BLE001 (a locked or full database: retried next period)
                _log.exception("storing %s failed; retrying", self.what)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        try:
            self.flush()
        except Exception:  # noqa: BLE001
            _log.exception("storing %s at exit failed", self.what)


class ResponseLog:
    """The answered requests that can still be rated, pruned by age.

    Answers are written in batches: ``record`` only appends to this process's buffer, and
    a writer thread stores the buffer in one transaction every ``flush_seconds``. A commit
    per answer cost more than the rest of a simulated request put together (random keys
    dirty several pages per commit). The price: an answer reaches the shared store up to
    ``flush_seconds`` after it was sent, so feedback on an id not found yet waits (at most
    ``WAIT_FLUSHES`` writer periods) for the other workers' writers before it is a 404.
    Pruning is a DELETE on an indexed column, at most once per ``PRUNE_EVERY_SECONDS``.
    """

    FLUSH_SECONDS = 0.05
    WAIT_FLUSHES = 10
    PRUNE_EVERY_SECONDS = 60.0

    def __init__(self, store: StateStore, retention_hours: float, clock=time.time,
                 flush_seconds: float = FLUSH_SECONDS) -> None:
        self.store = store
        self.retention_seconds = retention_hours * 3600
        self.clock = clock
        self.flush_seconds = flush_seconds
        self._pending: list[tuple[str, str, str, float]] = []
        self._pending_lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._writer = PeriodicWriter("response-log", self.flush, lambda: self.flush_seconds, "answered requests")
        self._pruned_at = float("-inf")  # the first flush after start prunes what expired meanwhile
        # How long feedback on an id not found yet waits for the other workers' writers.
        self.wait_seconds = self.WAIT_FLUSHES * flush_seconds

    def record(self, request_id: str, tenant: str, model: str) -> None:
        with self._pending_lock:
            self._pending.append((request_id, tenant, model, self.clock()))
        self._writer.start()

    def flush(self) -> int:
        """Store the buffered answers now; returns how many."""
        with self._flush_lock:
            with self._pending_lock:
                rows, self._pending = self._pending, []
            if rows:
                try:
                    self.store.add_responses(rows)
                except Exception:
                    with self._pending_lock:  # keep them for the next attempt
                        self._pending[:0] = rows
                    raise
            now = self.clock()
            if now - self._pruned_at >= self.PRUNE_EVERY_SECONDS:
                self._pruned_at = now
                self.store.prune_responses(now - self.retention_seconds)
            return len(rows)

    def prune(self, now: float | None = None) -> int:
        now = self.clock() if now is None else now
        with self._flush_lock:
            self._pruned_at = now
            return self.store.prune_responses(now - self.retention_seconds)

    def close(self) -> None:
        """Stop the writer and store what is left (a stopping worker's last flush)."""
        self._writer.close()

    def rate(self, request_id: str, tenant: str, score: float) -> tuple[str, str | None]:
        self.flush()  # this process's own answers are found at once
        deadline = time.monotonic() + self.wait_seconds
        while True:
            outcome = self.store.rate_response(request_id, tenant, score, self.clock() - self.retention_seconds)
            if outcome[0] != "unknown" or time.monotonic() >= deadline:
                return outcome
            time.sleep(self.flush_seconds / 2)  # another worker's answer may be in its buffer
