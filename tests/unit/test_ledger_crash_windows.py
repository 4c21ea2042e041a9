"""Moments where a SIGKILL lands, pinned down in-process: what a process leaves in its
journal at that moment must make the replay charge (and count) exactly what the live
process would have. Each case was found by the chaos suite or the ledger state machine."""

from __future__ import annotations

import os
from datetime import datetime, timezone

from llm_router.ledger import Ledger, read_journal
from llm_router.state import SQLiteStore


def _crash(ledger: Ledger) -> None:
    """What SIGKILL leaves: the journal's pages, no memory, no lock."""
    ledger.journal.map.close()
    os.close(ledger.journal.fd)
    ledger.store.close()


def test_a_stream_finished_in_a_new_month_is_charged_to_that_month_after_a_crash_too(tmp_path):
    """Found by the state machine: a stream opened on the 31st and finished after midnight
    was charged to the new month by the live drain, but to the old one when its process
    died before the drain (the replay read the slot's opening time)."""
    now = [datetime(2025, 1, 31, 23, 59, 50, tzinfo=timezone.utc).timestamp()]
    ledger = Ledger(SQLiteStore(tmp_path), tmp_path, slots=8, clock=lambda: now[0])
    ledger.start = lambda: None
    entry = ledger.reserve()
    ledger.open(entry, "search", "m", "r1", 100, 1, 0.01, 0.02)
    now[0] += 20  # 2025-02-01
    ledger.finish(entry, "search", "m", "r1", 200, 100, 50, 0.01, 0.02)
    _crash(ledger)
    survivor = Ledger(SQLiteStore(tmp_path), tmp_path, slots=8, clock=lambda: now[0])
    survivor.start = lambda: None
    survivor.recover()
    store = survivor.store
    [charge] = store.charges()
    assert charge.month == "2025-02" and charge.code == 200
    assert store.spend_totals("2025-02") == {"search": 0.002}
    assert store.spend_totals("2025-01") == {}
    survivor.close()
    store.close()
