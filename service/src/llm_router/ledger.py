"""The ledger: every charge reaches disk before its answer leaves, and the shared store
exactly once.

Each serving process writes its charges into a journal of its own: a file of fixed-size
slots, memory-mapped, so a write is a copy into the page cache (microseconds, like
prometheus_client's multiprocess files) and survives SIGKILL and OOM kills of the process -
the kernel owns those pages. A request takes a slot when it is admitted; a stream marks it
open with its first token and updates its token count with each one, so a stream cut short
by anything - the client, the backend, the worker stopping or dying - is charged for what it
produced. A finished request marks its slot final before its response is sent.

A sync loop per process drains final slots into the store (state.py) every DRAIN_SECONDS
in one transaction, keyed by charge id: a batch stored twice counts once. It also reads
every tenant's stored total (so budgets see the other processes' spending), the injected
faults, and sweeps the journal folder: a journal whose owner died (its flock is free) is
replayed by whichever process finds it - open slots charged for the tokens they had, and
counted in the metrics - and then removed.

If the store fails (unwritable, full, locked, PostgreSQL down), charges wait in the
journal: the loop backs off exponentially, logs one line when the store starts failing and
one when it recovers, and counts every failed operation. A journal that fills up refuses
new requests (503) rather than serve what it could not charge.

Power loss is the one case this does not cover: the journal is not fsynced per write (see
the README's "Money" section).
"""

from __future__ import annotations

import fcntl
import logging
import mmap
import os
import struct
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .state import Charge, Crossing, Store, StoreError, charge_usd, current_month, private_directory
from .telemetry import logs

_log = logging.getLogger(__name__)

MAGIC = b"LLMRJNL1"
_HEADER = struct.Struct("<8sII16s")  # magic, version, slots, journal id
HEADER_SIZE = 4096
# state, counted, code, (pad), seq, created, input tokens, output tokens, prices per 1k in
# and out, tenant, model, request id.
_SLOT = struct.Struct("<BBHIQdIIdd32s64s64s")
SLOT_SIZE = 256
FREE, OPEN, FINAL = 0, 1, 2
_STATE, _COUNTED, _OUTPUT = 0, 1, 28  # byte offsets within a slot
_U32 = struct.Struct("<I")


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\0").decode("utf-8", "replace")


@dataclass
class Entry:
    """A request's slot in its process's journal."""

    index: int
    seq: int = 0
    state: int = FREE


class JournalFull(Exception):
    """No free slot: charges are waiting for a store that does not take them."""


