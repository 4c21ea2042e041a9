"""The local alert sink: Alertmanager's webhook payloads in, log lines, metrics and a queryable buffer out."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest
import requests

from conftest import captured_json_lines, free_port, metric_sum, parse_metrics
from llm_router.alertsink import create_sink_app
from llm_router.cli import main
from llm_router.telemetry import metrics as router_metrics  # noqa: F401  (its metrics must not leak in)

RECEIVERS = ("pager", "chat", "low-priority", "heartbeat")
TOKEN = "sink-test-token-0123456789"

# Alertmanager's webhook payload (version 4) as documented at
# https://prometheus.io/docs/alerting/latest/configuration/#webhook_config
FIRING = {
    "version": "4",
    "groupKey": '{}/{severity="page"}:{alertname="LLMRouterHighErrorRate"}',
    "truncatedAlerts": 0,
    "status": "firing",
    "receiver": "pager",
    "groupLabels": {"alertname": "LLMRouterHighErrorRate"},
    "commonLabels": {"alertname": "LLMRouterHighErrorRate", "service": "llm-router", "severity": "page"},
    "commonAnnotations": {"runbook_url": "https://example.org/runbooks/llm-router#high-error-rate"},
    "externalURL": "http://alertmanager:9093",
    "alerts": [
        {
            "status": "firing",
            "labels": {"alertname": "LLMRouterHighErrorRate", "model": "sim-coder", "service": "llm-router", "severity": "page"},
            "annotations": {
                "summary": "sim-coder is failing 12% of chat requests",
                "description": "More than 5% of chat requests to sim-coder failed over the last 5 minutes.",
                "runbook_url": "https://example.org/runbooks/llm-router#high-error-rate",
            },
            "startsAt": "2025-01-15T10:02:30.000Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph?g0.expr=llm_router%3Aerror_ratio%3Arate5m+%3E+0.05&g0.tab=1",
            "fingerprint": "7f3a2c9d1e4b5a60",
        },
        {
            "status": "firing",
            "labels": {"alertname": "LLMRouterHighErrorRate", "model": "sim-fast", "service": "llm-router", "severity": "page"},
            "annotations": {"summary": "sim-fast is failing 7% of chat requests"},
            "startsAt": "2025-01-15T10:03:00.000Z",
            "endsAt": "0001-01-01T00:00:00Z",
            "generatorURL": "http://prometheus:9090/graph?g0.expr=llm_router%3Aerror_ratio%3Arate5m+%3E+0.05&g0.tab=1",
            "fingerprint": "0b12c6e8a9d34f71",
        },
    ],
}


def resolved(alertname: str = "LLMRouterBudgetBurn", severity: str = "ticket") -> dict:
    return {
        "version": "4",
        "groupKey": f'{{}}/{{severity="{severity}"}}:{{alertname="{alertname}"}}',
        "truncatedAlerts": 0,
        "status": "resolved",
        "receiver": "chat",
        "groupLabels": {"alertname": alertname},
        "commonLabels": {"alertname": alertname, "severity": severity, "tenant": "search"},
        "commonAnnotations": {"summary": "tenant search is burning its budget too fast"},
        "externalURL": "http://alertmanager:9093",
        "alerts": [
            {
                "status": "resolved",
                "labels": {"alertname": alertname, "severity": severity, "tenant": "search"},
                "annotations": {"summary": "tenant search is burning its budget too fast"},
                "startsAt": "2025-01-15T09:00:00.000Z",
                "endsAt": "2025-01-15T09:45:00.000Z",
                "generatorURL": "http://prometheus:9090/graph?g0.expr=llm_router%3Abudget_burn",
                "fingerprint": "c4d5e6f708192a3b",
            }
        ],
    }


@pytest.fixture
def sink():
    return create_sink_app(RECEIVERS, token=TOKEN)


def bearer(token: str = TOKEN) -> dict:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def client(sink):
    return sink.test_client()


@pytest.fixture
def json_lines():
    """The JSON lines logged, captured with the router's own formatter and filter."""
    with captured_json_lines("llm-alertsink") as read:
        yield read


def scrape(client) -> dict:
    response = client.get("/metrics")
    assert response.status_code == 200
    return parse_metrics(response.get_data(as_text=True))


def listed(client, **query) -> list[dict]:
    response = client.get("/api/notifications", query_string=query)
    assert response.status_code == 200
    body = response.get_json()
    assert body["count"] == len(body["notifications"])
    return body["notifications"]


