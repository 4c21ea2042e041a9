"""Shared fixtures: an in-process app (Flask test client) and a real gunicorn on loopback."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import threading
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests
import yaml

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "service" / "config" / "router.yaml"

# Tests never wait for simulated latency unless they ask for it, and never export spans
# to a collector that is not there.
os.environ.setdefault("LLM_ROUTER_SIM_TIME_SCALE", "0")
os.environ.setdefault("OTEL_TRACES_EXPORTER", "none")


SHIPPED_KEYS = {tenant["id"]: tenant["api_keys"][0] for tenant in yaml.safe_load(DEFAULT_CONFIG.read_text())["tenants"]}


def as_tenant(tenant: str) -> dict[str, str]:
    """Headers that act as a configured tenant: its API key (a tenant with keys is reachable
    only with one of them)."""
    return {"Authorization": f"Bearer {SHIPPED_KEYS[tenant]}"}


def chat_body(model: str = "auto", content: str = "hello", **extra) -> dict:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}


def config_dict(**overrides) -> dict:
    """The shipped config as a dict, with simulated delays off and top-level keys replaced."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    data["simulation_time_scale"] = 0
    data.update(overrides)
    return data


def quiet_models(data: dict) -> dict:
    """Remove the simulated error and content-filter rates, so a test sees only the faults
    it injects (and every answer ends with stop or length)."""
    for model in data["models"]:
        simulation = model.setdefault("simulation", {})
        simulation["error_rate"] = 0.0
        simulation["content_filter_rate"] = 0.0
    return data


@pytest.fixture
def make_app(tmp_path):
    """Build an app from a config dict (default: the shipped config without random errors)."""
    from llm_router.app import Telemetry, create_app
    from llm_router.config import parse_config

    built = []

    def build(data: dict | None = None, telemetry: Telemetry | None = None, tracer_provider=None):
        data = data if data is not None else quiet_models(config_dict())
        app = create_app(
            parse_config(data),
            telemetry=telemetry or Telemetry(),
            state_dir=tmp_path / f"state-{time.monotonic_ns()}",
            tracer_provider=tracer_provider,
        )
        built.append(app)
        return app

    yield build
    # Each app probes its backends and stores its charges on threads of its own: stop them
    # with the test.
    for app in built:
        app.extensions["llm_router"].close()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


def prices(config: dict) -> dict[str, tuple[float, float]]:
    """model id -> (input, output) price per 1k tokens, from a config dict."""
    return {m["id"]: (m["price"]["input_per_1k"], m["price"]["output_per_1k"]) for m in config["models"]}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def live_children(parent: int) -> list[int]:
    """Pids whose parent is ``parent`` (zombies excluded), straight from /proc, sorted."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # gone meanwhile
        if int(fields[1]) == parent and fields[0] not in (b"Z", b"X"):
            found.append(int(entry))
    return sorted(found)


class LiveProcess:
    """A real process on 127.0.0.1 that is ready when ``ready_path`` answers 200."""

    name = "process"

    def __init__(self, tmp: Path, command: list[str], port: int, env: dict[str, str] | None = None,
                 ready_path: str = "/healthz", name: str | None = None) -> None:
        self.name = name or self.name
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.command = command
        self.env = {**os.environ, **(env or {})}
        self.ready_path = ready_path
        self.log_path = tmp / f"{self.name}-{port}.log"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 30):
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()  # never leave a half-started process behind
            raise

    def _start(self, timeout: float):
        self.process = self._spawn()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited early:\n{self.log_path.read_text()[-3000:]}")
            try:
                if self._ready():
                    return self
            except requests.RequestException:  # not listening yet, or still booting
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready in {timeout}s:\n{self.log_path.read_text()[-3000:]}")

    def _spawn(self) -> subprocess.Popen:
        """Start the process, its output going to the log file."""
        self.log = self.log_path.open("wb")
        return subprocess.Popen(self.command, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)

    def _ready(self) -> bool:
        return requests.get(f"{self.url}{self.ready_path}", timeout=2).status_code == 200

    def _exited(self) -> None:
        """After the process is gone: let go of its output."""
        self.log.close()

    def stop(self, timeout: float = 30) -> float:
        """SIGTERM, wait; returns how long the graceful stop took."""
        if self.process is None or self.process.poll() is not None:
            return 0.0
        started = time.monotonic()
        self.process.terminate()
        try:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            return time.monotonic() - started
        finally:
            self._exited()

    def logs(self) -> list[str]:
        return self.log_path.read_text().splitlines()

    def events(self, name: str | None = None) -> list[dict]:
        """The process's JSON log lines (all of them, or those of one event)."""
        found = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if name is None or record.get("event") == name:
                found.append(record)
        return found


