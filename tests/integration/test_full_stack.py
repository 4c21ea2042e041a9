"""The whole compose stack, started by testcontainers' DockerCompose from compose.yaml.

What it proves, against the real services:
  - Prometheus scrapes every target of the default stack, and all are up;
  - Grafana's provisioned datasources (prometheus, loki, jaeger, alertmanager) pass
    Grafana's own health check;
  - a chat request's JSON log line reaches Loki (router -> Docker's fluentd driver ->
    Fluent Bit -> Loki) carrying the request's trace_id;
  - the request's trace reaches Jaeger with the `chat {model}` CLIENT span;
  - an alert (the always-firing Watchdog) travels Prometheus -> Alertmanager -> alert sink;
  - no log line is lost while Loki restarts (Fluent Bit's filesystem buffer).

The stack runs under its own project name with every published port on a free loopback
port, so it never meets a stack started with `make up`. The router image is the one
scripts/build-router-image.sh builds (no build here); every other image must already be
present locally (this module never pulls), else the module skips and names them.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
import requests

from docker_support import REPO, ROUTER_IMAGE, env_file_values, stack_images, unavailable_reason

# The repository's compose v2 plugin (`make tools`), unless the user's Docker has one.
_PLUGIN_CONFIG = REPO / ".tools" / "docker"
COMPOSE_ENV = (
    {"DOCKER_CONFIG": str(_PLUGIN_CONFIG)}
    if "DOCKER_CONFIG" not in os.environ and (_PLUGIN_CONFIG / "cli-plugins" / "docker-compose").exists()
    else {}
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stack_env() -> dict[str, str]:
    """.env.example with this test's project name, router image, secrets and free ports."""
    env = env_file_values(REPO / ".env.example")
    env.update(
        COMPOSE_PROJECT_NAME=f"llm-router-it-{uuid.uuid4().hex[:8]}",
        ROUTER_IMAGE=ROUTER_IMAGE,
        BIND_ADDRESS="127.0.0.1",
        ROUTER_ADMIN_TOKEN=uuid.uuid4().hex,
        GRAFANA_ADMIN_PASSWORD=uuid.uuid4().hex,
    )
    for key in env:
        if key.endswith("_PORT"):
            env[key] = str(free_port())
    return env


def compose_available() -> bool:
    try:
        return subprocess.run(["docker", "compose", "version"], capture_output=True, timeout=30,
                              env={**os.environ, **COMPOSE_ENV}).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


ENV = stack_env()
_reason = unavailable_reason(ROUTER_IMAGE, *stack_images(ENV))
if _reason is None and not compose_available():
    _reason = "the docker compose v2 plugin is missing (make tools installs one into .tools/docker)"
if _reason:
    pytest.skip(f"full stack cannot start: {_reason}", allow_module_level=True)

from testcontainers.compose import DockerCompose  # noqa: E402

UP_WITHIN = 300  # seconds for `up --wait` on a 2-core machine
ARRIVE_WITHIN = 120  # seconds for a log line, trace or alert to travel through the stack


def local(port_key: str, path: str = "") -> str:
    return f"http://127.0.0.1:{ENV[port_key]}{path}"


