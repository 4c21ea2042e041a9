"""The bundle's alerting stack on 127.0.0.1, for live tests: the gunicorn router, the alert
sink, real Prometheus with the bundle's rules and real Alertmanager with its routing.

The configurations are derived at test time from the real files: scrape and evaluation
intervals of one second, every `for:` shortened, targets and webhook URLs moved to
loopback ports. Nothing else changes, so what fires here is what fires in the stack.
"""

from __future__ import annotations

import re
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
import yaml

from conftest import REPO, LiveProcess, chat_body, config_dict, free_port, quiet_models

sys.path.insert(0, str(REPO / "tests" / "config"))
from toolbox import tool  # noqa: E402

ADMIN_TOKEN = "live-admin-token"
SHORT_FOR = "3s"


# --- derived configurations --------------------------------------------------------------


def derive_rules(target: Path) -> list[Path]:
    """Copy the real rule files with every `for:` shortened."""
    target.mkdir()
    paths = []
    for source in sorted((REPO / "prometheus" / "rules").glob("*.yml")):
        data = yaml.safe_load(source.read_text())
        for group in data["groups"]:
            group["interval"] = "1s"
            for rule in group["rules"]:
                if "for" in rule:
                    rule["for"] = SHORT_FOR
        path = target / source.name
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        paths.append(path)
    return paths


def derive_prometheus(tmp: Path, ports: dict[str, int]) -> Path:
    data = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    data["global"].update(scrape_interval="1s", scrape_timeout="1s", evaluation_interval="1s")
    derive_rules(tmp / "rules")
    data["rule_files"] = [str(tmp / "rules" / "*.yml")]
    data["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"] = [f"127.0.0.1:{ports['alertmanager']}"]
    jobs = {"llm-router": "router", "alert-sink": "sink", "prometheus": "prometheus", "alertmanager": "alertmanager"}
    kept = []
    for job in data["scrape_configs"]:
        if job["job_name"] in jobs:  # the components that run here
            job["static_configs"] = [{"targets": [f"127.0.0.1:{ports[jobs[job['job_name']]]}"]}]
            job.pop("dns_sd_configs", None)  # compose-only discovery (profile `scale`'s replicas)
            kept.append(job)
    data["scrape_configs"] = kept
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _shorten(route: dict) -> None:
    for key, value in (("group_wait", "1s"), ("group_interval", "2s"), ("repeat_interval", "1h")):
        if key in route:
            route[key] = value
    for child in route.get("routes", []):
        _shorten(child)


def derive_alertmanager(tmp: Path, sink_port: int) -> Path:
    data = yaml.safe_load((REPO / "alertmanager" / "alertmanager.yml").read_text())
    _shorten(data["route"])
    data["route"].update(group_wait="1s", group_interval="2s")
    heartbeat = next(r for r in data["route"]["routes"] if r["receiver"] == "heartbeat")
    heartbeat["repeat_interval"] = "5s"
    for receiver in data["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            hook["url"] = re.sub(r"^http://alert-sink:9095", f"http://127.0.0.1:{sink_port}", hook["url"])
            assert hook["url"].startswith("http://127.0.0.1"), hook["url"]
    shutil.copytree(REPO / "alertmanager" / "templates", tmp / "templates")
    path = tmp / "alertmanager.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# --- the stack on loopback -----------------------------------------------------------------


class Sink(LiveProcess):
    name = "alert-sink"

    def notifications(self, **query) -> list[dict]:
        return requests.get(f"{self.url}/api/notifications", params=query, timeout=5).json()["notifications"]

    def wait_for(self, timeout: float, **query) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = self.notifications(**query)
            if found:
                return found[0]
            time.sleep(0.2)
        raise AssertionError(f"no notification {query} within {timeout}s; got {self.notifications()}")


@pytest.fixture
def stack(tmp_path, live_router, request):
    ports = {"sink": free_port(), "prometheus": free_port(), "alertmanager": free_port()}
    # Extra environment for the router: a test module may define stack_router_env(tmp_path)
    # (tests/live/test_doctor.py sends the spans to a local OTLP receiver that way).
    router_env = getattr(request.module, "stack_router_env", lambda tmp: {})(tmp_path)
    data = quiet_models(config_dict())
    data["routing"]["circuit_breaker"] = {"failure_threshold": 3, "reset_timeout_seconds": 2}
    # Scraped like the compose deployment: on the metrics process's own port.
    ports["router"] = free_port()
    router = live_router(workers=2, config=data, env={
        "LLM_ROUTER_ADMIN_TOKEN": ADMIN_TOKEN, "LLM_ROUTER_METRICS_BIND": f"127.0.0.1:{ports['router']}",
        **router_env})
    started: list[LiveProcess] = []
    sink = Sink(tmp_path, [sys.executable, "-m", "llm_router.cli", "alert-sink"], ports["sink"],
                {"ALERT_SINK_BIND": f"127.0.0.1:{ports['sink']}"})
    started.append(sink.start())
    am_dir = tmp_path / "alertmanager"
    am_dir.mkdir()
    alertmanager = LiveProcess(tmp_path, [
        str(tool("alertmanager")), f"--config.file={derive_alertmanager(am_dir, ports['sink'])}",
        f"--storage.path={am_dir / 'data'}", f"--web.listen-address=127.0.0.1:{ports['alertmanager']}",
        "--cluster.listen-address=",
    ], ports["alertmanager"], ready_path="/-/ready")
    alertmanager.name = "alertmanager"
    started.append(alertmanager.start())
    prom_dir = tmp_path / "prometheus"
    prom_dir.mkdir()
    prometheus = LiveProcess(tmp_path, [
        str(tool("prometheus")), f"--config.file={derive_prometheus(prom_dir, ports)}",
        f"--storage.tsdb.path={prom_dir / 'data'}", f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
        # Alerts evaluated before Alertmanager is discovered are resent after this delay
        # (1m by default): shortened like every other interval here.
        "--rules.alert.resend-delay=2s",
    ], ports["prometheus"], ready_path="/-/ready")
    prometheus.name = "prometheus"
    started.append(prometheus.start())
    yield {"router": router, "sink": sink, "alertmanager": alertmanager, "prometheus": prometheus}
    for process in reversed(started):
        process.stop()


class Load:
    """Steady chat traffic for one model in a background thread, bounded in time."""

    def __init__(self, url: str, model: str, limit_seconds: float = 120) -> None:
        self.url, self.model, self.limit = url, model, limit_seconds
        self.stop_event = threading.Event()
        self.codes: list[int] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit
        session = requests.Session()
        while not self.stop_event.is_set() and time.monotonic() < deadline:
            response = session.post(f"{self.url}/v1/chat/completions", json=chat_body(self.model),
                                    headers={"Cache-Control": "no-cache"}, timeout=10)
            self.codes.append(response.status_code)
            time.sleep(0.05)

    def __enter__(self) -> "Load":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop_event.set()
        self.thread.join(15)


def admin(router, method: str, **body) -> requests.Response:
    return requests.request(method, f"{router.url}/admin/faults", json=body or None,
                            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=5)
