"""Fallbacks, retries, circuit breakers, saturation and budgets, seen through the API."""

from __future__ import annotations

import threading

import pytest

from conftest import chat_body, config_dict, metric_sum, parse_metrics, quiet_models, serving, as_tenant

ADMIN = {"Authorization": "Bearer test-admin-token"}


@pytest.fixture(autouse=True)
def admin_token(monkeypatch):
    monkeypatch.setenv("LLM_ROUTER_ADMIN_TOKEN", "test-admin-token")


def inject(client, model, **fault):
    response = client.post("/admin/faults", json={"model": model, **fault}, headers=ADMIN)
    assert response.status_code == 201, response.get_json()


def metrics(client):
    return parse_metrics(client.get("/metrics").get_data(as_text=True))


def test_failing_model_falls_back_after_retries(client):
    before = metrics(client)
    inject(client, "sim-frontier", error_rate=1.0, error_kind="server_error")
    response = client.post("/v1/chat/completions", json=chat_body("sim-frontier"), headers={"Cache-Control": "no-cache"})
    assert response.status_code == 200
    assert response.headers["X-Router-Model"] == "sim-balanced"
    after = metrics(client)

    def delta(name, **labels):
        return metric_sum(after, name, **labels) - metric_sum(before, name, **labels)

    assert delta("llm_router_retries_total", model="sim-frontier") == 1
    assert delta("llm_router_backend_requests_total", model="sim-frontier", outcome="server_error") == 2
    assert delta("llm_router_fallbacks_total", from_model="sim-frontier", to_model="sim-balanced") == 1
    assert delta("llm_router_routing_decisions_total", model="sim-balanced", reason="fallback") == 1


def test_all_candidates_failing_is_a_502_and_opens_circuits(make_app):
    data = quiet_models(config_dict())
    data["routing"]["circuit_breaker"] = {"failure_threshold": 2, "reset_timeout_seconds": 60}
    app = make_app(data)
    client = app.test_client()
    for model in ("sim-mini",):
        inject(client, model, error_rate=1.0)
    first = client.post("/v1/chat/completions", json=chat_body("sim-mini"))
    assert first.status_code == 502
    assert first.get_json()["error"]["code"] == "backend_error"
    # Two failed attempts (call + retry) opened the circuit: now nothing can be tried.
    second = client.post("/v1/chat/completions", json=chat_body("sim-mini"))
    assert second.status_code == 503
    assert second.get_json()["error"]["code"] == "no_backend_available"
    samples = metrics(client)
    assert metric_sum(samples, "llm_router_circuit_breaker_state", model="sim-mini") == 2
    assert metric_sum(samples, "llm_router_backend_rejections_total", model="sim-mini", reason="circuit_open") == 1
    assert metric_sum(samples, "llm_router_chat_requests_total", model="sim-mini", code="503") == 1


def test_timeouts_become_504(make_app):
    data = quiet_models(config_dict())
    data["models"] = [m for m in data["models"] if m["id"] == "sim-mini"]
    data["models"][0]["timeout_seconds"] = 0.05
    data["routing"]["retries"] = 0
    client = make_app(data).test_client()
    inject(client, "sim-mini", error_rate=0.0, latency_ms=100)
    response = client.post("/v1/chat/completions", json=chat_body("sim-mini"))
    assert response.status_code == 504
    assert response.get_json()["error"]["code"] == "backend_timeout"


def test_saturated_backends_answer_429_with_retry_after(make_app):
    data = quiet_models(config_dict())
    data["models"] = [m for m in data["models"] if m["id"] == "sim-mini"]
    data["models"][0]["max_concurrency"] = 1
    data["routing"]["queue_timeout_seconds"] = 0
    app = make_app(data)
    client = app.test_client()
    inject(client, "sim-mini", error_rate=0.0, latency_ms=400)
    results = {}
    holder = threading.Thread(
        target=lambda: results.setdefault("first", client.post("/v1/chat/completions", json=chat_body("sim-mini")))
    )
    holder.start()
    limiter = app.extensions["llm_router"].router.slots["sim-mini"].limiter
    while limiter.in_flight == 0 and holder.is_alive():
        pass
    second = app.test_client().post("/v1/chat/completions", json=chat_body("sim-mini", content="other"))
    holder.join(5)
    assert results["first"].status_code == 200
    assert second.status_code == 429
    assert second.headers["Retry-After"] == "1"
    assert second.get_json()["error"]["code"] == "backends_saturated"


