"""The telemetry seam: the one place where what the router does becomes metrics, log lines
and span attributes.

The router, the API views and the budgets call these methods with plain facts ("this
attempt failed with a timeout", "this request ended with 499"); which signals are on is
decided once, here, at construction. So the routing code reads as routing, and the cost of
each signal can be measured and cut in one place (bench/ switches them one by one).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from ..state import charge_usd
from . import logs
from . import metrics as m
from .tracing import ServerSpans

_access_log = logging.getLogger(logs.ACCESS_LOGGER)


@dataclass
class RequestRecord:
    """What one request did; turned into metrics, the access line and span attributes at its
    end (Signals.request_finished)."""

    started: float
    request_id: str
    route: str = "unmatched"
    method: str = "other"
    path: str = ""
    tenant: str = "other"
    model: str = "unknown"
    strategy: str = "balanced"
    stream: bool = False
    code: int = 200
    cache: str = "bypass"
    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    # What a token costs on the model that answered (set when a backend starts answering),
    # so a stream cut short is charged for what it produced.
    price_in_per_1k: float = 0.0
    price_out_per_1k: float = 0.0
    backend_seconds: float = 0.0
    attempts: int = 0
    finish_reason: str | None = None
    error_type: str | None = None
    over_budget: bool = False
    trace_id: str | None = None
    span_id: str | None = None
    sampled: bool = False
    chat: bool = False
    server_span: object | None = None
    # The request's slot in the ledger's journal (ledger.Entry), once it may be charged.
    entry: object | None = None
    finished: bool = False
    extra: dict = field(default_factory=dict)

    def cost(self) -> float:
        return charge_usd(self.input_tokens, self.output_tokens, self.price_in_per_1k, self.price_out_per_1k)


@dataclass
class Attempt:
    """One call to one backend: its span, when it started, the request as sent."""

    model_id: str
    provider: str
    span: trace.Span
    started: float
    request: object


def trace_exemplar(record: RequestRecord) -> dict[str, str] | None:
    """The request's trace id as an exemplar, only where it can be rendered (single-process
    metrics) and only for sampled traces."""
    if record.trace_id is None or not record.sampled or m.multiprocess_enabled():
        return None
    return {"trace_id": record.trace_id}


def finish_reason_label(code: int, finish_reason: str | None) -> str | None:
    """The `reason` of llm_router_finish_reasons_total for a chat request's outcome.

    None for client errors other than 429 (bad body, unknown model or tenant, budget,
    strategy): those never reached a model, so they are not counted. A 5xx is counted as an
    error wherever it happened.
    """
    if code == 200:
        return finish_reason if finish_reason in m.FINISH_REASONS else "other"
    if code == 499:
        return "cancelled"
    if code == 429 or code >= 500:
        return "error"
    return None


class Signals:
    def __init__(self, metrics: bool, logs_on: bool, tracer: trace.Tracer, traced: bool,
                 log_content: bool = False) -> None:
        self.metrics = metrics
        self.logs = logs_on
        self.tracer = tracer
        self.traced = traced
        self.log_content = log_content
        self.server_spans = ServerSpans(tracer) if traced else None

    @classmethod
    def off(cls) -> "Signals":
        """Every signal off (components used on their own, in tests and tools)."""
        return cls(False, False, trace.NoOpTracer(), False)

    # --- a request ---------------------------------------------------------------------

    def request_started(self, record: RequestRecord, headers, scheme: str, traced_path: bool) -> None:
        if self.server_spans is not None and traced_path:
            record.server_span = self.server_spans.start(record.method, record.route, record.path, headers, scheme)
            context = record.server_span[0].get_span_context()
            if context.is_valid:
                record.trace_id = format(context.trace_id, "032x")
                record.span_id = format(context.span_id, "016x")
                record.sampled = context.trace_flags.sampled
        if self.metrics:
            m.HTTP_IN_FLIGHT.inc()

    def request_finished(self, record: RequestRecord, status: int, counted=None) -> None:
        """Metrics, the access line and the server span of one request, after its response
        (or after the last byte of a stream). ``counted`` runs once the counters hold the
        request, before anything that can block (the access line's write to stdout): the
        ledger marks the charge counted there, so a SIGKILL during that write does not make
        a replay count it again."""
        record.finished = True
        seconds = time.perf_counter() - record.started
        if self.metrics:
            m.HTTP_IN_FLIGHT.dec()
            m.child(m.HTTP_REQUESTS, record.route, record.method, str(status)).inc()
            m.child(m.HTTP_DURATION, record.route, record.method).observe(seconds, trace_exemplar(record))
            if record.chat:
                self._chat_metrics(record, seconds)
        if counted is not None:
            counted()
        if self.logs:
            self._access_line(record, status, seconds)
        span = record.server_span
        if span is not None:
            record.server_span = None
            ServerSpans.finish(*span, status)

    def request_failed(self, record: RequestRecord) -> None:
        """A request that ended without a response (its span and gauge must still end)."""
        if record.finished:
            return
        record.finished = True
        if self.metrics:
            m.HTTP_IN_FLIGHT.dec()
        span = record.server_span
        if span is not None:
            record.server_span = None
            ServerSpans.finish(*span, 500)

    def _chat_metrics(self, record: RequestRecord, seconds: float) -> None:
        m.child(m.CHAT_REQUESTS, record.tenant, record.model, record.strategy, str(record.code)).inc()
        reason = finish_reason_label(record.code, record.finish_reason)
        if reason is not None:
            m.child(m.FINISH_REASONS_TOTAL, record.model, reason).inc()
        if record.code == 200:
            # Latency of answered requests only: fast rejections would flatter the latency SLO
            # (errors have their own SLO, on the counter above).
            m.child(m.CHAT_DURATION, record.model, "true" if record.stream else "false").observe(
                seconds, trace_exemplar(record)
            )
            m.child(m.TENANT_DURATION, record.tenant).observe(seconds)
            m.OVERHEAD.observe(max(0.0, seconds - record.backend_seconds))
        self.charged(record.tenant, record.model, record.input_tokens, record.output_tokens, record.cost_usd)

    def charged(self, tenant: str, model: str, input_tokens: int, output_tokens: int, cost_usd: float) -> None:
        """Tokens and cost counters (also for charges recovered from a dead process's journal)."""
        if not self.metrics:
            return
        if input_tokens or output_tokens:
            m.child(m.TOKENS, tenant, model, "input").inc(input_tokens)
            m.child(m.TOKENS, tenant, model, "output").inc(output_tokens)
        if cost_usd:
            m.child(m.COST, tenant, model).inc(cost_usd)

    def _access_line(self, record: RequestRecord, status: int, seconds: float) -> None:
        fields = {
            "method": record.method, "route": record.route, "path": record.path, "status": status,
            "duration_ms": round(seconds * 1000, 3),
        }
        if record.trace_id:
            fields["trace_id"], fields["span_id"] = record.trace_id, record.span_id
        if record.chat:
            fields.update(
                tenant=record.tenant, model=record.model, strategy=record.strategy, stream=record.stream,
                code=record.code, cache=record.cache, attempts=record.attempts, input_tokens=record.input_tokens,
                output_tokens=record.output_tokens, cost_usd=round(record.cost_usd, 8),
                finish_reason=record.finish_reason, error_type=record.error_type, over_budget=record.over_budget,
                **record.extra,
            )
        _access_log.info("request completed", extra=fields)

    # --- routing -----------------------------------------------------------------------

    def planned(self, strategy: str, requested: str, candidates: list) -> None:
        # The decision goes on the request's server span: a span of its own cost more to
        # create and export than the decision itself took.
        span = trace.get_current_span()
        if span.is_recording():
            span.set_attributes({
                "llm_router.strategy": strategy,
                "llm_router.model.requested": requested,
                "llm_router.candidates": [c.model.id for c in candidates],
                "llm_router.model.selected": candidates[0].model.id,
                "llm_router.route.reason": candidates[0].reason,
            })

    def decided(self, strategy: str, model_id: str, reason: str) -> None:
        if self.metrics:
            m.child(m.ROUTING_DECISIONS, strategy, model_id, reason).inc()
        if self.traced:
            trace.get_current_span().set_attribute("llm_router.model", model_id)

    def rejected(self, model_id: str, reason: str) -> None:
        if self.metrics:
            m.child(m.BACKEND_REJECTIONS, model_id, reason).inc()

    def queue_gauge(self, model_id: str):
        """What the concurrency limiter calls with +1/-1 as requests start and stop waiting."""
        return m.child(m.BACKEND_QUEUE, model_id).inc if self.metrics else None

    def retried(self, model_id: str) -> None:
        if self.metrics:
            m.child(m.RETRIES, model_id).inc()

    def fell_back(self, source: str, target: str, error_kind: str | None) -> None:
        if self.metrics:
            m.child(m.FALLBACKS, source, target).inc()
        logs.event(
            "fallback", f"falling back from {source} to {target}", logging.WARNING,
            from_model=source, to_model=target, error_type=error_kind or "unavailable",
        )

    def breaker_changed(self, model_id: str, old: str, new: str, value: int) -> None:
        if self.metrics:
            m.child(m.CIRCUIT_STATE, model_id).set(value)
            m.child(m.CIRCUIT_TRANSITIONS, model_id, new).inc()
        level = logging.WARNING if new == "open" else logging.INFO
        logs.event("circuit_state_changed", f"circuit for {model_id} is now {new}", level,
                   model=model_id, from_state=old, to_state=new)

    # --- one backend attempt -------------------------------------------------------------

    def attempt_started(self, model, request, stream: bool, sends_trace_context: bool) -> Attempt:
        if self.traced:
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
            if sends_trace_context:  # simulated models have no upstream to join the trace
                headers: dict[str, str] = {}
                propagate.inject(headers, context=trace.set_span_in_context(span))
                request = replace(request, headers=headers)
        else:
            span = trace.INVALID_SPAN
        if self.metrics:
            m.child(m.BACKEND_IN_FLIGHT, model.id).inc()
        return Attempt(model.id, model.gen_ai_provider, span, time.perf_counter(), request)

    def _attempt_ended(self, attempt: Attempt, outcome: str) -> float:
        seconds = time.perf_counter() - attempt.started
        if self.metrics:
            m.child(m.BACKEND_REQUESTS, attempt.model_id, attempt.provider, outcome).inc()
            m.child(m.BACKEND_IN_FLIGHT, attempt.model_id).dec()
            if outcome != "cancelled":
                m.child(m.BACKEND_DURATION, attempt.model_id, attempt.provider).observe(
                    seconds, self.span_exemplar(attempt.span)
                )
        return seconds

    def attempt_succeeded(self, attempt: Attempt, input_tokens: int, output_tokens: int, finish_reason: str,
                          response_model: str) -> float:
        seconds = self._attempt_ended(attempt, "success")
        span = attempt.span
        if span.is_recording():
            span.set_attributes({
                "gen_ai.response.model": response_model,
                "gen_ai.usage.input_tokens": input_tokens,
                "gen_ai.usage.output_tokens": output_tokens,
                "gen_ai.response.finish_reasons": [finish_reason],
            })
        span.end()
        return seconds

    def attempt_failed(self, attempt: Attempt, kind: str, message: str) -> float:
        seconds = self._attempt_ended(attempt, kind)
        span = attempt.span
        if span.is_recording():
            span.set_attribute("error.type", kind)
            span.set_status(Status(StatusCode.ERROR, message))
        span.end()
        return seconds

    def attempt_cancelled(self, attempt: Attempt, why: str = "cancelled") -> float:
        """The client went away (or the worker is stopping): not the backend's fault."""
        seconds = self._attempt_ended(attempt, "cancelled")
        span = attempt.span
        if span.is_recording():
            span.set_attribute("error.type", why)
        span.end()
        return seconds

    @staticmethod
    def span_exemplar(span: trace.Span) -> dict[str, str] | None:
        """A trace_id exemplar, only where it can be rendered (single-process metrics)."""
        if m.multiprocess_enabled():
            return None
        context = span.get_span_context()
        if not context.is_valid or not context.trace_flags.sampled:
            return None
        return {"trace_id": format(context.trace_id, "032x")}

    # --- cache, streams, budgets ---------------------------------------------------------

    def cache_looked_up(self, tenant: str, result: str) -> None:
        if self.traced and result != "bypass":
            # An attribute of the server span, not a span: a lookup takes microseconds.
            trace.get_current_span().set_attribute("llm_router.cache.result", result)
        if self.metrics:
            m.child(m.CACHE_REQUESTS, tenant, result).inc()

    def cache_saved(self, tenant: str, usd: float) -> None:
        if self.metrics and usd:
            m.child(m.CACHE_SAVED, tenant).inc(usd)

    def cache_size(self, entries: int) -> None:
        if self.metrics:
            m.CACHE_ENTRIES.set(entries)

    def first_token(self, model_id: str, seconds: float) -> None:
        if self.metrics:
            m.child(m.TTFT, model_id).observe(seconds)

    def tenant_spend(self, tenant: str, usd: float) -> None:
        if self.metrics:
            m.child(m.TENANT_SPEND, tenant).set(usd)

    def budget_exceeded(self, tenant: str, action: str) -> None:
        if self.metrics:
            m.child(m.BUDGET_EXCEEDED, tenant, action).inc()

    def model_loaded(self, model_id: str, seconds: float) -> None:
        if self.metrics:
            m.child(m.MODEL_LOAD_DURATION, model_id).observe(seconds)

    # --- the ledger and the state store --------------------------------------------------

    def store_operation(self, operation: str, seconds: float, ok: bool) -> None:
        if self.metrics:
            m.child(m.STATE_OPERATION_DURATION, operation).observe(seconds)
            if not ok:
                m.child(m.STATE_ERRORS, operation).inc()

    def store_up(self, ok: bool) -> None:
        if self.metrics:
            m.STATE_UP.set(1 if ok else 0)

    def ledger_level(self, waiting: int, in_use: int) -> None:
        if self.metrics:
            m.LEDGER_WAITING.set(waiting)
            m.LEDGER_SLOTS_IN_USE.set(in_use)

    def ledger_full(self) -> None:
        if self.metrics:
            m.LEDGER_FULL.inc()

    def recovered(self, charge, state: int) -> None:
        """A charge a dead process journaled but had not counted, stored by a replay here."""
        self.charged(charge.tenant, charge.model, charge.input_tokens, charge.output_tokens, charge.cost_usd)
        if self.metrics:
            m.child(m.LEDGER_RECOVERED, "open" if state == 1 else "final").inc()
        logs.event(
            "charge_recovered", f"charged {charge.tenant} for request {charge.request_id} of a process that stopped",
            logging.WARNING, request_id=charge.request_id, tenant=charge.tenant, model=charge.model,
            input_tokens=charge.input_tokens, output_tokens=charge.output_tokens, cost_usd=round(charge.cost_usd, 8),
            stream_open=state == 1,
        )
