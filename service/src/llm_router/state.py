"""State that all gunicorn workers must agree on: month-to-date spend and injected faults.

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
