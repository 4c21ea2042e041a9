"""OpenTelemetry tracing, configured by the standard OTEL_* environment variables.

Spans leave through a BatchSpanProcessor: exporting runs on its own thread, so a slow or
unreachable collector costs a dropped batch, never a slower request.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections.abc import Callable

from opentelemetry import context, propagate, trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from .. import __version__

TRACER_NAME = "llm_router"
# The SDK's batch processor logs one warning per span it drops from a full queue.
_SDK_BATCH_LOGGER = "opentelemetry.sdk._shared_internal"


class DroppedSpans(logging.Filter):
    """Counts every span the SDK drops from a full queue, and logs one summary a minute.

    The SDK warns "Queue full, dropping Span." and then de-duplicates identical warnings
    over 20 s windows, so its log says that spans were lost but not how many. Here each
    drop is counted (llm_router_spans_dropped_total), and the summary event carries how
    many were dropped since the previous one.
    """

    INTERVAL_SECONDS = 60.0

    def __init__(self, count: Callable[[], None] | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.count = count
        self.clock = clock
        self.pending = 0
        self.last = -math.inf
        self.lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith("Queue full"):
            return True
        if self.count is not None:
            self.count()
        with self.lock:
            self.pending += 1
            now = self.clock()
            if now - self.last < self.INTERVAL_SECONDS:
                return False
            self.last, dropped, self.pending = now, self.pending, 0
        _summary(dropped)
        return False

    def flush(self) -> None:
        """Report drops not yet summarised (at worker exit)."""
        with self.lock:
            dropped, self.pending = self.pending, 0
        if dropped:
            _summary(dropped)


def _summary(dropped: int) -> None:
    from . import logs  # logs imports this package's neighbours; resolve at call time

    logs.event(
        "spans_dropped", f"the span queue was full: {dropped} span(s) dropped (collector down or slow?)",
        logging.WARNING, dropped=dropped,
    )


def flush_dropped_spans() -> None:
    """Log the drops not summarised yet (a stopping worker's last word on them)."""
    for existing in logging.getLogger(_SDK_BATCH_LOGGER).filters:
        if isinstance(existing, DroppedSpans):
            existing.flush()


def install_dropped_span_filter(count: Callable[[], None] | None) -> DroppedSpans:
    """Install (once per process) the filter on the SDK's batch-processor logger."""
    logger = logging.getLogger(_SDK_BATCH_LOGGER)
    for existing in logger.filters:
        if isinstance(existing, DroppedSpans):
            existing.count = count
            return existing
    dropped = DroppedSpans(count)
    # Ahead of the SDK's own DuplicateFilter, which passes one identical warning per 20 s:
    # behind it, most drops would go uncounted.
    logger.filters.insert(0, dropped)
    return dropped


def _exporter() -> SpanExporter | None:
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if kind == "none":
        return None
    if kind == "console":
        return ConsoleSpanExporter()
    if kind != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={kind!r} is not supported (otlp, console, none)")
    from .otlp import otlp_http_exporter

    return otlp_http_exporter()


def build_tracer_provider(service: str, exporter: SpanExporter | None = None) -> TracerProvider | None:
    """A provider for this process, or None when tracing is off (OTEL_SDK_DISABLED)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES still win, as the spec says.
    resource = Resource.create({SERVICE_NAME: service, SERVICE_VERSION: __version__})
    provider = TracerProvider(resource=resource)
    exporter = exporter if exporter is not None else _exporter()
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    return provider


def tracer_for(provider: TracerProvider | None) -> trace.Tracer:
    if provider is None:
        return trace.NoOpTracer()
    return provider.get_tracer(TRACER_NAME, __version__)


# Requests that make no span: probes and scrapes (exact paths).
UNTRACED_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class ServerSpans:
    """A SERVER span per HTTP request, named by URL rule, with the stable HTTP attributes.

    Written here instead of opentelemetry-instrumentation-flask: the generic WSGI
    instrumentation collected a dozen attributes and ran its own hooks per request, a large
    share of the router's own cost; this keeps the span, the W3C context extraction and
    the names, and nothing else.
    """

    def __init__(self, tracer: trace.Tracer) -> None:
        self.tracer = tracer

    def start(self, method: str, route: str, path: str, headers, scheme: str) -> tuple[trace.Span, object]:
        parent = propagate.extract(headers)
        span = self.tracer.start_span(
            f"{method} {route}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "http.route": route, "url.path": path, "url.scheme": scheme},
        )
        token = context.attach(trace.set_span_in_context(span))
        return span, token

    @staticmethod
    def finish(span: trace.Span, token: object, status: int) -> None:
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()
        try:
            context.detach(token)
        except ValueError:  # already detached (a stream closed in another context)
            pass
