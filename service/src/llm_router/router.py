"""The routing engine: try candidates in order, with retries, fallbacks, circuit breakers
and concurrency limits. What each step means for metrics, logs and spans is the telemetry
seam's business (telemetry/signals.py): this module only routes."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass

from .backends import Backend, BackendError, ChatRequest, Chunk, build_backend
from .cache import ResponseCache
from .config import ModelConfig, RouterConfig
from .errors import APIError
from .faults import FaultRegistry
from .resilience import SHARED_LIMITS_ENV, STATE_VALUES, CircuitBreaker, ConcurrencyLimiter, backoff_delay, shared_slots
from .routing import Candidate, LatencyTracker, candidates
from .state import Store
from .telemetry.signals import RequestRecord, Signals

__all__ = ["BackendSlot", "RequestRecord", "Router"]


@dataclass
class BackendSlot:
    model: ModelConfig
    backend: Backend
    breaker: CircuitBreaker
    limiter: ConcurrencyLimiter


class Router:
    def __init__(self, config: RouterConfig, store: Store, signals: Signals) -> None:
        self.config = config
        self.signals = signals
        self.faults = FaultRegistry(store)
        self.latency = LatencyTracker(config.models, config.routing.latency_ewma_alpha)
        self.cache = ResponseCache(config.cache.max_entries, config.cache.ttl_seconds) if config.cache.enabled else None
        self.rng = random.Random()
        breaker = config.routing.circuit_breaker
        # The container's slots, when a gunicorn master made them (resilience.SharedSlots).
        shared = os.environ.get(SHARED_LIMITS_ENV)
        self.slots = {
            model.id: BackendSlot(
                model,
                self._load(model),
                CircuitBreaker(model.id, breaker.failure_threshold, breaker.reset_timeout_seconds, self._breaker_changed),
                ConcurrencyLimiter(model.max_concurrency, config.routing.queue_timeout_seconds,
                                   shared_slots(shared, model.id, model.max_concurrency)),
            )
            for model in config.models
        }

    def _load(self, model: ModelConfig) -> Backend:
        """Build one model's backend, timed (llm_router_model_load_duration_seconds)."""
        started = time.perf_counter()
        backend = build_backend(model, self.config, self.faults.fault_for)
        self.signals.model_loaded(model.id, time.perf_counter() - started)
        return backend

    # --- state ---------------------------------------------------------------------------

    def _breaker_changed(self, model: str, old: str, new: str) -> None:
        self.signals.breaker_changed(model, old, new, STATE_VALUES[new])

    def readiness(self) -> list[str]:
        """Reasons the router is not ready; empty when at least one backend can be used."""
        problems = []
        for slot in self.slots.values():
            available = getattr(slot.backend, "available", (True, None))
            if not available[0]:
                problems.append(available[1])
            elif slot.breaker.state == "open":
                problems.append(f"{slot.model.id}: circuit open")
            else:
                return []
        return problems or ["no backend configured"]

    def plan(self, requested: str, strategy: str) -> list[Candidate]:
        ordered = candidates(requested, strategy, self.config.models, self.latency)
        self.signals.planned(strategy, requested, ordered)
        return ordered

    # --- one backend attempt -------------------------------------------------------------

    def _call(self, slot: BackendSlot, request: ChatRequest, stream: bool, record: RequestRecord):
        """One call to one backend: a Completion, or (first chunk, stream) for streams."""
        attempt = self.signals.attempt_started(slot.model, request, stream,
                                               getattr(slot.backend, "sends_trace_context", True))
        record.attempts += 1
        try:
            with _current(attempt.span):
                if not stream:
                    result = slot.backend.complete(attempt.request)
                else:
                    chunks = slot.backend.stream(attempt.request)
                    first = next(chunks)
        except BackendError as error:
            self._failed(slot, attempt, error)
            raise
        except StopIteration:
            error = BackendError("bad_response", f"{slot.model.id}: empty stream")
            self._failed(slot, attempt, error)
            raise error from None
        except BaseException:
            # The client went away or the worker is stopping, while the backend thought.
            slot.breaker.release()
            self.signals.attempt_cancelled(attempt)
            raise
        if not stream:
            record.backend_seconds += self._succeeded(
                slot, attempt, result.input_tokens, result.output_tokens, result.finish_reason, result.response_model
            )
            return result
        return first, _Stream(self, slot, attempt, first, chunks, record)

    def _failed(self, slot: BackendSlot, attempt, error: BackendError) -> None:
        self.signals.attempt_failed(attempt, error.kind, str(error))
        if error.kind != "client_error":
            slot.breaker.record_failure()
        else:
            slot.breaker.record_success()

    def _succeeded(self, slot: BackendSlot, attempt, input_tokens: int, output_tokens: int, finish_reason: str,
                   response_model: str) -> float:
        seconds = self.signals.attempt_succeeded(attempt, input_tokens, output_tokens, finish_reason, response_model)
        slot.breaker.record_success()
        self.latency.observe(slot.model.id, seconds)
        return seconds

    # --- the candidate loop ------------------------------------------------------------

    def execute(self, plan: list[Candidate], request: ChatRequest, stream: bool, record: RequestRecord):
        """Serve the request from the first candidate that answers.

        Returns (model, Completion) or, for streams, (model, first chunk, rest). Raises
        APIError when every candidate failed or none could be tried.
        """
        routing = self.config.routing
        skipped: list[str] = []
        last_error: BackendError | None = None
        previous: ModelConfig | None = None
        tried = 0
        for candidate in plan:
            if tried >= routing.max_backends:
                break
            slot = self.slots[candidate.model.id]
            if not slot.breaker.allow():
                self.signals.rejected(slot.model.id, "circuit_open")
                skipped.append("circuit_open")
                # The next candidate tried is a fallback from the first one we wanted.
                previous = previous or slot.model
                continue
            if not slot.limiter.acquire(self.signals.queue_gauge(slot.model.id)):
                slot.breaker.release()
                self.signals.rejected(slot.model.id, "saturated")
                skipped.append("saturated")
                previous = previous or slot.model
                continue
            tried += 1
            if previous is not None:
                self.signals.fell_back(previous.id, slot.model.id, last_error.kind if last_error else None)
            previous = slot.model
            handed_over = False
            try:
                for attempt in range(routing.retries + 1):
                    if attempt:
                        self.signals.retried(slot.model.id)
                        time.sleep(backoff_delay(attempt - 1, routing.retry_backoff_seconds, self.rng.random()))
                        if not slot.breaker.allow():
                            break
                    try:
                        result = self._call(slot, request, stream, record)
                    except BackendError as error:
                        last_error = error
                        if not error.retryable:
                            break
                        continue
                    record.model = candidate.model.id
                    self.signals.decided(record.strategy, candidate.model.id, candidate.reason)
                    if stream:
                        handed_over = True  # the stream releases the slot when it ends
                        return (slot.model, *result)
                    return slot.model, result
            finally:
                if not handed_over:
                    slot.limiter.release()
        record.error_type = last_error.kind if last_error else (skipped[-1] if skipped else "no_candidate")
        raise self._exhausted(skipped, last_error, tried)

    @staticmethod
    def _exhausted(skipped: list[str], last_error: BackendError | None, tried: int) -> APIError:
        if tried == 0 and skipped and all(reason == "saturated" for reason in skipped):
            return APIError(
                429, "Every candidate backend is at its concurrency limit; retry shortly.", type="rate_limit_error",
                code="backends_saturated", headers={"Retry-After": "1"},
            )
        if tried == 0:
            return APIError(
                503, "No backend is available (circuits open or saturated).", type="server_error",
                code="no_backend_available", headers={"Retry-After": "5"},
            )
        if last_error is not None and last_error.kind == "timeout":
            return APIError(504, "The model backends did not answer in time.", type="server_error", code="backend_timeout")
        kind = last_error.kind if last_error else "unknown"
        return APIError(502, f"Every candidate backend failed ({kind}).", type="server_error", code="backend_error")


