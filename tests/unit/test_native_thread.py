"""NativeThread: blocking C calls (SQLite, libpq) on one real thread, under gevent too."""

from __future__ import annotations

import pytest

from llm_router import concurrency
from llm_router.state import StoreError


def test_a_failing_call_raises_in_the_caller_without_a_traceback_on_stderr(monkeypatch, capfd):
    """Found by the chaos suite (state file unwritable for 10 s): gevent's thread pool printed
    a traceback to stderr for every failed store write, on top of the one
    state_store_failing line the ledger logs. The exception now reaches the caller only."""
    monkeypatch.setattr(concurrency, "green", lambda: True)  # the gevent pool, as in a worker
    thread = concurrency.NativeThread("test-store")

    def fail():
        raise StoreError("state file x: disk I/O error")

    try:
        assert thread.call(lambda a, b=0: a + b, 1, b=2) == 3
        for _ in range(3):
            with pytest.raises(StoreError, match="disk I/O error"):
                thread.call(fail)
    finally:
        thread.close()
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out
