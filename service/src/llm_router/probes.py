"""Backend health probes: a daemon thread per process asks every backend whether it is up.

Probes are separate from requests: they do not count as backend requests, do not move the
circuit breakers and do not change routing. They answer "is it up right now?" even when
no traffic goes to a model, and how long the check took (llm_router_backend_up,
llm_router_backend_probe_duration_seconds; a failure also logs backend_probe_failed).
"""

from __future__ import annotations

import logging
import random
import threading
import time

from .backends import BackendError
from .config import HealthProbesConfig
from .telemetry import logs
from .telemetry import metrics as m

# Each wait is the interval times a factor in this range, so the workers of one server,
# started together, do not probe the upstreams in lockstep.
JITTER = (0.9, 1.1)


class HealthProber:
    def __init__(self, slots: dict, config: HealthProbesConfig, metrics_on: bool) -> None:
        self.slots = slots  # model id -> BackendSlot (router.py)
        self.config = config
        self.metrics_on = metrics_on
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rng = random.Random()

    def probe(self, model_id: str) -> bool:
        """Probe one backend now; record the outcome. Never raises for a backend failure."""
        slot = self.slots[model_id]
        timeout = min(self.config.timeout_seconds, slot.model.timeout_seconds)
        started = time.perf_counter()
        error: BackendError | None = None
        try:
            slot.backend.probe(timeout)
        except BackendError as failure:
            error = failure
        except Exception as failure:  # a bug in a backend's probe must not kill the loop
            error = BackendError("bad_response", f"{model_id}: probe raised {type(failure).__name__}")
        seconds = time.perf_counter() - started
        outcome = "success" if error is None else "failure"
        if self.metrics_on:
            m.child(m.PROBE_DURATION, model_id, outcome).observe(seconds)
            m.child(m.BACKEND_UP, model_id).set(1 if error is None else 0)
        if error is not None:
            logs.event(
                "backend_probe_failed", f"health probe of {model_id} failed: {error}", logging.WARNING,
                model=model_id, error_type=error.kind, duration_ms=round(seconds * 1000, 3),
            )
        return error is None

    def probe_all(self) -> dict[str, bool]:
        return {model_id: self.probe(model_id) for model_id in self.slots}

    # --- the loop ------------------------------------------------------------------------

    def start(self) -> None:
        """Probe at once (so the metrics exist right after start), then every interval."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="backend-probes", daemon=True)
        self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the loop; waits for a probe in progress (each is capped by its timeout)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            for model_id in self.slots:
                if self._stop.is_set():
                    return
                self.probe(model_id)
            self._stop.wait(self.config.interval_seconds * self._rng.uniform(*JITTER))