class _Stream:
    """The rest of a stream, as an iterator that ends its attempt exactly once: at the end
    (success), on a backend error (failure) or when closed early (the client went away, the
    worker is stopping, or the response was never iterated) - then the upstream call is
    closed too. Either way the backend slot is freed."""

    def __init__(self, router: Router, slot: BackendSlot, attempt, first: Chunk, rest: Iterator[Chunk],
                 record: RequestRecord) -> None:
        self.router, self.slot, self.attempt, self.rest, self.record = router, slot, attempt, rest, record
        self.last = first
        self.ended = False

    def __iter__(self) -> "_Stream":
        return self

    def __next__(self) -> Chunk:
        if self.ended:
            raise StopIteration
        try:
            chunk = next(self.rest)
        except StopIteration:
            self._end("success")
            raise
        except BackendError as error:
            self.record.error_type = error.kind
            self._end("failure", error)
            raise
        except BaseException:
            self._end("cancelled")
            raise
        self.last = chunk
        return chunk

    def close(self) -> None:
        if not self.ended:
            self._end("cancelled")

    def _end(self, outcome: str, error: BackendError | None = None) -> None:
        self.ended = True
        router, slot = self.router, self.slot
        try:
            if outcome == "success":
                last = self.last
                self.record.backend_seconds += router._succeeded(
                    slot, self.attempt, last.input_tokens or 0, last.output_tokens or 0, last.finish_reason or "stop",
                    slot.model.id,
                )
            elif outcome == "failure":
                router._failed(slot, self.attempt, error)
            else:
                close = getattr(self.rest, "close", None)
                if close is not None:
                    close()  # closes the upstream call
                slot.breaker.release()
                router.signals.attempt_cancelled(self.attempt)
        finally:
            slot.limiter.release()


class _current:
    """Make ``span`` the current span for the backend call (its trace context goes upstream)."""

    __slots__ = ("span", "token")

    def __init__(self, span) -> None:
        self.span = span

    def __enter__(self):
        if self.span.is_recording():
            from opentelemetry import context, trace

            self.token = context.attach(trace.set_span_in_context(self.span))
        else:
            self.token = None

    def __exit__(self, *exc) -> None:
        if self.token is not None:
            from opentelemetry import context

            context.detach(self.token)
