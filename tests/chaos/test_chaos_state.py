"""The state file under load: unwritable for ten seconds, deleted, corrupt at start."""

from __future__ import annotations

import resource
import sqlite3
import subprocess
import time

import pytest

from chaoslib import chaos_router  # noqa: F401 (a fixture)
from chaoslib import Stored, Traffic, chaos_config, metric_tokens_match, note, prices, reconcile, record, rss_bytes
from conftest import LiveRouter, metric_sum

from llm_router.state import SQLITE_FILE, SQLITE_SCHEMA_VERSION

pytestmark = pytest.mark.live

UNWRITABLE_SECONDS = 10


def test_state_file_unwritable_for_ten_seconds(chaos_router):
    """Every write of every worker to the state file fails for ten seconds, for real: the
    kernel refuses them (EFBIG). As root, chmod stops nothing and an open file stays
    writable, and a small full tmpfs needs mount privileges and fails late (SQLite rewrites
    its WAL in place); so the test lowers each worker's RLIMIT_FSIZE to 0 with prlimit(2)
    - what a full disk looks like to SQLite ("disk I/O error") - then lifts it. The journal
    is memory-mapped and preallocated, so it keeps taking charges; logs go to a pipe.

    Charges wait in the journal and are stored once the file is writable again: nothing
    lost, memory bounded (fixed journal, RSS measured), one state_store_failing and one
    state_store_recovered line per worker, llm_router_state_errors_total moved."""
    workers = 2
    config = chaos_config(time_scale=0.02)
    table = prices(config)
    router = chaos_router(workers, config)
    sizes = {path: path.stat().st_size for path in router.journals()}
    # A connection per request: both workers take requests (and fail) all along.
    with Traffic(router.url, "unwritable", threads=6, pause=0.01, keep_alive=False) as traffic:
        time.sleep(1.5)
        pids = sorted(router.workers())
        rss_before = {pid: rss_bytes(pid) for pid in pids}
        before = traffic.count()
        for pid in pids:
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
        try:
            time.sleep(UNWRITABLE_SECONDS / 2)
            during = router.scrape()
            time.sleep(UNWRITABLE_SECONDS / 2)
        finally:
            for pid in pids:
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        served_while_failing = traffic.count() - before
        time.sleep(1.0)
    samples = router.settle(timeout=60)
    rss_after = {pid: rss_bytes(pid) for pid in pids}
    assert sorted(router.workers()) == pids, "no worker died or was replaced"
    # While it failed: the store was down for every worker, charges waited in the journals.
    assert metric_sum(during, "llm_router_state_store_up") == 0
    assert metric_sum(during, "llm_router_ledger_waiting_charges") > 0
    assert metric_sum(samples, "llm_router_state_errors_total", operation="apply") > 0
    assert metric_sum(samples, "llm_router_state_store_up") == 1
    assert metric_sum(samples, "llm_router_ledger_full_total") == 0
    # One line when the store started failing, one when it recovered, per worker.
    failing, recovered = router.events("state_store_failing"), router.events("state_store_recovered")
    assert len(failing) == len(recovered) == workers, (failing, recovered)
    assert not [line for line in router.logs() if "Traceback" in line]
    # Bounded: the journals kept their size; RSS is reported.
    assert {path: path.stat().st_size for path in router.journals()} == sizes
    growth = {pid: rss_after[pid] - rss_before[pid] for pid in pids}
    assert max(growth.values()) < 64 * 2**20, growth
    stored = Stored.read(router.state_dir)
    result = reconcile(traffic.received, stored, table, metrics=samples)
    metric_tokens_match(samples, stored)
    assert result.answered == len(traffic.received) - result.partial
    record("state file unwritable 10 s", "RLIMIT_FSIZE=0 on every worker (EFBIG) for 10 s", workers, result,
           served_while_failing=served_while_failing,
           failed_writes=metric_sum(samples, "llm_router_state_errors_total", operation="apply"),
           max_waiting=metric_sum(during, "llm_router_ledger_waiting_charges"),
           rss_growth_mib={str(pid): round(g / 2**20, 1) for pid, g in growth.items()},
           log_lines={"state_store_failing": len(failing), "state_store_recovered": len(recovered)})


def test_state_file_deleted_under_load(chaos_router):
    """`rm router-state.sqlite3*` under load: the first writer to notice restores the file
    from the connection it still has open (the deleted inode lives on), the others reopen
    it; the schema is there, the month's spend is not reset, no charge is lost - and a
    fresh connection (a worker that starts now) sees the full spend."""
    config = chaos_config(time_scale=0.02)
    table = prices(config)
    router = chaos_router(2, config)
    path = router.state_dir / SQLITE_FILE
    with Traffic(router.url, "deleted", threads=6, pause=0.01) as traffic:
        time.sleep(2.0)
        for suffix in ("", "-wal", "-shm"):
            (router.state_dir / f"{SQLITE_FILE}{suffix}").unlink()
        time.sleep(3.0)
    samples = router.settle()
    restored = router.events("state_file_restored")
    assert len(restored) == 1, restored
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SQLITE_SCHEMA_VERSION
    stored = Stored.read(router.state_dir)  # a new connection: what a worker starting now reads
    result = reconcile(traffic.received, stored, table, metrics=samples)
    metric_tokens_match(samples, stored)
    first = min(c.created for c in stored.charges)
    assert first < time.time() - 3, "charges from before the deletion are still there"
    record("state file deleted under load", "rm router-state.sqlite3 (and -wal, -shm)", 1, result,
           restored=len(restored), reopened=len(router.events("state_file_reopened")))


@pytest.mark.parametrize("damage", ["garbage", "torn"])
def test_corrupt_state_file_refuses_to_start_with_one_line(tmp_path, damage):
    """A corrupt state file at start: `llm-router serve` prints one line naming the file
    and what to do, and exits non-zero - before gunicorn boots a worker, so no boot loop."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    path = state / SQLITE_FILE
    if damage == "garbage":
        path.write_bytes(b"this is not a database" * 500)
    else:
        with sqlite3.connect(path) as db:  # a real database, then a page of it overwritten
            db.execute("CREATE TABLE t (x TEXT)")
            db.executemany("INSERT INTO t VALUES (?)", [("x" * 200,)] * 200)
        with open(path, "r+b") as f:
            f.seek(4096)
            f.write(b"\xff" * 4096)
    router = LiveRouter(tmp_path, 2, None, {"LLM_ROUTER_STATE_DIR": str(state)})
    started = time.monotonic()
    done = subprocess.run(router.command, env=router.env, capture_output=True, text=True, timeout=60)
    seconds = time.monotonic() - started
    assert done.returncode != 0
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert str(path) in lines[0] and "corrupt" in lines[0] and "move the file aside" in lines[0], lines[0]
    assert "Booting worker" not in done.stdout + done.stderr
    note(f"state file corrupted ({damage}), then start", f"{damage} state file", 1, exit_code=done.returncode,
         seconds_to_exit=round(seconds, 2), line=lines[0])
