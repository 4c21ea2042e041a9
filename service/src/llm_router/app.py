"""The app factory: configuration in, a ready Flask app out."""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from dataclasses import dataclass

from flask import Flask, Response, g, request
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from . import __version__
from .config import RouterConfig, load_config
from .errors import register_error_handlers
from .probes import HealthProber
from .router import RequestRecord, Router
from .state import ResponseLog, StateStore
from .telemetry import logs
from .telemetry import metrics as m
from .telemetry.tracing import (
    UNTRACED_PATHS,
    ServerSpans,
    build_tracer_provider,
    install_dropped_span_filter,
    tracer_for,
)
from .tenants import Budgets, TenantDirectory

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# The `method` label takes these values; anything else a client sends counts as "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

_access_log = logging.getLogger(logs.ACCESS_LOGGER)


def _switch(name: str, default: bool = True) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() not in ("0", "false", "off", "no")


@dataclass(frozen=True)
class Telemetry:
    """Which signals are on. Each can be switched off alone, for benchmarks."""

    metrics: bool = True
    logs: bool = True
    traces: bool = True
    # Prompt and completion text in logs: off unless explicitly asked for.
    log_content: bool = False

    @classmethod
    def from_env(cls) -> "Telemetry":
        return cls(
            metrics=_switch("LLM_ROUTER_METRICS"),
            logs=_switch("LLM_ROUTER_LOGS"),
            traces=_switch("LLM_ROUTER_TRACES"),
            log_content=_switch("LLM_ROUTER_LOG_CONTENT", default=False),
        )


@dataclass
class Services:
    """Everything the views need, built once per app (and so once per worker)."""

    config: RouterConfig
    telemetry: Telemetry
    store: StateStore
    router: Router
    tenants: TenantDirectory
    budgets: Budgets
    tracer_provider: TracerProvider | None
    responses: ResponseLog
    prober: HealthProber


def services() -> Services:
    from flask import current_app

    return current_app.extensions["llm_router"]


def create_app(
    config: RouterConfig | None = None,
    *,
    telemetry: Telemetry | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    tracer_provider: TracerProvider | None = None,
) -> Flask:
    started = time.perf_counter()
    config = config or load_config()
    telemetry = telemetry or Telemetry.from_env()
    logs.configure_logging(config.service_name, telemetry.logs)
    if telemetry.traces and tracer_provider is None:
        tracer_provider = build_tracer_provider(config.service_name)
    if not telemetry.traces:
        tracer_provider = None
    tracer = tracer_for(tracer_provider)
    if tracer_provider is not None:
        install_dropped_span_filter(m.SPANS_DROPPED.inc if telemetry.metrics else None)

    store = StateStore(state_dir)
    router = Router(config, store, tracer, telemetry.metrics)
    # No static folder: the router serves no files, and its URL rule would be a route label.
    app = Flask(__name__, static_folder=None)
    app.config["MAX_CONTENT_LENGTH"] = config.limits.max_body_bytes
    app.json.sort_keys = False
    app.extensions["llm_router"] = Services(
        config=config,
        telemetry=telemetry,
        store=store,
        router=router,
        tenants=TenantDirectory(config),
        budgets=Budgets(config, store, telemetry.metrics),
        tracer_provider=tracer_provider,
        responses=ResponseLog(store, config.feedback.retention_hours),
        prober=HealthProber(router.slots, config.health_probes, telemetry.metrics),
    )
    if telemetry.metrics:
        m.initialise(
            [model.id for model in config.models],
            {t.id: t.monthly_budget_usd for t in config.tenants if t.monthly_budget_usd},
            {model.id: model.max_concurrency for model in config.models},
            "rejected" if config.budgets.on_exhausted == "reject" else "flagged",
            tenant_ids=[t.id for t in config.tenants] + (["anonymous"] if config.auth.allow_anonymous else []),
        )
    register_error_handlers(app)
    _register_request_hooks(app, ServerSpans(tracer) if tracer_provider is not None else None)

    from .admin import admin
    from .api import api
    from .feedback import feedback

    app.register_blueprint(api)
    app.register_blueprint(feedback)
    app.register_blueprint(admin)

    seconds = time.perf_counter() - started
    if telemetry.metrics:
        m.CONFIG_LOAD_DURATION.observe(seconds)
    logs.event(
        "config_loaded", "router configuration loaded",
        models=len(config.models), tenants=len(config.tenants), version=__version__,
        duration_ms=round(seconds * 1000, 3),
        telemetry={"metrics": telemetry.metrics, "logs": telemetry.logs, "traces": telemetry.traces},
    )
    # Last, once the app is complete: the first probes run at once, on their own thread, so
    # neither start-up nor requests wait for a slow backend.
    if config.health_probes.enabled:
        app.extensions["llm_router"].prober.start()
    return app


