"""The router under real gunicorn on 127.0.0.1: exact multi-worker metrics, and a collector
that is down never failing or stalling requests."""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from conftest import chat_body, live_children, metric_sum, parse_metrics, as_tenant

pytestmark = pytest.mark.live


def scrape(router) -> dict:
    return parse_metrics(requests.get(f"{router.url}/metrics", timeout=10).text)


def test_four_workers_report_exact_totals(live_router):
    router = live_router(workers=4)
    total = 400
    tenants = ["search", "support", "research", "internal-tools"]

    def send(i: int) -> int:
        headers = {**as_tenant(tenants[i % 4]), "Cache-Control": "no-cache"}
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




def process_series(samples: dict, name: str) -> dict[tuple[int, str], float]:
    """{(pid, role): value} of one llm_router_process_* metric (gc: summed over generations)."""
    series: dict[tuple[int, str], float] = {}
    for (sample, labels), value in samples.items():
        if sample == name:
            labels = dict(labels)
            key = (int(labels["pid"]), labels["role"])
            series[key] = series.get(key, 0.0) + value
    return series


def wait_for_workers(router, master: int, count: int, gone: int | None = None) -> dict:
    """Scrape until /metrics shows ``count`` workers, all live children of the master (and
    not ``gone``); bounded, returns the last scrape."""
    deadline = time.monotonic() + 30
    while True:
        samples = scrape(router)
        workers = {pid for pid, role in process_series(samples, "llm_router_process_resident_memory_bytes")
                   if role == "worker"}
        if len(workers) == count and gone not in workers and workers == set(live_children(master)):
            return samples
        if time.monotonic() > deadline:
            return samples  # the caller's assertions say what is wrong
        time.sleep(0.2)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="process metrics read /proc (Linux only)")
def test_process_health_of_the_master_and_every_worker(live_router):
    router = live_router(workers=3)
    master = router.process.pid  # `llm-router serve` execs gunicorn: this is the master

    def check(samples: dict) -> set[int]:
        rss = process_series(samples, "llm_router_process_resident_memory_bytes")
        assert {pid for pid, role in rss if role == "master"} == {master}
        workers = {pid for pid, role in rss if role == "worker"}
        assert workers == set(live_children(master)) and len(workers) == 3
        assert {role for _, role in rss} == {"master", "worker"}, "no process may report itself as single"
        everyone = {(master, "master")} | {(pid, "worker") for pid in workers}
        for name in ("llm_router_process_resident_memory_bytes", "llm_router_process_cpu_seconds_total",
                     "llm_router_process_virtual_memory_bytes", "llm_router_process_open_fds",
                     "llm_router_process_max_fds", "llm_router_process_threads",
                     "llm_router_process_start_time_seconds"):
            series = process_series(samples, name)
            assert set(series) == everyone, name
            assert all(value > 0 for value in series.values()), name
        started = process_series(samples, "llm_router_process_start_time_seconds")
        assert all(started[(pid, "worker")] >= started[(master, "master")] for pid in workers)
        # GC counts of every process, each generation, recorded by the process itself.
        gc_generations: dict[tuple[int, str], set[str]] = {}
        for (sample, labels), _ in samples.items():
            if sample == "llm_router_process_gc_collections_total":
                labels = dict(labels)
                gc_generations.setdefault((int(labels["pid"]), labels["role"]), set()).add(labels["generation"])
        assert gc_generations == {key: {"0", "1", "2"} for key in everyone}
        assert all(value > 0 for value in process_series(samples, "llm_router_process_gc_collections_total").values())
        return workers

    workers = check(wait_for_workers(router, master, 3))
    # Whichever worker answers, the same processes are reported.
    for _ in range(6):
        assert check(scrape(router)) == workers

    victim = min(workers)
    os.kill(victim, signal.SIGKILL)
    replaced = check(wait_for_workers(router, master, 3, gone=victim))
    assert victim not in replaced
    assert len(replaced - workers) == 1, "gunicorn replaced exactly the killed worker"


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


