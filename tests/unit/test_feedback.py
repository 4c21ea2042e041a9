"""POST /v1/feedback: validation, the answers it can rate (any worker, once, same tenant, within
the retention), its metrics and its log line."""

from __future__ import annotations

import json
import time

import pytest

from conftest import chat_body, config_dict, metric_sum, parse_metrics, quiet_models, as_tenant
from test_bad_input import assert_openai_error
from test_openapi_conformance import Document

FEEDBACK = "/v1/feedback"
CHAT = "/v1/chat/completions"
SEARCH = {**as_tenant("search")}


def _config(**overrides) -> dict:
    # No background probes: these tests read exact metric deltas.
    return quiet_models(config_dict(health_probes={"enabled": False}, **overrides))


@pytest.fixture
def app(make_app):
    return make_app(_config())


@pytest.fixture
def client(app):
    return app.test_client()


def _metrics(client) -> dict:
    return parse_metrics(client.get("/metrics").get_data(as_text=True))


def _feedback_series(samples: dict) -> dict:
    return {key: value for key, value in samples.items() if key[0].startswith("llm_router_feedback")}


def answered(client, headers: dict | None = None, **body) -> dict:
    response = client.post(CHAT, json=chat_body(**body), headers=headers or {})
    assert response.status_code == 200, response.get_data(as_text=True)
    return {"response_id": response.get_json()["id"], "request_id": response.headers["X-Request-ID"],
            "model": response.headers["X-Router-Model"]}


# --- validation ---------------------------------------------------------------------------

_ID = "chatcmpl-0123456789abcdef"
VALID = {"response_id": _ID, "thumbs": "up"}

# (id, status, code, param, body (a JSON value, or bytes sent verbatim), content type, headers)
BAD = [
    ("malformed-json", 400, "invalid_json", None, b'{"response_id": ', "application/json", {}),
    ("array-body", 400, "invalid_body", None, [VALID], "application/json", {}),
    ("string-body", 400, "invalid_body", None, "up", "application/json", {}),
    ("empty-object", 400, "missing_required_parameter", "response_id", {}, "application/json", {}),
    ("no-id", 400, "missing_required_parameter", "response_id", {"thumbs": "up"}, "application/json", {}),
    ("both-ids", 400, "invalid_value", "request_id", {**VALID, "request_id": "abc"}, "application/json", {}),
    ("no-rating", 400, "missing_required_parameter", "score", {"response_id": _ID}, "application/json", {}),
    ("score-and-thumbs", 400, "invalid_value", "thumbs", {**VALID, "score": 1}, "application/json", {}),
    ("score-above-1", 400, "invalid_value", "score", {"response_id": _ID, "score": 1.5}, "application/json", {}),
    ("score-negative", 400, "invalid_value", "score", {"response_id": _ID, "score": -0.1}, "application/json", {}),
    ("score-string", 400, "invalid_value", "score", {"response_id": _ID, "score": "0.5"}, "application/json", {}),
    ("score-bool", 400, "invalid_value", "score", {"response_id": _ID, "score": True}, "application/json", {}),
    # NaN and Infinity are not JSON (RFC 8259): the parser refuses the body.
    ("score-nan", 400, "invalid_json", None, b'{"response_id": "' + _ID.encode() + b'", "score": NaN}',
     "application/json", {}),
    ("score-infinity", 400, "invalid_json", None,
     b'{"response_id": "' + _ID.encode() + b'", "score": Infinity}', "application/json", {}),
    ("thumbs-sideways", 400, "invalid_value", "thumbs", {"response_id": _ID, "thumbs": "sideways"},
     "application/json", {}),
    ("thumbs-bool", 400, "invalid_value", "thumbs", {"response_id": _ID, "thumbs": True}, "application/json", {}),
    ("unknown-reason", 400, "invalid_value", "reason", {**VALID, "reason": "because"}, "application/json", {}),
    ("comment-too-long", 400, "invalid_value", "comment", {**VALID, "comment": "x" * 2001}, "application/json", {}),
    ("comment-not-text", 400, "invalid_value", "comment", {**VALID, "comment": ["x"]}, "application/json", {}),
    ("extra-field", 400, "unknown_parameter", "model", {**VALID, "model": "sim-fast"}, "application/json", {}),
    ("response-id-without-prefix", 400, "invalid_value", "response_id", {"response_id": "abc", "thumbs": "up"},
     "application/json", {}),
    ("request-id-with-space", 400, "invalid_value", "request_id", {"request_id": "a b", "thumbs": "up"},
     "application/json", {}),
    ("request-id-too-long", 400, "invalid_value", "request_id", {"request_id": "a" * 65, "thumbs": "up"},
     "application/json", {}),
    ("request-id-number", 400, "invalid_value", "request_id", {"request_id": 42, "thumbs": "up"},
     "application/json", {}),
    ("text-plain", 415, "unsupported_media_type", None, json.dumps(VALID).encode(), "text/plain", {}),
    ("form", 415, "unsupported_media_type", None, b"response_id=x", "application/x-www-form-urlencoded", {}),
    ("too-large", 413, "request_too_large", None, json.dumps({**VALID, "comment": "x" * 1_100_000}).encode(),
     "application/json", {}),
    ("unknown-tenant", 403, "unknown_tenant", "X-Tenant-ID", VALID, "application/json", {"X-Tenant-ID": "nobody-7f3a"}),
    ("unknown-response", 404, "response_not_found", "response_id", VALID, "application/json", {}),
    ("unknown-request", 404, "response_not_found", "request_id", {"request_id": "never-served", "score": 0.5},
     "application/json", {}),
]