def _method() -> str:
    return request.method if request.method in _METHODS else "other"


def _register_request_hooks(app: Flask, server_spans: ServerSpans | None) -> None:
    def before() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _REQUEST_ID.match(incoming) else uuid.uuid4().hex
        g.record = RequestRecord(started=time.perf_counter(), request_id=request_id)
        g.request_id_token = logs.request_id_var.set(request_id)
        if server_spans is not None and request.path not in UNTRACED_PATHS:
            route = request.url_rule.rule if request.url_rule is not None else "unmatched"
            g.server_span = server_spans.start(_method(), route, request.path, request.headers, request.scheme)
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            g.record.trace_id = format(context.trace_id, "032x")
            g.record.span_id = format(context.span_id, "016x")
            g.record.sampled = context.trace_flags.sampled
        if services().telemetry.metrics:
            m.HTTP_IN_FLIGHT.inc()

    def after(response: Response) -> Response:
        record: RequestRecord | None = g.get("record")
        if record is None:
            return response
        response.headers["X-Request-ID"] = record.request_id
        if record.trace_id:
            response.headers["X-Trace-ID"] = record.trace_id
        if not g.get("streaming"):
            record.code = response.status_code
            finish_request(record, response.status_code)
        return response

    def teardown(error: BaseException | None) -> None:
        # A request that failed before its response (or a stream never iterated).
        span = g.pop("server_span", None)
        if span is not None:
            ServerSpans.finish(*span, 500)

    app.before_request(before)
    app.after_request(after)
    app.teardown_request(teardown)


def finish_request(record: RequestRecord, status: int) -> None:
    """Metrics and the access line for one request: after the response, or after a stream."""
    state = services()
    seconds = time.perf_counter() - record.started
    route = request.url_rule.rule if request.url_rule is not None else "unmatched"
    if state.telemetry.metrics:
        m.HTTP_IN_FLIGHT.dec()
        m.child(m.HTTP_REQUESTS, route, _method(), str(status)).inc()
        m.child(m.HTTP_DURATION, route, _method()).observe(seconds, _trace_exemplar(record))
    if record.chat:
        _finish_chat(state, record, seconds)
    if state.telemetry.logs:
        fields = {
            "method": request.method, "route": route, "path": request.path, "status": status,
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
    span = g.pop("server_span", None)
    if span is not None:
        ServerSpans.finish(*span, status)
    token = g.pop("request_id_token", None)
    if token is not None:
        logs.request_id_var.reset(token)


def _trace_exemplar(record: RequestRecord) -> dict[str, str] | None:
    if record.trace_id is None or not record.sampled or m.multiprocess_enabled():
        return None
    return {"trace_id": record.trace_id}


def finish_reason_label(code: int, finish_reason: str | None) -> str | None:
    """The `reason` of llm_router_finish_reasons_total for a chat request's outcome.

    None for client errors other than 429 (bad body, unknown model or tenant, budget,
    strategy): those never reached a model, so they are not counted. A 500 is counted as an
    error wherever it happened.
    """
    if code == 200:
        return finish_reason if finish_reason in m.FINISH_REASONS else "other"
    if code == 499:
        return "cancelled"
    if code == 429 or code >= 500:
        return "error"
    return None


def _finish_chat(state: Services, record: RequestRecord, seconds: float) -> None:
    if record.code == 200:
        if record.cache != "hit":
            state.budgets.charge(record.tenant, record.cost_usd)
        # So feedback can name this answer, on any worker (buffered, stored in batches: state.ResponseLog).
        state.responses.record(record.request_id, record.tenant, record.model)
    if not state.telemetry.metrics:
        return
    m.child(m.CHAT_REQUESTS, record.tenant, record.model, record.strategy, str(record.code)).inc()
    reason = finish_reason_label(record.code, record.finish_reason)
    if reason is not None:
        m.child(m.FINISH_REASONS_TOTAL, record.model, reason).inc()
    if record.code == 200:
        # Latency of answered requests only: fast rejections would flatter the latency SLO
        # (errors have their own SLO, on the counter above).
        m.child(m.CHAT_DURATION, record.model, "true" if record.stream else "false").observe(
            seconds, _trace_exemplar(record)
        )
        m.child(m.TENANT_DURATION, record.tenant).observe(seconds)
        m.OVERHEAD.observe(max(0.0, seconds - record.backend_seconds))
    if record.input_tokens or record.output_tokens:
        m.child(m.TOKENS, record.tenant, record.model, "input").inc(record.input_tokens)
        m.child(m.TOKENS, record.tenant, record.model, "output").inc(record.output_tokens)
    if record.cost_usd:
        m.child(m.COST, record.tenant, record.model).inc(record.cost_usd)
