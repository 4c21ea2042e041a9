"""Moments where a SIGKILL lands, pinned down in-process: what a process leaves in its
journal at that moment must make the replay charge (and count) exactly what the live
process would have. Each case was found by the chaos suite or the ledger state machine."""

from __future__ import annotations

import logging
import os
from datetime import datetime, timezone

from conftest import as_tenant, chat_body, config_dict, quiet_models

from llm_router.ledger import Ledger, read_journal
from llm_router.state import SQLiteStore
from llm_router.telemetry import logs


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


def test_a_charge_is_marked_counted_before_the_access_line_is_written(make_app):
    """Found by the chaos suite (SIGKILL one worker): a worker blocked writing its access
    line to a full stdout pipe had counted the charge in its metrics but not yet marked it
    so in its journal; killed there, its charge was counted again by the replay (the
    metrics said more than the store). The mark now comes right after the counters."""
    app = make_app()
    ledger = app.extensions["llm_router"].ledger
    ledger._stop.set()  # no drain meanwhile: the slot stays in the journal to be read
    if ledger._thread is not None:
        ledger._thread.join(5)
    seen: dict[str, bool] = {}

    class AtTheAccessLine(logging.Handler):
        def emit(self, record):
            request_id = logs.request_id_var.get()
            entries = read_journal(ledger.journal.path.read_bytes())[1]
            for entry in entries:
                if entry.charge.request_id == request_id:
                    seen[request_id] = entry.counted

    handler = AtTheAccessLine()
    access = logging.getLogger(logs.ACCESS_LOGGER)
    access.addHandler(handler)
    try:
        client = app.test_client()
        headers = {**as_tenant("search"), "Cache-Control": "no-cache"}
        assert client.post("/v1/chat/completions", json=chat_body("sim-fast"),
                           headers={**headers, "X-Request-ID": "plain-1"}).status_code == 200
        response = client.post("/v1/chat/completions", json=chat_body("sim-fast", stream=True),
                               headers={**headers, "X-Request-ID": "stream-1"})
        assert b"[DONE]" in response.data
    finally:
        access.removeHandler(handler)
    assert seen == {"plain-1": True, "stream-1": True}


def test_a_journal_being_made_is_never_visible_unlocked(tmp_path, monkeypatch):
    """A worker making its journal (create, then lock) while another sweeps at boot: a
    sweep that found the new file between the two took it for a dead process's empty
    journal, moved it aside as unreadable, and the new worker then failed to lock it (a
    boot failure) or journaled into a file no replay reads. The journal is now made under
    a name the sweep ignores and renamed once locked."""
    import fcntl

    from llm_router import ledger as ledger_module

    real_flock = fcntl.flock
    visible_when_locked: list[list[str]] = []

    def flock(fd, operation):
        visible_when_locked.append(sorted(p.name for p in (tmp_path / "journal").glob("journal-*.bin")))
        return real_flock(fd, operation)

    monkeypatch.setattr(ledger_module.fcntl, "flock", flock)
    journal = ledger_module.Journal(tmp_path / "journal", 8)
    assert visible_when_locked == [[]], "nothing a sweep reads exists before the lock is held"
    assert journal.path.exists() and not journal.path.with_suffix(".new").exists()
    journal.close(remove=True)


def test_a_sweep_leaves_a_journal_being_made_and_removes_an_abandoned_one(tmp_path):
    directory = tmp_path / "journal"
    ledger = Ledger(SQLiteStore(tmp_path), tmp_path, slots=8)
    ledger.start = lambda: None
    fresh, old = directory / "journal-fresh.new", directory / "journal-old.new"
    fresh.write_bytes(b"")
    old.write_bytes(b"")
    os.utime(old, (0, 0))
    ledger.sweep()
    assert fresh.exists() and not old.exists()
    ledger.close()
    ledger.store.close()


def test_a_free_model_s_stream_cut_short_gives_its_journal_slot_back(make_app):
    """Found in review: whether a request's slot was finished or given back was decided by
    its cost, so a stream of a zero-priced model (a local model) cut short kept its opened
    slot for ever - each one a slot less until the journal was full and every request
    503 - and the journal was replayed as open charges at stop. An opened slot is now
    always finished: a charge of $0 with the tokens delivered."""
    data = quiet_models(config_dict())
    for model in data["models"]:
        model["price"] = {"input_per_1k": 0, "output_per_1k": 0}
    app = make_app(data)
    ledger = app.extensions["llm_router"].ledger
    client = app.test_client()
    headers = {**as_tenant("search"), "Cache-Control": "no-cache"}
    for n in range(3):
        stream = client.post("/v1/chat/completions", json=chat_body("sim-balanced", stream=True),
                             headers={**headers, "X-Request-ID": f"cut-{n}"}, buffered=False)
        assert stream.status_code == 200
        next(stream.response)  # the first event, then the client goes away
        stream.close()
    ledger.drain()
    assert ledger.journal.free_slots == ledger.journal.slots
    stored = {c.request_id: c for c in ledger.store.charges()}
    assert {f"cut-{n}" for n in range(3)} <= set(stored)
    assert all(stored[f"cut-{n}"].code == 499 and stored[f"cut-{n}"].cost_usd == 0 for n in range(3))
    assert all(stored[f"cut-{n}"].output_tokens > 0 for n in range(3))