class LiveRouter(LiveProcess):
    """A real `llm-router serve` (gunicorn) on 127.0.0.1, stopped at the end of the test."""

    name = "router"

    def __init__(self, tmp: Path, workers: int, config: dict | None, env: dict[str, str] | None) -> None:
        port = free_port()
        config_path = tmp / f"router-{port}.yaml"
        config_path.write_text(yaml.safe_dump(config if config is not None else quiet_models(config_dict())))
        router_env = {
            "LLM_ROUTER_CONFIG": str(config_path),
            "LLM_ROUTER_BIND": f"127.0.0.1:{port}",
            "LLM_ROUTER_WORKERS": str(workers),
            "LLM_ROUTER_THREADS": "4",
            "LLM_ROUTER_STATE_DIR": str(tmp / f"state-{port}"),
            **(env or {}),
        }
        super().__init__(tmp, [sys.executable, "-m", "llm_router.cli", "serve"], port, router_env, "/readyz")
        if workers > 1:
            self.env.setdefault("PROMETHEUS_MULTIPROC_DIR", str(tmp / f"metrics-{port}"))

    def scrape(self) -> dict[tuple[str, frozenset], float]:
        return parse_metrics(requests.get(f"{self.url}/metrics", timeout=10).text)

    def journals(self) -> list[Path]:
        """The ledger's journal files in the router's state directory (one per live worker,
        plus any a dead process left)."""
        return sorted((Path(self.env["LLM_ROUTER_STATE_DIR"]) / "journal").glob("journal-*.bin"))

    def kill_all(self) -> list[int]:
        """SIGKILL the master and every process it started, at once (an OOM kill of the
        container, a power-cycled VM minus the page cache); returns the pids, master first."""
        master = self.process.pid
        victims = [master, *live_children(master)]
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        self.process.wait(10)
        self._exited()
        return victims


@pytest.fixture
def live_router(tmp_path) -> Iterator:
    """Factory: live_router(workers=4, config=..., env=...) starts a real gunicorn router."""
    started: list[LiveRouter] = []

    def start(workers: int = 2, config: dict | None = None, env: dict[str, str] | None = None) -> LiveRouter:
        router = LiveRouter(tmp_path, workers, config, env).start()
        started.append(router)
        return router

    yield start
    for router in started:
        router.stop()


def parse_metrics(text: str) -> dict[tuple[str, frozenset], float]:
    """Samples of a Prometheus text exposition as {(name, labels): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def metric_sum(samples: dict, name: str, **labels) -> float:
    wanted = set(labels.items())
    return sum(value for (sample, sample_labels), value in samples.items() if sample == name and wanted <= sample_labels)


@contextmanager
def captured_json_lines(service: str = "llm-router") -> Iterator[Callable[[], list[dict]]]:
    """Every log record meanwhile, formatted as the router formats it; call to read them."""
    from llm_router.telemetry.logs import ContextFilter, RouterJsonFormatter

    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(self.format(record))

    handler = Collect()
    handler.setFormatter(RouterJsonFormatter())
    handler.addFilter(ContextFilter(service))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield lambda: [json.loads(line) for line in lines]
    finally:
        root.removeHandler(handler)


@pytest.fixture
def json_lines():
    with captured_json_lines() as read:
        yield read


@contextmanager
def serving(app) -> Iterator[str]:
    """An in-process app on a real socket (127.0.0.1, ephemeral port); yields its URL."""
    from werkzeug.serving import make_server

    httpd = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        thread.join(5)


@contextmanager
def stuck_span_queue(queue_size: int = 2) -> Iterator:
    """A real TracerProvider whose BatchSpanProcessor cannot export (its exporter blocks
    until the block ends) and holds ``queue_size`` spans: further spans are dropped the way
    they are with a collector down. Also forgets earlier summaries of the process-wide
    dropped-span filter, so the first drop here is summarised at once."""
    import threading

    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

    from llm_router.telemetry import tracing

    release = threading.Event()

    class Stuck(SpanExporter):
        def export(self, spans):
            release.wait(10)
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(Stuck(), max_queue_size=queue_size, max_export_batch_size=1,
                                                   schedule_delay_millis=1))
    summariser = tracing.install_dropped_span_filter(None)
    summariser.last, summariser.pending = float("-inf"), 0
    try:
        yield provider
    finally:
        release.set()
        provider.shutdown()


def pytest_terminal_summary(terminalreporter) -> None:
    """The chaos suite's figures (tests/chaos/chaoslib.py), when it ran: faults injected,
    requests, dollars reconciled, anything lost (also in reports/chaos.json)."""
    chaoslib = sys.modules.get("chaoslib")
    if chaoslib is None or not chaoslib.FIGURES:
        return
    terminalreporter.section("chaos: faults injected and dollars reconciled")
    for line in chaoslib.summary_lines():
        terminalreporter.write_line(line)
