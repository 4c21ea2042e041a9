"""Quality and health signals of the router: finish reasons, per-tenant latency, config and
model load times, and backend health probes."""

from __future__ import annotations

import threading
import time

import pytest

from conftest import chat_body, config_dict, metric_sum, parse_metrics, quiet_models, serving, as_tenant

CHAT = "/v1/chat/completions"
ADMIN_TOKEN = "signals-admin-token"


def _config(**overrides) -> dict:
    # No background probes unless a test asks: most tests read exact metric deltas.
    overrides.setdefault("health_probes", {"enabled": False})
    return quiet_models(config_dict(**overrides))


def _metrics(client) -> dict:
    return parse_metrics(client.get("/metrics").get_data(as_text=True))


class Delta:
    """Metric changes of one client between construction and `take()`: the registry is shared
    by every app of the test process, so tests compare before and after."""

    def __init__(self, client) -> None:
        self.client = client
        self.before = _metrics(client)

    def take(self):
        after = _metrics(self.client)
        return lambda name, **labels: metric_sum(after, name, **labels) - metric_sum(self.before, name, **labels)


# --- finish reasons ---------------------------------------------------------------------------


def test_finish_reason_labels():
    from llm_router.telemetry.signals import finish_reason_label

    assert [finish_reason_label(200, reason) for reason in ("stop", "length", "content_filter", "tool_calls")] == [
        "stop", "length", "content_filter", "tool_calls"]
    assert finish_reason_label(200, "function_call") == "other"  # an upstream's own value
    assert finish_reason_label(200, None) == "other"
    assert finish_reason_label(499, None) == "cancelled"
    assert [finish_reason_label(code, None) for code in (429, 500, 502, 503, 504)] == ["error"] * 5
    assert [finish_reason_label(code, None) for code in (400, 401, 402, 403, 404, 413, 415)] == [None] * 7


def test_stop_length_and_not_counted_rejections(make_app):
    client = make_app(_config()).test_client()
    delta = Delta(client)
    assert client.post(CHAT, json=chat_body("sim-fast", max_tokens=1)).status_code == 200  # cut at max_tokens
    assert client.post(CHAT, json=chat_body("sim-fast", content="no limit")).status_code == 200
    assert client.post(CHAT, json=chat_body("sim-fast", stream=True)).get_data(as_text=True).endswith("[DONE]\n\n")
    assert client.post(CHAT, json={"model": "sim-fast"}).status_code == 400
    assert client.post(CHAT, json=chat_body("nope")).status_code == 404
    changed = delta.take()
    assert changed("llm_router_finish_reasons_total", model="sim-fast", reason="length") == 1
    assert changed("llm_router_finish_reasons_total", model="sim-fast", reason="stop") == 2
    assert changed("llm_router_finish_reasons_total") == 3  # the 400 and the 404 reached no model


def test_content_filter(make_app):
    data = _config()
    for model in data["models"]:
        model["simulation"]["content_filter_rate"] = 1.0 if model["id"] == "sim-mini" else 0.0
    client = make_app(data).test_client()
    delta = Delta(client)
    response = client.post(CHAT, json=chat_body("sim-mini"))
    assert response.get_json()["choices"][0]["finish_reason"] == "content_filter"
    assert response.get_json()["usage"]["completion_tokens"] >= 1
    stream = client.post(CHAT, json=chat_body("sim-mini", stream=True, content="streamed")).get_data(as_text=True)
    assert '"finish_reason":"content_filter"' in stream
    cached = client.post(CHAT, json=chat_body("sim-mini"))
    assert cached.headers["X-Router-Cache"] == "hit"
    changed = delta.take()
    assert changed("llm_router_finish_reasons_total", model="sim-mini", reason="content_filter") == 3


def test_content_filter_rate_is_validated():
    from llm_router.config import ConfigError, parse_config

    data = config_dict()
    data["models"][0]["simulation"]["content_filter_rate"] = 1.5
    with pytest.raises(ConfigError, match="content_filter_rate"):
        parse_config(data)


def test_errors_and_cancelled_streams(make_app):
    data = config_dict(health_probes={"enabled": False})
    for model in data["models"]:
        model["simulation"].update(error_rate=1.0 if model["id"] == "sim-coder" else 0.0,
                                   error_kinds={"server_error": 1.0})
        model["fallbacks"] = []
    client = make_app(data).test_client()
    delta = Delta(client)
    assert client.post(CHAT, json=chat_body("sim-coder")).status_code == 502
    stream = client.post(CHAT, json=chat_body("sim-balanced", stream=True), buffered=False)
    assert stream.status_code == 200
    next(stream.response)  # the first event, then the client goes away
    stream.close()
    changed = delta.take()
    assert changed("llm_router_finish_reasons_total", model="sim-coder", reason="error") == 1
    assert changed("llm_router_finish_reasons_total", model="sim-balanced", reason="cancelled") == 1
    assert changed("llm_router_chat_requests_total", model="sim-balanced", code="499") == 1
    assert changed("llm_router_finish_reasons_total") == 2


