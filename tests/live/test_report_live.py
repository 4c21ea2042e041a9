"""`llm-router report` against the real stack on 127.0.0.1 (see harness.py): a known set of
requests goes through the gunicorn router, Prometheus scrapes it, and the report's request
counts must equal what was sent exactly and its costs to the cent, also across a router
restart (a real counter reset)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections import Counter, defaultdict

import pytest
import requests

from conftest import as_tenant, chat_body, config_dict
from harness import stack  # noqa: F401 (a fixture)

pytestmark = pytest.mark.live

TENANTS = ["search", "support", "research", "internal-tools", None]  # None: anonymous
MODELS = ["sim-fast", "sim-mini", "sim-balanced", "sim-frontier", "sim-coder", "auto"]
PRICES = {m["id"]: m["price"] for m in config_dict()["models"]}


def status_class(code: int) -> str:
    if 200 <= code < 300:
        return "ok"
    return "client_error" if 400 <= code < 500 and code != 429 else "error"


class Sent:
    """What the test sent and what each answer cost, by the router's own pricing formula."""

    def __init__(self) -> None:
        self.requests: Counter = Counter()  # (tenant label, status class)
        self.cost: defaultdict = defaultdict(float)  # tenant label -> USD
        self.by_model: Counter = Counter()  # served model -> answered requests

    @property
    def total(self) -> int:
        return sum(self.requests.values())

    def add(self, tenant: str, code: int, model: str | None = None, usage: dict | None = None) -> None:
        self.requests[tenant, status_class(code)] += 1
        if usage is not None:
            price = PRICES[model]
            self.cost[tenant] += (usage["prompt_tokens"] / 1000 * price["input_per_1k"]
                                  + usage["completion_tokens"] / 1000 * price["output_per_1k"])
            self.by_model[model] += 1


