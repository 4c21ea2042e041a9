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
from pathlib import Path

import pytest
import requests

from conftest import REPO
from harness import admin, stack  # noqa: F401 (stack is a fixture)

pytestmark = pytest.mark.live

# The dashboards about the router; the logs dashboard queries Loki and Jaeger, which do not
# run here. Of the Stack health dashboard, only the panels about the router itself (its state
# store and charge journals: they read llm_router_* series) and about its PostgreSQL are
# taken (router_panel()); its panels about Loki, Fluent Bit, Jaeger and Grafana are not.
STACK = "llm-router-stack"
ROUTER_DASHBOARDS = ("llm-router-overview", "llm-router-models", "llm-router-tenants", "llm-router-routing", STACK)
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

# Panels about the PostgreSQL the replicas share, from postgres_exporter (compose profile
# `scale`): no exporter runs here, so they show no data here by design. Exempt by title, and
# only while every query of the panel reads nothing but postgres_exporter series (checked
# below). tests/live/test_postgres_exporter.py runs each of them against a real exporter
# scraping a real PostgreSQL instead, and requires data there.
POSTGRES_ONLY = {(STACK, "PostgreSQL"), (STACK, "Connections"), (STACK, "Transactions per second"),
                 (STACK, "Rows written per second"), (STACK, "Cache hit ratio"), (STACK, "Deadlocks"),
                 (STACK, "Longest open transaction"), (STACK, "Database size")}
EXEMPT = KUBERNETES_ONLY | POSTGRES_ONLY


def expand(expr: str) -> str:
    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        return VARIABLES[name.split(":")[0]]

    return re.sub(r"\$\{([^}]+)\}|\$([A-Za-z_]+)", value, expr)


def panels(dashboard: dict):
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # collapsed rows keep their panels inside


def router_panel(uid: str, panel: dict) -> bool:
    """Every panel of the router's dashboards; of Stack health, those about the router's
    state (llm_router_* series) and its PostgreSQL (exempt below, checked elsewhere)."""
    if uid != STACK:
        return True
    exprs = [target.get("expr", "") for target in panel.get("targets", [])]
    return any("llm_router_" in expr for expr in exprs) or (uid, panel["title"]) in POSTGRES_ONLY


def router_queries() -> list[tuple[str, str, str]]:
    queries = []
    for uid in ROUTER_DASHBOARDS:
        dashboard = json.loads((REPO / "grafana" / "generated" / f"{uid}.json").read_text())
        for panel in panels(dashboard):
            if not router_panel(uid, panel):
                continue
            for target in panel.get("targets", []):
                datasource = (target.get("datasource") or panel.get("datasource") or {}).get("uid", "")
                if "expr" in target and datasource in ("${datasource}", "prometheus"):
                    queries.append((uid, panel["title"], expand(target["expr"])))
    return queries


def plant_dead_journal(router, request_id: str) -> None:
    """The journal of a process that was SIGKILLed after journaling a finished request and
    before storing or counting it: a real journal file (llm_router.ledger.Journal) in the
    router's state folder, its lock released. The router's next sweep (every 5 s) replays
    it and counts the charge in llm_router_ledger_recovered_charges_total{slot="final"}."""
    from llm_router.ledger import FINAL, Journal

    journal = Journal(Path(router.env["LLM_ROUTER_STATE_DIR"]) / "journal", 64)
    index = journal.take()
    journal.write(index, FINAL, 200, time.time(), 120, 80, 0.001, 0.002, "search", "sim-fast", request_id)
    journal.close(remove=False)  # as a dead process leaves it: the file stays, the flock is gone


def drive_traffic(router, tmp_path) -> None:
    """A realistic mix from the shipped load generator, with one backend failing for a while
    (errors, retries, fallbacks, an open circuit) so every panel has something to show; and
    two journals of processes killed hard, replayed one after the other (the counter of
    recovered charges is created by the first, so only the second moves its rate)."""
    plant_dead_journal(router, "live-dashboards-killed-1")
    assert admin(router, "POST", model="sim-coder", error_rate=0.7, duration_seconds=600).status_code == 201
    command = [
        sys.executable, "-m", "locust", "-f", str(REPO / "loadgen" / "locustfile.py"), "--headless",
        "--host", router.url, "-u", "6", "-r", "6", "-t", "12s", "--stop-timeout", "5", "--only-summary",
    ]
    env = {**os.environ, "LOADGEN_WAIT": "0,0.05"}
    run = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=90)
    assert run.returncode in (0, 1), run.stderr[-3000:]  # 1: the injected failures count as errors
    assert admin(router, "DELETE").status_code == 200
    plant_dead_journal(router, "live-dashboards-killed-2")


def component_metrics(component: str) -> set[str]:
    import yaml

    listed = yaml.safe_load((REPO / "prometheus" / "stack-metrics.yaml").read_text())["metrics"]
    return {name for name, about in listed.items() if about["component"] == component}


@pytest.mark.parametrize("exempt, component", [(KUBERNETES_ONLY, "kube-state-metrics"),
                                               (POSTGRES_ONLY, "postgres-exporter")])
def test_exempt_panels_read_only_their_component(exempt, component):
    found = {(uid, title) for uid, title, _ in router_queries()} & exempt
    assert found == exempt, f"exempt panels that no longer exist: {exempt - found}"
    allowed = component_metrics(component)
    for uid, title, expr in router_queries():
        if (uid, title) in exempt:
            names = set(re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\s*\{", expr))  # every selector's metric
            assert "llm_router_" not in expr, f"{uid} / {title} reads a router metric"
            assert names and names <= allowed, f"{uid} / {title} reads {names - allowed}"


def test_every_router_panel_query_returns_data(stack, tmp_path):
    router, prometheus = stack["router"], stack["prometheus"]
    drive_traffic(router, tmp_path)
    time.sleep(5)  # the last scrapes and rule evaluations
    # Both planted journals replayed, each charge counted once (the sweep runs every 5 s).
    recovered, deadline = None, time.monotonic() + 20
    while recovered != 2 and time.monotonic() < deadline:
        result = requests.get(f"{prometheus.url}/api/v1/query", timeout=10, params={
            "query": 'sum(llm_router_ledger_recovered_charges_total{job="llm-router", slot="final"})'}).json()
        recovered = float(result["data"]["result"][0]["value"][1]) if result["data"]["result"] else None
        time.sleep(0.5)
    assert recovered == 2, f"recovered charges: {recovered} (two dead journals were planted)"
    queries = [(uid, title, expr) for uid, title, expr in router_queries() if (uid, title) not in EXEMPT]
    print(f"\n{len(KUBERNETES_ONLY)} Kubernetes-only panels (kube-state-metrics) and {len(POSTGRES_ONLY)} "
          "PostgreSQL panels (postgres_exporter: tests/live/test_postgres_exporter.py) not queried here")
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
