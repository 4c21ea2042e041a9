"""The budget ledger as a state machine (Hypothesis): processes charge, stream, drain,
refresh and sweep; the store fails and recovers; a process crashes (its Ledger abandoned
without close, its journal's lock released as the kernel would) or stops; a new process
starts and replays; the month turns. In-process and fast, on a real SQLite file.

After every step: the store is consistent (its monthly totals are the sum of its
charges), nothing is stored twice or differently from what was charged, and every charge
made is somewhere - stored, waiting in a live process, or in a journal on disk - so that
at the end, with the store working again and a process sweeping, every charge is stored
exactly once with exactly its figures.
"""

from __future__ import annotations

import calendar
import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, precondition, rule

from llm_router.ledger import HEADER_SIZE, SLOT_SIZE, JournalFull, Ledger, read_journal
from llm_router.state import SQLiteStore, StoreError, current_month

SLOTS = 6
TENANTS = ("search", "support")
PRICES = ((0.005, 0.015), (0.0004, 0.0016))
START = datetime(2025, 1, 31, 23, 0, tzinfo=timezone.utc).timestamp()


class FlakyStore(SQLiteStore):
    """The real SQLite store whose writes fail while ``failing()`` says so (reads work, as
    with a full disk or a read-only file)."""

    def __init__(self, directory: Path, failing) -> None:
        self.failing = failing
        super().__init__(directory)

    def _write(self, fn):
        if self.failing():
            raise sqlite3.OperationalError("database or disk is full")
        return super()._write(fn)


@dataclass
class Expected:
    request_id: str
    tenant: str
    input_tokens: int
    output_tokens: int
    price_in: float
    price_out: float
    created: float
    code: int  # 0 while a stream is open (what a replay stores for it)

    @property
    def cost(self) -> float:
        return self.input_tokens / 1000 * self.price_in + self.output_tokens / 1000 * self.price_out


@dataclass
class Process:
    name: str
    ledger: Ledger
    streams: dict[str, object] = field(default_factory=dict)  # request id -> entry