@pytest.mark.parametrize("case", [pytest.param(case[1:], id=case[0]) for case in BAD])
def test_bad_feedback_gets_an_openai_error_and_no_series(client, case):
    status, code, param, body, content_type, headers = case
    document = Document(client.get("/openapi.json").get_json())
    before = _metrics(client)
    data = body if isinstance(body, bytes) else json.dumps(body)  # bytes are sent as they are
    response = client.post(FEEDBACK, data=data, content_type=content_type, headers=headers)
    assert_openai_error(response, status, code, param)
    document.check(FEEDBACK, "POST", response)
    after = _metrics(client)
    assert _feedback_series(after) == _feedback_series(before)
    # The only series that moved are the HTTP ones of this call (and of the /metrics scrape),
    # and those of work going on meanwhile: process health, the ledger's store operations.
    moved = {name for (name, _labels), value in after.items() if before.get((name, _labels)) != value}
    assert moved <= {
        "llm_router_http_requests_total", "llm_router_http_request_duration_seconds_bucket",
        "llm_router_http_request_duration_seconds_count", "llm_router_http_request_duration_seconds_sum",
    } | {name for name in moved if name.startswith(("process_", "python_", "llm_router_process_",
                                                      "llm_router_state_operation_", "llm_router_ledger_"))}, moved


def test_feedback_for_a_failed_request_is_not_found(make_app):
    data = config_dict(health_probes={"enabled": False})
    for model in data["models"]:
        model["simulation"].update(error_rate=1.0, error_kinds={"server_error": 1.0})
    client = make_app(data).test_client()
    failed = client.post(CHAT, json=chat_body(), headers={"X-Request-ID": "failed-1"})
    assert failed.status_code == 502
    response = client.post(FEEDBACK, json={"request_id": "failed-1", "thumbs": "down"})
    assert_openai_error(response, 404, "response_not_found")


# --- happy paths ------------------------------------------------------------------------------


def test_thumbs_up_by_response_id(client, json_lines):
    document = Document(client.get("/openapi.json").get_json())
    served = answered(client, SEARCH, model="sim-fast", content="rate me")
    before = _metrics(client)
    response = client.post(FEEDBACK, json={"response_id": served["response_id"], "thumbs": "up", "reason": "other",
                                           "comment": "secret words"}, headers=SEARCH)
    assert response.status_code == 201
    document.check(FEEDBACK, "POST", response)
    assert response.get_json() == {
        "object": "feedback", "request_id": served["request_id"], "response_id": served["response_id"],
        "model": "sim-fast", "score": 1.0, "rating": "positive", "reason": "other",
    }
    after = _metrics(client)
    delta = lambda name, **labels: metric_sum(after, name, **labels) - metric_sum(before, name, **labels)  # noqa: E731
    assert delta("llm_router_feedback_total", tenant="search", model="sim-fast", rating="positive") == 1
    assert delta("llm_router_feedback_total") == 1
    assert delta("llm_router_feedback_score_count", model="sim-fast") == 1
    assert delta("llm_router_feedback_score_sum", model="sim-fast") == 1.0
    assert delta("llm_router_feedback_score_bucket", model="sim-fast", le="0.8") == 0
    assert delta("llm_router_feedback_score_bucket", model="sim-fast", le="1.0") == 1

    (line,) = [line for line in json_lines() if line.get("event") == "feedback_received"]
    assert line["request_id"] == served["request_id"]  # the rated request, not this call
    assert {key: line[key] for key in ("tenant", "model", "score", "rating", "reason")} == {
        "tenant": "search", "model": "sim-fast", "score": 1.0, "rating": "positive", "reason": "other"}
    assert "comment" not in line and "secret words" not in json.dumps(json_lines())