def test_notification_is_accepted_and_queryable_with_filters(client):
    assert client.post("/webhook/pager", json=FIRING).status_code == 200
    # received_at has millisecond precision: keep the two posts in different milliseconds,
    # or the round trip of the second one's time below also selects the first (a flake).
    time.sleep(0.002)
    middle = time.time()
    time.sleep(0.002)
    assert client.post("/webhook/chat", json=resolved()).status_code == 200

    everything = listed(client)
    assert [n["receiver"] for n in everything] == ["pager", "chat"]  # newest last
    first = everything[0]
    assert first["status"] == "firing" and first["alert_count"] == 2
    assert first["alertnames"] == ["LLMRouterHighErrorRate"]
    assert first["group_key"] == FIRING["groupKey"]
    # A summary, never the raw payload: labels and links are kept, free text is not.
    assert "payload" not in first
    assert first["alerts"][0] == {
        "alertname": "LLMRouterHighErrorRate", "status": "firing", "severity": "page",
        "summary": "sim-coder is failing 12% of chat requests", "fingerprint": "7f3a2c9d1e4b5a60",
        "labels": FIRING["alerts"][0]["labels"],
        "runbook_url": "https://example.org/runbooks/llm-router#high-error-rate",
        "starts_at": "2025-01-15T10:02:30.000Z", "ends_at": "0001-01-01T00:00:00Z",
    }
    assert "description" not in json.dumps(first) and "generatorURL" not in json.dumps(first)
    assert first["received_at"].endswith("Z")

    assert [n["receiver"] for n in listed(client, receiver="chat")] == ["chat"]
    assert [n["receiver"] for n in listed(client, status="firing")] == ["pager"]
    assert [n["receiver"] for n in listed(client, alertname="LLMRouterBudgetBurn")] == ["chat"]
    assert listed(client, receiver="pager", status="resolved") == []
    assert [n["receiver"] for n in listed(client, since=str(middle))] == ["chat"]
    # The stored RFC 3339 time round-trips as a `since` (inclusive).
    assert [n["receiver"] for n in listed(client, since=everything[1]["received_at"])] == ["chat"]
    assert len(listed(client, receiver="", status="")) == 2  # empty filters are no filters

    assert client.delete("/api/notifications", headers=bearer()).get_json() == {"deleted": 2}
    assert listed(client) == []


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-token-0123456789"},
                                     {"Authorization": f"Basic {TOKEN}"}, {"Authorization": "Bearer"}],
                         ids=["none", "wrong", "not bearer", "empty"])
def test_emptying_the_buffer_needs_the_token(client, headers):
    client.post("/webhook/pager", json=FIRING)
    response = client.delete("/api/notifications", headers=headers)
    assert response.status_code == 401 and response.get_json()["error"]["code"] == "invalid_token"
    assert len(listed(client)) == 1


def test_emptying_is_refused_without_a_configured_token():
    client = create_sink_app(RECEIVERS, token=None).test_client()
    client.post("/webhook/pager", json=FIRING)
    response = client.delete("/api/notifications", headers=bearer())
    assert response.status_code == 403 and "ALERT_SINK_TOKEN" in response.get_json()["error"]["message"]
    assert len(listed(client)) == 1


def test_buffer_holds_at_most_its_byte_budget():
    client = create_sink_app(RECEIVERS, capacity=1000, max_bytes=8192, token=TOKEN).test_client()
    for i in range(60):
        assert client.post("/webhook/chat", json=_with(("groupKey",), f"group-{i}")).status_code == 200
    kept = listed(client)
    held = sum(len(json.dumps(n, separators=(",", ":")).encode()) for n in kept)
    assert held <= 8192, held
    # The newest stay, the oldest went, nothing in between is missing.
    assert kept[-1]["group_key"] == "group-59" and 1 < len(kept) < 60
    assert [n["id"] for n in kept] == list(range(kept[0]["id"], 61))


def test_a_notification_over_the_budget_keeps_its_header():
    client = create_sink_app(RECEIVERS, capacity=10, max_bytes=1024, token=TOKEN).test_client()
    big = copy.deepcopy(FIRING)
    big["alerts"] = [copy.deepcopy(FIRING["alerts"][0]) for _ in range(20)]
    assert client.post("/webhook/pager", json=big).status_code == 200
    [entry] = listed(client)
    assert entry["alert_count"] == 20 and entry["alerts"] == [] and entry["alerts_omitted"] == 20


def test_bad_since_is_a_400(client):
    response = client.get("/api/notifications", query_string={"since": "yesterday"})
    assert response.status_code == 400 and response.get_json()["error"]["param"] == "since"


