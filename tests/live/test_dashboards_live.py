"""Every router panel of the generated dashboards returns data from the real Prometheus,
after a Locust run and an injected backend fault against the live harness (harness.py).

A dashboard built on a metric or label that drifted shows "No data"; this test is where
that drift fails.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
import requests

from conftest import REPO
from harness import admin, stack  # noqa: F401 (stack is a fixture)

pytestmark = pytest.mark.live

# The dashboards about the router; the stack-health and logs dashboards query Loki,
# Fluent Bit, Jaeger and Grafana, which do not run here.
ROUTER_DASHBOARDS = ("llm-router-overview", "llm-router-models", "llm-router-tenants", "llm-router-routing")
# Grafana's variables, as Grafana would expand them for a short range with 1 s scrapes.
VARIABLES = {
    "__rate_interval": "30s", "__interval": "15s", "__range": "5m", "__range_s": "300",
    "tenant": ".*", "model": ".*", "instance": ".*", "datasource": "prometheus",
}


# Panels about events that happen at a process's start or reload, or every 30 s (health
# probes): their quantile is NaN (a gap in Grafana) while the rate window holds no event,
# which is what they should show then. They must still return their series; every other
# panel must have a number.
SPARSE_EVENTS = ("Health probe duration p95 by model", "Model and config load time")

# Panels about the router on Kubernetes, from kube-state-metrics: no such series exist here
# (nor in compose), so they show no data by design. Exempt by title, and only while every
# query of the panel reads nothing but kube-state-metrics series (checked below), so the
# exemption cannot hide a router panel.
KUBERNETES_ONLY = {("llm-router-overview", "Replicas"), ("llm-router-overview", "Autoscaler"),
                   ("llm-router-overview", "Scaling decisions")}


def expand(expr: str) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        return VARIABLES[name.split(":")[0]]

    return re.sub(r"\$\{([^}]+)\}|\$([A-Za-z_]+)", value, expr)


def panels(dashboard: dict):
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep their panels inside


def router_queries() -> list[tuple[str, str, str]]:
    queries = []
    for uid in ROUTER_DASHBOARDS:
        dashboard = json.loads((REPO / "grafana" / "generated" / f"{uid}.json").read_text())
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                datasource = (target.get("datasource") or panel.get("datasource") or {}).get("uid", "")
                if "expr" in target and datasource in ("${datasource}", "prometheus"):
                    queries.append((uid, panel["title"], expand(target["expr"])))
    return queries


def drive_traffic(router, tmp_path) -> None:
    """A realistic mix from the shipped load generator, with one backend failing for a while
    (errors, retries, fallbacks, an open circuit) so every panel has something to show."""
    assert admin(router, "POST", model="sim-coder", error_rate=0.7, duration_seconds=600).status_code == 201
    command = [
        sys.executable, "-m", "locust", "-f", str(REPO / "loadgen" / "locustfile.py"), "--headless",
        "--host", router.url, "-u", "6", "-r", "6", "-t", "12s", "--stop-timeout", "5", "--only-summary",
    ]
    env = {**os.environ, "LOADGEN_WAIT": "0,0.05"}
    run = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=90)
    assert run.returncode in (0, 1), run.stderr[-3000:]  # 1: the injected failures count as errors
    assert admin(router, "DELETE").status_code == 200


def kube_state_metrics() -> set[str]:
    import yaml

    listed = yaml.safe_load((REPO / "prometheus" / "stack-metrics.yaml").read_text())["metrics"]
    return {name for name, about in listed.items() if about["component"] == "kube-state-metrics"}


def test_kubernetes_only_panels_read_only_kube_state_metrics():
    found = {(uid, title) for uid, title, _ in router_queries()} & KUBERNETES_ONLY
    assert found == KUBERNETES_ONLY, f"exempt panels that no longer exist: {KUBERNETES_ONLY - found}"
    for uid, title, expr in router_queries():
        if (uid, title) in KUBERNETES_ONLY:
            names = set(re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{", expr))  # every selector's metric
            assert "llm_router_" not in expr, f"{uid} / {title} reads a router metric"
            assert names and names <= kube_state_metrics(), f"{uid} / {title} reads {names - kube_state_metrics()}"


def test_every_router_panel_query_returns_data(stack, tmp_path):
    router, prometheus = stack["router"], stack["prometheus"]
    drive_traffic(router, tmp_path)
    time.sleep(5)  # the last scrapes and rule evaluations
    queries = [(uid, title, expr) for uid, title, expr in router_queries() if (uid, title) not in KUBERNETES_ONLY]
    print(f"\n{len(KUBERNETES_ONLY)} Kubernetes-only panels (kube-state-metrics) not queried here")
    empty = []
    for uid, title, expr in queries:
        response = requests.get(f"{prometheus.url}/api/v1/query", params={"query": expr}, timeout=10)
        assert response.status_code == 200, (uid, title, expr, response.text)
        result = response.json()["data"]["result"]
        # Only NaN (0/0: no observation in the window) draws nothing either.
        if not result or (title not in SPARSE_EVENTS and all(sample["value"][1] == "NaN" for sample in result)):
            empty.append(f"{uid} / {title}: {expr}")
    print(f"\n{len(queries) - len(empty)} of {len(queries)} router panel queries returned data")
    assert empty == [], "panels that would show No data:\n" + "\n".join(empty)