def test_score_by_request_id_and_comment_logged_with_content_on(make_app, json_lines):
    from llm_router.app import Telemetry

    client = make_app(_config(), telemetry=Telemetry(log_content=True)).test_client()
    client.post(CHAT, json=chat_body("sim-mini"), headers={"X-Request-ID": "client-chosen-1"})
    before = _metrics(client)
    response = client.post(FEEDBACK, json={"request_id": "client-chosen-1", "score": 0.3, "comment": "meh"})
    assert response.status_code == 201
    assert response.get_json()["rating"] == "negative"
    after = _metrics(client)
    assert metric_sum(after, "llm_router_feedback_total", tenant="anonymous", model="sim-mini", rating="negative") \
        - metric_sum(before, "llm_router_feedback_total", tenant="anonymous", model="sim-mini", rating="negative") == 1
    assert metric_sum(after, "llm_router_feedback_score_bucket", model="sim-mini", le="0.4") \
        - metric_sum(before, "llm_router_feedback_score_bucket", model="sim-mini", le="0.4") == 1
    (line,) = [line for line in json_lines() if line.get("event") == "feedback_received"]
    assert line["comment"] == "meh" and line["reason"] is None


@pytest.mark.parametrize("score, rating", [(0, "negative"), (0.49, "negative"), (0.5, "positive"), (1, "positive")])
def test_rating_threshold(client, score, rating):
    served = answered(client, SEARCH)
    response = client.post(FEEDBACK, json={"request_id": served["request_id"], "score": score}, headers=SEARCH)
    assert response.status_code == 201 and response.get_json()["rating"] == rating


def test_cache_hits_and_finished_streams_can_be_rated(client):
    first = answered(client, SEARCH, content="cache me for feedback")
    hit = client.post(CHAT, json=chat_body(content="cache me for feedback"), headers=SEARCH)
    assert hit.headers["X-Router-Cache"] == "hit"
    stream = client.post(CHAT, json=chat_body("sim-fast", stream=True), headers=SEARCH)
    assert stream.get_data(as_text=True).endswith("data: [DONE]\n\n")
    for request_id in (first["request_id"], hit.headers["X-Request-ID"], stream.headers["X-Request-ID"]):
        response = client.post(FEEDBACK, json={"request_id": request_id, "thumbs": "up"}, headers=SEARCH)
        assert response.status_code == 201, request_id
    assert response.get_json()["model"] == "sim-fast"


def test_feedback_lands_on_any_worker(tmp_path):
    """Two apps sharing one state directory, as gunicorn workers do."""
    from llm_router.app import Telemetry, create_app
    from llm_router.config import parse_config

    workers = [create_app(parse_config(_config()), telemetry=Telemetry(), state_dir=tmp_path / "shared")
               for _ in range(2)]
    try:
        one, two = (worker.test_client() for worker in workers)
        served = answered(one, SEARCH)
        assert two.post(FEEDBACK, json={"response_id": served["response_id"], "thumbs": "down"},
                        headers=SEARCH).status_code == 201
        # Once given, on either worker, by either id.
        again = one.post(FEEDBACK, json={"request_id": served["request_id"], "score": 1}, headers=SEARCH)
        assert_openai_error(again, 409, "feedback_already_given")
    finally:
        for worker in workers:
            worker.extensions["llm_router"].close()


def test_duplicate_feedback_is_a_409_and_counted_once(client):
    served = answered(client, SEARCH)
    body = {"response_id": served["response_id"], "thumbs": "up"}
    assert client.post(FEEDBACK, json=body, headers=SEARCH).status_code == 201
    before = _metrics(client)
    assert_openai_error(client.post(FEEDBACK, json=body, headers=SEARCH), 409, "feedback_already_given")
    assert _feedback_series(_metrics(client)) == _feedback_series(before)


def test_another_tenants_answer_is_not_found(client):
    served = answered(client, SEARCH)
    for headers in ({**as_tenant("support")}, {}, {"Authorization": "Bearer sk-demo-research"}):
        response = client.post(FEEDBACK, json={"response_id": served["response_id"], "thumbs": "up"}, headers=headers)
        assert_openai_error(response, 404, "response_not_found")
    # The API key of the right tenant works like its header.
    by_key = client.post(FEEDBACK, json={"response_id": served["response_id"], "thumbs": "up"},
                         headers={"Authorization": "Bearer sk-demo-search"})
    assert by_key.status_code == 201


