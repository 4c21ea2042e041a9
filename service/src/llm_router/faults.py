"""Injected faults: make a model fail or slow down at run time, in every worker.

Faults live in the shared state store; each worker re-reads them at most once per
``refresh_seconds`` so the request path does not touch SQLite on every call.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass

from .state import StateStore

ERROR_KINDS = ("server_error", "timeout", "rate_limited")


@dataclass(frozen=True)
class Fault:
    error_rate: float = 0.0
    error_kind: str = "server_error"
    latency_ms: float = 0.0


class FaultRegistry:
    def __init__(self, store: StateStore, refresh_seconds: float = 1.0) -> None:
        self.store = store
        self.refresh_seconds = refresh_seconds
        self._lock = threading.Lock()
        self._faults: dict[str, Fault] = {}
        self._expires: dict[str, float] = {}
        self._loaded_at = float("-inf")

    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._loaded_at < self.refresh_seconds:
            return
        with self._lock:
            if now - self._loaded_at < self.refresh_seconds:
                return
            active = self.store.active_faults()
            self._faults = {model: Fault(**spec) for model, (spec, _) in active.items()}
            self._expires = {model: expires for model, (_, expires) in active.items()}
            self._loaded_at = now

    def fault_for(self, model: str) -> Fault | None:
        self._refresh()
        fault = self._faults.get(model)
        if fault is not None and self._expires.get(model, 0) <= time.time():
            return None
        return fault

    def inject(self, model: str, fault: Fault, duration_seconds: float) -> None:
        self.store.set_fault(model, asdict(fault), duration_seconds)
        self._loaded_at = float("-inf")

    def clear(self, model: str | None = None) -> int:
        removed = self.store.clear_faults(model)
        self._loaded_at = float("-inf")
        return removed

    def describe(self) -> dict[str, dict]:
        return {
            model: {**spec, "expires_at": expires} for model, (spec, expires) in sorted(self.store.active_faults().items())
        }
