"""Every Prometheus metric the router emits. This module is the metric catalogue's source:
docs/metrics.md lists the same names, and a test keeps the two in step.

Label values are bounded by construction: tenants are configured ids, "other" or
"anonymous"; models are configured ids, "auto" or "unknown"; routes are URL rules; codes,
outcomes, reasons and strategies come from fixed sets in the code.
"""

from __future__ import annotations

import functools
import os
import platform

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client import multiprocess

from .. import __version__
from .process import ServingProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# The *_created series double the exposition for no query anyone writes here.
disable_created_metrics()

# From a cached answer (tens of ms) to a long generation (minutes).
LATENCY_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 7.5, 10, 15, 20, 30, 45, 60, 120, 300)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 60)
# The router's own cost per request: sub-millisecond is the goal.
OVERHEAD_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1)
# Per-tenant latency, much coarser than LATENCY_BUCKETS: it exists for per-tenant Apdex and
# SLOs, and every bucket is one series per tenant in every scrape. 5 and 20 are the Apdex
# thresholds and 15 the latency SLO's (prometheus/config.yaml; the generator checks them).
TENANT_LATENCY_BUCKETS = (1, 5, 10, 15, 20, 60)
# Feedback scores lie in [0, 1]; the le="0" bucket counts the thumbs-down.
SCORE_BUCKETS = (0, 0.2, 0.4, 0.6, 0.8, 1)
# Building an app or a backend (microseconds for a simulated one) and probing one (a short
# HTTP call for an upstream, capped by health_probes.timeout_seconds). Few buckets: these
# are per model (and outcome) in every scrape, for events that happen rarely.
LOAD_BUCKETS = (0.0005, 0.005, 0.025, 0.1, 0.5, 2.5, 10, 30)
# One state-store operation: a batch of charges in one transaction, a read of the totals.
STATE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
STATE_OPERATIONS = ("apply", "read_spend", "read_faults", "write_faults", "feedback", "prune", "read_charges")

# The finish_reason label's values: OpenAI's finish reasons, plus what the router knows
# about requests that got no answer. Anything else an upstream reports counts as "other".
FINISH_REASONS = ("stop", "length", "content_filter", "tool_calls", "error", "cancelled", "other")
RATINGS = ("positive", "negative")
PROBE_OUTCOMES = ("success", "failure")

