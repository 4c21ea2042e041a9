"""The API's happy paths and headers, in-process."""

from __future__ import annotations

import json

from conftest import chat_body, as_tenant


def test_completion_has_usage_and_router_headers(client):
    response = client.post("/v1/chat/completions", json=chat_body(), headers={**as_tenant("search")})
    assert response.status_code == 200
    body = response.get_json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["role"] == "assistant"
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    assert response.headers["X-Router-Model"] == body["model"]
    assert response.headers["X-Router-Strategy"] == "balanced"
    assert response.headers["X-Router-Cache"] == "miss"
    assert body["id"] == f"chatcmpl-{response.headers['X-Request-ID']}"
    assert len(response.headers["X-Trace-ID"]) == 32


def test_request_id_is_echoed_only_when_safe(client):
    kept = client.post("/v1/chat/completions", json=chat_body(), headers={"X-Request-ID": "abc-123"})
    assert kept.headers["X-Request-ID"] == "abc-123"
    replaced = client.post("/v1/chat/completions", json=chat_body(), headers={"X-Request-ID": "bad id; drop table"})
    assert replaced.headers["X-Request-ID"] != "bad id; drop table"
    assert len(replaced.headers["X-Request-ID"]) == 32


def test_stream_is_server_sent_events_ending_in_done(client):
    response = client.post(
        "/v1/chat/completions",
        json=chat_body("sim-fast", stream=True, stream_options={"include_usage": True}),
        headers={**as_tenant("support")},
    )
    assert response.status_code == 200
    assert response.mimetype == "text/event-stream"
    events = [line[len("data: "):] for line in response.get_data(as_text=True).split("\n\n") if line]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    usage = chunks[-1]["usage"]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert usage["completion_tokens"] == len(text.split())
    assert all(chunk["model"] == "sim-fast" for chunk in chunks)


def test_models_lists_configured_models_and_auto(client, app):
    ids = [m["id"] for m in client.get("/v1/models").get_json()["data"]]
    configured = [m.id for m in app.extensions["llm_router"].config.models]
    assert ids == configured + ["auto"]


def test_health_and_readiness(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    assert client.get("/readyz").get_json() == {"status": "ready"}


def test_openapi_document_is_served(client):
    document = client.get("/openapi.json").get_json()
    assert document["openapi"].startswith("3.")
    assert "/v1/chat/completions" in document["paths"]