def test_notification_is_one_json_log_line(client, json_lines):
    client.post("/webhook/pager", json=FIRING)
    lines = [line for line in json_lines() if line["logger"] == "llm_router.alertsink"]
    assert len(lines) == 1
    line = lines[0]
    assert line["message"] == "alert notification" and line["level"] == "info"
    assert line["service"] == "llm-alertsink" and line["time"].endswith("Z")
    assert line["receiver"] == "pager" and line["status"] == "firing"
    assert line["alertnames"] == ["LLMRouterHighErrorRate"]
    assert line["alert_count"] == 2 and line["group_key"] == FIRING["groupKey"]
    assert [a["fingerprint"] for a in line["alerts"]] == ["7f3a2c9d1e4b5a60", "0b12c6e8a9d34f71"]
    assert line["alerts"][1] == {
        "alertname": "LLMRouterHighErrorRate", "status": "firing", "severity": "page",
        "summary": "sim-fast is failing 7% of chat requests", "fingerprint": "0b12c6e8a9d34f71",
    }


def test_metrics_are_preset_counted_and_separate_from_the_router(client):
    before = scrape(client)
    for receiver in RECEIVERS:
        for status in ("firing", "resolved"):
            assert before[("llm_alertsink_notifications_total", frozenset({("receiver", receiver), ("status", status)}))] == 0
            assert before[("llm_alertsink_alerts_total", frozenset({("receiver", receiver), ("status", status)}))] == 0
        assert before[("llm_alertsink_last_notification_timestamp_seconds", frozenset({("receiver", receiver)}))] == 0
    assert before[("llm_alertsink_invalid_requests_total", frozenset())] == 0
    assert not [name for name, _ in before if not name.startswith("llm_alertsink_")]

    started = time.time()
    client.post("/webhook/pager", json=FIRING)
    client.post("/webhook/pager", json=FIRING)
    client.post("/webhook/chat", json=resolved())
    after = scrape(client)
    assert metric_sum(after, "llm_alertsink_notifications_total", receiver="pager", status="firing") == 2
    assert metric_sum(after, "llm_alertsink_notifications_total", receiver="chat", status="resolved") == 1
    assert metric_sum(after, "llm_alertsink_notifications_total") == 3
    assert metric_sum(after, "llm_alertsink_alerts_total", receiver="pager", status="firing") == 4
    assert metric_sum(after, "llm_alertsink_alerts_total", receiver="chat", status="resolved") == 1
    assert metric_sum(after, "llm_alertsink_last_notification_timestamp_seconds", receiver="pager") >= started
    assert metric_sum(after, "llm_alertsink_last_notification_timestamp_seconds", receiver="heartbeat") == 0
    assert set(after) == set(before)  # no new series, only new values


def _without(key: str) -> dict:
    payload = copy.deepcopy(FIRING)
    del payload[key]
    return payload


def _with(path: tuple, value) -> dict:
    payload = copy.deepcopy(FIRING)
    target = payload
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return payload


BAD_PAYLOADS = {
    "not json": b"this is not json",
    "truncated json": json.dumps(FIRING)[:-10].encode(),
    "nan": b'{"status": "firing", "alerts": [], "x": NaN}',
    "deep nesting": b"[" * 100_000 + b"]" * 100_000,
    "array": b"[]",
    "string": b'"firing"',
    "missing alerts": _without("alerts"),
    "missing status": _without("status"),
    "alerts not a list": _with(("alerts",), {"status": "firing"}),
    "empty alerts": _with(("alerts",), []),
    "alert not an object": _with(("alerts", 0), "LLMRouterHighErrorRate"),
    "alert status unknown": _with(("alerts", 0, "status"), "pending"),
    "alert labels missing": _with(("alerts", 0, "labels"), None),
    "label value not a string": _with(("alerts", 0, "labels", "severity"), 3),
    "annotations a list": _with(("alerts", 0, "annotations"), ["summary"]),
    "status unknown": _with(("status",), "ok"),
    "status not a string": _with(("status",), 1),
    "wrong version": _with(("version",), "3"),
    "groupKey a number": _with(("groupKey",), 7),
    "commonLabels a list": _with(("commonLabels",), []),
    "truncatedAlerts negative": _with(("truncatedAlerts",), -1),
    "fingerprint a number": _with(("alerts", 1, "fingerprint"), 123),
}


@pytest.mark.parametrize("payload", BAD_PAYLOADS.values(), ids=BAD_PAYLOADS.keys())
def test_bad_payloads_are_400s_counted_as_invalid(client, json_lines, payload):
    before = scrape(client)
    if isinstance(payload, bytes):
        response = client.post("/webhook/pager", data=payload, content_type="application/json")
    else:
        response = client.post("/webhook/pager", json=payload)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "invalid_payload" and error["message"]
    after = scrape(client)
    assert metric_sum(after, "llm_alertsink_invalid_requests_total") == 1
    assert metric_sum(after, "llm_alertsink_notifications_total") == 0
    assert set(after) == set(before)
    assert listed(client) == []
    warnings = [line for line in json_lines() if line["message"] == "invalid alert notification"]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning" and warnings[0]["status_code"] == 400


