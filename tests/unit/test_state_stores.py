"""The state-store contract (state.Store), run against both stores: SQLite (a file in a
temporary folder) and PostgreSQL (a throw-away cluster of Debian's server, tests/pg.py; the
tests skip without the binaries, and fail where .ci/run says they must run). No mock of
either database.

- the same charges give the same totals in both stores, to the bit (so to the cent);
- three real processes storing the same charges at once store each one once, and their
  before/after totals tile the line: every budget threshold is crossed exactly once;
- re-applying a batch stores nothing twice; feedback is rated once (also when processes
  race), only for an answer of the same tenant within retention, the earliest one of a
  reused request id; faults; prune keeps the totals;
- the schema is created on an empty database and migrated from an older version, once
  when replicas start together (PostgreSQL: schema_migrations under an advisory lock);
- a PostgreSQL that goes away is a StoreError (never psycopg's), the next call after it
  returns reconnects, and the ledger keeps every charge meanwhile and logs the outage once.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import sqlite3
import time
from pathlib import Path

import pytest

from pg import own_postgres, postgres  # noqa: F401 (fixtures)

from llm_router import state_pg
from llm_router.ledger import Ledger
from llm_router.state import (SQLITE_FILE, SQLITE_SCHEMA_VERSION, Charge, SQLiteStore, Store, StoreError,
                              _SQLITE_MIGRATIONS, current_month, open_store)

# Prices per 1k tokens of the shipped models' range: costs are what the router computes.
PRICES = [(0.00015, 0.0006), (0.0005, 0.0015), (0.003, 0.015), (0.01, 0.03)]
TENANTS = ["search", "support", "research"]


class Backend:
    """Where one test's store lives; open() gives a new store on it (another process or
    replica would open its own the same way)."""

    def __init__(self, kind: str, directory: Path, url: str) -> None:
        self.kind, self.directory, self.url = kind, directory, url
        self.opened: list[Store] = []

    def open(self, observe=None) -> Store:
        store = open_store(self.directory, self.url, observe)
        self.opened.append(store)
        return store

    def close(self) -> None:
        for store in self.opened:
            store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path, monkeypatch):
    if request.param == "sqlite":
        backend = Backend("sqlite", tmp_path / "state", "")
    else:
        cluster = request.getfixturevalue("postgres")
        monkeypatch.setenv("PGPASSWORD", cluster.password)
        backend = Backend("postgresql", tmp_path / "state", cluster.new_database())
    yield backend
    backend.close()


def make_charges(count: int, seed: int, now: float | None = None, months: int = 1) -> list[Charge]:
    rng = random.Random(seed)
    now = now or time.time()
    charges = []
    for i in range(count):
        price_in, price_out = rng.choice(PRICES)
        input_tokens, output_tokens = rng.randint(5, 3000), rng.randint(0, 1500)
        created = now - rng.randrange(months) * 32 * 86400 - rng.random()
        cost = input_tokens / 1000 * price_in + output_tokens / 1000 * price_out
        charges.append(Charge(f"{seed:04x}{rng.getrandbits(64):016x}:{i}", f"req-{seed}-{i}", rng.choice(TENANTS),
                              "sim-fast", created, input_tokens, output_tokens, cost, rng.choice([200, 200, 200, 502])))
    return charges


def batches(charges: list[Charge], seed: int) -> list[list[Charge]]:
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(charges):
        size = rng.randint(1, 40)
        out.append(charges[i:i + size])
        i += size
    return out


def expected_totals(charges: list[Charge]) -> dict[tuple[str, str], float]:
    totals: dict[tuple[str, str], float] = {}
    for c in charges:
        totals[(c.tenant, c.month)] = totals.get((c.tenant, c.month), 0.0) + c.cost_usd
    return totals


# --- both stores, side by side -----------------------------------------------------------------

def test_the_url_selects_the_store(backend):
    assert backend.open().kind == backend.kind


def test_same_charges_give_the_same_totals_in_both_stores(tmp_path, postgres, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    sqlite, pg = SQLiteStore(tmp_path / "state"), open_store(None, postgres.new_database())
    try:
        charges = make_charges(600, seed=1, months=2)
        months = sorted({c.month for c in charges})
        assert len(months) == 2
        for batch in batches(charges, seed=2):
            assert sqlite.apply(batch) == pg.apply(batch), "crossings and stored ids, to the bit"
        for month in months:
            in_sqlite, in_pg = sqlite.spend_totals(month), pg.spend_totals(month)
            assert in_sqlite == in_pg
            for tenant, usd in in_pg.items():
                assert round(usd, 2) == round(expected_totals(charges)[(tenant, month)], 2)
                assert usd == pytest.approx(expected_totals(charges)[(tenant, month)], rel=1e-12)
        assert sqlite.charges() == pg.charges() == sorted(charges, key=lambda c: (c.created, c.charge_id))
    finally:
        sqlite.close()
        pg.close()


# --- the contract, per store ---------------------------------------------------------------

def _apply_all(barrier, kind: str, directory: str, url: str, seed: int, results) -> None:
    """One process: the shared charges in its own order and batches, at the same moment as
    the others."""
    try:
        store = open_store(Path(directory), url)
        charges = make_charges(300, seed=7)
        random.Random(seed).shuffle(charges)
        crossings, inserted = [], set()
        barrier.wait(60)
        for batch in batches(charges, seed=seed):
            batch_crossings, batch_inserted = store.apply(batch)
            crossings += [(c.tenant, c.month, c.before, c.after) for c in batch_crossings]
            inserted |= batch_inserted
        store.close()
        results.put((crossings, inserted))
    except BaseException as error:  # noqa: BLE001 (reported to the test)
        results.put(repr(error))


def test_concurrent_processes_store_each_charge_once_and_cross_each_threshold_once(backend):
    backend.open().spend_totals()  # schema created before the race (the migration race is its own test)
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(3), context.Queue()
    processes = [context.Process(target=_apply_all, args=(barrier, backend.kind, str(backend.directory), backend.url,
                                                          100 + i, results)) for i in range(3)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(30)
    assert all(isinstance(outcome, tuple) for outcome in outcomes), outcomes
    charges = make_charges(300, seed=7)
    stored = [inserted for _, inserted in outcomes]
    assert set().union(*stored) == {c.charge_id for c in charges}
    assert sum(len(s) for s in stored) == len(charges), "each charge stored by exactly one process"
    store = backend.open()
    month = current_month()
    totals = store.spend_totals(month)
    for tenant in TENANTS:
        want = expected_totals(charges)[(tenant, month)]
        assert round(totals[tenant], 2) == round(want, 2) and totals[tenant] == pytest.approx(want, rel=1e-12)
        intervals = sorted((before, after) for crossings, _ in outcomes for t, m, before, after in crossings
                           if t == tenant)
        # Every process's view of the total is a step of one line from 0 to the total:
        # no two steps overlap, none is missing.
        assert intervals[0][0] == pytest.approx(0, abs=1e-12)
        for (_, previous_after), (before, _) in zip(intervals, intervals[1:]):
            assert before == pytest.approx(previous_after, abs=1e-9)
        assert intervals[-1][1] == totals[tenant]
        for share in (0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
            threshold = share * totals[tenant] - 1e-7
            assert sum(before < threshold <= after for before, after in intervals) == 1, (tenant, share)


def test_reapplying_stores_nothing_twice(backend):
    store = backend.open()
    charges = make_charges(30, seed=3)
    first, second = charges[:20], charges[20:]
    crossings, inserted = store.apply(first)
    assert inserted == {c.charge_id for c in first}
    totals = store.spend_totals()
    assert store.apply(first) == ([], set()), "a batch stored twice (a replay, a retried commit) counts once"
    assert store.spend_totals() == totals
    assert backend.open().apply(first + second)[1] == {c.charge_id for c in second}, "another process, same ids"
    assert store.spend_totals() == pytest.approx({t: sum(c.cost_usd for c in charges if c.tenant == t)
                                                  for t in {c.tenant for c in charges}}, rel=1e-12)
    twice = make_charges(1, seed=4)
    assert store.apply(twice + twice)[1] == {twice[0].charge_id}, "a duplicate in one batch is stored once"
    assert len(store.charges()) == 31
    assert store.apply([]) == ([], set())


def test_feedback_rates_an_answer_once(backend):
    store = backend.open()
    now = time.time()
    old = now - 1000

    def answer(charge_id, request_id, tenant, created, code=200, model="sim-fast"):
        return Charge(charge_id, request_id, tenant, model, created, 10, 10, 0.001, code)

    store.apply([answer("a:1", "r1", "search", now), answer("a:2", "r2", "search", now, code=502),
                 answer("a:3", "r3", "search", old), answer("a:4", "reused", "search", now - 5, model="first"),
                 answer("b:1", "reused", "search", now, model="second")])
    not_before = now - 100
    assert store.rate_response("r1", "search", 1.0, not_before) == ("rated", "sim-fast")
    assert store.rate_response("r1", "search", 0.0, not_before) == ("already_rated", "sim-fast")
    assert backend.open().rate_response("r1", "search", 0.0, not_before) == ("already_rated", "sim-fast"), \
        "another process or replica sees the rating"
    assert store.rate_response("r1", "support", 1.0, not_before) == ("unknown", None), "another tenant's answer"
    assert store.rate_response("nobody", "search", 1.0, not_before) == ("unknown", None)
    assert store.rate_response("r2", "search", 1.0, not_before) == ("unknown", None), "a failed request is no answer"
    assert store.rate_response("r3", "search", 1.0, not_before) == ("unknown", None), "older than the retention"
    assert store.rate_response("reused", "search", 0.5, not_before) == ("rated", "first"), "the earliest answer"
    assert store.rate_response("reused", "search", 0.5, not_before) == ("already_rated", "first")
    assert store.prune(now + 1) == 5
    assert store.rate_response("r1", "search", 1.0, not_before) == ("unknown", None), "pruned"


def _rate(barrier, directory: str, url: str, results) -> None:
    try:
        store = open_store(Path(directory), url)
        store.spend_totals()  # connected before the race
        barrier.wait(60)
        results.put(store.rate_response("race", "search", 1.0, 0)[0])
        store.close()
    except BaseException as error:  # noqa: BLE001
        results.put(repr(error))


def test_processes_rating_one_answer_at_once_rate_it_once(backend):
    backend.open().apply([Charge("r:1", "race", "search", "sim-fast", time.time(), 1, 1, 0.0, 200)])
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(4), context.Queue()
    processes = [context.Process(target=_rate, args=(barrier, str(backend.directory), backend.url, results))
                 for _ in range(4)]
    for process in processes:
        process.start()
    outcomes = sorted(results.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(30)
    assert outcomes == ["already_rated"] * 3 + ["rated"]


def test_faults_reach_every_process_and_expire(backend):
    store, other = backend.open(), backend.open()
    store.set_fault("sim-fast", {"error_rate": 1.0, "error_kind": "timeout"}, 60)
    store.set_fault("sim-smart", {"latency_ms": 200}, 60)
    store.set_fault("sim-gone", {"error_rate": 0.5}, -1)  # expired at once
    faults = other.active_faults()
    assert set(faults) == {"sim-fast", "sim-smart"}
    assert faults["sim-fast"][0] == {"error_kind": "timeout", "error_rate": 1.0}
    assert faults["sim-fast"][1] == pytest.approx(time.time() + 60, abs=5)
    store.set_fault("sim-fast", {"error_rate": 0.25}, 30)  # replaces
    assert other.active_faults()["sim-fast"][0] == {"error_rate": 0.25}
    assert other.clear_faults("sim-smart") == 1
    assert set(store.active_faults()) == {"sim-fast"}
    assert store.clear_faults() == 2  # sim-fast and the expired row
    assert other.active_faults() == {}


def test_prune_forgets_old_rows_and_keeps_the_totals(backend):
    store = backend.open()
    now = time.time()
    charges = [Charge(f"p:{i}", f"r{i}", "search", "sim-fast", now - age, 100, 100, 0.25, 200)
               for i, age in enumerate((300, 200, 100, 0))]
    store.apply(charges)
    assert store.prune(now - 150) == 2
    assert [c.charge_id for c in store.charges()] == ["p:2", "p:3"]
    assert store.spend("search") == 1.0
    assert store.prune(now - 150) == 0


def test_every_operation_is_observed(backend):
    seen = []
    store = backend.open(lambda operation, seconds, ok: seen.append((operation, ok)))
    store.apply(make_charges(3, seed=5))
    store.spend_totals()
    store.set_fault("sim-fast", {"error_rate": 1.0}, 10)
    store.active_faults()
    store.clear_faults()
    store.rate_response("x", "search", 1.0, 0)
    store.prune(0)
    store.charges()
    assert seen == [("apply", True), ("read_spend", True), ("write_faults", True), ("read_faults", True),
                    ("write_faults", True), ("feedback", True), ("prune", True), ("read_charges", True)]


# --- schema --------------------------------------------------------------------------------

def test_schema_is_created_on_an_empty_database(backend, caplog):
    caplog.set_level("INFO")
    store = backend.open()
    assert store.spend_totals() == {}
    if backend.kind == "sqlite":
        version = sqlite3.connect(backend.directory / SQLITE_FILE).execute("PRAGMA user_version").fetchone()[0]
        assert version == SQLITE_SCHEMA_VERSION
    else:
        version = store.schema_version()
        assert version == state_pg.SCHEMA_VERSION
    backend.open().spend_totals()  # another process finds it done
    migrated = [(r.store, r.from_version, r.to_version) for r in caplog.records
                if getattr(r, "event", "") == "state_schema_migrated"]
    assert migrated == [(backend.kind, 0, version)]


def test_sqlite_migrates_an_older_file(tmp_path):
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    db = sqlite3.connect(directory / SQLITE_FILE)
    db.executescript(_SQLITE_MIGRATIONS[1] + "PRAGMA user_version = 1;")
    db.execute("INSERT INTO spend VALUES ('search', ?, 12.5)", (current_month(),))
    db.commit()
    db.close()
    store = SQLiteStore(directory)
    try:
        assert store.spend("search") == 12.5
        assert store.apply(make_charges(2, seed=6))[1]
    finally:
        store.close()


NEXT = {**state_pg.MIGRATIONS, state_pg.SCHEMA_VERSION + 1: "ALTER TABLE charges ADD COLUMN note text"}


def test_postgres_migrates_an_older_schema(postgres, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    url = postgres.new_database()
    older = state_pg.PostgresStore(url)
    charges = make_charges(20, seed=8)
    older.apply(charges)
    totals = older.spend_totals()
    older.close()
    newer = state_pg.PostgresStore(url, migrations=NEXT)
    try:
        assert newer.schema_version() == state_pg.SCHEMA_VERSION + 1
        assert newer.spend_totals() == totals and newer.charges() == sorted(charges, key=lambda c: (c.created,
                                                                                                   c.charge_id))
        columns = postgres.admin("SELECT column_name FROM information_schema.columns WHERE table_name = 'charges'",
                                 url.rsplit("/", 1)[1])
        assert "note" in columns.split()
        # A replica still on the older version keeps working on the newer schema.
        still_older = state_pg.PostgresStore(url)
        assert still_older.apply(make_charges(2, seed=9))[1]
        still_older.close()
    finally:
        newer.close()


def _open_with_next(barrier, url: str, results) -> None:
    try:
        barrier.wait(60)
        store = state_pg.PostgresStore(url, migrations=NEXT)
        results.put(store.schema_version())
        store.close()
    except BaseException as error:  # noqa: BLE001
        results.put(repr(error))


def test_postgres_replicas_starting_together_migrate_once(postgres, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", postgres.password)
    url = postgres.new_database()
    context = multiprocessing.get_context("fork")
    barrier, results = context.Barrier(4), context.Queue()
    processes = [context.Process(target=_open_with_next, args=(barrier, url, results)) for _ in range(4)]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(30)
    assert outcomes == [state_pg.SCHEMA_VERSION + 1] * 4
    rows = postgres.admin("SELECT version FROM schema_migrations ORDER BY version", url.rsplit("/", 1)[1])
    assert rows.split() == [str(v) for v in range(1, state_pg.SCHEMA_VERSION + 2)], "each migration ran once"


# --- PostgreSQL going away -----------------------------------------------------------------

def test_a_password_in_the_url_is_refused(postgres):
    with pytest.raises(StoreError, match="PGPASSWORD"):
        state_pg.PostgresStore(f"postgresql://llm_router:secret@127.0.0.1:{postgres.port}/x")


def test_a_wrong_password_is_a_store_error_not_a_crash(postgres, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "wrong")
    store = state_pg.PostgresStore(postgres.new_database())  # connects on first use: a router still starts
    try:
        with pytest.raises(StoreError, match="password authentication failed"):
            store.spend_totals()
        monkeypatch.setenv("PGPASSWORD", postgres.password)
        assert store.spend_totals() == {}
    finally:
        store.close()


def test_a_database_that_goes_away_is_a_store_error_until_it_returns(own_postgres, monkeypatch):
    monkeypatch.setenv("PGPASSWORD", own_postgres.password)
    seen = []
    store = state_pg.PostgresStore(own_postgres.new_database(), lambda op, seconds, ok: seen.append((op, ok)))
    try:
        charges = make_charges(40, seed=10)
        store.apply(charges[:20])
        for mode in ("fast", "immediate"):
            own_postgres.stop(mode)
            for call in (lambda: store.apply(charges[20:]), store.spend_totals, store.active_faults,
                         lambda: store.rate_response("r", "search", 1.0, 0), lambda: store.prune(0)):
                with pytest.raises(StoreError, match="PostgreSQL 127.0.0.1"):
                    call()
            own_postgres.start()
        # The next call after it returns reconnects (the stale connection is replaced).
        assert store.apply(charges[20:])[1] == {c.charge_id for c in charges[20:]}
        assert sum(store.spend_totals().values()) == pytest.approx(sum(c.cost_usd for c in charges), rel=1e-12)
        assert ("apply", False) in seen and ("read_spend", False) in seen
    finally:
        store.close()


def test_the_ledger_keeps_charges_while_postgres_is_down(own_postgres, monkeypatch, tmp_path, caplog):
    """A stopped PostgreSQL is a fault like an unwritable SQLite file: the sync loop backs
    off, logs one line when the store starts failing and one when it recovers, and every
    charge waits in the journal until it is stored."""
    monkeypatch.setenv("PGPASSWORD", own_postgres.password)
    store = state_pg.PostgresStore(own_postgres.new_database())
    ledger = Ledger(store, tmp_path / "state")
    ledger.start = lambda: None  # the test runs the loop's rounds itself
    caplog.set_level("INFO")
    try:
        def serve(count: int, offset: int) -> float:
            total = 0.0
            for i in range(count):
                entry = ledger.reserve()
                ledger.finish(entry, TENANTS[i % 3], "sim-fast", f"r{offset + i}", 200, 1000 + i, 10, 0.0005, 0.0015)
                total += (1000 + i) / 1000 * 0.0005 + 10 / 1000 * 0.0015
            return total

        served = serve(30, 0)
        ledger.tick()
        assert ledger.waiting == 0
        own_postgres.stop("fast")
        served += serve(30, 30)
        for _ in range(5):
            ledger._next_try = 0.0  # every round tries (the back-off is the loop's timing, not this test's)
            ledger.tick()
            served += serve(2, 100 + _ * 2)
        assert ledger.waiting == 40, "the charges wait in the journal"
        own_postgres.start()
        ledger._next_try = 0.0
        ledger.tick()
        assert ledger.waiting == 0
        assert sum(store.spend_totals().values()) == pytest.approx(served, rel=1e-12)
        events = [r.event for r in caplog.records if getattr(r, "event", "").startswith("state_store_")]
        assert events == ["state_store_failing", "state_store_recovered"]
    finally:
        ledger.close()
        store.close()


def test_the_state_url_names_the_file_that_serve_checks_and_the_workers_open(tmp_path, monkeypatch):
    """Found in review: `serve` worked the URL out on its own and checked `sqlite:///dir/x.db`
    itself, while the store opened dir/router-state.sqlite3, so a corrupt file there passed
    the check. Both now ask state.sqlite_path."""
    from llm_router import cli
    from llm_router.config import parse_config
    from llm_router.state import StateCorrupt, open_store, sqlite_path, state_url

    from conftest import config_dict

    config = parse_config(config_dict())
    (tmp_path / SQLITE_FILE).write_bytes(b"this is not a database" * 100)
    url = f"sqlite:///{tmp_path}/other-name.db"
    monkeypatch.setenv("LLM_ROUTER_STATE_URL", f"  {url} ")
    assert state_url(config.state.url) == url
    assert sqlite_path(url) == tmp_path / SQLITE_FILE
    with pytest.raises(StateCorrupt, match="is corrupt"):
        cli._check_state_file(config)
    with pytest.raises(StateCorrupt):
        open_store(url=url)
    assert sqlite_path("postgresql://db/x") is None
    assert sqlite_path("", tmp_path / "d") == tmp_path / "d" / SQLITE_FILE
    monkeypatch.setenv("LLM_ROUTER_STATE_URL", "mysql://x")
    with pytest.raises(StoreError, match="use postgresql"):
        cli._check_state_file(config)