def test_metrics_process_serves_the_same_totals_outside_the_request_workers(live_router):
    """LLM_ROUTER_METRICS_BIND: a process forked by the master serves /metrics on its own
    port, with the same exact totals as the request port; it goes when the router stops."""
    from conftest import free_port

    port = free_port()
    router = live_router(workers=2, env={"LLM_ROUTER_METRICS_BIND": f"127.0.0.1:{port}"})
    sent = 40
    for i in range(sent):
        response = requests.post(f"{router.url}/v1/chat/completions", json=chat_body(),
                                 headers={"Cache-Control": "no-cache", **as_tenant("search")}, timeout=10)
        assert response.status_code == 200
    separate = parse_metrics(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
    inline = scrape(router)
    assert metric_sum(separate, "llm_router_chat_requests_total", tenant="search") == sent
    assert metric_sum(separate, "llm_router_chat_requests_total") == metric_sum(inline, "llm_router_chat_requests_total")
    assert metric_sum(separate, "llm_router_tokens_total") == metric_sum(inline, "llm_router_tokens_total")
    # The metrics process is not a request worker: its own role, and no HTTP request counted.
    roles = {dict(labels)["role"] for (name, labels) in separate if name == "llm_router_process_start_time_seconds"}
    assert roles == {"master", "worker", "metrics"}
    workers = {dict(labels)["pid"] for (name, labels) in separate
               if name == "llm_router_process_start_time_seconds" and dict(labels)["role"] == "worker"}
    assert len(workers) == 2
    openmetrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10,
                               headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert openmetrics.headers["Content-Type"].startswith("application/openmetrics-text")
    assert openmetrics.text.rstrip().endswith("# EOF")
    router.stop()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) != 0:
                break
        time.sleep(0.1)
    else:
        raise AssertionError("the metrics process outlived the router")


def test_one_worker_serves_the_metrics_address_itself_with_exemplars(live_router):
    """workers=1: no files to merge, the registry is the worker's; the worker serves
    LLM_ROUTER_METRICS_BIND from a thread, and OpenMetrics there carries trace exemplars."""
    from conftest import free_port

    port = free_port()
    router = live_router(workers=1, env={"LLM_ROUTER_METRICS_BIND": f"127.0.0.1:{port}",
                                         "OTEL_TRACES_EXPORTER": "none"})
    for _ in range(5):
        assert requests.post(f"{router.url}/v1/chat/completions", json=chat_body(),
                             headers={"Cache-Control": "no-cache"}, timeout=10).status_code == 200
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10,
                        headers={"Accept": "application/openmetrics-text; version=1.0.0"}).text
    assert metric_sum(parse_metrics(requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text),
                      "llm_router_chat_requests_total") == 5
    assert any(line.startswith("llm_router_chat_request_duration_seconds_bucket") and '# {trace_id="' in line
               for line in text.splitlines())


def test_a_stopped_router_leaves_no_directories_behind(tmp_path):
    """`make run` (workers > 1, no PROMETHEUS_MULTIPROC_DIR given) makes a private metrics
    directory under TMPDIR and a process-health directory (in /dev/shm); both go when it stops."""
    import tempfile

    from conftest import LiveRouter

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    shm = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path(tempfile.gettempdir())

    def process_dirs() -> set[Path]:
        return set(shm.glob("llm-router-process-*"))

    before = process_dirs()
    router = LiveRouter(tmp_path, 2, None, {"TMPDIR": str(scratch)})
    router.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    router.env.pop("LLM_ROUTER_PROCESS_DIR", None)
    router.start()
    try:
        made = [path for path in scratch.iterdir() if path.name.startswith("llm-router-metrics-")]
        assert len(made) == 1 and oct(made[0].stat().st_mode & 0o777) == "0o700", made
        assert requests.post(f"{router.url}/v1/chat/completions", json=chat_body(), timeout=10).status_code == 200
        ours = process_dirs() - before
        assert ours and all(oct(path.stat().st_mode & 0o777) == "0o700" for path in ours), ours
    finally:
        router.stop()
    assert not [path for path in scratch.iterdir() if path.name.startswith("llm-router-metrics-")]
    assert not (ours & process_dirs()), "the process-health directory outlived the router"
