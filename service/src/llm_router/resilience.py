"""Per-backend protection: a circuit breaker and a concurrency limit with a short queue.

The circuit breaker is per worker process: each gunicorn worker protects itself, and the
metrics aggregate them (circuit state: the worst across workers). The concurrency limit
is the container's: a model's ``max_concurrency`` counts the calls of every worker of one
gunicorn master together (SharedSlots); queue depth is summed over workers.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable

CLOSED, HALF_OPEN, OPEN = "closed", "half_open", "open"
# The gauge's encoding: higher is worse, so the max across workers is the worst state.
STATE_VALUES = {CLOSED: 0, HALF_OPEN: 1, OPEN: 2}


class CircuitBreaker:
    """Opens after ``failure_threshold`` consecutive failures; after ``reset_timeout``
    lets one probe through (half-open); the probe's outcome closes or re-opens it."""

    def __init__(
        self,
        name: str,
        failure_threshold: int,
        reset_timeout: float,
        on_change: Callable[[str, str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self.on_change = on_change
        self.clock = clock
        self._lock = threading.Lock()
        self._state = CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> str:
        with self._lock:
            if self._state == OPEN and self.clock() - self._opened_at >= self.reset_timeout:
                return HALF_OPEN
            return self._state

    def _set(self, state: str) -> None:
        old, self._state = self._state, state
        if old != state and self.on_change:
            self.on_change(self.name, old, state)

    def allow(self) -> bool:
        """May a call go through now? In half-open state only one probe at a time."""
        with self._lock:
            if self._state == OPEN:
                if self.clock() - self._opened_at < self.reset_timeout:
                    return False
                self._set(HALF_OPEN)
            if self._state == HALF_OPEN:
                if self._probe_in_flight:
                    return False
                self._probe_in_flight = True
            return True

    def release(self) -> None:
        """Give back a granted call that never reached the backend (e.g. no free slot)."""
        with self._lock:
            self._probe_in_flight = False

    def record_success(self) -> None:
        with self._lock:
            self._failures = 0
            self._probe_in_flight = False
            self._set(CLOSED)

    def record_failure(self) -> None:
        with self._lock:
            self._probe_in_flight = False
            self._failures += 1
            if self._state == HALF_OPEN or self._failures >= self.failure_threshold:
                self._opened_at = self.clock()
                self._set(OPEN)


class _LocalSlots:
    """``limit`` slots of this process alone (the SharedSlots interface, for a router that
    serves in one process)."""

    def __init__(self, limit: int) -> None:
        self._free = limit
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        with self._lock:
            if self._free > 0:
                self._free -= 1
                return True
            return False

    def release(self) -> None:
        with self._lock:
            self._free += 1


class ConcurrencyLimiter:
    """At most ``limit`` calls at once; callers wait up to ``queue_timeout`` for a slot, in
    arrival order within this process.

    The slots are the container's (``slots``: a SharedSlots semaphore shared by every worker
    of one gunicorn master), or this process's own when it serves alone. Only the head of
    the queue polls the shared semaphore (every POLL_SECONDS, since a slot freed by another
    worker sends no wake-up here); a slot freed in this process wakes it at once.
    """

    POLL_SECONDS = 0.005

    def __init__(self, limit: int, queue_timeout: float, slots: "SharedSlots | None" = None) -> None:
        self.limit = limit
        self.queue_timeout = queue_timeout
        self.slots = slots if slots is not None else _LocalSlots(limit)
        self._lock = threading.Lock()
        self._waiters: deque[threading.Event] = deque()
        self.in_flight = 0  # this process's calls

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    def _take(self) -> bool:
        if not self.slots.try_acquire():
            return False
        with self._lock:
            self.in_flight += 1
        return True

    def acquire(self, on_queue_change: Callable[[int], None] | None = None) -> bool:
        """Take a slot; ``on_queue_change`` hears +1 when this call starts waiting, -1 after."""
        if not self._waiters and self._take():
            return True  # no queue, or it would be jumped
        if self.queue_timeout <= 0:
            return False
        deadline = time.monotonic() + self.queue_timeout
        me = threading.Event()
        with self._lock:
            self._waiters.append(me)
        if on_queue_change:
            on_queue_change(1)
        try:
            while True:
                head = self._waiters[0] is me
                if head and self._take():
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                me.wait(min(remaining, self.POLL_SECONDS) if head else remaining)
                me.clear()
        finally:
            with self._lock:
                self._waiters.remove(me)
                following = self._waiters[0] if self._waiters else None
            if following is not None:
                following.set()  # the next in line checks at once
            if on_queue_change:
                on_queue_change(-1)

    def release(self) -> None:
        with self._lock:
            self.in_flight -= 1
            head = self._waiters[0] if self._waiters else None
        self.slots.release()
        if head is not None:
            head.set()


# --- slots shared by the workers of one container --------------------------------------------

# Linux values (sys/ipc.h, sys/sem.h).
_IPC_PRIVATE, _IPC_CREAT, _IPC_NOWAIT, _IPC_RMID = 0, 0o1000, 0o4000, 0
_SEM_UNDO, _SETVAL = 0x1000, 16
# The largest value a System V semaphore holds (SEMVMX).
MAX_SHARED_LIMIT = 32767
SHARED_LIMITS_ENV = "LLM_ROUTER_SHARED_LIMITS"


class _SemBuf(ctypes.Structure):
    _fields_ = [("sem_num", ctypes.c_ushort), ("sem_op", ctypes.c_short), ("sem_flg", ctypes.c_short)]


@functools.cache
def _libc():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.semget.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    libc.semop.argtypes = [ctypes.c_int, ctypes.POINTER(_SemBuf), ctypes.c_size_t]
    return libc


def _check(result: int) -> int:
    if result == -1:
        number = ctypes.get_errno()
        raise OSError(number, os.strerror(number))
    return result


class SharedSlots:
    """One backend's slots for the whole container: a System V semaphore created by the
    gunicorn master (create_set) and used by every worker.

    System V semaphores, reached through ctypes (no maintained Python package wraps them),
    because of SEM_UNDO: the kernel gives back the slots of a worker that dies, SIGKILL
    and OOM kill included, so a crash never shrinks a backend's limit. Taking a slot never
    blocks (IPC_NOWAIT), so a gevent worker's loop never stalls on it.
    """

    def __init__(self, semid: int, index: int) -> None:
        self.semid, self.index = semid, index
        # The two operations, built once (they run twice per backend call).
        self._take = ctypes.byref(_SemBuf(index, -1, _SEM_UNDO | _IPC_NOWAIT))
        self._give = ctypes.byref(_SemBuf(index, 1, _SEM_UNDO))

    def _op(self, delta: int, nowait: bool) -> bool:
        op = self._take if delta < 0 else self._give
        if _libc().semop(self.semid, op, 1) == 0:
            return True
        number = ctypes.get_errno()
        if number == errno.EAGAIN:
            return False
        if number == errno.EINTR:
            return self._op(delta, nowait)
        raise OSError(number, os.strerror(number))

    def try_acquire(self) -> bool:
        return self._op(-1, nowait=True)

    def release(self) -> None:
        self._op(1, nowait=False)


def create_set(limits: dict[str, int]) -> str:
    """Create the container's semaphores (in the master, before the workers fork), one per
    model with its limit; returns the description workers find in SHARED_LIMITS_ENV."""
    names = sorted(limits)
    semid = _check(_libc().semget(_IPC_PRIVATE, len(names), _IPC_CREAT | 0o600))
    for index, name in enumerate(names):
        value = min(limits[name], MAX_SHARED_LIMIT)
        _check(_libc().semctl(semid, index, _SETVAL, ctypes.c_int(value)))
    return json.dumps({"semid": semid, "limits": {name: [i, limits[name]] for i, name in enumerate(names)}})


def remove_set(description: str) -> None:
    """Remove the semaphores (the master's exit)."""
    try:
        _libc().semctl(json.loads(description)["semid"], 0, _IPC_RMID)
    except (ValueError, KeyError, TypeError):
        pass


def shared_slots(description: str | None, model: str, limit: int) -> SharedSlots | None:
    """This model's shared slots, if the master made them for this model with this limit
    (a configuration changed since, by a SIGHUP reload, falls back to per-process limits
    until the next restart)."""
    if not description:
        return None
    try:
        found = json.loads(description)
        index, configured = found["limits"][model]
        semid = int(found["semid"])
    except (ValueError, KeyError, TypeError):
        return None
    if configured != limit:
        return None
    return SharedSlots(semid, int(index))


def backoff_delay(attempt: int, base: float, jitter: float) -> float:
    """Exponential backoff: base, 2*base, 4*base... times a jitter factor in [0.5, 1.5)."""
    return base * (2**attempt) * (0.5 + jitter)
