"""psycopg under gevent's monkey-patching, the way a gunicorn gevent worker runs the store.

psycopg picks its wait functions at import: where gevent has patched `select` it leaves
its C wait for the patched select.poll, i.e. for gevent's hub. The store's calls run on a
real OS thread (gevent's thread pool), where that would start a second hub; state_pg puts
psycopg's C wait back. This test, in a monkey-patched process of its own, shows that:

- psycopg did detect gevent (it chose wait_poll), and the store switched it to wait_c;
- a store call connects (by host name: resolution too), migrates and works, and its
  thread never got a gevent hub;
- the process's own loop runs on while a store call waits inside PostgreSQL (a lock the
  test holds): the call is seen waiting on the lock in pg_stat_activity after the loop
  ran its rounds, and finishes once the test lets go;
- a failing call raises in its caller and nothing is printed (gevent's hub prints the
  traceback of an exception raised in a thread-pool task: concurrency.NativeThread hands
  it back as a value instead).

tests/live/test_postgres_gevent.py does the same through a real gunicorn gevent worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import psycopg

import pg
from pg import postgres  # noqa: F401 (fixture)

CHILD = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import json, sys, time
    import gevent
    from gevent._hub_local import get_hub_if_exists
    import psycopg.waiting as waiting
    chosen = waiting.wait.__name__
    from llm_router.state import Charge
    from llm_router.state_pg import PostgresStore

    store = PostgresStore(sys.argv[1])
    store.spend_totals()
    print("ready", flush=True)
    sys.stdin.readline()  # the test holds the lock now
    call = gevent.spawn(store.apply, [Charge("g:1", "r1", "search", "sim-fast", time.time(), 10, 10, 0.25, 200)])
    rounds = 0
    while rounds < 50:
        gevent.sleep(0.01)
        rounds += 1
    print(json.dumps({"rounds": rounds, "call_done": call.ready()}), flush=True)
    sys.stdin.readline()  # the test let go
    crossings, inserted = call.get(timeout=30)
    print(json.dumps({
        "psycopg_chose": chosen, "store_uses": waiting.wait.__name__,
        "hub_in_store_thread": store._thread.call(get_hub_if_exists) is not None,
        "inserted": sorted(inserted), "total": store.spend("search"),
    }), flush=True)
    store.close()
    # A failing call raises in its caller, once; gevent's hub prints no traceback for it
    # (the ledger logs a failing store once, not per attempt).
    from llm_router.state import StoreError
    gone = PostgresStore(sys.argv[2])
    for _ in range(3):
        try:
            gone.spend_totals()
        except StoreError:
            pass
    gone.close()
""")


def test_store_calls_wait_on_their_own_thread_under_gevent(postgres):
    url = postgres.new_database().replace("127.0.0.1", "localhost")
    database = url.rsplit("/", 1)[1]
    nobody = f"postgresql://llm_router@127.0.0.1:{pg.free_port()}/nothing"
    child = subprocess.Popen([sys.executable, "-c", CHILD, url, nobody], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, **postgres.client_env()})
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        with psycopg.connect(postgres.admin_dsn(database)) as admin:
            admin.execute("LOCK TABLE spend IN ACCESS EXCLUSIVE MODE")  # held until the block ends
            child.stdin.write("locked\n")
            child.stdin.flush()
            progress = json.loads(child.stdout.readline())
            assert progress == {"rounds": 50, "call_done": False}, "the loop ran its rounds while the call waited"
            waiting = admin.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'llm-router' "
                "AND wait_event_type = 'Lock'").fetchone()[0]
            assert waiting == 1, "the store's call is waiting inside PostgreSQL for the test's lock"
        child.stdin.write("released\n")
        child.stdin.flush()
        result = json.loads(child.stdout.readline() or "null")
        assert result is not None, child.stderr.read()
        assert result["psycopg_chose"] == "wait_poll", "psycopg saw gevent's patched select"
        assert result["store_uses"] == "wait_c"
        assert result["hub_in_store_thread"] is False
        assert result["inserted"] == ["g:1"] and result["total"] == 0.25
        child.stdin.close()
        assert child.wait(30) == 0
        assert child.stderr.read() == "", "nothing on stderr: no traceback printed by gevent's hub"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(30)
