"""The whole compose stack, started by testcontainers' DockerCompose from compose.yaml.

What it proves, against the real services:
  - `llm-router doctor`, run as a user runs it after `make up`, passes every check: the
    router ready, every Prometheus target of the default stack up and the tagged requests
    counted, recording rules evaluating, Watchdog at the alert sink through Alertmanager,
    the request's log line in Loki (router -> Docker's fluentd driver -> Fluent Bit -> Loki)
    with its trace_id as structured metadata, its trace in Jaeger with the `chat` span and
    gen_ai attributes, Grafana's datasources healthy and every dashboard present, Fluent
    Bit's output healthy and its forward port open;
  - a line that is not JSON (on stderr) reaches Loki with the service and level labels;
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
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from conftest import as_tenant
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
        ALERT_SINK_TOKEN=uuid.uuid4().hex,
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
        headers={**as_tenant("search"), "X-Request-ID": request_id, "Cache-Control": "no-cache"},
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


def test_doctor_passes_on_the_running_stack(stack, tmp_path_factory):
    """The checks a user runs after `make up` (llm-router doctor), against this stack's ports."""
    env_file = Path(tmp_path_factory.mktemp("doctor")) / ".env"
    env_file.write_text("".join(f"{key}={value}\n" for key, value in ENV.items()))
    result = subprocess.run([sys.executable, "-m", "llm_router.cli", "doctor", "--env-file", str(env_file),
                             "--wait", str(ARRIVE_WITHIN), "--json"],
                            capture_output=True, text=True, timeout=ARRIVE_WITHIN * 4)
    report = json.loads(result.stdout)
    failed = [check for check in report["checks"] if not check["ok"]]
    assert result.returncode == 0 and not failed, json.dumps(failed, indent=2)
    assert len(report["checks"]) == 10


def test_a_line_that_is_not_json_reaches_loki_with_labels(stack):
    marker = f"it-not-json-{uuid.uuid4().hex[:8]}"
    # Written by the router's container on stderr, as a crash would be.
    compose_run(stack, "exec", "-T", "router", "sh", "-c", f"echo {marker} > /proc/1/fd/2")

    def found():
        return loki_lines(f'{{service="llm-router", level="error"}} |= "{marker}"')

    labels, line = eventually(found)[0]
    assert labels["service"] == "llm-router" and labels["level"] == "error"
    assert json.loads(line)["message"] == marker
    assert not labels.get("container", "").startswith("/")


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
