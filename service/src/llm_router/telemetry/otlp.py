"""OTLP span batches encoded straight to protobuf bytes.

The OTLP/HTTP exporter encodes each batch through opentelemetry-exporter-otlp-proto-common,
which builds a protobuf message object for every span, attribute and value: measured here
at about 36 µs per span plus 7-8 µs per attribute, more than creating the spans cost, and
paid on the export thread while request threads wait for the GIL. This module writes the
same ExportTraceServiceRequest directly (the protobuf wire format is small and stable:
varints, fixed64/fixed32 and length-delimited fields), and caches the encoding of
attribute key/value pairs, which repeat from span to span (methods, routes, model ids).

tests/unit/test_otlp.py parses what this writes with the official generated classes and
compares it with the library's own encoding of the same spans, field by field.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from functools import lru_cache

from opentelemetry.trace import SpanKind

_Q = struct.Struct("<Q").pack
_I = struct.Struct("<I").pack
_D = struct.Struct("<d").pack

# opentelemetry.proto.trace.v1.Span.SpanKind
_KIND = {SpanKind.INTERNAL: 1, SpanKind.SERVER: 2, SpanKind.CLIENT: 3, SpanKind.PRODUCER: 4, SpanKind.CONSUMER: 5}
# Span.flags (SpanFlags): whether the parent's remoteness is known, and whether it is remote.
_HAS_IS_REMOTE, _IS_REMOTE = 0x100, 0x200


_SMALL = [bytes((i,)) for i in range(128)]


def _varint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return _SMALL[n]
    if n < 0:
        n &= 0xFFFFFFFFFFFFFFFF  # int64 on the wire: two's complement, ten bytes
    if n < 0x80:
        return bytes((n,))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Tags of length-delimited fields 1..16, precomputed.
_LEN_TAGS = [b""] + [_varint(number << 3 | 2) for number in range(1, 17)]


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (strings, bytes, messages)."""
    size = len(payload)
    return _LEN_TAGS[number] + (_SMALL[size] if size < 0x80 else _varint(size)) + payload


