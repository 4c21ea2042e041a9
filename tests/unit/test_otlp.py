"""telemetry/otlp.py writes the same OTLP request as the library's encoder: both are parsed
with the official generated classes and compared, over spans that use every field."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as library_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState
from opentelemetry.trace import set_span_in_context

from llm_router.telemetry import otlp


def varied_spans():
    exporter = InMemorySpanExporter()
    spans = []
    for resource in (Resource.create({"service.name": "a", "n": 3}), Resource({}, schema_url="https://example/s")):
        provider = TracerProvider(resource=resource)
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        for scope, version in (("llm_router", "0.1.0"), ("other", None)):
            tracer = provider.get_tracer(scope, version)
            remote = SpanContext(0x1234, 0x5678, is_remote=True, trace_flags=TraceFlags(1),
                                 trace_state=TraceState([("vendor", "v1"), ("x", "y")]))
            with tracer.start_as_current_span("parent", context=set_span_in_context(NonRecordingSpan(remote)),
                                              kind=SpanKind.SERVER) as parent:
                parent.set_attributes({
                    "s": "text", "empty": "", "t": True, "f": False, "i": 42, "zero": 0, "neg": -7,
                    "big": 2**62, "d": 0.25, "strings": ("a", "b"), "ints": (1, -2), "bools": (True, False),
                    "floats": (1.5,), "unicode": "é✓",
                })
                parent.add_event("something", {"k": "v", "n": 1})
                parent.add_event("bare")
                for kind in (SpanKind.CLIENT, SpanKind.INTERNAL, SpanKind.PRODUCER, SpanKind.CONSUMER):
                    child = tracer.start_span(f"child {kind.name}", kind=kind, links=[
                        Link(remote, {"why": "batch"}), Link(SpanContext(9, 10, is_remote=False))])
                    child.set_status(Status(StatusCode.ERROR, "it broke"))
                    child.end()
                parent.set_status(Status(StatusCode.OK))
            root = tracer.start_span("")  # no name, no parent, no attributes
            root.end()
    spans.extend(exporter.get_finished_spans())
    return spans


def test_encoding_equals_the_library_encoding():
    spans = varied_spans()
    assert len(spans) == 24
    ours = ExportTraceServiceRequest.FromString(otlp.encode_spans(spans))
    theirs = ExportTraceServiceRequest.FromString(library_encode(spans).SerializeToString())
    assert ours == theirs
    # Twice: the second pass comes from the key/value cache.
    assert ExportTraceServiceRequest.FromString(otlp.encode_spans(spans)) == theirs
    assert otlp._cached_key_value.cache_info().hits > 0


def test_the_cache_keeps_true_apart_from_one():
    spans = []
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("t")
    for value in (1, True, 1.0, "1", 0, False):
        tracer.start_span("s", attributes={"v": value}).end()
    spans = exporter.get_finished_spans()
    ours = ExportTraceServiceRequest.FromString(otlp.encode_spans(spans))
    assert ours == ExportTraceServiceRequest.FromString(library_encode(spans).SerializeToString())
    kinds = [span.attributes[0].value.WhichOneof("value") for span in ours.resource_spans[0].scope_spans[0].spans]
    assert kinds == ["int_value", "bool_value", "double_value", "string_value", "int_value", "bool_value"]


def test_the_exporter_posts_what_the_encoder_writes(monkeypatch):
    """The real OTLP/HTTP exporter, pointed at a local sink, sends the fast encoding."""
    received: list[bytes] = []

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{server.server_port}/v1/traces")
        exporter = otlp.otlp_http_exporter()
        spans = varied_spans()
        assert exporter.export(spans).name == "SUCCESS"
        exporter.shutdown()
    finally:
        server.shutdown()
    assert received == [otlp.encode_spans(spans)]