def test_openai_compatible_upstream_finish_reason_passes_through(make_app):
    """An upstream's own finish_reason reaches the client unchanged and counts as `other`."""
    from flask import Flask, jsonify

    upstream = Flask("upstream")

    @upstream.post("/v1/chat/completions")
    def complete():
        return jsonify(model="up", choices=[{"index": 0, "message": {"role": "assistant", "content": "hi"},
                                             "finish_reason": "function_call"}],
                       usage={"prompt_tokens": 1, "completion_tokens": 1})

    with serving(upstream) as url:
        data = _config()
        data["models"] = [{"id": "upstream", "provider": "openai", "base_url": f"{url}/v1",
                           "price": {"input_per_1k": 0, "output_per_1k": 0}, "quality": 0.5}]
        client = make_app(data).test_client()
        delta = Delta(client)
        response = client.post(CHAT, json=chat_body("upstream"))
        assert response.get_json()["choices"][0]["finish_reason"] == "function_call"
        assert delta.take()("llm_router_finish_reasons_total", model="upstream", reason="other") == 1


# --- latency by tenant, load times ----------------------------------------------------------------


def test_tenant_request_duration_counts_answered_requests(make_app):
    client = make_app(_config()).test_client()
    delta = Delta(client)
    assert client.post(CHAT, json=chat_body(), headers={**as_tenant("support")}).status_code == 200
    stream = client.post(CHAT, json=chat_body(stream=True), headers={**as_tenant("support")})
    assert stream.get_data(as_text=True).endswith("[DONE]\n\n")  # counted when the stream ends
    assert client.post(CHAT, json={}, headers={**as_tenant("support")}).status_code == 400
    changed = delta.take()
    assert changed("llm_router_tenant_request_duration_seconds_count", tenant="support") == 2
    assert changed("llm_router_tenant_request_duration_seconds_bucket", tenant="support", le="+Inf") == 2


def test_config_and_model_load_durations(make_app):
    from llm_router.telemetry import metrics as m

    config_before = m.CONFIG_LOAD_DURATION.collect()[0]
    app = make_app(_config())
    samples = _metrics(app.test_client())
    model_ids = [model.id for model in app.extensions["llm_router"].config.models]
    for model in model_ids:
        assert metric_sum(samples, "llm_router_model_load_duration_seconds_count", model=model) >= 1
    counts = [s.value for s in config_before.samples if s.name.endswith("_count")]
    assert metric_sum(samples, "llm_router_config_load_duration_seconds_count") == counts[0] + 1
    # One more app: exactly one more observation each.
    before = samples
    after = _metrics(make_app(_config()).test_client())
    assert metric_sum(after, "llm_router_config_load_duration_seconds_count") \
        - metric_sum(before, "llm_router_config_load_duration_seconds_count") == 1
    for model in model_ids:
        assert metric_sum(after, "llm_router_model_load_duration_seconds_count", model=model) \
            - metric_sum(before, "llm_router_model_load_duration_seconds_count", model=model) == 1


# --- health probes ----------------------------------------------------------------------------------


def _up(client, model: str) -> float | None:
    return _metrics(client).get(("llm_router_backend_up", frozenset({("model", model)})))


def _probe_config(**overrides) -> dict:
    """Models of their own: the probe series are per model and process-wide, and the probe
    threads of other tests' apps keep probing the shipped models."""
    data = _config(**overrides)
    data["models"] = [
        {"id": model_id, "provider": "simulated", "price": {"input_per_1k": 0, "output_per_1k": 0}, "quality": 0.5}
        for model_id in PROBED
    ]
    return data


PROBED = ("probe-test-a", "probe-test-b", "probe-test-c")