def _any_value(value) -> bytes:
    """An AnyValue message; its oneof is always written, even at a default value."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(1, value.encode("utf-8"))
    if isinstance(value, int):
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _D(value)
    if isinstance(value, bytes):
        return _field(7, value)
    if isinstance(value, Sequence):
        return _field(5, b"".join(_field(1, _any_value(item)) for item in value))
    if isinstance(value, Mapping):
        return _field(6, b"".join(_field(1, _key_value(str(k), v)) for k, v in value.items()))
    raise TypeError(f"attribute value of type {type(value).__name__}")


def _key_value(key: str, value) -> bytes:
    return (_field(1, key.encode("utf-8")) if key else b"") + _field(2, _any_value(value))


@lru_cache(maxsize=8192)
def _cached_key_value(number: int, key: str, kind: type, value) -> bytes:
    """The whole field (tag, length, KeyValue) of an attribute, for values that repeat."""
    return _field(number, _key_value(key, value))


def _attributes(number: int, attributes) -> bytes:
    if not attributes:
        return b""
    parts = []
    for key, value in attributes.items():
        kind = type(value)
        # Scalars and tuples of strings repeat and hash; `kind` keeps True apart from 1.
        if kind in (str, bool, int, float) or (kind is tuple and all(type(v) is str for v in value)):
            parts.append(_cached_key_value(number, key, kind, value))
        else:
            parts.append(_field(number, _key_value(key, value)))
    return b"".join(parts)


def _flags(parent) -> bytes:
    flags = _HAS_IS_REMOTE | (_IS_REMOTE if parent is not None and parent.is_remote else 0)
    return _I(flags)


def _status(status) -> bytes:
    if status is None:
        return b""
    body = b""
    if status.description:
        body += _field(2, status.description.encode("utf-8"))
    if status.status_code.value:
        body += b"\x18" + _varint(status.status_code.value)
    return _field(15, body)


def _event(event) -> bytes:
    body = b""
    if event.timestamp:
        body += b"\x09" + _Q(event.timestamp)
    if event.name:
        body += _field(2, event.name.encode("utf-8"))
    body += _attributes(3, event.attributes)
    if event.dropped_attributes:
        body += b"\x20" + _varint(event.dropped_attributes)
    return _field(11, body)


def _link(link) -> bytes:
    body = b"\x0a\x10" + link.context.trace_id.to_bytes(16, "big") + b"\x12\x08" + link.context.span_id.to_bytes(8, "big")
    body += _attributes(4, link.attributes)
    if link.dropped_attributes:
        body += b"\x28" + _varint(link.dropped_attributes)
    body += b"\x35" + _flags(link.context)
    return _field(13, body)


def _span(span) -> bytes:
    context = span.context
    parts = [b"\x0a\x10", context.trace_id.to_bytes(16, "big"), b"\x12\x08", context.span_id.to_bytes(8, "big")]
    if context.trace_state:
        state = ",".join(f"{k}={v}" for k, v in context.trace_state.items())
        if state:
            parts.append(_field(3, state.encode("utf-8")))
    parent = span.parent
    if parent is not None:
        parts += [b"\x22\x08", parent.span_id.to_bytes(8, "big")]
    if span.name:
        parts.append(_field(5, span.name.encode("utf-8")))
    kind = _KIND[span.kind]
    parts.append(b"\x30" + _varint(kind))
    if span.start_time:
        parts.append(b"\x39" + _Q(span.start_time))
    if span.end_time:
        parts.append(b"\x41" + _Q(span.end_time))
    parts.append(_attributes(9, span.attributes))
    if span.dropped_attributes:
        parts.append(b"\x50" + _varint(span.dropped_attributes))
    for event in span.events:
        parts.append(_event(event))
    if span.dropped_events:
        parts.append(b"\x60" + _varint(span.dropped_events))
    for link in span.links:
        parts.append(_link(link))
    if span.dropped_links:
        parts.append(b"\x70" + _varint(span.dropped_links))
    parts.append(_status(span.status))
    parts.append(b"\x85\x01" + _flags(parent))  # field 16, fixed32
    return _field(2, b"".join(parts))  # ScopeSpans.spans


def _scope(scope) -> bytes:
    if scope is None:
        return _field(1, b"")
    body = b""
    if scope.name:
        body += _field(1, scope.name.encode("utf-8"))
    if scope.version:
        body += _field(2, scope.version.encode("utf-8"))
    body += _attributes(3, scope.attributes)
    return _field(1, body)


def encode_spans(spans) -> bytes:
    """An ExportTraceServiceRequest for ``spans``, grouped by resource, then scope."""
    # Grouped by identity: hashing a Resource serialises its attributes to JSON every time,
    # and the SDK hands every span of a provider the same Resource and scope objects.
    grouped: dict = {}
    for span in spans:
        resource, scope = span.resource, span.instrumentation_scope or None
        scopes = grouped.setdefault(id(resource), (resource, {}))[1]
        scopes.setdefault(id(scope), (scope, []))[1].append(_span(span))
    out = []
    for resource, scopes in grouped.values():
        body = [_field(1, _attributes(1, resource.attributes))]
        for scope, encoded in scopes.values():
            scope_body = _scope(scope) + b"".join(encoded)
            if scope is not None and scope.schema_url:
                scope_body += _field(3, scope.schema_url.encode("utf-8"))
            body.append(_field(2, scope_body))
        if resource.schema_url:
            body.append(_field(3, resource.schema_url.encode("utf-8")))
        out.append(_field(1, b"".join(body)))
    return b"".join(out)


class EncodedSpans:
    """What the OTLP/HTTP exporter expects from its encoder: an object it serialises."""

    __slots__ = ("data",)

    def __init__(self, spans) -> None:
        self.data = encode_spans(spans)

    def SerializePartialToString(self) -> bytes:  # noqa: N802 (the protobuf method name)
        return self.data

    SerializeToString = SerializePartialToString


def otlp_http_exporter():
    """The OTLP/HTTP span exporter (configured by OTEL_EXPORTER_OTLP_*), encoding with this
    module: its module-level encoder is swapped for EncodedSpans, everything else (HTTP,
    retries, size limit, its own metrics) is the library's."""
    from opentelemetry.exporter.otlp.proto.http import trace_exporter

    trace_exporter.encode_spans = EncodedSpans
    return trace_exporter.OTLPSpanExporter()