class Journal:
    """One process's journal file: a header and ``slots`` slots of SLOT_SIZE bytes.

    Created with O_EXCL and O_NOFOLLOW in a private directory, preallocated (a write into
    a sparse file on a full disk would kill the process), and held under an exclusive
    flock for the process's life: the lock is how others tell a live journal from the
    journal of a process that died. It is made under a name the sweep does not read
    (``.new``) and renamed once locked and stamped: a sweep never finds it unlocked.
    """

    def __init__(self, directory: Path, slots: int) -> None:
        self.directory = private_directory(directory)
        self.id = uuid.uuid4().hex
        self.path = self.directory / f"journal-{self.id}.bin"
        self.slots = slots
        size = HEADER_SIZE + slots * SLOT_SIZE
        making = self.path.with_suffix(".new")
        fd = os.open(making, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.posix_fallocate(fd, 0, size)
            self.map = mmap.mmap(fd, size)
            _HEADER.pack_into(self.map, 0, MAGIC, 1, slots, bytes.fromhex(self.id))
            os.rename(making, self.path)
        except BaseException:
            os.close(fd)
            os.unlink(making)
            raise
        self.fd = fd
        self._free = deque(range(slots))
        self._seq = 0

    def _offset(self, index: int) -> int:
        return HEADER_SIZE + index * SLOT_SIZE

    def take(self) -> int:
        if not self._free:
            raise JournalFull
        return self._free.popleft()

    def give_back(self, index: int) -> None:
        self.map[self._offset(index)] = FREE
        self._free.append(index)

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def write(self, index: int, state: int, code: int, created: float, input_tokens: int, output_tokens: int,
              price_in: float, price_out: float, tenant: str, model: str, request_id: str) -> int:
        """Fill a slot, then mark it: a slot is never seen half-written as open or final
        (the state byte, first in the slot, is written last)."""
        self._seq += 1
        offset = self._offset(index)
        self.map[offset] = FREE
        _SLOT.pack_into(self.map, offset, FREE, 0, code, 0, self._seq, created, input_tokens, output_tokens,
                        price_in, price_out, tenant.encode()[:32], model.encode()[:64], request_id.encode()[:64])
        self.map[offset] = state
        return self._seq

    def set_output(self, index: int, output_tokens: int) -> None:
        _U32.pack_into(self.map, self._offset(index) + _OUTPUT, output_tokens)  # aligned: one store

    def finish(self, index: int, code: int, created: float, input_tokens: int, output_tokens: int) -> None:
        """An open slot's final figures and time (a replay then charges the month it
        finished in, as the live drain does), then its final state."""
        offset = self._offset(index)
        struct.pack_into("<H", self.map, offset + 2, code)
        struct.pack_into("<dII", self.map, offset + 16, created, input_tokens, output_tokens)
        self.map[offset] = FINAL

    def counted(self, index: int) -> None:
        self.map[self._offset(index) + _COUNTED] = 1

    def close(self, remove: bool) -> None:
        self.map.flush()
        self.map.close()
        if remove:
            os.unlink(self.path)
        os.close(self.fd)  # releases the flock


@dataclass(frozen=True)
class Recovered:
    charge: Charge
    state: int
    counted: bool


def read_journal(data: bytes) -> tuple[str, list[Recovered]]:
    """The id and the open and final slots of a journal's bytes (a dead process's)."""
    magic, version, slots, raw_id = _HEADER.unpack_from(data, 0)
    if magic != MAGIC or version != 1:
        raise ValueError("not a router journal")
    journal_id = raw_id.hex()
    found = []
    for index in range(min(slots, (len(data) - HEADER_SIZE) // SLOT_SIZE)):
        offset = HEADER_SIZE + index * SLOT_SIZE
        if data[offset] not in (OPEN, FINAL):
            continue
        (state, counted, code, _, seq, created, input_tokens, output_tokens, price_in, price_out, tenant, model,
         request_id) = _SLOT.unpack_from(data, offset)
        cost = charge_usd(input_tokens, output_tokens, price_in, price_out)
        charge = Charge(f"{journal_id}:{seq}", _text(request_id), _text(tenant), _text(model), created,
                        input_tokens, output_tokens, cost, code if state == FINAL else 0)
        found.append(Recovered(charge, state, bool(counted)))
    return journal_id, found


class Ledger:
    """This process's side of the ledger: the journal, the view of every tenant's spend,
    and the sync loop (see the module's docstring)."""

    DRAIN_SECONDS = 0.05
    REFRESH_SECONDS = 0.5
    SWEEP_SECONDS = 5.0
    PRUNE_SECONDS = 60.0
    MAX_BACKOFF_SECONDS = 5.0

    def __init__(self, store: Store, directory: Path, *, slots: int = 32768, retention_hours: float = 72,
                 on_crossing: Callable[[Crossing], None] | None = None,
                 on_recovered: Callable[[Charge, int], None] | None = None,
                 on_faults: Callable[[dict], None] | None = None,
                 on_store_state: Callable[[bool], None] | None = None,
                 on_tick: Callable[[int, int], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.retention_seconds = retention_hours * 3600
        self.on_crossing = on_crossing or (lambda crossing: None)
        self.on_recovered = on_recovered or (lambda charge, state: None)
        self.on_faults = on_faults
        self.on_store_state = on_store_state or (lambda ok: None)
        self.on_tick = on_tick or (lambda waiting, capacity: None)
        self.clock = clock
        self.journal = Journal(Path(directory) / "journal", slots)
        self._final: dict[int, Charge] = {}  # slot -> charge, final and not stored yet
        self._pending_usd: dict[tuple[str, str], float] = {}  # (tenant, month) -> not stored yet
        self._known: dict[str, float] = {}  # this month's stored totals
        self._known_month = current_month(clock())
        self._lock = threading.Lock()
        self._drain_lock = threading.Lock()
        self._failing_since: float | None = None
        self._failures = 0
        self._next_try = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = {"refresh": float("-inf"), "sweep": float("-inf"), "prune": float("-inf")}
        self._feedback_waiters = 0

    def recover(self) -> None:
        """At start, before serving: store what processes that died left in their journals,
        and read the stored totals. A store that fails here is retried by the loop."""
        try:
            self.sweep()
            self.refresh()
            self._last["sweep"] = self._last["refresh"] = time.monotonic()
        except StoreError as error:
            self._failed(error)

    # --- the request path -----------------------------------------------------------------

    def reserve(self) -> Entry:
        """A slot for a request about to reach a backend; JournalFull when none is free."""
        with self._lock:
            return Entry(self.journal.take())

    def release(self, entry: Entry) -> None:
        """A reservation that charges nothing (a request that failed before any token)."""
        if entry.state == FREE:
            with self._lock:
                self.journal.give_back(entry.index)

    def open(self, entry: Entry, tenant: str, model: str, request_id: str, input_tokens: int, output_tokens: int,
             price_in: float, price_out: float) -> None:
        """A stream produced its first token: from now on it is charged, whatever happens."""
        opened = self.clock()
        with self._lock:  # one sequence number per charge, even with threads (gthread)
            entry.seq = self.journal.write(entry.index, OPEN, 0, opened, input_tokens, output_tokens, price_in,
                                           price_out, tenant, model, request_id)
        entry.state = OPEN

    def produced(self, entry: Entry, output_tokens: int) -> None:
        self.journal.set_output(entry.index, output_tokens)

    def finish(self, entry: Entry, tenant: str, model: str, request_id: str, code: int, input_tokens: int,
               output_tokens: int, price_in: float, price_out: float) -> None:
        """The request's final charge (cost 0 for a cache hit: an answer, so rateable)."""
        created = self.clock()  # a stream is charged in the month it finished (its slot says so too)
        cost = charge_usd(input_tokens, output_tokens, price_in, price_out)
        with self._lock:
            if entry.state == OPEN:
                self.journal.finish(entry.index, code, created, input_tokens, output_tokens)
            else:
                entry.seq = self.journal.write(entry.index, FINAL, code, created, input_tokens, output_tokens, price_in,
                                               price_out, tenant, model, request_id)
            entry.state = FINAL
            charge = Charge(f"{self.journal.id}:{entry.seq}", request_id, tenant, model, created, input_tokens,
                            output_tokens, cost, code)
            self._final[entry.index] = charge
            if cost:
                key = (tenant, charge.month)
                self._pending_usd[key] = self._pending_usd.get(key, 0.0) + cost
        self.start()

    def counted(self, entry: Entry) -> None:
        """The owner counted this charge in its metrics (a replay must not count it again)."""
        self.journal.counted(entry.index)

    def spend(self, tenant: str) -> float:
        """Month-to-date spend: the stored total as last read, plus this process's charges
        not stored yet."""
        month = current_month(self.clock())
        known = self._known.get(tenant, 0.0) if self._known_month == month else 0.0
        return known + self._pending_usd.get((tenant, month), 0.0)

    @property
    def waiting(self) -> int:
        """Final charges not stored yet."""
        return len(self._final)

    # --- the sync loop --------------------------------------------------------------------

    def start(self) -> None:
        """Start the sync loop (on first use: in the serving process, after the fork)."""
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="ledger-sync", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.DRAIN_SECONDS):
            self.tick()

    def tick(self) -> None:
        """One round of the loop: drain, then whatever else is due. Never raises."""
        now = time.monotonic()
        self.on_tick(self.waiting, self.journal.slots - self.journal.free_slots)
        if now < self._next_try:
            return
        try:
            self.drain()
            for name, period, action in (("refresh", self.REFRESH_SECONDS, self.refresh),
                                         ("sweep", self.SWEEP_SECONDS, self.sweep),
                                         ("prune", self.PRUNE_SECONDS, self._prune)):
                if now - self._last[name] >= period:
                    action()
                    self._last[name] = now
        except StoreError as error:
            self._failed(error)
        except Exception as error:  # noqa: BLE001 (a bug must not end the loop that stores money)
            _log.exception("ledger sync failed")
            self._failed(error)
        else:
            self._succeeded()

    def _failed(self, error: Exception) -> None:
        self._failures += 1
        delay = min(self.MAX_BACKOFF_SECONDS, self.DRAIN_SECONDS * 2 ** min(self._failures, 10))
        self._next_try = time.monotonic() + delay
        if self._failing_since is None:
            self._failing_since = time.monotonic()
            self.on_store_state(False)
            logs.event(
                "state_store_failing", f"the state store fails ({error}); charges wait in the journal",
                logging.ERROR, store=self.store.kind, error=str(error), waiting=self.waiting,
            )

    def _succeeded(self) -> None:
        if self._failing_since is not None:
            seconds = time.monotonic() - self._failing_since
            logs.event(
                "state_store_recovered", f"the state store works again after {seconds:.1f}s",
                store=self.store.kind, failed_attempts=self._failures, duration_s=round(seconds, 3),
            )
            self._failing_since = None
            self.on_store_state(True)
        self._failures = 0
        self._next_try = 0.0

    def drain(self) -> int:
        """Store this process's final charges now; returns how many."""
        with self._drain_lock:
            with self._lock:
                batch = dict(self._final)
            if not batch:
                return 0
            crossings, _ = self.store.apply(list(batch.values()))
            with self._lock:
                for index, charge in batch.items():
                    del self._final[index]
                    if charge.cost_usd:
                        key = (charge.tenant, charge.month)
                        left = self._pending_usd.get(key, 0.0) - charge.cost_usd
                        if left > 1e-12:
                            self._pending_usd[key] = left
                        else:
                            self._pending_usd.pop(key, None)
                    self.journal.give_back(index)
                for crossing in crossings:
                    if crossing.month == self._known_month:
                        self._known[crossing.tenant] = crossing.after
            for crossing in crossings:
                self.on_crossing(crossing)
            return len(batch)

    def refresh(self) -> None:
        """Read every tenant's stored total (and the faults)."""
        month = current_month(self.clock())
        totals = self.store.spend_totals(month)
        with self._lock:
            self._known, self._known_month = totals, month
        if self.on_faults is not None:
            self.on_faults(self.store.active_faults())

    def sweep(self) -> int:
        """Replay the journals of processes that died; returns how many charges were new."""
        recovered = 0
        for path in sorted(self.journal.directory.glob("journal-*.bin")):
            if path == self.journal.path:
                continue
            recovered += self._replay(path)
        for path in self.journal.directory.glob("journal-*.new"):
            self._discard_unborn(path)
        return recovered

    UNBORN_SECONDS = 60.0

    def _discard_unborn(self, path: Path) -> None:
        """A journal whose process died while making it (it holds no charge): removed once
        it is old and unlocked - never one being made right now."""
        try:
            if time.time() - os.stat(path, follow_symlinks=False).st_mtime < self.UNBORN_SECONDS:
                return
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.unlink(path)
        except (BlockingIOError, FileNotFoundError):
            pass
        finally:
            os.close(fd)

    def _replay(self, path: Path) -> int:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return 0  # another process replayed it meanwhile
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return 0  # its owner is alive
            if not os.path.exists(path):
                return 0  # replayed and removed while we waited for the lock
            with open(fd, "rb", closefd=False) as source:
                data = source.read()
            try:
                journal_id, entries = read_journal(data)
            except (ValueError, struct.error) as error:
                logs.event("journal_unreadable", f"journal {path.name} cannot be read ({error}); moved aside",
                           logging.ERROR, path=str(path))
                os.replace(path, path.with_suffix(".unreadable"))
                return 0
            charges = [entry.charge for entry in entries]
            inserted: set[str] = set()
            crossings: list[Crossing] = []
            if charges:
                crossings, inserted = self.store.apply(charges)
            for entry in entries:
                # Charges the dead process had not counted in its metrics are counted here,
                # once: only when this replay is what stored them.
                if entry.charge.charge_id in inserted and not entry.counted:
                    self.on_recovered(entry.charge, entry.state)
            for crossing in crossings:
                self.on_crossing(crossing)
            os.unlink(path)
            if entries:
                logs.event(
                    "journal_replayed", f"replayed {len(entries)} charge(s) of a process that stopped", logging.WARNING,
                    journal=journal_id, charges=len(entries), stored=len(inserted),
                    open_streams=sum(entry.state == OPEN for entry in entries),
                )
            return len(inserted)
        finally:
            os.close(fd)

    def _prune(self) -> int:
        return self.store.prune(self.clock() - self.retention_seconds)

    # --- feedback -----------------------------------------------------------------------

    # An answer another process served a moment ago may still be in its journal: feedback on
    # an id not found waits this long for it, once - but only while few requests wait, so
    # bogus ids cannot tie anything up (the rest get their 404 at once).
    FEEDBACK_WAIT_SECONDS = 0.15
    MAX_FEEDBACK_WAITERS = 8

    def rate(self, request_id: str, tenant: str, score: float) -> tuple[str, str | None]:
        self.drain()  # this process's own answers are found at once
        outcome = self.store.rate_response(request_id, tenant, score, self.clock() - self.retention_seconds)
        if outcome[0] != "unknown" or self._feedback_waiters >= self.MAX_FEEDBACK_WAITERS:
            return outcome
        self._feedback_waiters += 1
        try:
            time.sleep(self.FEEDBACK_WAIT_SECONDS)
        finally:
            self._feedback_waiters -= 1
        return self.store.rate_response(request_id, tenant, score, self.clock() - self.retention_seconds)

    # --- the end ------------------------------------------------------------------------

    def close(self, deadline_seconds: float = 1.5) -> bool:
        """Stop the loop and store what is left; True when everything was stored (the
        journal is then removed; otherwise it stays for the next process to replay)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(deadline_seconds)
        deadline = time.monotonic() + deadline_seconds
        stored = False
        while True:
            try:
                self.drain()
                stored = not self._final
            except Exception as error:  # noqa: BLE001
                _log.warning("storing the last charges failed: %s", error)
            if stored or time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        open_slots = self.journal.slots - self.journal.free_slots
        self.journal.close(remove=stored and open_slots == 0)
        return stored
