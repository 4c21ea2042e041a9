"""The router image as a container: healthcheck, API and metrics through a published port,
non-root, JSON logs, metrics files on tmpfs, and a fast graceful stop.

Needs a Docker engine and the image scripts/build-router-image.sh builds (`make
test-integration` does both); skips with the reason otherwise.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest
import requests

from conftest import as_tenant
from docker_support import REQUIRED, ROUTER_IMAGE, unavailable_reason

_reason = unavailable_reason(ROUTER_IMAGE)
if _reason:
    if REQUIRED:
        pytest.fail(f"router image tests cannot run: {_reason}", pytrace=False)
    pytest.skip(_reason, allow_module_level=True)

from testcontainers.core.container import DockerContainer  # noqa: E402
from testcontainers.core.wait_strategies import HealthcheckWaitStrategy, HttpWaitStrategy  # noqa: E402

ROUTER_UID = 10001
# Docker's default `docker stop` grace period: past it the engine sends SIGKILL.
DOCKER_STOP_TIMEOUT = 10
# The image's HEALTHCHECK probes every 10 s and Docker runs the first probe one interval
# after the start, so healthy takes 10-20 s.
HEALTHY_WITHIN = 60


def router_container() -> DockerContainer:
    container = DockerContainer(ROUTER_IMAGE).with_envs(
        # Requests answer at once and no collector is dialled; the rest is the image's own.
        LLM_ROUTER_SIM_TIME_SCALE="0",
        OTEL_TRACES_EXPORTER="none",
    )
    # Published on loopback only (with_bind_ports cannot name a host address).
    container.ports["8080/tcp"] = ("127.0.0.1", None)
    return container


def url(container: DockerContainer, path: str) -> str:
    return f"http://{container.get_container_host_ip()}:{container.get_exposed_port(8080)}{path}"


def exec_ok(container: DockerContainer, command: list[str]) -> str:
    result = container.exec(command)
    assert result.exit_code == 0, result.output
    return result.output.decode()


@pytest.fixture(scope="module")
def router():
    """One router container for the module, started once the image's HEALTHCHECK says healthy."""
    container = router_container().waiting_for(HealthcheckWaitStrategy().with_startup_timeout(HEALTHY_WITHIN))
    with container:
        yield container


@pytest.fixture(scope="module")
def chat(router):
    """One chat completion through the published port: (response, request id)."""
    request_id = f"it-{uuid.uuid4()}"
    response = requests.post(
        url(router, "/v1/chat/completions"),
        json={"model": "auto", "messages": [{"role": "user", "content": "Hello from the integration tests"}]},
        headers={**as_tenant("search"), "X-Request-ID": request_id},
        timeout=30,
    )
    return response, request_id


def test_healthcheck_reports_healthy(router):
    state = router.get_wrapped_container().attrs["State"]
    assert state["Health"]["Status"] == "healthy"
    assert state["Health"]["Log"][-1]["ExitCode"] == 0
    # No curl in the image: the probe is Python's HTTP client.
    assert router.exec(["sh", "-c", "command -v curl"]).exit_code != 0


def test_chat_completion_through_the_published_port(chat):
    response, request_id = chat
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"]["content"]
    assert response.headers["X-Request-ID"] == request_id
    assert response.headers["X-Router-Model"]


def test_metrics_through_the_published_port(router, chat):
    response = requests.get(url(router, "/metrics"), timeout=10)
    assert response.status_code == 200
    lines = [line for line in response.text.splitlines() if line.startswith("llm_router_chat_requests_total{")]
    assert any('tenant="search"' in line and not line.endswith(" 0.0") for line in lines), lines


def test_process_runs_as_a_non_root_user(router):
    status = exec_ok(router, ["cat", "/proc/1/status"])
    uids = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert set(map(int, uids)) == {ROUTER_UID}, uids  # real, effective, saved, filesystem
    assert exec_ok(router, ["id", "-u"]).strip() == str(ROUTER_UID)


def test_logs_are_json_lines(router, chat):
    _, request_id = chat
    stdout, stderr = router.get_logs()
    lines = [line for line in (stdout + stderr).decode().splitlines() if line.strip()]
    assert lines
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
    for record in records:
        assert {"time", "level", "logger", "message", "service"} <= record.keys(), record
    access = [record for record in records if record.get("request_id") == request_id]
    assert access, f"no log line with request_id {request_id}"
    assert access[-1].get("tenant") == "search"
    assert access[-1].get("trace_id")


def test_multiprocess_metrics_dir_is_on_tmpfs(router, chat):
    env = dict(item.split("=", 1) for item in router.get_wrapped_container().attrs["Config"]["Env"])
    directory = env["PROMETHEUS_MULTIPROC_DIR"]
    mounts = [line.split() for line in exec_ok(router, ["cat", "/proc/mounts"]).splitlines()]
    # The mount that holds the directory: the longest mount point that is a prefix of it.
    holding = max(
        (mount for mount in mounts if directory == mount[1] or directory.startswith(mount[1].rstrip("/") + "/")),
        key=lambda mount: len(mount[1]),
    )
    assert holding[2] == "tmpfs", holding
    # The workers write their metric files there.
    assert ".db" in exec_ok(router, ["ls", directory])


def test_docker_stop_is_graceful_and_fast():
    container = router_container().waiting_for(HttpWaitStrategy(8080, "/readyz").with_startup_timeout(60))
    with container:
        requests.post(
            url(container, "/v1/chat/completions"),
            json={"model": "auto", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        wrapped = container.get_wrapped_container()
        started = time.monotonic()
        wrapped.stop(timeout=DOCKER_STOP_TIMEOUT)
        took = time.monotonic() - started
        wrapped.reload()
        state = wrapped.attrs["State"]
        logs = wrapped.logs().decode()
    # gunicorn's master stops its workers on SIGTERM and exits 0; a SIGKILL would be 137.
    assert state["ExitCode"] == 0, (state, logs[-2000:])
    assert "Shutting down: Master" in logs
    assert took < DOCKER_STOP_TIMEOUT / 2, f"docker stop took {took:.1f}s"