class LedgerMachine(RuleBasedStateMachine):
    streams = Bundle("streams")

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="ledger-machine-"))
        self.now = START
        self.failing = False
        self.live: list[Process] = []
        self.abandoned: list[Ledger] = []
        self.expected: dict[str, Expected] = {}
        self.counter = 0
        self.rated: set[str] = set()
        self.observer = SQLiteStore(self.directory)  # the test's own view of the store
        self._start()

    # --- helpers --------------------------------------------------------------------------

    def clock(self) -> float:
        return self.now

    def _start(self) -> Process:
        store = FlakyStore(self.directory, lambda: self.failing)
        ledger = Ledger(store, self.directory, slots=SLOTS, clock=self.clock)
        ledger.start = lambda: None  # the machine runs the loop's steps itself
        ledger.recover()  # replays the journals of processes that died (retried later if the store fails)
        process = Process(f"p{self.counter}", ledger)
        self.counter += 1
        self.live.append(process)
        return process

    def _request_id(self) -> str:
        self.counter += 1
        return f"r{self.counter}"

    def _process(self, index: int) -> Process:
        return self.live[index % len(self.live)]

    def _stored(self) -> dict[str, object]:
        charges = self.observer.charges()
        ids = [c.request_id for c in charges]
        assert len(ids) == len(set(ids)), "a request charged twice"
        return {c.request_id: c for c in charges}

    def _in_journals(self) -> set[str]:
        found = set()
        for path in (self.directory / "journal").glob("journal-*.bin"):
            data = path.read_bytes()
            assert len(data) == HEADER_SIZE + SLOTS * SLOT_SIZE, "a journal never grows"
            found |= {entry.charge.request_id for entry in read_journal(data)[1]}
        return found

    def _reserve(self, process: Process):
        in_use = process.ledger.journal.slots - process.ledger.journal.free_slots
        try:
            return process.ledger.reserve()
        except JournalFull:
            assert in_use == SLOTS, "refused with free slots"
            return None

    # --- rules ----------------------------------------------------------------------------

    @precondition(lambda self: len(self.live) < 3)
    @rule()
    def start_process(self) -> None:
        self._start()

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, 2), tenant=st.sampled_from(TENANTS), price=st.sampled_from(PRICES),
          input_tokens=st.integers(1, 3000), output_tokens=st.integers(0, 3000))
    def answer(self, index, tenant, price, input_tokens, output_tokens) -> None:
        process = self._process(index)
        entry = self._reserve(process)
        if entry is None:
            return
        request_id = self._request_id()
        process.ledger.finish(entry, tenant, "m", request_id, 200, input_tokens, output_tokens, *price)
        self.expected[request_id] = Expected(request_id, tenant, input_tokens, output_tokens, *price, self.now, 200)

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, 2))
    def fail_before_any_token(self, index) -> None:
        process = self._process(index)
        entry = self._reserve(process)
        if entry is not None:
            process.ledger.release(entry)

    @precondition(lambda self: self.live)
    @rule(target=streams, index=st.integers(0, 2), tenant=st.sampled_from(TENANTS), price=st.sampled_from(PRICES),
          input_tokens=st.integers(1, 3000))
    def open_stream(self, index, tenant, price, input_tokens):
        process = self._process(index)
        entry = self._reserve(process)
        if entry is None:
            return None
        request_id = self._request_id()
        process.ledger.open(entry, tenant, "m", request_id, input_tokens, 1, *price)
        process.streams[request_id] = entry
        self.expected[request_id] = Expected(request_id, tenant, input_tokens, 1, *price, self.now, 0)
        return request_id

    def _owner(self, request_id) -> Process | None:
        for process in self.live:
            if request_id in process.streams:
                return process
        return None

    @rule(request_id=streams, tokens=st.integers(1, 50))
    def produce(self, request_id, tokens) -> None:
        process = self._owner(request_id)
        if process is None:
            return  # its process crashed or stopped: the stream is over
        expected = self.expected[request_id]
        expected.output_tokens += tokens
        process.ledger.produced(process.streams[request_id], expected.output_tokens)

    @rule(request_id=consumes(streams), code=st.sampled_from((200, 499, 502, 503, 504)))
    def end_stream(self, request_id, code) -> None:
        process = self._owner(request_id)
        if process is None:
            return
        entry = process.streams.pop(request_id)
        expected = self.expected[request_id]
        process.ledger.finish(entry, expected.tenant, "m", request_id, code, expected.input_tokens,
                              expected.output_tokens, expected.price_in, expected.price_out)
        expected.code, expected.created = code, self.now

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, 2))
    def drain(self, index) -> None:
        process = self._process(index)
        waiting = process.ledger.waiting
        try:
            stored = process.ledger.drain()
        except StoreError:
            assert self.failing
            assert process.ledger.waiting == waiting, "a failed write keeps every charge waiting"
            return
        assert stored == waiting and process.ledger.waiting == 0

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, 2))
    def refresh(self, index) -> None:
        process = self._process(index)
        process.ledger.refresh()  # reads work while writes fail
        month = current_month(self.now)
        stored = self.observer.spend_totals(month)
        for tenant in TENANTS:
            pending = sum(c.cost_usd for c in process.ledger._final.values() if c.tenant == tenant
                          and c.month == month)
            assert process.ledger.spend(tenant) == pytest.approx(stored.get(tenant, 0.0) + pending, abs=1e-9)

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, 2))
    def sweep(self, index) -> None:
        try:
            self._process(index).ledger.sweep()
        except StoreError:
            assert self.failing

    @precondition(lambda self: self.live and not self.failing)
    @rule(index=st.integers(0, 2), pick=st.integers(0, 10_000), score=st.floats(0, 1))
    def rate(self, index, pick, score) -> None:
        """Feedback on a stored answer: accepted once, from its own tenant only."""
        answers = sorted(rid for rid, c in self._stored().items() if c.code == 200)
        if not answers:
            return
        request_id = answers[pick % len(answers)]
        tenant = self.expected[request_id].tenant
        other = next(t for t in TENANTS if t != tenant)
        ledger = self._process(index).ledger
        assert ledger.store.rate_response(request_id, other, score, 0)[0] == "unknown"
        outcome, _ = ledger.rate(request_id, tenant, score)
        if self.now - self._stored()[request_id].created > ledger.retention_seconds:
            assert outcome == "unknown", "older than the feedback retention"
        else:
            assert outcome == ("already_rated" if request_id in self.rated else "rated")
            self.rated.add(request_id)

    @rule()
    def store_fails(self) -> None:
        self.failing = True

    @rule()
    def store_recovers(self) -> None:
        self.failing = False

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, 2))
    def crash(self, index) -> None:
        """SIGKILL: the process stops between two instructions. Its memory is gone (the
        Ledger object is abandoned, never closed); its journal's pages stay (the kernel owns
        them) and its lock goes with its mapping and its file descriptor (the mapping holds
        the open file too: both must go, as they do when a process dies)."""
        process = self._process(index)
        self.live.remove(process)
        process.ledger.journal.map.close()
        os.close(process.ledger.journal.fd)
        process.ledger.store.close()  # its connection dies with it
        self.abandoned.append(process.ledger)

    @precondition(lambda self: self.live)
    @rule(index=st.integers(0, 2))
    def stop(self, index) -> None:
        """A graceful stop: its open streams end (503, charged for what they produced), then
        close() stores what it can; a journal it could not store stays for a replay."""
        process = self._process(index)
        for request_id in list(process.streams):
            self.end_stream(request_id, 503)
        stored = process.ledger.close(deadline_seconds=0)
        assert stored == (not self.failing or process.ledger.waiting == 0)
        process.ledger.store.close()
        self.live.remove(process)

    @rule(seconds=st.sampled_from((60.0, 3600.0, 40 * 86400.0)))
    def time_passes(self, seconds) -> None:
        """Minutes, an hour, or past the end of the month."""
        self.now += seconds

    @rule()
    def new_month(self) -> None:
        moment = datetime.fromtimestamp(self.now, timezone.utc)
        days = calendar.monthrange(moment.year, moment.month)[1]
        self.now = moment.replace(day=days, hour=23, minute=59, second=59).timestamp() + 1

    # --- invariants -----------------------------------------------------------------------

    def _check_stored(self, stored: dict) -> None:
        for request_id, charge in stored.items():
            want = self.expected[request_id]
            figures = (charge.tenant, charge.input_tokens, charge.output_tokens, charge.code)
            if charge.code == 0:  # an open stream's charge, from the journal of a process that crashed
                assert charge.tenant == want.tenant and charge.input_tokens == want.input_tokens
                assert charge.output_tokens <= want.output_tokens
            else:
                assert figures == (want.tenant, want.input_tokens, want.output_tokens, want.code), (charge, want)
                assert charge.cost_usd == want.cost
                assert charge.month == current_month(want.created), (charge, want)

    @invariant()
    def the_store_is_consistent_and_nothing_is_lost(self) -> None:
        stored = self._stored()
        self._check_stored(stored)
        months: dict[tuple[str, str], float] = {}
        for charge in stored.values():
            key = (charge.tenant, charge.month)
            months[key] = months.get(key, 0.0) + charge.cost_usd
        for (tenant, month), usd in months.items():
            assert self.observer.spend_totals(month).get(tenant, 0.0) == pytest.approx(usd, abs=1e-9)
        waiting = {c.request_id for p in self.live for c in p.ledger._final.values()}
        waiting |= {rid for p in self.live for rid in p.streams}
        missing = set(self.expected) - set(stored) - waiting - self._in_journals()
        assert not missing, f"charges lost: {sorted(missing)}"
        for process in self.live:
            assert process.ledger.waiting <= SLOTS

    def teardown(self) -> None:
        try:
            if self.expected is not None:
                # Settle: the store works, every live process stops, a new one replays the rest.
                self.failing = False
                while self.live:
                    self.stop(0)
                settler = self._start()
                settler.ledger.sweep()
                left = list((self.directory / "journal").glob("journal-*.bin"))
                assert left == [settler.ledger.journal.path], "every dead journal replayed"
                stored = self._stored()
                assert set(stored) == set(self.expected), "every charge stored, once"
                for request_id, charge in stored.items():
                    want = self.expected[request_id]
                    assert charge.code != 0 or charge.output_tokens == want.output_tokens, (charge, want)
                self._check_stored(stored)
                settler.ledger.close(deadline_seconds=0)
                settler.ledger.store.close()
        finally:
            self.observer.close()
            shutil.rmtree(self.directory, ignore_errors=True)


LedgerMachine.TestCase.settings = settings(
    max_examples=int(os.environ.get("LEDGER_MACHINE_EXAMPLES", "80")), stateful_step_count=30, deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestLedgerMachine = LedgerMachine.TestCase
