"""OpenTelemetry tracing, configured by the standard OTEL_* environment variables.

Spans leave through a BatchSpanProcessor: exporting runs on its own thread, so a slow or
unreachable collector costs a dropped batch, never a slower request.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

from .. import __version__

TRACER_NAME = "llm_router"


def _exporter() -> SpanExporter | None:
    kind = os.environ.get("OTEL_TRACES_EXPORTER", "otlp").strip().lower()
    if kind == "none":
        return None
    if kind == "console":
        return ConsoleSpanExporter()
    if kind != "otlp":
        raise ValueError(f"OTEL_TRACES_EXPORTER={kind!r} is not supported (otlp, console, none)")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


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