def test_cache_hit_then_bypass(client):
    body = chat_body("sim-fast", content="cache me")
    first = client.post("/v1/chat/completions", json=body, headers={**as_tenant("search")})
    hit = client.post("/v1/chat/completions", json=body, headers={**as_tenant("search")})
    other_tenant = client.post("/v1/chat/completions", json=body, headers={**as_tenant("support")})
    bypass = client.post("/v1/chat/completions", json=body, headers={**as_tenant("search"), "Cache-Control": "no-cache"})
    assert [r.headers["X-Router-Cache"] for r in (first, hit, other_tenant, bypass)] == ["miss", "hit", "miss", "bypass"]
    assert hit.get_json()["choices"] == first.get_json()["choices"]
    assert hit.headers["X-Request-ID"] != first.headers["X-Request-ID"]
    samples = metrics(client)
    assert metric_sum(samples, "llm_router_cache_saved_usd_total", tenant="search") > 0


def test_budget_rejection_through_the_api(make_app):
    data = quiet_models(config_dict())
    data["tenants"] = [{"id": "tiny", "monthly_budget_usd": 0.000001}]
    client = make_app(data).test_client()
    assert client.post("/v1/chat/completions", json=chat_body(), headers={"X-Tenant-ID": "tiny"}).status_code == 200
    rejected = client.post("/v1/chat/completions", json=chat_body(content="again"), headers={"X-Tenant-ID": "tiny"})
    assert rejected.status_code == 402
    assert rejected.get_json()["error"]["type"] == "insufficient_quota"
    samples = metrics(client)
    assert metric_sum(samples, "llm_router_budget_exceeded_total", tenant="tiny", action="rejected") == 1
    assert metric_sum(samples, "llm_router_tenant_spend_usd", tenant="tiny") > 0.000001


