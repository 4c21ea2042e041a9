"""Injected faults: make a model fail or slow down at run time, in every worker and replica.

Faults live in the shared state store. Each process's ledger sync loop reads them twice a
second (ledger.Ledger.refresh) and hands them here, so the request path never touches the
store for them and a fault reaches every process within a second.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass

from .state import Store

ERROR_KINDS = ("server_error", "timeout", "rate_limited")


@dataclass(frozen=True)
class Fault:
    error_rate: float = 0.0
    error_kind: str = "server_error"
    latency_ms: float = 0.0


class FaultRegistry:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._faults: dict[str, tuple[Fault, float]] = {}  # model -> (fault, expires at)

    def update(self, active: dict[str, tuple[dict, float]]) -> None:
        """The store's active faults, as the sync loop read them."""
        faults = {}
        for model, (spec, expires_at) in active.items():
            try:
                faults[model] = (Fault(**spec), expires_at)
            except TypeError:
                continue  # a row written by another version: ignored, not fatal
        self._faults = faults

    def fault_for(self, model: str) -> Fault | None:
        found = self._faults.get(model)
        if found is None or found[1] <= time.time():
            return None
        return found[0]

    def inject(self, model: str, fault: Fault, duration_seconds: float) -> None:
        self.store.set_fault(model, asdict(fault), duration_seconds)
        self.update(self.store.active_faults())

    def clear(self, model: str | None = None) -> int:
        removed = self.store.clear_faults(model)
        self.update(self.store.active_faults())
        return removed

    def describe(self) -> dict[str, dict]:
        return {
            model: {**spec, "expires_at": expires} for model, (spec, expires) in sorted(self.store.active_faults().items())
        }
