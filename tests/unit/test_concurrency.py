"""What concurrency.py does for the gevent worker: blocking C calls on one real thread,
and ending a request from outside (a stopping worker)."""

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


def test_a_stopping_worker_ends_a_waiting_request_with_server_stopping():
    """Found by the chaos suite (stop with 200 streams in flight): ClientWatch.interrupt
    called gevent.kill(..., block=False), which gevent.kill does not take - the first
    interrupt raised TypeError, the worker skipped ending its open requests and closing its
    servers, and its exit hooks closed the journal under streams still running (their
    charges failed to be written: 'argument must be read-write bytes-like object')."""
    import gevent

    ended = []

    def waiting():
        try:
            gevent.sleep(30)
        except concurrency.ServerStopping:
            ended.append("stopping")
            raise

    greenlet = gevent.spawn(waiting)
    gevent.sleep(0)
    watch = concurrency.ClientWatch(None)
    watch.greenlet = greenlet
    watch.interrupt(concurrency.ServerStopping())
    greenlet.join(5)
    assert ended == ["stopping"] and greenlet.dead
    assert isinstance(greenlet.exception, concurrency.ServerStopping)