def test_admin_api_needs_the_token(client):
    assert client.get("/admin/faults").status_code == 401
    assert client.get("/admin/faults", headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert client.get("/admin/faults", headers=ADMIN).get_json() == {"faults": {}}
    bad = client.post("/admin/faults", json={"model": "sim-mini", "error_rate": 2}, headers=ADMIN)
    assert bad.status_code == 400 and bad.get_json()["error"]["param"] == "error_rate"
    inject(client, "sim-mini", error_rate=0.5)
    assert set(client.get("/admin/faults", headers=ADMIN).get_json()["faults"]) == {"sim-mini"}
    assert client.delete("/admin/faults", headers=ADMIN).get_json() == {"removed": 1}


def test_admin_api_is_off_without_a_token(client, monkeypatch):
    monkeypatch.delenv("LLM_ROUTER_ADMIN_TOKEN")
    assert client.get("/admin/faults", headers=ADMIN).status_code == 404


def test_readiness_fails_when_every_circuit_is_open(make_app):
    data = quiet_models(config_dict())
    data["models"] = [m for m in data["models"] if m["id"] == "sim-mini"]
    data["routing"]["circuit_breaker"] = {"failure_threshold": 1, "reset_timeout_seconds": 60}
    data["routing"]["retries"] = 0
    client = make_app(data).test_client()
    inject(client, "sim-mini", error_rate=1.0)
    client.post("/v1/chat/completions", json=chat_body("sim-mini"))
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.get_json() == {"status": "unavailable", "reasons": ["sim-mini: circuit open"]}


def test_openai_compatible_backend_through_another_router(make_app):
    """Router A uses router B (simulated) as an OpenAI-compatible upstream."""
    with serving(make_app()) as url:
        data = quiet_models(config_dict())
        data["models"] = [{
            "id": "remote", "provider": "openai", "provider_name": "llm-router", "upstream_model": "sim-fast",
            "base_url": f"{url}/v1", "price": {"input_per_1k": 1, "output_per_1k": 1}, "quality": 0.5,
        }]
        client = make_app(data).test_client()
        plain = client.post("/v1/chat/completions", json=chat_body("remote"))
        assert plain.status_code == 200
        assert plain.get_json()["usage"]["completion_tokens"] > 0
        streamed = client.post("/v1/chat/completions", json=chat_body("remote", stream=True))
        assert streamed.status_code == 200 and streamed.get_data(as_text=True).endswith("data: [DONE]\n\n")
        bad_upstream_model = client.post("/v1/chat/completions", json=chat_body("remote", max_tokens=10**6))
        assert bad_upstream_model.status_code == 400  # rejected by the router before reaching upstream


def test_unreachable_openai_compatible_backend_is_a_502(make_app):
    from conftest import free_port

    data = quiet_models(config_dict())
    data["models"] = [{
        "id": "gone", "provider": "openai", "base_url": f"http://127.0.0.1:{free_port()}/v1",
        "price": {"input_per_1k": 1, "output_per_1k": 1}, "quality": 0.5, "timeout_seconds": 2,
    }]
    data["routing"]["retries"] = 0
    client = make_app(data).test_client()
    response = client.post("/v1/chat/completions", json=chat_body("gone"))
    assert response.status_code == 502
    samples = metrics(client)
    assert metric_sum(samples, "llm_router_backend_requests_total", model="gone", outcome="connection_error") == 1


def test_skipping_an_open_circuit_counts_as_a_fallback(make_app):
    data = quiet_models(config_dict())
    data["routing"]["circuit_breaker"] = {"failure_threshold": 1, "reset_timeout_seconds": 60}
    data["routing"]["retries"] = 0
    client = make_app(data).test_client()
    inject(client, "sim-fast", error_rate=1.0)
    client.post("/v1/chat/completions", json=chat_body("sim-fast"))  # opens sim-fast's circuit
    before = metrics(client)
    response = client.post("/v1/chat/completions", json=chat_body("sim-fast", content="again"))
    assert response.status_code == 200 and response.headers["X-Router-Model"] == "sim-mini"
    after = metrics(client)
    labels = {"from_model": "sim-fast", "to_model": "sim-mini"}
    assert metric_sum(after, "llm_router_fallbacks_total", **labels) - metric_sum(before, "llm_router_fallbacks_total", **labels) == 1


def test_a_restarted_router_shows_the_month_s_spend_before_any_request(tmp_path):
    """Found in review: the spend gauge was set while the ledger had read nothing yet (0 for
    every tenant until its next request); it is now set once the stored totals are read."""
    from llm_router.app import Telemetry, create_app
    from llm_router.config import parse_config
    from llm_router.telemetry import metrics as m

    config = parse_config(quiet_models(config_dict()))
    first = create_app(config, telemetry=Telemetry(), state_dir=tmp_path)
    client = first.test_client()
    assert client.post("/v1/chat/completions", json=chat_body("sim-fast"), headers=as_tenant("search")).status_code == 200
    first.extensions["llm_router"].ledger.drain()  # stored: the gauge follows the stored total
    spent = metric_sum(metrics(client), "llm_router_tenant_spend_usd", tenant="search")
    assert spent > 0
    first.extensions["llm_router"].close()
    m.child(m.TENANT_SPEND, "search").set(0)  # what a new process's gauge starts at
    second = create_app(config, telemetry=Telemetry(), state_dir=tmp_path)
    try:
        samples = metrics(second.test_client())
        assert metric_sum(samples, "llm_router_tenant_spend_usd", tenant="search") == pytest.approx(spent)
    finally:
        second.extensions["llm_router"].close()
