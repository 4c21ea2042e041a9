"""Start the real router (`llm-router serve`, i.e. gunicorn) on 127.0.0.1 and stop it."""

from __future__ import annotations

import copy
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import yaml

from . import procs

REPO = Path(__file__).resolve().parents[1]
SHIPPED_CONFIG = REPO / "service" / "config" / "router.yaml"

# Variables of the caller's environment that would change what is measured.
_SCRUBBED = ("PROMETHEUS_MULTIPROC_DIR", "OTEL_SDK_DISABLED", "OTEL_TRACES_SAMPLER", "OTEL_TRACES_SAMPLER_ARG",
             "OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_TRACES_EXPORTER",
             "LLM_ROUTER_METRICS", "LLM_ROUTER_LOGS", "LLM_ROUTER_TRACES", "LLM_ROUTER_LOG_CONTENT",
             "LLM_ROUTER_WORKER_CLASS", "LLM_ROUTER_WORKER_CONNECTIONS", "LLM_ROUTER_THREADS")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def quiet_config() -> dict:
    """The shipped config, read at run time, with no simulated delay and no simulated errors."""
    data = yaml.safe_load(SHIPPED_CONFIG.read_text())
    data["simulation_time_scale"] = 0
    for model in data["models"]:
        model.setdefault("simulation", {})["error_rate"] = 0.0
    return data


def label_set_config(tenants: int, models: int = 10) -> dict:
    """`tenants` tenants x `models` simulated models (no fallbacks, no errors, no delay)."""
    data = quiet_config()
    template = next(m for m in data["models"] if m["id"] == "sim-mini")
    data["models"] = []
    for i in range(models):
        model = copy.deepcopy(template)
        model["id"] = f"bench-model-{i:02d}"
        model.pop("fallbacks", None)
        model["max_concurrency"] = 64
        data["models"].append(model)
    data["tenants"] = [
        {"id": f"tenant-{i:03d}", "monthly_budget_usd": 1000, "api_keys": [f"sk-bench-{i:03d}"]} for i in range(tenants)
    ]
    return data


class Router:
    """One gunicorn router: `workers` workers x `threads` threads (None: the router's default),
    stdout+stderr to a file."""

    def __init__(self, workdir: Path, name: str, config: dict, env: dict[str, str], workers: int = 2,
                 threads: int | None = 4) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Where Prometheus scrapes in the default deployment (LLM_ROUTER_METRICS_BIND): the
        # metrics process with several workers, a thread of the worker with one.
        self.metrics_port = free_port()
        self.name = name
        self.workers = workers
        base = workdir / f"{name}-{self.port}"
        base.mkdir(parents=True, exist_ok=True)
        self.dir = base
        (base / "router.yaml").write_text(yaml.safe_dump(config))
        self.log_path = base / "router.log"
        self.env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
        self.env.update({
            "LLM_ROUTER_CONFIG": str(base / "router.yaml"),
            "LLM_ROUTER_BIND": f"127.0.0.1:{self.port}",
            "LLM_ROUTER_WORKERS": str(workers),
            "LLM_ROUTER_STATE_DIR": str(base / "state"),
            "LLM_ROUTER_SIM_TIME_SCALE": "0",
            "LLM_ROUTER_METRICS_BIND": f"127.0.0.1:{self.metrics_port}",
        })
        if threads is not None:
            self.env["LLM_ROUTER_THREADS"] = str(threads)
        if workers > 1:
            self.env["PROMETHEUS_MULTIPROC_DIR"] = str(base / "metrics")
        self.env.update(env)
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "Router":
        try:
            return self._start(timeout)
        except BaseException:
            self.stop()  # never leave a half-started router behind
            raise

    def _start(self, timeout: float) -> "Router":
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen([sys.executable, "-m", "llm_router.cli", "serve"], env=self.env,
                                        stdout=self._log, stderr=subprocess.STDOUT, cwd=self.dir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"router {self.name} exited early:\n{self.tail()}")
            try:
                # Only once our gunicorn has bound the port: on a shared machine another
                # process may hold it, and its /readyz must not pass for ours.
                if f"Listening at: {self.url}" in self.tail(200_000):
                    with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as response:
                        if response.status == 200 and len(self.worker_pids()) >= self.workers:
                            return self
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"router {self.name} not ready in {timeout}s:\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def worker_class(self) -> str:
        """The worker class gunicorn reported at start ("Using worker: gthread")."""
        # The line may be plain text or inside a JSON log line's message.
        found = re.search(r"Using worker: ([\w.]+)", self.tail(200_000))
        return found.group(1) if found else "unknown"

    def children(self) -> dict[int, str]:
        """The master's children (workers, metrics process): pid -> command name."""
        return procs.children(self.process.pid) if self.process is not None else {}

    def worker_pids(self) -> list[int]:
        # The metrics process is the master's child too, but serves no request.
        return sorted(pid for pid, comm in self.children().items() if not comm.startswith("llm-router-metr"))

    def cpu_seconds(self) -> float:
        """User + system CPU of the master and all its children (workers, metrics process)."""
        if self.process is None:
            return 0.0
        return procs.cpu_seconds([self.process.pid, *self.children()])

    def worker_rss_mib(self) -> list[float]:
        """VmRSS of each gunicorn worker (the master's children), in MiB; a worker gone meanwhile
        is left out."""
        return [rss for rss in map(procs.rss_mib, self.worker_pids()) if rss > 0]

    def stop(self, timeout: float = 60, sig: int = signal.SIGTERM) -> float:
        """Signal the master (SIGTERM: graceful) and wait: returns the seconds from signal to exit."""
        if self.process is None or self.process.poll() is not None:
            if self.process is not None:
                self._log.close()
            return 0.0
        started = time.monotonic()
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        finally:
            self._log.close()
        return time.monotonic() - started


def start_router(workdir: Path, name: str, config: dict, env: dict[str, str], workers: int = 2,
                 threads: int | None = 4, attempts: int = 3) -> Router:
    """Start a router; on a port lost to another process meanwhile, try again on a new one."""
    for attempt in range(1, attempts + 1):
        try:
            return Router(workdir, name, config, env, workers, threads).start()
        except RuntimeError:
            if attempt == attempts:
                raise
    raise AssertionError("unreachable")