def test_reused_request_id_across_tenants_does_not_collide(client):
    for tenant in ("search", "support"):
        response = client.post(CHAT, json=chat_body(), headers={**as_tenant(tenant), "X-Request-ID": "shared-id"})
        assert response.status_code == 200
    for tenant in ("search", "support"):
        response = client.post(FEEDBACK, json={"request_id": "shared-id", "thumbs": "up"}, headers=as_tenant(tenant))
        assert response.status_code == 201, tenant


# --- retention ----------------------------------------------------------------------------------


def test_answers_older_than_the_retention_are_not_found(make_app):
    app = make_app(_config(feedback={"retention_hours": 1}))
    client = app.test_client()
    ledger = app.extensions["llm_router"].ledger
    now = [1_000_000.0]
    ledger.clock = lambda: now[0]
    old = answered(client, SEARCH)
    now[0] += 3600 - 1
    assert client.post(FEEDBACK, json={"request_id": old["request_id"], "thumbs": "up"}, headers=SEARCH).status_code == 201
    expiring = answered(client, SEARCH)
    now[0] += 3600 + 1
    response = client.post(FEEDBACK, json={"request_id": expiring["request_id"], "thumbs": "up"}, headers=SEARCH)
    assert_openai_error(response, 404, "response_not_found")


def _ledger(directory, clock=None):
    """A process's ledger whose sync loop never runs on its own: the test drains."""
    from llm_router.ledger import Ledger
    from llm_router.state import SQLiteStore

    ledger = Ledger(SQLiteStore(directory), directory, retention_hours=1, clock=clock or time.time)
    ledger.start = lambda: None
    return ledger


def _answer(ledger, request_id: str, model: str = "sim-fast") -> None:
    ledger.finish(ledger.reserve(), "search", model, request_id, 200, 10, 20, 0.001, 0.002)


def test_answers_are_stored_in_batches_and_pruned(tmp_path):
    now = [0.0]
    ledger = _ledger(tmp_path / "state", clock=lambda: now[0])
    store = ledger.store

    def rows() -> list[str]:
        return [charge.request_id for charge in store.charges()]

    _answer(ledger, "a")
    _answer(ledger, "a2")
    assert rows() == [], "an answer waits in the journal"
    assert ledger.drain() == 2 and rows() == ["a", "a2"]  # one transaction
    now[0] = 3600 + 10  # "a" and "a2" are now past the retention
    _answer(ledger, "b")
    ledger.drain()
    assert ledger._prune() == 2 and rows() == ["b"]
    assert ledger.rate("a", "search", 1.0) == ("unknown", None)
    # Feedback finds this process's own answer at once: rate() stores the journal first.
    _answer(ledger, "e")
    assert ledger.rate("e", "search", 1.0) == ("rated", "sim-fast")
    assert ledger.rate("e", "search", 0.0) == ("already_rated", "sim-fast")
    _answer(ledger, "f")
    assert ledger.close(), "a stopping worker stores what is left"
    assert "f" in rows()


def test_feedback_waits_briefly_for_another_process_and_never_piles_up(tmp_path):
    """An answer still in another process's journal is found if that process stores it
    within the short wait; once MAX_FEEDBACK_WAITERS wait, unknown ids get 404 at once."""
    import threading

    from llm_router.ledger import Ledger

    other, this = _ledger(tmp_path / "state"), _ledger(tmp_path / "state")
    _answer(other, "r1", "sim-coder")
    threading.Timer(0.05, other.drain).start()
    assert this.rate("r1", "search", 0.0) == ("rated", "sim-coder")
    started = time.monotonic()
    assert this.rate("never-answered", "search", 0.0) == ("unknown", None)
    assert time.monotonic() - started >= Ledger.FEEDBACK_WAIT_SECONDS  # it did wait, once
    this._feedback_waiters = Ledger.MAX_FEEDBACK_WAITERS  # as if that many waited now
    started = time.monotonic()
    assert this.rate("never-answered", "search", 0.0) == ("unknown", None)
    assert time.monotonic() - started < Ledger.FEEDBACK_WAIT_SECONDS, "no wait beyond the bound"
    other.close(), this.close()


def test_feedback_config_is_validated():
    from llm_router.config import ConfigError, parse_config

    for bad in ({"retention_hours": 0}, {"retention_hours": -1}, {"retention_hours": "a day"}, {"keep": 1}):
        with pytest.raises(ConfigError, match="feedback"):
            parse_config(config_dict(feedback=bad))
    assert parse_config(config_dict()).feedback.retention_hours == 72
