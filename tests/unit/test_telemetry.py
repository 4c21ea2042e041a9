"""Spans, log lines and exemplars: what the router tells operators about a request."""

from __future__ import annotations

import json
import random
import string

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from conftest import chat_body, config_dict, parse_metrics, quiet_models, serving, stuck_span_queue, as_tenant
from llm_router.app import Telemetry


@pytest.fixture
def spans():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def test_chat_span_has_gen_ai_attributes_and_parents(make_app, spans):
    provider, exporter = spans
    client = make_app(tracer_provider=provider).test_client()
    response = client.post("/v1/chat/completions", json=chat_body("sim-coder", max_tokens=30, temperature=0.2))
    assert response.status_code == 200
    finished = {span.name: span for span in exporter.get_finished_spans()}
    chat = finished["chat sim-coder"]
    server = finished["POST /v1/chat/completions"]
    assert chat.kind == SpanKind.CLIENT and server.kind == SpanKind.SERVER
    assert chat.parent.span_id == server.context.span_id
    # Routing and the cache lookup are attributes of the server span, not spans of their own.
    assert set(finished) == {"chat sim-coder", "POST /v1/chat/completions"}
    assert server.attributes["llm_router.cache.result"] == "miss"
    assert server.attributes["llm_router.model.requested"] == "sim-coder"
    assert server.attributes["llm_router.model.selected"] == "sim-coder"
    assert server.attributes["llm_router.strategy"] == "balanced"
    assert server.attributes["llm_router.candidates"][0] == "sim-coder"
    usage = response.get_json()["usage"]
    assert dict(chat.attributes) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "simulated",
        "gen_ai.request.model": "sim-coder",
        "gen_ai.request.max_tokens": 30,
        "gen_ai.request.temperature": 0.2,
        "gen_ai.response.model": "sim-coder",
        "gen_ai.usage.input_tokens": usage["prompt_tokens"],
        "gen_ai.usage.output_tokens": usage["completion_tokens"],
        "gen_ai.response.finish_reasons": (response.get_json()["choices"][0]["finish_reason"],),
        "llm_router.stream": False,
    }
    assert response.headers["X-Trace-ID"] == format(server.context.trace_id, "032x")


def test_failed_attempts_are_error_spans_with_error_type(make_app, spans, monkeypatch):
    monkeypatch.setenv("LLM_ROUTER_ADMIN_TOKEN", "t")
    provider, exporter = spans
    client = make_app(tracer_provider=provider).test_client()
    client.post("/admin/faults", json={"model": "sim-fast", "error_kind": "rate_limited"}, headers={"Authorization": "Bearer t"})
    exporter.clear()
    client.post("/v1/chat/completions", json=chat_body("sim-fast"))
    attempts = [s for s in exporter.get_finished_spans() if s.name.startswith("chat ")]
    assert [s.name for s in attempts] == ["chat sim-fast", "chat sim-fast", "chat sim-mini"]
    assert [s.attributes.get("error.type") for s in attempts] == ["rate_limited", "rate_limited", None]
    assert attempts[0].status.status_code.name == "ERROR"


def test_stream_span_ends_with_the_stream(make_app, spans):
    provider, exporter = spans
    client = make_app(tracer_provider=provider).test_client()
    body = client.post("/v1/chat/completions", json=chat_body("sim-mini", stream=True)).get_data(as_text=True)
    chat = next(s for s in exporter.get_finished_spans() if s.name == "chat sim-mini")
    assert chat.attributes["llm_router.stream"] is True
    assert chat.attributes["gen_ai.usage.output_tokens"] == body.count('"content"') - 0  # one content delta per token


def test_trace_context_reaches_openai_compatible_upstreams(make_app, spans):
    provider, exporter = spans
    upstream = make_app(tracer_provider=provider)
    with serving(upstream) as url:
        data = quiet_models(config_dict())
        data["models"] = [{
            "id": "remote", "provider": "openai", "upstream_model": "sim-fast", "quality": 0.5,
            "base_url": f"{url}/v1", "price": {"input_per_1k": 0, "output_per_1k": 0},
        }]
        make_app(data, tracer_provider=provider).test_client().post("/v1/chat/completions", json=chat_body("remote"))
    finished = exporter.get_finished_spans()
    client_span = next(s for s in finished if s.name == "chat remote")
    upstream_server = next(s for s in finished if s.kind == SpanKind.SERVER and s.parent is not None and s.parent.is_remote)
    assert upstream_server.context.trace_id == client_span.context.trace_id
    assert upstream_server.parent.span_id == client_span.context.span_id


