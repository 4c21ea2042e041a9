"""Per-backend protection: a circuit breaker and a concurrency limit with a short queue.

Both are per worker process: each gunicorn worker protects itself. The metrics aggregate
them (circuit state: the worst across workers; queue depth: the sum).
"""

from __future__ import annotations

import threading
import time
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


class ConcurrencyLimiter:
    """At most ``limit`` calls at once; callers wait up to ``queue_timeout`` for a slot."""

    def __init__(self, limit: int, queue_timeout: float) -> None:
        self.limit = limit
        self.queue_timeout = queue_timeout
        self._slots = threading.BoundedSemaphore(limit)
        self._lock = threading.Lock()
        self.in_flight = 0
        self.waiting = 0

    def acquire(self, on_queue_change: Callable[[int], None] | None = None) -> bool:
        """Take a slot; ``on_queue_change`` hears +1 when this call starts waiting, -1 after."""
        if self._slots.acquire(blocking=False):
            self._enter()
            return True
        if self.queue_timeout <= 0:
            return False
        with self._lock:
            self.waiting += 1
        if on_queue_change:
            on_queue_change(1)
        try:
            granted = self._slots.acquire(timeout=self.queue_timeout)
        finally:
            with self._lock:
                self.waiting -= 1
            if on_queue_change:
                on_queue_change(-1)
        if granted:
            self._enter()
        return granted

    def _enter(self) -> None:
        with self._lock:
            self.in_flight += 1

    def release(self) -> None:
        with self._lock:
            self.in_flight -= 1
        self._slots.release()


def backoff_delay(attempt: int, base: float, jitter: float) -> float:
    """Exponential backoff: base, 2*base, 4*base... times a jitter factor in [0.5, 1.5)."""
    return base * (2**attempt) * (0.5 + jitter)
