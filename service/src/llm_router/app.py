"""The app factory: configuration in, a ready Flask app out."""

from __future__ import annotations

import os
import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson
from flask import Flask, Response, g, request
from flask.json.provider import JSONProvider
from opentelemetry.sdk.trace import TracerProvider

from . import __version__
from .config import RouterConfig, load_config
from .errors import register_error_handlers
from .probes import HealthProber
from .ledger import Ledger
from .router import Router
from .state import Store, default_state_dir, open_store, state_url
from .telemetry import logs
from .telemetry import metrics as m
from .telemetry.signals import RequestRecord, Signals
from .telemetry.tracing import (
    UNTRACED_PATHS,
    build_tracer_provider,
    install_dropped_span_filter,
    tracer_for,
)
from .tenants import Budgets, TenantDirectory

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
# The `method` label takes these values; anything else a client sends counts as "other".
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


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
    signals: Signals
    store: Store
    ledger: Ledger
    router: Router
    tenants: TenantDirectory
    budgets: Budgets
    tracer_provider: TracerProvider | None
    prober: HealthProber

    def close(self) -> None:
        """Stop the background work and store what is left: money and answers first, then
        spans (gunicorn_conf.worker_exit; the tests)."""
        self.prober.stop(timeout=0)
        self.ledger.close()
        self.store.close()


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

    signals = Signals(telemetry.metrics, telemetry.logs, tracer, tracer_provider is not None, telemetry.log_content)
    state_dir = Path(state_dir or default_state_dir())
    store = open_store(state_dir, state_url(config.state.url), signals.store_operation)
    router = Router(config, store, signals)
    ledger = Ledger(
        store, state_dir, slots=config.state.journal_slots, retention_hours=config.feedback.retention_hours,
        on_recovered=signals.recovered, on_faults=router.faults.update, on_store_state=signals.store_up,
        on_tick=signals.ledger_level,
    )
    budgets = Budgets(config, ledger, signals)
    ledger.on_crossing = budgets.crossed
    ledger.recover()  # what a process that died left in its journal: stored before this one serves
    budgets.publish_spend()
    # No static folder: the router serves no files, and its URL rule would be a route label.
    app = RouterFlask(__name__, static_folder=None)
    app.json = OrjsonProvider(app)
    app.config["MAX_CONTENT_LENGTH"] = config.limits.max_body_bytes
    app.extensions["llm_router"] = Services(
        config=config,
        telemetry=telemetry,
        signals=signals,
        store=store,
        ledger=ledger,
        router=router,
        tenants=TenantDirectory(config),
        budgets=budgets,
        tracer_provider=tracer_provider,
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
        m.LEDGER_SLOTS.set(config.state.journal_slots)
    register_error_handlers(app)
    _register_request_hooks(app, signals)

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
    # Last, once the app is complete: the ledger's sync loop, and the first probes at once,
    # each on a thread (a greenlet under gevent) of its own, so neither start-up nor
    # requests wait for a store or a slow backend.
    ledger.start()
    if config.health_probes.enabled:
        app.extensions["llm_router"].prober.start()
    return app


class RouterFlask(Flask):
    """Flask, minus a check per request and hook for coroutine views: the router has none
    (gevent gives it concurrency), and `ensure_sync` is Flask's documented override point."""

    def ensure_sync(self, func):
        return func


class OrjsonProvider(JSONProvider):
    """Flask's JSON through orjson: encoding a response took a visible share of a request's
    CPU with the standard library's encoder. Keys keep their insertion order."""

    def dumps(self, obj, **kwargs) -> str:
        return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS).decode()

    def loads(self, s, **kwargs):
        return orjson.loads(s)

    def response(self, *args, **kwargs) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        return self._app.response_class(orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_APPEND_NEWLINE),
                                        mimetype="application/json")


def _register_request_hooks(app: Flask, signals: Signals) -> None:
    def before() -> None:
        incoming = request.headers.get("X-Request-ID", "")
        request_id = incoming if _REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
        method = request.method if request.method in _METHODS else "other"
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        record = g.record = RequestRecord(started=time.perf_counter(), request_id=request_id, route=route,
                                          method=method, path=request.path)
        g.request_id_token = logs.request_id_var.set(request_id)
        signals.request_started(record, request.headers, request.scheme, request.path not in UNTRACED_PATHS)

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
            token = g.pop("request_id_token", None)
            if token is not None:
                logs.request_id_var.reset(token)
        return response

    def teardown(error: BaseException | None) -> None:
        # A request that failed before its response (or a stream never iterated).
        record: RequestRecord | None = g.get("record")
        if record is not None and not g.get("streaming"):
            signals.request_failed(record)
        watch = g.pop("client_watch", None)
        if watch is not None and not g.get("streaming"):
            watch.disarm()

    app.before_request(before)
    app.after_request(after)
    app.teardown_request(teardown)


def finish_request(record: RequestRecord, status: int, state: Services | None = None) -> None:
    """Charges, metrics and the access line for one request: after the response, or after
    the last byte of a stream (which passes ``state``: it runs outside the app context)."""
    state = state or services()
    if record.chat:
        _account(state, record)
    entry = record.entry
    if entry is not None and entry.state:
        # Marked right after the counters move (before the access line): a replay of this
        # journal will not count the charge again.
        state.signals.request_finished(record, status, lambda: state.ledger.counted(entry))
    else:
        state.signals.request_finished(record, status)


def _account(state: Services, record: RequestRecord) -> None:
    """Every token delivered is charged: answers, and streams that ended early (the client
    left, the backend failed or timed out mid-stream, the worker stopped) for the tokens
    they produced. Answered requests (cache hits too, at no cost) can be rated. The charge
    is in the journal before the response is sent (ledger.py)."""
    entry = record.entry
    if entry is None:
        return
    if record.code == 200 or entry.state or record.cost_usd > 0:  # an opened stream is charged, even at $0
        state.ledger.finish(entry, record.tenant, record.model, record.request_id, record.code, record.input_tokens,
                            record.output_tokens, record.price_in_per_1k, record.price_out_per_1k)
    else:
        state.ledger.release(entry)
