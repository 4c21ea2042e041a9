"""State that all gunicorn workers must agree on: month-to-date spend, injected faults and
the answered chat requests that can still be rated (feedback may land on any worker).

One SQLite file in a directory every worker of one server shares ($LLM_ROUTER_STATE_DIR).
SQLite gives atomic increments across processes, so a budget is crossed exactly once and
the spend survives restarts when the directory is on a volume.
"""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

STATE_DIR_ENV = "LLM_ROUTER_STATE_DIR"

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
        with self._connect() as db:
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
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
        """Remember an answered request (one statement). A reused id keeps its first answer."""
        self._connect().execute(
            "INSERT INTO responses (request_id, tenant, model, created) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (request_id, tenant) DO NOTHING",
            (request_id, tenant, model, created),
        )

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


class ResponseLog:
    """The answered requests that can still be rated, pruned by age.

    Recording costs one INSERT per answered request. Pruning is a DELETE on an indexed
    column, run at most once per ``PRUNE_EVERY_SECONDS`` per process, never per request.
    """

    PRUNE_EVERY_SECONDS = 60.0

    def __init__(self, store: StateStore, retention_hours: float, clock=time.time) -> None:
        self.store = store
        self.retention_seconds = retention_hours * 3600
        self.clock = clock
        self._lock = threading.Lock()
        self._pruned_at = float("-inf")  # the first answer after start prunes what expired meanwhile

    def record(self, request_id: str, tenant: str, model: str) -> None:
        now = self.clock()
        self.store.add_response(request_id, tenant, model, now)
        if now - self._pruned_at >= self.PRUNE_EVERY_SECONDS:
            self.prune(now)

    def prune(self, now: float | None = None) -> int:
        now = self.clock() if now is None else now
        # Non-blocking: a thread that finds another one pruning just carries on.
        if not self._lock.acquire(blocking=False):
            return 0
        try:
            self._pruned_at = now
            return self.store.prune_responses(now - self.retention_seconds)
        finally:
            self._lock.release()

    def rate(self, request_id: str, tenant: str, score: float) -> tuple[str, str | None]:
        return self.store.rate_response(request_id, tenant, score, self.clock() - self.retention_seconds)