def test_access_line_carries_request_facts_and_trace_ids(make_app, spans, json_lines):
    provider, exporter = spans
    client = make_app(tracer_provider=provider).test_client()
    response = client.post(
        "/v1/chat/completions", json=chat_body("sim-balanced", content="secret prompt"), headers={**as_tenant("research")}
    )
    access = [line for line in json_lines() if line["logger"] == "llm_router.access"]
    assert len(access) == 1
    line = access[0]
    assert line["time"].endswith("Z") and "T" in line["time"]
    assert line["level"] == "info" and line["service"] == "llm-router"
    assert line["request_id"] == response.headers["X-Request-ID"]
    assert line["trace_id"] == response.headers["X-Trace-ID"]
    assert len(line["span_id"]) == 16
    assert {k: line[k] for k in ("tenant", "model", "strategy", "status", "cache")} == {
        "tenant": "research", "model": "sim-balanced", "strategy": "balanced", "status": 200, "cache": "miss"}
    assert line["output_tokens"] == response.get_json()["usage"]["completion_tokens"]
    assert line["cost_usd"] > 0 and line["duration_ms"] > 0
    assert "secret prompt" not in json.dumps(json_lines())


def test_prompt_text_is_logged_only_when_enabled(make_app, json_lines):
    client = make_app(telemetry=Telemetry(log_content=True)).test_client()
    client.post("/v1/chat/completions", json=chat_body(content="visible prompt"))
    access = next(line for line in json_lines() if line["logger"] == "llm_router.access")
    assert access["prompt"] == [{"role": "user", "content": "visible prompt"}]
    assert access["completion"]


def test_events_are_logged_with_trace_ids(make_app, spans, json_lines, monkeypatch):
    monkeypatch.setenv("LLM_ROUTER_ADMIN_TOKEN", "t")
    provider, _ = spans
    data = quiet_models(config_dict())
    data["routing"]["circuit_breaker"] = {"failure_threshold": 2, "reset_timeout_seconds": 60}
    client = make_app(data, tracer_provider=provider).test_client()
    client.post("/admin/faults", json={"model": "sim-coder"}, headers={"Authorization": "Bearer t"})
    client.post("/v1/chat/completions", json=chat_body("sim-coder"))
    events = {line.get("event"): line for line in json_lines() if line["logger"] == "llm_router.events"}
    assert {"fault_injected", "fallback", "circuit_state_changed"} <= set(events)
    assert events["fallback"]["from_model"] == "sim-coder" and events["fallback"]["to_model"] == "sim-frontier"
    assert events["circuit_state_changed"]["to_state"] == "open"
    assert len(events["fallback"]["trace_id"]) == 32


def test_exemplars_carry_trace_ids_in_single_process_openmetrics(make_app, spans):
    provider, _ = spans
    client = make_app(tracer_provider=provider).test_client()
    trace_id = client.post("/v1/chat/completions", json=chat_body("sim-fast")).headers["X-Trace-ID"]
    text = client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}).get_data(as_text=True)
    exemplar_lines = [l for l in text.splitlines() if l.startswith("llm_router_chat_request_duration_seconds_bucket") and "#" in l]
    assert any(f'trace_id="{trace_id}"' in line for line in exemplar_lines)
    plain = client.get("/metrics").get_data(as_text=True)
    assert "trace_id=" not in plain


def test_telemetry_switches_turn_layers_off(make_app, spans, json_lines):
    provider, exporter = spans
    client = make_app(telemetry=Telemetry(metrics=False, logs=False, traces=False), tracer_provider=provider).test_client()
    response = client.post("/v1/chat/completions", json=chat_body())
    assert response.status_code == 200
    assert exporter.get_finished_spans() == ()
    assert [l for l in json_lines() if l["logger"] == "llm_router.access"] == []
    assert client.get("/metrics").status_code == 404
    # Turned back on for the tests that follow (logging is process-wide).
    make_app()


