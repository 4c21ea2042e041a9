"""The routing engine: try candidates in order, with retries, fallbacks, circuit breakers
and concurrency limits, and record every backend attempt as a metric and a CLIENT span."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from .backends import Backend, BackendError, ChatRequest, Chunk, build_backend
from .cache import ResponseCache
from .config import ModelConfig, RouterConfig
from .errors import APIError
from .faults import FaultRegistry
from .resilience import STATE_VALUES, CircuitBreaker, ConcurrencyLimiter, backoff_delay
from .routing import Candidate, LatencyTracker, candidates
from .state import StateStore
from .telemetry import logs
from .telemetry import metrics as m


@dataclass
class RequestRecord:
    """What one chat request did; turned into metrics and the access log line at its end."""

    started: float
    request_id: str
    tenant: str = "other"
    model: str = "unknown"
    strategy: str = "balanced"
    stream: bool = False
    code: int = 200
    cache: str = "bypass"
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    backend_seconds: float = 0.0
    attempts: int = 0
    finish_reason: str | None = None
    error_type: str | None = None
    over_budget: bool = False
    trace_id: str | None = None
    span_id: str | None = None
    sampled: bool = False
    chat: bool = False
    extra: dict = field(default_factory=dict)


@dataclass
class BackendSlot:
    model: ModelConfig
    backend: Backend
    breaker: CircuitBreaker
    limiter: ConcurrencyLimiter


def exemplar_for(span: trace.Span) -> dict[str, str] | None:
    """A trace_id exemplar, only where it can be rendered (single-process metrics)."""
    if m.multiprocess_enabled():
        return None
    context = span.get_span_context()
    if not context.is_valid or not context.trace_flags.sampled:
        return None
    return {"trace_id": format(context.trace_id, "032x")}


class Router:
    def __init__(self, config: RouterConfig, store: StateStore, tracer: trace.Tracer, metrics_on: bool) -> None:
        self.config = config
        self.tracer = tracer
        self.metrics_on = metrics_on
        self.faults = FaultRegistry(store)
        self.latency = LatencyTracker(config.models, config.routing.latency_ewma_alpha)
        self.cache = ResponseCache(config.cache.max_entries, config.cache.ttl_seconds) if config.cache.enabled else None
        self.rng = random.Random()
        breaker = config.routing.circuit_breaker
        self.slots = {
            model.id: BackendSlot(
                model,
                self._load(model),
                CircuitBreaker(model.id, breaker.failure_threshold, breaker.reset_timeout_seconds, self._breaker_changed),
                ConcurrencyLimiter(model.max_concurrency, config.routing.queue_timeout_seconds),
            )
            for model in config.models
        }

    def _load(self, model: ModelConfig) -> Backend:
        """Build one model's backend, timed (llm_router_model_load_duration_seconds)."""
        started = time.perf_counter()
        backend = build_backend(model, self.config, self.faults.fault_for)
        if self.metrics_on:
            m.child(m.MODEL_LOAD_DURATION, model.id).observe(time.perf_counter() - started)
        return backend

    # --- state ---------------------------------------------------------------------------

    def _breaker_changed(self, model: str, old: str, new: str) -> None:
        if self.metrics_on:
            m.child(m.CIRCUIT_STATE, model).set(STATE_VALUES[new])
            m.child(m.CIRCUIT_TRANSITIONS, model, new).inc()
        level = logging.WARNING if new == "open" else logging.INFO
        logs.event("circuit_state_changed", f"circuit for {model} is now {new}", level, model=model, from_state=old, to_state=new)

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
        # The decision goes on the request's server span: a span of its own cost more to
        # create and export than the decision itself took.
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes({
                "llm_router.strategy": strategy,
                "llm_router.model.requested": requested,
                "llm_router.candidates": [c.model.id for c in ordered],
                "llm_router.model.selected": ordered[0].model.id,
                "llm_router.route.reason": ordered[0].reason,
            })
        return ordered

    # --- one backend attempt -------------------------------------------------------------

    def _start_span(self, slot: BackendSlot, request: ChatRequest, stream: bool) -> tuple[trace.Span, ChatRequest]:
        model = slot.model
        attributes = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": model.gen_ai_provider,
            "gen_ai.request.model": model.upstream_model or model.id,
            "llm_router.stream": stream,
        }
        if request.max_tokens is not None:
            attributes["gen_ai.request.max_tokens"] = request.max_tokens
        if request.temperature is not None:
            attributes["gen_ai.request.temperature"] = request.temperature
        span = self.tracer.start_span(f"chat {model.id}", kind=SpanKind.CLIENT, attributes=attributes)
        if not getattr(slot.backend, "sends_trace_context", True):
            return span, request  # nothing goes upstream (simulated models)
        headers: dict[str, str] = {}
        propagate.inject(headers, context=trace.set_span_in_context(span))
        return span, replace(request, headers=headers)

    def _attempt_failed(self, slot: BackendSlot, span: trace.Span, error: BackendError, started: float) -> None:
        seconds = time.perf_counter() - started
        if self.metrics_on:
            m.child(m.BACKEND_REQUESTS, slot.model.id, slot.model.gen_ai_provider, error.kind).inc()
            m.child(m.BACKEND_DURATION, slot.model.id, slot.model.gen_ai_provider).observe(seconds, exemplar_for(span))
            m.child(m.BACKEND_IN_FLIGHT, slot.model.id).dec()
        if error.kind != "client_error":
            slot.breaker.record_failure()
        else:
            slot.breaker.record_success()
        span.set_attribute("error.type", error.kind)
        span.set_status(Status(StatusCode.ERROR, str(error)))
        span.end()

    def _attempt_succeeded(
        self, slot: BackendSlot, span: trace.Span, started: float, input_tokens: int, output_tokens: int,
        finish_reason: str, response_model: str,
    ) -> float:
        seconds = time.perf_counter() - started
        if self.metrics_on:
            m.child(m.BACKEND_REQUESTS, slot.model.id, slot.model.gen_ai_provider, "success").inc()
            m.child(m.BACKEND_DURATION, slot.model.id, slot.model.gen_ai_provider).observe(seconds, exemplar_for(span))
            m.child(m.BACKEND_IN_FLIGHT, slot.model.id).dec()
        slot.breaker.record_success()
        self.latency.observe(slot.model.id, seconds)
        span.set_attribute("gen_ai.response.model", response_model)
        span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
        span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
        span.set_attribute("gen_ai.response.finish_reasons", [finish_reason])
        span.end()
        return seconds

    def _call(self, slot: BackendSlot, request: ChatRequest, stream: bool, record: RequestRecord):
        """One call to one backend: a Completion, or (first chunk, stream) for streams."""
        span, request = self._start_span(slot, request, stream)
        record.attempts += 1
        if self.metrics_on:
            m.child(m.BACKEND_IN_FLIGHT, slot.model.id).inc()
        started = time.perf_counter()
        try:
            with trace.use_span(span, end_on_exit=False):
                if not stream:
                    result = slot.backend.complete(request)
                else:
                    chunks = slot.backend.stream(request)
                    first = next(chunks)
        except BackendError as error:
            self._attempt_failed(slot, span, error, started)
            raise
        except StopIteration:
            error = BackendError("bad_response", f"{slot.model.id}: empty stream")
            self._attempt_failed(slot, span, error, started)
            raise error from None
        if not stream:
            record.backend_seconds += self._attempt_succeeded(
                slot, span, started, result.input_tokens, result.output_tokens, result.finish_reason, result.response_model
            )
            return result
        return first, self._finish_stream(slot, span, started, first, chunks, record)

    def _finish_stream(
        self, slot: BackendSlot, span: trace.Span, started: float, first: Chunk, rest: Iterator[Chunk],
        record: RequestRecord,
    ) -> Iterator[Chunk]:
        """The rest of a stream; closes the span, the slot and the metrics when it ends."""
        last = first
        finished = False
        try:
            for chunk in rest:
                last = chunk
                yield chunk
            finished = True
        except BackendError as error:
            self._attempt_failed(slot, span, error, started)
            record.error_type = error.kind
            raise
        finally:
            slot.limiter.release()
            if finished:
                record.backend_seconds += self._attempt_succeeded(
                    slot, span, started, last.input_tokens or 0, last.output_tokens or 0,
                    last.finish_reason or "stop", slot.model.id,
                )
            elif record.error_type is None:
                # The client went away mid-stream: not the backend's fault.
                if self.metrics_on:
                    m.child(m.BACKEND_REQUESTS, slot.model.id, slot.model.gen_ai_provider, "cancelled").inc()
                    m.child(m.BACKEND_IN_FLIGHT, slot.model.id).dec()
                slot.breaker.release()
                span.set_attribute("error.type", "cancelled")
                span.end()

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
                self._rejected(slot, "circuit_open")
                skipped.append("circuit_open")
                # The next candidate tried is a fallback from the first one we wanted.
                previous = previous or slot.model
                continue
            if not slot.limiter.acquire(self._queue_gauge(slot)):
                slot.breaker.release()
                self._rejected(slot, "saturated")
                skipped.append("saturated")
                previous = previous or slot.model
                continue
            tried += 1
            if previous is not None:
                self._fell_back(previous, slot.model, last_error)
            previous = slot.model
            handed_over = False
            try:
                for attempt in range(routing.retries + 1):
                    if attempt:
                        if self.metrics_on:
                            m.child(m.RETRIES, slot.model.id).inc()
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
                    self._decided(record, candidate)
                    if stream:
                        handed_over = True  # the stream releases the slot when it ends
                        return (slot.model, *result)
                    return slot.model, result
            finally:
                if not handed_over:
                    slot.limiter.release()
        record.error_type = last_error.kind if last_error else (skipped[-1] if skipped else "no_candidate")
        raise self._exhausted(skipped, last_error, tried)

    def _decided(self, record: RequestRecord, candidate: Candidate) -> None:
        record.model = candidate.model.id
        if self.metrics_on:
            m.child(m.ROUTING_DECISIONS, record.strategy, candidate.model.id, candidate.reason).inc()
        trace.get_current_span().set_attribute("llm_router.model", candidate.model.id)

    def _queue_gauge(self, slot: BackendSlot):
        if not self.metrics_on:
            return None
        return m.child(m.BACKEND_QUEUE, slot.model.id).inc

    def _rejected(self, slot: BackendSlot, reason: str) -> None:
        if self.metrics_on:
            m.child(m.BACKEND_REJECTIONS, slot.model.id, reason).inc()

    def _fell_back(self, source: ModelConfig, target: ModelConfig, error: BackendError | None) -> None:
        if self.metrics_on:
            m.child(m.FALLBACKS, source.id, target.id).inc()
        logs.event(
            "fallback", f"falling back from {source.id} to {target.id}", logging.WARNING,
            from_model=source.id, to_model=target.id, error_type=error.kind if error else "unavailable",
        )

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