def send(url: str, sent: Sent, count: int, offset: int = 0, models: list[str] = MODELS, **extra) -> None:
    session = requests.Session()
    for i in range(offset, offset + count):
        tenant = TENANTS[i % len(TENANTS)]
        headers = {"Cache-Control": "no-cache", **(as_tenant(tenant) if tenant else {})}
        label = tenant or "anonymous"
        body = chat_body(models[i % len(models)], f"report request {i}", **extra)
        stream = i % 7 == 3
        if stream:
            body.update(stream=True, stream_options={"include_usage": True})
        response = session.post(f"{url}/v1/chat/completions", json=body, headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        if stream:
            events = [json.loads(line[6:]) for line in response.text.splitlines()
                      if line.startswith("data: {")]
            usage = next(e["usage"] for e in events if e.get("usage"))
            sent.add(label, 200, events[0]["model"], usage)
        else:
            answer = response.json()
            sent.add(label, 200, answer["model"], answer["usage"])


def send_rejected(url: str, sent: Sent) -> None:
    """Client errors: an unknown model (404), a bad body (400), an unknown tenant (403)."""
    for tenant in ("search", "research", None):
        headers = as_tenant(tenant) if tenant else {}
        response = requests.post(f"{url}/v1/chat/completions", json=chat_body("no-such-model"), headers=headers,
                                 timeout=10)
        assert response.status_code == 404
        sent.add(tenant or "anonymous", 404)
    for tenant in ("support", "internal-tools"):
        response = requests.post(f"{url}/v1/chat/completions", json={"model": "sim-fast", "messages": "nope"},
                                 headers=as_tenant(tenant), timeout=10)
        assert response.status_code == 400
        sent.add(tenant, 400)
    response = requests.post(f"{url}/v1/chat/completions", json=chat_body("sim-fast"),
                             headers={"X-Tenant-ID": "nobody"}, timeout=10)
    assert response.status_code == 403
    sent.add("other", 403)


def prometheus_value(prometheus, query: str) -> float | None:
    result = requests.get(f"{prometheus.url}/api/v1/query", params={"query": query}, timeout=5).json()
    samples = result["data"]["result"]
    return float(samples[0]["value"][1]) if samples else None


def wait_scraped(prometheus, expected: int, timeout: float = 30) -> None:
    """Until Prometheus holds the router's counter at `expected` (a scrape after the last request)."""
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        value = prometheus_value(prometheus, 'sum(llm_router_chat_requests_total{job="llm-router"})')
        if value == expected:
            return
        time.sleep(0.25)
    raise AssertionError(f"Prometheus holds {value} chat requests, expected {expected}, after {timeout}s")


def report(prometheus, start: float, end: float, fmt: str) -> str:
    command = [sys.executable, "-m", "llm_router.cli", "report", "--format", fmt, "--top", "0",
               "--from", f"{start:.3f}", "--to", f"{end:.3f}", "--prometheus-url", prometheus.url]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def section(text: str, title: str) -> list[str]:
    """The lines of one section of the table or Markdown output."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip("# ").startswith(title))
    out = []
    for line in lines[start + 1:]:
        if line.strip() == "" and out:
            break
        if line.strip():
            out.append(line)
    return out


def row(lines: list[str], name: str) -> list[str]:
    for line in lines:
        cells = [cell for cell in line.replace("|", " ").split() if cell]
        if cells and cells[0] == name:
            return cells
    raise AssertionError(f"no row {name!r} in {lines}")


def check(prometheus, start: float, end: float, sent: Sent) -> dict:
    data = json.loads(report(prometheus, start, end, "json"))
    total = data["traffic_total"]
    assert total["requests"] == sent.total
    for cls in ("ok", "client_error", "error"):
        assert total[cls] == sum(n for (_, c), n in sent.requests.items() if c == cls)
    tenants = {r["name"]: r for r in data["traffic_by_tenant"]}
    assert set(tenants) == {t for t, _ in sent.requests}
    for tenant, r in tenants.items():
        for cls in ("ok", "client_error", "error"):
            assert r[cls] == sent.requests[tenant, cls], (tenant, cls, r)
        assert r["requests"] == sum(n for (t, _), n in sent.requests.items() if t == tenant)
    models = {r["name"]: r["ok"] for r in data["traffic_by_model"]}
    assert {m: n for m, n in models.items() if n} == dict(sent.by_model)

    costs = {r["name"]: r["cost_usd"] for r in data["cost_by_tenant"]}
    assert set(costs) == set(sent.cost)
    for tenant, expected in sent.cost.items():
        assert round(costs[tenant], 2) == round(expected, 2)
        assert abs(costs[tenant] - expected) < 1e-6, (tenant, costs[tenant], expected)
    expected_total = sum(sent.cost.values())
    assert round(data["cost_total"]["cost_usd"], 2) == round(expected_total, 2)
    assert abs(data["cost_total"]["cost_usd"] - expected_total) < 1e-6
    assert abs(sum(r["cost_usd"] for r in data["cost_by_model"]) - expected_total) < 1e-6

    # The same figures in the terminal table and in Markdown.
    for fmt in ("table", "markdown"):
        text = report(prometheus, start, end, fmt)
        traffic = section(text, "Chat requests by tenant")
        for tenant, r in tenants.items():
            assert row(traffic, tenant)[1:5] == [str(r["requests"]), str(r["ok"]), str(r["client_error"]),
                                                 str(r["error"])]
        assert row(traffic, "total")[1] == str(sent.total)
        cost = section(text, "Cost by tenant")
        for tenant, value in costs.items():
            assert row(cost, tenant)[1] == f"{value:.4f}"
        assert row(cost, "total")[1] == f"{data['cost_total']['cost_usd']:.4f}"
    return data


def test_report_counts_and_costs_equal_what_was_sent(stack):
    router, prometheus = stack["router"], stack["prometheus"]
    deadline = time.monotonic() + 30
    while prometheus_value(prometheus, 'up{job="llm-router"}') != 1:
        assert time.monotonic() < deadline, "Prometheus never scraped the router"
        time.sleep(0.25)
    start = time.time()
    time.sleep(0.5)  # no scrape that began before `start` can hold a request sent after it
    sent = Sent()
    send(router.url, sent, 60)
    send_rejected(router.url, sent)
    wait_scraped(prometheus, sent.total)
    data = check(prometheus, start, time.time(), sent)
    assert data["traffic_total"]["requests"] == 66
    assert data["counter_resets"] == 0
    # The budgets come from the shared state store: this test's spend is the month's.
    budgets = {r["tenant"]: r for r in data["budgets"]}
    for tenant in ("search", "support", "research", "internal-tools"):
        assert round(budgets[tenant]["spend_usd"], 2) == round(sent.cost[tenant], 2)
    assert data["latency"] and all(r["p95_seconds"] is not None for r in data["latency"])

    # A full restart of the router resets every counter. The second batch sends one request
    # per (tenant, model) pair that had two in the first (named models, not auto) and asks
    # for one output token, so each series it shares with the first batch comes back lower:
    # a reset Prometheus can see. The report must still add both batches exactly.
    router.stop()
    router.start()
    second = Sent()
    send(router.url, second, 5, offset=60, models=MODELS[:5], max_tokens=1)
    wait_scraped(prometheus, second.total)
    for key, value in second.requests.items():
        sent.requests[key] += value
    for tenant, value in second.cost.items():
        sent.cost[tenant] += value
    sent.by_model.update(second.by_model)
    end = time.time()
    data = check(prometheus, start, end, sent)
    assert data["counter_resets"] > 0  # the report did see the restart
    print("\n" + report(prometheus, start, end, "table"))