def eventually(check, within: float = ARRIVE_WITHIN, every: float = 2.0):
    """check() until it returns something truthy; the last error or value explains a timeout."""
    deadline = time.monotonic() + within
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = check()
            if result:
                return result
            last = result
        except (requests.RequestException, KeyError, IndexError, ValueError, AssertionError) as exc:
            last = exc
        time.sleep(every)
    pytest.fail(f"not within {within:.0f}s: {check.__name__}; last: {last!r}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    # testcontainers runs `docker compose` with this process's environment.
    with pytest.MonkeyPatch.context() as patch:
        for key, value in COMPOSE_ENV.items():
            patch.setenv(key, value)
        yield from _stack(tmp_path_factory)


def _stack(tmp_path_factory):
    env_file = Path(tmp_path_factory.mktemp("stack")) / ".env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in ENV.items()))
    compose = DockerCompose(
        context=str(REPO),
        compose_file_name="compose.yaml",
        env_file=str(env_file),
        build=False,  # the router image exists; compose uses it as it is
        pull=False,
        wait=True,
    )
    started = time.monotonic()
    try:
        compose.start()
        yield compose
    except subprocess.CalledProcessError as exc:
        logs = compose.get_logs()
        pytest.fail(f"compose up failed after {time.monotonic() - started:.0f}s: {exc}\n{logs[0][-5000:]}")
    finally:
        compose.stop(down=True)


def compose_run(stack, *args: str) -> None:
    subprocess.run([*stack.compose_command_property, *args], check=True, capture_output=True, timeout=UP_WITHIN,
                   env={**os.environ, **COMPOSE_ENV})


def send_chat(request_id: str) -> requests.Response:
    response = requests.post(
        local("ROUTER_PORT", "/v1/chat/completions"),
        json={"model": "auto", "messages": [{"role": "user", "content": "integration"}]},
        headers={"X-Tenant-ID": "search", "X-Request-ID": request_id, "Cache-Control": "no-cache"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response


def loki_lines(query: str, since_seconds: int = 900) -> list[tuple[dict, str]]:
    """(stream labels, line) for every line a LogQL query returns over the last minutes."""
    now = time.time_ns()
    response = requests.get(
        local("LOKI_PORT", "/loki/api/v1/query_range"),
        params={"query": query, "start": now - since_seconds * 10**9, "end": now, "limit": 5000},
        timeout=10,
    )
    response.raise_for_status()
    return [(stream["stream"], line) for stream in response.json()["data"]["result"] for _, line in stream["values"]]


def test_prometheus_targets_are_up(stack):
    def all_up():
        targets = requests.get(local("PROMETHEUS_PORT", "/api/v1/targets"), timeout=10).json()["data"]["activeTargets"]
        down = {t["labels"]["job"]: t.get("lastError") for t in targets if t["health"] != "up"}
        assert targets and not down, down
        return {t["labels"]["job"] for t in targets}

    jobs = eventually(all_up)
    assert {"llm-router", "alert-sink", "prometheus", "alertmanager", "grafana", "loki", "jaeger", "fluent-bit"} <= jobs


def test_grafana_datasources_are_healthy(stack):
    auth = ("admin", ENV["GRAFANA_ADMIN_PASSWORD"])
    for uid in ("prometheus", "loki", "jaeger", "alertmanager"):
        def healthy(uid=uid):
            response = requests.get(local("GRAFANA_PORT", f"/api/datasources/uid/{uid}/health"), auth=auth, timeout=30)
            assert response.status_code == 200, (uid, response.text)
            return response.json()

        assert eventually(healthy)["status"] == "OK", uid


@pytest.fixture(scope="module")
def traced_request(stack):
    request_id = f"it-{uuid.uuid4()}"
    response = send_chat(request_id)
    return request_id, response.headers["X-Trace-ID"]


def test_loki_has_the_request_log_line_with_its_trace_id(traced_request):
    request_id, trace_id = traced_request

    def found():
        return [(labels, line) for labels, line in loki_lines(f'{{service="llm-router"}} |= "{request_id}"')]

    labels, line = eventually(found)[0]
    # trace_id rides in the line and in structured metadata, never as a stream label
    # that would explode cardinality (Loki's answer merges metadata into the labels).
    assert json.loads(line)["trace_id"] == trace_id or labels.get("trace_id") == trace_id
    assert labels.get("trace_id", trace_id) == trace_id


def test_jaeger_has_the_trace_with_the_chat_span(traced_request):
    _, trace_id = traced_request

    def trace():
        response = requests.get(local("JAEGER_UI_PORT", f"/api/traces/{trace_id}"), timeout=10)
        assert response.status_code == 200, response.text
        return response.json()["data"][0]["spans"]

    spans = eventually(trace)
    chat_spans = [span for span in spans if span["operationName"].startswith("chat ")]
    assert chat_spans, [span["operationName"] for span in spans]
    tags = {tag["key"]: tag["value"] for tag in chat_spans[0]["tags"]}
    assert tags.get("span.kind") == "client"
    assert any(key.startswith("gen_ai.") for key in tags)


def test_an_alert_reaches_the_sink(stack):
    def delivered():
        response = requests.get(local("ALERT_SINK_PORT", "/api/notifications"), params={"alertname": "Watchdog"}, timeout=10)
        return response.json()["count"]

    # Watchdog fires from the first rule evaluation; its route has no group wait.
    assert eventually(delivered, within=180) >= 1


def test_no_log_line_is_lost_while_loki_restarts(stack):
    batch = f"it-restart-{uuid.uuid4().hex[:8]}"
    ids = [f"{batch}-{i}" for i in range(20)]
    compose_run(stack, "stop", "loki")
    try:
        for request_id in ids:
            send_chat(request_id)
        time.sleep(5)  # Fluent Bit tries, fails, and keeps the chunks in its buffer
    finally:
        compose_run(stack, "start", "loki")
    compose_run(stack, "up", "--wait", "--no-recreate", "loki")

    def all_arrived():
        seen = {json.loads(line).get("request_id") for _, line in loki_lines(f'{{service="llm-router"}} |= "{batch}"')}
        missing = set(ids) - seen
        assert not missing, f"{len(missing)} of {len(ids)} lines missing"
        return True

    eventually(all_arrived, within=180, every=5)
