"""The router under real gunicorn on 127.0.0.1: exact multi-worker metrics, and a collector
that is down never failing or stalling requests."""

from __future__ import annotations

import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest import chat_body, metric_sum, parse_metrics

pytestmark = pytest.mark.live


def scrape(router) -> dict:
    return parse_metrics(requests.get(f"{router.url}/metrics", timeout=10).text)


def test_four_workers_report_exact_totals(live_router):
    router = live_router(workers=4)
    total = 400
    tenants = ["search", "support", "research", "internal-tools"]

    def send(i: int) -> int:
        headers = {"X-Tenant-ID": tenants[i % 4], "Cache-Control": "no-cache"}
        return requests.post(f"{router.url}/v1/chat/completions", json=chat_body(), headers=headers, timeout=10).status_code

    with ThreadPoolExecutor(8) as pool:
        codes = list(pool.map(send, range(total)))
    assert codes == [200] * total
    samples = scrape(router)
    pids = {line for line in router.logs() if "Booting worker" in line}
    assert len(pids) == 4, "the requests should have been served by four workers"
    assert metric_sum(samples, "llm_router_chat_requests_total") == total
    assert metric_sum(samples, "llm_router_http_requests_total", route="/v1/chat/completions") == total
    assert metric_sum(samples, "llm_router_chat_request_duration_seconds_count") == total
    for tenant in tenants:
        assert metric_sum(samples, "llm_router_chat_requests_total", tenant=tenant) == total / 4
    # Gauges are aggregated, not repeated per worker.
    assert metric_sum(samples, "llm_router_build_info") == 1
    assert metric_sum(samples, "llm_router_http_requests_in_flight") == 1  # the scrape itself


def test_totals_survive_a_worker_restart(live_router):
    router = live_router(workers=2, env={"LLM_ROUTER_WORKERS": "2"})
    for _ in range(20):
        requests.post(f"{router.url}/v1/chat/completions", json=chat_body(), timeout=10)
    router.process.send_signal(__import__("signal").SIGHUP)  # gunicorn replaces every worker
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if sum("Booting worker" in line for line in router.logs()) >= 4:
            break
        time.sleep(0.2)
    time.sleep(1)
    for _ in range(10):
        requests.post(f"{router.url}/v1/chat/completions", json=chat_body(), timeout=10)
    samples = scrape(router)
    assert metric_sum(samples, "llm_router_chat_requests_total") == 30
    # Dead workers' live gauges are gone: one build_info, in-flight only the scrape.
    assert metric_sum(samples, "llm_router_http_requests_in_flight") == 1


class Blackhole:
    """A TCP listener that accepts connections and never answers: the worst collector."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.running = True
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        self.sock.settimeout(0.2)
        while self.running:
            try:
                conn, _ = self.sock.accept()
                self.connections.append(conn)
            except OSError:
                continue

    def close(self) -> None:
        self.running = False
        for conn in self.connections:
            conn.close()
        self.sock.close()


def test_unresponsive_collector_neither_fails_nor_stalls_requests(live_router):
    collector = Blackhole()
    try:
        router = live_router(workers=2, env={
            "OTEL_TRACES_EXPORTER": "otlp",
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
            "OTEL_EXPORTER_OTLP_TIMEOUT": "5",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "8",
        })
        slowest = 0.0
        for i in range(60):
            started = time.monotonic()
            response = requests.post(f"{router.url}/v1/chat/completions", json=chat_body(content=str(i)), timeout=10)
            slowest = max(slowest, time.monotonic() - started)
            assert response.status_code == 200
            assert len(response.headers["X-Trace-ID"]) == 32
        assert collector.connections, "the exporter never tried the collector: the test proves nothing"
        # A request that waited on the exporter would take its 5 s timeout.
        assert slowest < 2.5
        # Stopping must not wait out the exporter's retries either (bounded span flush).
        assert router.stop() < 8
    finally:
        collector.close()