def test_probe_success_and_failure_with_an_injected_fault(make_app, monkeypatch, json_lines):
    monkeypatch.setenv("LLM_ROUTER_ADMIN_TOKEN", ADMIN_TOKEN)
    app = make_app(_probe_config())
    client = app.test_client()
    prober = app.extensions["llm_router"].prober
    a, b, _ = PROBED
    delta = Delta(client)
    assert prober.probe_all() == {model: True for model in PROBED}
    assert _up(client, a) == 1
    injected = client.post("/admin/faults", json={"model": a, "error_rate": 1, "duration_seconds": 60},
                           headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert injected.status_code == 201
    assert prober.probe(a) is False
    assert _up(client, a) == 0 and _up(client, b) == 1
    changed = delta.take()
    assert changed("llm_router_backend_probe_duration_seconds_count", model=a, outcome="success") == 1
    assert changed("llm_router_backend_probe_duration_seconds_count", model=a, outcome="failure") == 1
    assert changed("llm_router_backend_probe_duration_seconds_count", model=b, outcome="success") == 1
    # Probes are not requests: no backend call counted, no circuit moved.
    assert changed("llm_router_backend_requests_total", model=a) == 0
    assert changed("llm_router_circuit_breaker_transitions_total", model=a) == 0
    failed = [line for line in json_lines() if line.get("event") == "backend_probe_failed" and line["model"] in PROBED]
    assert [(line["model"], line["error_type"], line["level"]) for line in failed] == [(a, "server_error", "warning")]

    client.delete("/admin/faults", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
    assert prober.probe(a) is True and _up(client, a) == 1


def test_a_slow_backend_fails_its_probe_at_the_probe_timeout(make_app):
    from llm_router.faults import Fault

    app = make_app(_probe_config(health_probes={"enabled": False, "timeout_seconds": 0.05}))
    app.extensions["llm_router"].router.faults.inject(PROBED[0], Fault(latency_ms=60_000), 60)
    started = time.perf_counter()
    assert app.extensions["llm_router"].prober.probe(PROBED[0]) is False
    assert time.perf_counter() - started < 5  # the 60 s fault was cut at the probe timeout


def test_openai_compatible_probe_asks_for_the_model_list(make_app, monkeypatch):
    from flask import Flask, jsonify, request

    upstream = Flask("upstream")
    seen: list[str | None] = []

    @upstream.get("/v1/models")
    def models():
        seen.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != "Bearer right-key":
            return jsonify(error="no"), 401
        return jsonify(object="list", data=[])

    with serving(upstream) as url:
        data = _config()
        data["models"] = [{"id": "upstream", "provider": "openai", "base_url": f"{url}/v1",
                           "api_key_env": "SIGNALS_UPSTREAM_KEY", "price": {"input_per_1k": 0, "output_per_1k": 0},
                           "quality": 0.5}]
        monkeypatch.setenv("SIGNALS_UPSTREAM_KEY", "right-key")
        assert make_app(data).extensions["llm_router"].prober.probe("upstream") is True
        monkeypatch.setenv("SIGNALS_UPSTREAM_KEY", "wrong-key")
        assert make_app(data).extensions["llm_router"].prober.probe("upstream") is False
    assert seen == ["Bearer right-key", "Bearer wrong-key"]
    data["models"][0]["base_url"] = "http://127.0.0.1:9/v1"  # nothing listens there
    assert make_app(data).extensions["llm_router"].prober.probe("upstream") is False


def test_probe_loop_runs_at_start_and_repeats_without_blocking(make_app, monkeypatch):
    """The first probe starts at once on its own thread; a stuck probe holds up neither the
    start nor requests; the loop repeats and stops cleanly."""
    from llm_router.backends.simulated import SimulatedBackend

    release = threading.Event()
    calls: list[str] = []
    original = SimulatedBackend.probe

    def gated(self, timeout):
        if self.model.id not in PROBED:  # another test's app, still probing the shipped models
            return original(self, timeout)
        calls.append(self.model.id)
        release.wait(10)
        return original(self, timeout)

    monkeypatch.setattr(SimulatedBackend, "probe", gated)
    app = make_app(_probe_config(health_probes={"enabled": True, "interval_seconds": 0.05}))
    client = app.test_client()
    prober = app.extensions["llm_router"].prober
    try:
        assert client.post(CHAT, json=chat_body()).status_code == 200  # served while a probe hangs
        deadline = time.monotonic() + 10
        while not calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert calls == [PROBED[0]]  # started, and still stuck in the first model
        release.set()
        models = len(app.extensions["llm_router"].config.models)
        while len(calls) < 2 * models and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(calls) >= 2 * models  # a second round after the interval
        assert _up(client, PROBED[-1]) == 1
    finally:
        release.set()
        prober.stop(timeout=5)
    assert not prober._thread.is_alive()


def test_health_probe_config_is_validated():
    from llm_router.config import ConfigError, parse_config

    for bad in ({"interval_seconds": 0}, {"timeout_seconds": 0}, {"enabled": "sometimes"}, {"every": 5}):
        with pytest.raises(ConfigError, match="health_probes"):
            parse_config(config_dict(health_probes=bad))
    shipped = parse_config(config_dict()).health_probes
    assert shipped.enabled and shipped.interval_seconds == 30