def test_random_headers_and_models_never_create_series(client):
    """Thousands of random tenants, keys, models and strategies: the label sets do not grow."""
    rng = random.Random(7)

    def word():
        return "".join(rng.choices(string.ascii_letters + string.digits + "-_.", k=rng.randint(1, 40)))

    for _ in range(3):  # warm up every legitimate series shape once
        client.post("/v1/chat/completions", json=chat_body())
        client.post("/v1/chat/completions", json=chat_body(word()))
        client.post("/v1/chat/completions", json=chat_body(), headers={"X-Tenant-ID": word()})
        client.post("/v1/chat/completions", json=chat_body(), headers={"X-Route-Strategy": word()})
        client.get("/" + word())
        client.post("/v1/" + word(), json=chat_body())

    def label_values():
        samples = parse_metrics(client.get("/metrics").get_data(as_text=True))
        values: dict[str, set] = {}
        for name, labels in samples:
            for key, value in labels:
                values.setdefault(key, set()).add(value)
        return values, {key for key in samples}

    before_values, before_series = label_values()
    for i in range(2000):
        headers = {"X-Tenant-ID": word()} if i % 4 == 0 else {}
        if i % 4 == 1:
            headers["Authorization"] = f"Bearer {word()}"
        if i % 4 == 2:
            headers["X-Route-Strategy"] = word()
        model = word() if i % 4 == 3 else "auto"
        path = "/v1/chat/completions" if i % 10 else "/v1/" + word()
        response = client.post(path, json=chat_body(model), headers=headers)
        assert response.status_code < 500
    after_values, after_series = label_values()
    assert after_series == before_series
    assert {"other", "anonymous"} <= after_values["tenant"] and "unknown" in after_values["model"]


def test_a_full_span_queue_is_counted_and_summarised_not_logged_per_span(make_app, json_lines):
    """The SDK's batch processor warns about dropped spans (de-duplicated over 20 s); the
    router counts every drop and writes one summary line per interval (a real processor,
    queue of 2, an exporter that never returns until released)."""
    from llm_router.telemetry import tracing

    def dropped_so_far(client) -> float:
        return parse_metrics(client.get("/metrics").get_data(as_text=True))[("llm_router_spans_dropped_total", frozenset())]

    with stuck_span_queue(2) as provider:
        client = make_app(tracer_provider=provider).test_client()
        before = dropped_so_far(client)
        for _ in range(6):
            response = client.post("/v1/chat/completions", json=chat_body("sim-fast"), headers={"Cache-Control": "no-cache"})
            assert response.status_code == 200
        dropped = dropped_so_far(client) - before
    # 12 spans (server + chat per request), at most 2 queued and 1 being exported.
    assert 9 <= dropped <= 12
    summaries = [line for line in json_lines() if line.get("event") == "spans_dropped"]
    assert [line["dropped"] for line in summaries] == [1]  # the first drop; the rest wait for the interval
    assert not [line for line in json_lines() if "Queue full" in line.get("message", "")]
    tracing.install_dropped_span_filter(None).flush()
    assert [line["dropped"] for line in json_lines() if line.get("event") == "spans_dropped"] == [1, dropped - 1]


def test_log_lines_stay_whole_when_threads_log_at_once():
    """LineHandler formats outside its lock: lines written by many threads together are
    each one whole JSON object on its own line."""
    import io
    import logging
    import threading

    from llm_router.telemetry.logs import ContextFilter, LineHandler, RouterJsonFormatter

    stream = io.StringIO()
    handler = LineHandler(stream)
    handler.setFormatter(RouterJsonFormatter())
    handler.addFilter(ContextFilter("test"))
    logger = logging.getLogger("llm_router.test.lines")
    logger.propagate = False
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    def burst(n: int) -> None:
        for i in range(200):
            logger.info("line", extra={"writer": n, "i": i, "padding": "x" * (i % 50)})

    threads = [threading.Thread(target=burst, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    logger.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1600
    parsed = [json.loads(line) for line in lines]
    assert sorted((p["writer"], p["i"]) for p in parsed) == [(n, i) for n in range(8) for i in range(200)]