HTTP_REQUESTS = Counter(
    "llm_router_http_requests_total", "HTTP requests served, by URL rule, method and status code.",
    ["route", "method", "status"],
)
HTTP_DURATION = Histogram(
    "llm_router_http_request_duration_seconds", "Time to serve an HTTP request (streams: until the last byte).",
    ["route", "method"], buckets=LATENCY_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge(
    "llm_router_http_requests_in_flight", "HTTP requests being served now.", multiprocess_mode="livesum",
)
CHAT_REQUESTS = Counter(
    "llm_router_chat_requests_total", "Chat completion requests by tenant, served model, strategy and status code.",
    ["tenant", "model", "strategy", "code"],
)
CHAT_DURATION = Histogram(
    "llm_router_chat_request_duration_seconds", "End-to-end latency of answered chat completions, by model and streaming.",
    ["model", "stream"], buckets=LATENCY_BUCKETS,
)
OVERHEAD = Histogram(
    "llm_router_overhead_seconds", "Time the router adds to a chat request beyond its backend calls.",
    buckets=OVERHEAD_BUCKETS,
)
TTFT = Histogram(
    "llm_router_time_to_first_token_seconds", "Time from request arrival to the first streamed token, by model.",
    ["model"], buckets=TTFT_BUCKETS,
)
TOKENS = Counter(
    "llm_router_tokens_total", "Tokens processed, by tenant, model and type (input or output).",
    ["tenant", "model", "type"],
)
COST = Counter(
    "llm_router_cost_usd_total", "Cost of served requests in US dollars, by tenant and model.",
    ["tenant", "model"],
)
CACHE_REQUESTS = Counter(
    "llm_router_cache_requests_total", "Response cache lookups by tenant and result (hit, miss, bypass).",
    ["tenant", "result"],
)
CACHE_SAVED = Counter(
    "llm_router_cache_saved_usd_total", "Backend cost avoided by answering from the cache, by tenant.",
    ["tenant"],
)
CACHE_ENTRIES = Gauge(
    "llm_router_cache_entries", "Entries held in the response cache (summed over workers).",
    multiprocess_mode="livesum",
)
ROUTING_DECISIONS = Counter(
    "llm_router_routing_decisions_total", "Routing decisions by strategy, chosen model and reason.",
    ["strategy", "model", "reason"],
)
FALLBACKS = Counter(
    "llm_router_fallbacks_total", "Requests moved from a failing backend to the next candidate.",
    ["from_model", "to_model"],
)
RETRIES = Counter(
    "llm_router_retries_total", "Retries of a backend call on the same backend, by model.", ["model"],
)
BACKEND_REQUESTS = Counter(
    "llm_router_backend_requests_total", "Calls to model backends by model, provider and outcome.",
    ["model", "provider", "outcome"],
)
BACKEND_DURATION = Histogram(
    "llm_router_backend_request_duration_seconds", "Duration of one backend call (streams: until the last chunk).",
    ["model", "provider"], buckets=LATENCY_BUCKETS,
)
BACKEND_REJECTIONS = Counter(
    "llm_router_backend_rejections_total", "Backend calls not attempted, by model and reason (circuit_open, saturated).",
    ["model", "reason"],
)
BACKEND_IN_FLIGHT = Gauge(
    "llm_router_backend_in_flight", "Calls in progress per backend (summed over workers).", ["model"],
    multiprocess_mode="livesum",
)
BACKEND_QUEUE = Gauge(
    "llm_router_backend_queue_depth", "Requests waiting for a free backend slot (summed over workers).", ["model"],
    multiprocess_mode="livesum",
)
BACKEND_MAX_CONCURRENCY = Gauge(
    "llm_router_backend_max_concurrency", "Configured concurrent calls per backend and worker.", ["model"],
    multiprocess_mode="max",
)
CIRCUIT_STATE = Gauge(
    "llm_router_circuit_breaker_state", "Circuit breaker state: 0 closed, 1 half-open, 2 open (worst worker).",
    ["model"], multiprocess_mode="livemax",
)
CIRCUIT_TRANSITIONS = Counter(
    "llm_router_circuit_breaker_transitions_total", "Circuit breaker state changes, by model and new state.",
    ["model", "state"],
)
TENANT_BUDGET = Gauge(
    "llm_router_tenant_budget_usd", "Monthly budget per tenant in US dollars.", ["tenant"], multiprocess_mode="max",
)
TENANT_SPEND = Gauge(
    "llm_router_tenant_spend_usd", "Month-to-date spend per tenant in US dollars.", ["tenant"],
    multiprocess_mode="mostrecent",
)
BUDGET_EXCEEDED = Counter(
    "llm_router_budget_exceeded_total", "Requests from tenants over budget, by tenant and action (rejected, flagged).",
    ["tenant", "action"],
)
FAULTS_INJECTED = Counter(
    "llm_router_faults_injected_total", "Faults injected through the admin API, by model.", ["model"],
)
FINISH_REASONS_TOTAL = Counter(
    "llm_router_finish_reasons_total",
    "Chat requests that reached a model (or the cache), by model and how the answer ended.",
    ["model", "reason"],
)
TENANT_DURATION = Histogram(
    "llm_router_tenant_request_duration_seconds", "End-to-end latency of answered chat completions, by tenant.",
    ["tenant"], buckets=TENANT_LATENCY_BUCKETS,
)
FEEDBACK = Counter(
    "llm_router_feedback", "Feedback on answered chat requests (POST /v1/feedback), by tenant, model and rating.",
    ["tenant", "model", "rating"],
)
FEEDBACK_SCORE = Histogram(
    "llm_router_feedback_score", "Feedback scores (0 to 1; thumbs up 1, down 0), by the model that answered.",
    ["model"], buckets=SCORE_BUCKETS,
)
CONFIG_LOAD_DURATION = Histogram(
    "llm_router_config_load_duration_seconds", "Time to load and validate the configuration and build the app.",
    buckets=LOAD_BUCKETS,
)
MODEL_LOAD_DURATION = Histogram(
    "llm_router_model_load_duration_seconds", "Time to build one model's backend when the app is built.",
    ["model"], buckets=LOAD_BUCKETS,
)
PROBE_DURATION = Histogram(
    "llm_router_backend_probe_duration_seconds", "Duration of one backend health probe, by model and outcome.",
    ["model", "outcome"], buckets=LOAD_BUCKETS,
)
BACKEND_UP = Gauge(
    "llm_router_backend_up", "1 when the last health probe of the backend succeeded, else 0 (worst live worker).",
    ["model"], multiprocess_mode="livemin",
)
SPANS_DROPPED = Counter(
    "llm_router_spans_dropped_total",
    "Spans the trace exporter dropped because its queue was full (collector down or slow).",
)
STATE_OPERATION_DURATION = Histogram(
    "llm_router_state_operation_duration_seconds",
    "Duration of one state-store operation (SQLite or PostgreSQL), by operation.",
    ["operation"], buckets=STATE_BUCKETS,
)
STATE_ERRORS = Counter(
    "llm_router_state_errors_total", "State-store operations that failed, by operation.", ["operation"],
)
STATE_UP = Gauge(
    "llm_router_state_store_up",
    "1 while the state store takes this process's writes, 0 while they fail (worst live process).",
    multiprocess_mode="livemin",
)
LEDGER_WAITING = Gauge(
    "llm_router_ledger_waiting_charges", "Charges in the journals, not stored yet (summed over processes).",
    multiprocess_mode="livesum",
)
LEDGER_SLOTS_IN_USE = Gauge(
    "llm_router_ledger_journal_slots_in_use",
    "Journal slots taken by requests in flight and charges not stored yet (summed over processes).",
    multiprocess_mode="livesum",
)
LEDGER_SLOTS = Gauge(
    "llm_router_ledger_journal_slots", "Journal slots per process (state.journal_slots; summed over processes).",
    multiprocess_mode="livesum",
)
LEDGER_FULL = Counter(
    "llm_router_ledger_full_total", "Chat requests refused (503) because the charge journal was full.",
)
LEDGER_RECOVERED = Counter(
    "llm_router_ledger_recovered_charges_total",
    "Charges of a process that stopped (SIGKILL, OOM kill), stored by another one's replay, by journal slot.",
    ["slot"],
)
BUILD_INFO = Gauge(
    "llm_router_build_info", "Always 1; labels carry the router's version and Python version.",
    ["version", "python_version"], multiprocess_mode="max",
)


@functools.cache
def child(metric, *label_values: str):
    """`metric.labels(*label_values)`, remembered: the label sets are bounded by design, and
    prometheus_client's own lookup (validation, a lock) was a visible share of a request."""
    return metric.labels(*label_values)


def multiprocess_enabled() -> bool:
    return bool(os.environ.get(MULTIPROC_ENV))


# llm_router_process_*: every serving process (gunicorn master and workers, or this single
# process), read from /proc at scrape time; in both registries /metrics may render.
PROCESS_HEALTH = ServingProcessCollector()
REGISTRY.register(PROCESS_HEALTH)


def exposition_registry() -> CollectorRegistry:
    """The registry /metrics renders: per-worker files merged, or this process's metrics."""
    if multiprocess_enabled():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        registry.register(PROCESS_HEALTH)
        return registry
    return REGISTRY


def initialise(
    model_ids: list[str], tenant_budgets: dict[str, float], max_concurrency: dict[str, int], budget_action: str,
    tenant_ids: list[str] = (),
) -> None:
    """Create the series that must exist before any traffic (so alerts and panels see 0).

    Feedback counters are not created up front: tenant x model x rating would be a thousand
    zero series in every scrape at 50 tenants and 10 models. ``tenant_ids`` is kept for
    callers; the positive-ratio rule reads 0 (not absent) when all feedback is negative.
    """
    BUILD_INFO.labels(__version__, platform.python_version()).set(1)
    for model in model_ids:
        CIRCUIT_STATE.labels(model).set(0)
        BACKEND_IN_FLIGHT.labels(model).set(0)
        BACKEND_QUEUE.labels(model).set(0)
        BACKEND_MAX_CONCURRENCY.labels(model).set(max_concurrency[model])
        for reason in FINISH_REASONS:
            child(FINISH_REASONS_TOTAL, model, reason)
        # Probes run right at start; a failure series appears with the first failure.
        child(PROBE_DURATION, model, "success")
        child(FEEDBACK_SCORE, model)
    for tenant, budget in tenant_budgets.items():
        TENANT_BUDGET.labels(tenant).set(budget)
        BUDGET_EXCEEDED.labels(tenant, budget_action)
    for operation in STATE_OPERATIONS:
        child(STATE_ERRORS, operation)
        child(STATE_OPERATION_DURATION, operation)
    STATE_UP.set(1)
    # So a process's first recovered charge shows in rate() and on the panel (from 0, not from nothing).
    for slot in ("open", "final"):
        child(LEDGER_RECOVERED, slot)