def test_bad_field_is_named(client):
    response = client.post("/webhook/pager", json=_with(("alerts", 1, "status"), "pending"))
    assert response.get_json()["error"]["param"] == "alerts[1].status"


def test_unknown_receiver_is_a_404_and_adds_no_label(client):
    before = scrape(client)
    response = client.post("/webhook/not-a-receiver", json=FIRING)
    assert response.status_code == 404
    assert response.get_json()["error"]["code"] == "unknown_receiver"
    after = scrape(client)
    assert set(after) == set(before)
    assert not any(("receiver", "not-a-receiver") in labels for _, labels in after)
    assert metric_sum(after, "llm_alertsink_invalid_requests_total") == 1
    assert listed(client) == []


def test_wrong_method_and_oversized_body_are_json_errors(client):
    response = client.get("/webhook/pager")
    assert response.status_code == 405 and "error" in response.get_json()
    response = client.post("/webhook/pager", data=b" " * (1024 * 1024 + 1), content_type="application/json")
    assert response.status_code == 413 and "error" in response.get_json()
    assert metric_sum(scrape(client), "llm_alertsink_invalid_requests_total") == 1


def test_buffer_keeps_only_the_newest(json_lines):
    client = create_sink_app(RECEIVERS, capacity=3).test_client()
    for i in range(5):
        payload = _with(("groupKey",), f"group-{i}")
        assert client.post("/webhook/heartbeat", json=payload).status_code == 200
    kept = listed(client)
    assert [n["group_key"] for n in kept] == ["group-2", "group-3", "group-4"]
    assert [n["id"] for n in kept] == [3, 4, 5]
    assert metric_sum(scrape(client), "llm_alertsink_notifications_total", receiver="heartbeat") == 5


def test_concurrent_posts_are_all_kept(client):
    def post(_: int) -> None:
        for _ in range(25):
            assert client.post("/webhook/chat", json=resolved()).status_code == 200

    threads = [threading.Thread(target=post, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    kept = listed(client)
    assert len(kept) == 200 and len({n["id"] for n in kept}) == 200
    assert metric_sum(scrape(client), "llm_alertsink_notifications_total", receiver="chat") == 200


def test_receivers_from_the_environment(monkeypatch):
    monkeypatch.setenv("ALERT_SINK_RECEIVERS", " team-a, team-b ,team-a")
    client = create_sink_app().test_client()
    assert client.post("/webhook/team-b", json=FIRING).status_code == 200
    assert client.post("/webhook/pager", json=FIRING).status_code == 404
    receivers = {dict(labels)["receiver"] for name, labels in scrape(client) if name == "llm_alertsink_notifications_total"}
    assert receivers == {"team-a", "team-b"}


def test_healthz(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


@pytest.mark.parametrize("env", [{"ALERT_SINK_RECEIVERS": "pager,no spaces"}, {"ALERT_SINK_CAPACITY": "0"},
                                 {"ALERT_SINK_MAX_BYTES": "12"}, {"ALERT_SINK_MAX_BYTES": "lots"},
                                 {"ALERT_SINK_TOKEN": "short"}])
def test_cli_rejects_bad_settings_before_starting(monkeypatch, capsys, env):
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert main(["alert-sink"]) == 1
    assert next(iter(env)) in capsys.readouterr().err


@pytest.mark.live
def test_live_alert_sink_under_gunicorn(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "alert-sink.log"
    env = {**os.environ, "ALERT_SINK_BIND": f"127.0.0.1:{port}", "ALERT_SINK_THREADS": "2"}
    env.pop("ALERT_SINK_RECEIVERS", None)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "llm_router.cli", "alert-sink"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, f"alert sink exited early:\n{log_path.read_text()[-3000:]}"
                try:
                    if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except requests.RequestException:
                    pass
                assert time.monotonic() < deadline, f"alert sink not up in 30s:\n{log_path.read_text()[-3000:]}"
                time.sleep(0.1)

            assert requests.post(f"{url}/webhook/pager", json=FIRING, timeout=5).status_code == 200
            found = requests.get(f"{url}/api/notifications", params={"alertname": "LLMRouterHighErrorRate"}, timeout=5).json()
            assert found["count"] == 1 and found["notifications"][0]["alert_count"] == 2
            assert "payload" not in found["notifications"][0]
            samples = parse_metrics(requests.get(f"{url}/metrics", timeout=5).text)
            assert metric_sum(samples, "llm_alertsink_notifications_total", receiver="pager", status="firing") == 1
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
                raise
    assert code == 0
    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    notifications = [line for line in lines if line["message"] == "alert notification"]
    assert len(notifications) == 1 and notifications[0]["receiver"] == "pager"
    assert {line["service"] for line in lines} == {"llm-alertsink"}
    assert any(line["logger"] == "gunicorn.error" for line in lines)
