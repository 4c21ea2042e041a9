"""`llm-router report` without a server: the reset-aware delta arithmetic, the fetch layer
against a fake Prometheus that answers the report's queries from raw samples, the
renderers, and the command's errors."""

from __future__ import annotations

import http.server
import json
import math
import re
import threading

import pytest

from conftest import free_port
from llm_router import cli, report
from llm_router.report import (
    Prometheus, ReportError, Window, apdex, bucket_quantile, build_report, counter_increase, exact_increases,
    parse_duration, parse_time, render_json, render_markdown, render_table,
)

URL = "http://prometheus.test:9090"
JOB = {"job": "llm-router", "instance": "router:8080"}


# --- a fake Prometheus: raw samples, and the query shapes the report sends ------------------


class FakePrometheus:
    """Evaluates the report's PromQL shapes over raw samples, like Prometheus 3 does
    (left-open range selectors, a 5-minute lookback for instant vectors)."""

    SELECTOR = re.compile(r'^([A-Za-z_:][\w:]*)(?:\{(.*)\})?$')
    MATCHER = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

    def __init__(self, series: list[tuple[str, dict, list[tuple[float, float]]]] | None = None,
                 rules: dict | None = None, config_yaml: str | None = None) -> None:
        self.series = series or []
        self.rules = rules
        self.config_yaml = config_yaml
        self.queries: list[str] = []

    def add(self, name: str, labels: dict, samples: list[tuple[float, float]]) -> None:
        self.series.append((name, labels, samples))

    def __call__(self, url: str, params: dict) -> dict:
        assert url.startswith(URL), url
        path = url[len(URL):]
        if path == "/api/v1/rules":
            return {"status": "success", "data": self.rules} if self.rules else {"status": "error", "error": "no"}
        if path == "/api/v1/status/config":
            return {"status": "success", "data": {"yaml": self.config_yaml or ""}}
        assert path == "/api/v1/query", path
        expr, at = params["query"], float(params["time"])
        self.queries.append(expr)
        return {"status": "success", "data": {"resultType": "vector", "result": self.evaluate(expr, at)}}

    def select(self, text: str):
        name, body = self.SELECTOR.match(text).groups()
        wanted = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in self.MATCHER.findall(body or "")}
        for series_name, labels, samples in self.series:
            if series_name == name and all(labels.get(k) == v for k, v in wanted.items()):
                yield {"__name__": name, **labels}, samples

    def evaluate(self, expr: str, at: float) -> list[dict]:
        def in_range(samples, ms):
            return [(t, v) for t, v in samples if at - ms / 1000 < t <= at]

        def without_name(metric):
            return {k: v for k, v in metric.items() if k != "__name__"}

        if match := re.fullmatch(r"(last_over_time|resets|count_over_time|avg_over_time)\((.+)\[(\d+)ms\]\)", expr):
            function, sel, ms = match.group(1), match.group(2), int(match.group(3))
            out = []
            for metric, samples in self.select(sel):
                values = [v for _, v in in_range(samples, ms)]
                if not values:
                    continue
                value = {"last_over_time": values[-1], "count_over_time": len(values),
                         "avg_over_time": sum(values) / len(values),
                         "resets": sum(b < a for a, b in zip(values, values[1:]))}[function]
                out.append({"metric": without_name(metric), "value": [at, str(value)]})
            return out
        if match := re.fullmatch(r"(.+)\[(\d+)ms\]", expr):
            return [{"metric": metric, "values": [[t, str(v)] for t, v in in_range(samples, int(match.group(2)))]}
                    for metric, samples in self.select(match.group(1)) if in_range(samples, int(match.group(2)))]
        if match := re.fullmatch(r"(max|avg) by \(tenant\) \((.+)\)", expr):
            function, inner = match.groups()
            values: dict[str, list[float]] = {}
            if inner.startswith("avg_over_time("):
                for item in self.evaluate(inner, at):
                    values.setdefault(item["metric"].get("tenant", ""), []).append(float(item["value"][1]))
            else:
                for metric, samples in self.select(inner):
                    recent = in_range(samples, 300_000)
                    if recent:
                        values.setdefault(metric.get("tenant", ""), []).append(recent[-1][1])
            combine = max if function == "max" else (lambda v: sum(v) / len(v))
            return [{"metric": {"tenant": t}, "value": [at, str(combine(v))]} for t, v in values.items()]
        raise AssertionError(f"the fake does not know {expr!r}")


def steady(start: float, end: float, values: list[float], step: float = 15) -> list[tuple[float, float]]:
    """Samples every `step` seconds from `start`, one value each (the last value repeats)."""
    out, t, i = [], start, 0
    while t <= end:
        out.append((t, values[min(i, len(values) - 1)]))
        t += step
        i += 1
    return out


def prom(fake: FakePrometheus) -> Prometheus:
    return Prometheus(URL, fake)


T0 = 1_700_000_000.0
WINDOW = Window(T0, T0 + 3600)


# --- the arithmetic ------------------------------------------------------------------------


@pytest.mark.parametrize(("baseline", "values", "expected"), [
    (None, [], 0),
    (None, [1, 2, 5], 5),  # a series born in the range counts from 0
    (3, [3, 4, 10], 7),
    (10, [12, 2, 5], 7),  # +2, reset (+2), +3
    (10, [0, 0, 4], 4),  # reset to 0 right away
    (5, [5, 5, 5], 0),
    (7, [3], 3),  # a reset between the baseline and the first sample
    (0.25, [0.5, 0.125, 0.375], 0.625),
])
def test_counter_increase_adds_positive_deltas_and_treats_a_decrease_as_a_reset(baseline, values, expected):
    assert counter_increase(baseline, values) == pytest.approx(expected)


def test_exact_increases_without_resets_use_the_last_value_and_read_no_raw_samples():
    fake = FakePrometheus()
    # Existed before the range: 100 at the baseline, 130 at the end.
    fake.add("c_total", {**JOB, "k": "old"},
             [(T0 - 120, 95.0), (T0 - 60, 100.0)] + [(T0 + 60 * i, 100.0 + min(i, 30)) for i in range(1, 61)])
    # Born in the range: counts from 0.
    fake.add("c_total", {**JOB, "k": "new"}, steady(T0 + 1200, T0 + 3600, [1, 4, 9]))
    # Only before the range.
    fake.add("c_total", {**JOB, "k": "gone"}, steady(T0 - 600, T0, [5, 6]))
    # Another job's series is not the router's.
    fake.add("c_total", {"job": "other", "k": "old"}, steady(T0, T0 + 3600, [1, 1000]))
    got = exact_increases(prom(fake), "c_total", 'job="llm-router"', WINDOW)
    by_k = {dict(labels)["k"]: value for labels, value in got.items()}
    assert by_k == {"old": 30, "new": 9}
    assert len(fake.queries) == 3  # baseline, last_over_time, resets: no raw reads


def test_exact_increases_read_the_samples_of_a_series_that_reset():
    fake = FakePrometheus()
    before = [(T0 - 30, 40.0), (T0, 50.0)]  # the baseline sits exactly at `from`
    during = [(T0 + 15, 55.0), (T0 + 30, 60.0), (T0 + 45, 2.0), (T0 + 60, 7.0), (T0 + 3600, 7.0)]
    fake.add("c_total", {**JOB, "k": "restarted"}, before + during)
    # A reset between the baseline and the first sample in range.
    fake.add("c_total", {**JOB, "k": "early"}, [(T0 - 10, 80.0), (T0 + 5, 3.0), (T0 + 20, 4.0)])
    resets: list[str] = []
    got = exact_increases(prom(fake), "c_total", 'job="llm-router"', WINDOW, resets)
    by_k = {dict(labels)["k"]: value for labels, value in got.items()}
    assert by_k == {"restarted": 5 + 5 + 2 + 5, "early": 4}
    assert len(resets) == 2


def test_raw_reads_are_windowed_and_exact(monkeypatch):
    monkeypatch.setattr(report, "RAW_WINDOW_SECONDS", 100.0)
    fake = FakePrometheus()
    values = [float(i % 7) for i in range(1, 241)]  # resets every 7 samples
    samples = [(T0 + 15 * i, v) for i, v in enumerate(values, start=1)]
    fake.add("c_total", {**JOB, "k": "saw"}, samples)
    got = exact_increases(prom(fake), "c_total", 'job="llm-router"', WINDOW)
    assert list(got.values()) == [pytest.approx(counter_increase(None, values))]
    assert sum(q.startswith("c_total{instance=") for q in fake.queries) == 36  # 3600 s / 100 s


def test_a_series_whose_baseline_is_older_than_the_lookback_counts_from_zero():
    fake = FakePrometheus()
    fake.add("c_total", {**JOB}, [(T0 - 900, 10.0), (T0 + 60, 3.0)])  # the router was down at `from`
    assert list(exact_increases(prom(fake), "c_total", 'job="llm-router"', WINDOW).values()) == [3]


def test_bucket_quantile_matches_promql_histogram_quantile():
    buckets = {0.1: 10, 0.5: 20, 1.0: 30, math.inf: 30}
    assert bucket_quantile(0.5, buckets) == pytest.approx(0.3)
    assert bucket_quantile(0.95, buckets) == pytest.approx(0.925)
    assert bucket_quantile(0.05, buckets) == pytest.approx(0.015)  # the first bucket starts at 0
    assert bucket_quantile(0.99, {0.1: 1, 1.0: 2, math.inf: 10}) == 1.0  # in +Inf: the highest finite bound
    assert bucket_quantile(0.5, {0.1: 0, math.inf: 0}) is None
    assert bucket_quantile(0.5, {0.1: 3}) is None  # no +Inf bucket


def test_apdex_counts_tolerating_requests_half():
    assert apdex({1: 2, 5: 6, 20: 9, math.inf: 10}, 5, 20) == pytest.approx(0.75)
    assert apdex({5: 6, 20: 9, math.inf: 10}, 4, 20) is None  # not a bucket boundary
    assert apdex({5: 0, 20: 0, math.inf: 0}, 5, 20) is None


# --- a whole report --------------------------------------------------------------------------


def counter(fake, name, labels, total, start=T0 + 60):
    """A counter born in the range that reaches `total` by its last sample."""
    fake.add(name, {**JOB, **labels}, [(start, total / 2), (start + 15, total), (T0 + 3600, total)])


def histogram(fake, name, labels, observations):
    bounds = [1.0, 5.0, 20.0, math.inf]
    for bound in bounds:
        le = "+Inf" if bound == math.inf else str(bound)
        counter(fake, f"{name}_bucket", {**labels, "le": le}, sum(o <= bound for o in observations))


def full_stack() -> FakePrometheus:
    fake = FakePrometheus(
        rules={"groups": [{"name": "router-alerts", "interval": 15, "rules": [{"name": "BackendErrors"}]}]},
        config_yaml="global:\n  evaluation_interval: 30s\n",
    )
    for tenant, model, code, n in [("search", "sim-fast", "200", 40), ("search", "sim-fast", "502", 2),
                                   ("search", "sim-coder", "200", 8), ("support", "sim-fast", "200", 10),
                                   ("support", "unknown", "404", 3), ("support", "auto", "429", 1),
                                   ("other", "unknown", "403", 1)]:
        counter(fake, "llm_router_chat_requests_total",
                {"tenant": tenant, "model": model, "strategy": "balanced", "code": code}, n)
    for tenant, model, usd in [("search", "sim-fast", 0.123456), ("search", "sim-coder", 1.5), ("support", "sim-fast", 0.03)]:
        counter(fake, "llm_router_cost_usd_total", {"tenant": tenant, "model": model}, usd)
        counter(fake, "llm_router_tokens_total", {"tenant": tenant, "model": model, "type": "input"}, 100)
        counter(fake, "llm_router_tokens_total", {"tenant": tenant, "model": model, "type": "output"}, 1000)
    histogram(fake, "llm_router_chat_request_duration_seconds", {"model": "sim-fast", "stream": "false"},
              [0.5] * 30 + [3] * 10 + [10] * 8 + [30] * 2)
    histogram(fake, "llm_router_chat_request_duration_seconds", {"model": "sim-coder", "stream": "true"}, [2] * 8)
    histogram(fake, "llm_router_tenant_request_duration_seconds", {"tenant": "search"}, [0.5] * 40 + [10] * 8)
    fake.add("llm_router_tenant_budget_usd", {**JOB, "tenant": "search"}, [(T0 + 3590, 500.0)])
    fake.add("llm_router_tenant_spend_usd", {**JOB, "tenant": "search"}, [(T0 + 3590, 125.0)])
    fake.add("tenant:llm_router_slo_met:bool_rate5m", {"tenant": "search"},
             [(T0 + 15 * i, [1.0, 1.0, 0.0, 1.0][i % 4]) for i in range(1, 241)])
    counter(fake, "llm_router_feedback_total", {"tenant": "search", "model": "sim-fast", "rating": "positive"}, 6)
    counter(fake, "llm_router_feedback_total", {"tenant": "search", "model": "sim-fast", "rating": "negative"}, 2)
    counter(fake, "llm_router_feedback_score_sum", {"model": "sim-fast"}, 5.5)
    counter(fake, "llm_router_feedback_score_count", {"model": "sim-fast"}, 8)
    counter(fake, "llm_router_finish_reasons_total", {"model": "sim-fast", "reason": "stop"}, 45)
    counter(fake, "llm_router_finish_reasons_total", {"model": "sim-fast", "reason": "length"}, 5)
    fake.add("ALERTS", {"alertname": "BackendErrors", "alertstate": "firing", "severity": "warning", "model": "a"},
             steady(T0 + 100, T0 + 400, [1]))  # 21 evaluations of 15 s
    fake.add("ALERTS", {"alertname": "BackendErrors", "alertstate": "firing", "severity": "warning", "model": "b"},
             steady(T0 + 100, T0 + 160, [1]))
    fake.add("ALERTS", {"alertname": "Unknown", "alertstate": "firing", "severity": "critical"},
             steady(T0 + 100, T0 + 190, [1], 30))  # not in the rules: the global 30 s
    return fake


def test_build_report_figures():
    data = build_report(prom(full_stack()), WINDOW, top=10)
    assert (data.traffic_total.requests, data.traffic_total.ok, data.traffic_total.client_error,
            data.traffic_total.error) == (65, 58, 4, 3)
    tenants = {r.name: (r.requests, r.ok, r.client_error, r.error) for r in data.traffic_by_tenant}
    assert tenants == {"search": (50, 48, 0, 2), "support": (14, 10, 3, 1), "other": (1, 0, 1, 0)}
    assert [r.name for r in data.traffic_by_tenant] == ["search", "support", "other"]
    assert {(r.model, r.code): r.requests for r in data.errors} == {
        ("sim-fast", "502"): 2, ("unknown", "404"): 3, ("auto", "429"): 1, ("unknown", "403"): 1}
    assert data.cost_total.cost_usd == pytest.approx(1.653456)
    assert {r.name: round(r.cost_usd, 6) for r in data.cost_by_tenant} == {"search": 1.623456, "support": 0.03}
    search = next(r for r in data.cost_by_tenant if r.name == "search")
    assert (search.input_tokens, search.output_tokens, search.answered) == (200, 2000, 48)
    latency = {r.model: r for r in data.latency}
    assert latency["sim-fast"].answered == 50
    assert latency["sim-fast"].p50_seconds == pytest.approx(1.0 * 25 / 30)  # rank 25 in the first bucket
    assert latency["sim-fast"].p95_seconds == pytest.approx(5 + 15 * (47.5 - 40) / 8)
    assert {r.name: r.apdex for r in data.apdex_by_model} == {
        "sim-fast": pytest.approx((40 + 48) / 2 / 50), "sim-coder": 1.0}
    assert {r.name: r.apdex for r in data.apdex_by_tenant} == {"search": pytest.approx((40 + 48) / 2 / 48)}
    assert [(b.tenant, b.budget_usd, b.spend_usd, b.used_ratio) for b in data.budgets] == [
        ("search", 500.0, 125.0, 0.25)]
    sla = {r.tenant: r.compliance for r in data.sla}
    assert sla["search"] == 0.75
    assert sla["support"] is None  # traffic but no SLO sample: n/a
    (quality,) = data.quality
    assert (quality.positive, quality.negative, quality.positive_ratio, quality.scores, quality.mean_score) == (
        6, 2, 0.75, 8, pytest.approx(5.5 / 8))
    assert {(r.reason, r.requests, r.share) for r in data.finish_reasons} == {("stop", 45, 0.9), ("length", 5, 0.1)}
    alerts = {a.alertname: a for a in data.alerts}
    assert (alerts["BackendErrors"].instances, alerts["BackendErrors"].firing_seconds,
            alerts["BackendErrors"].longest_seconds) == (2, (21 + 5) * 15, 21 * 15)
    assert alerts["Unknown"].firing_seconds == 4 * 30
    assert data.counter_resets == 0 and data.notes == []


def test_top_limits_rows_but_not_totals():
    data = build_report(prom(full_stack()), WINDOW, top=1)
    assert [r.name for r in data.traffic_by_tenant] == ["search"]
    assert data.traffic_total.requests == 65
    assert len(data.cost_by_model) == 1 and data.cost_total.cost_usd == pytest.approx(1.653456)
    assert {r.model for r in data.finish_reasons} == {"sim-fast"}


def test_missing_metrics_are_na_not_failures():
    fake = FakePrometheus()
    counter(fake, "llm_router_chat_requests_total", {"tenant": "search", "model": "sim-fast", "strategy": "cost",
                                                     "code": "200"}, 3)
    data = build_report(prom(fake), WINDOW)
    assert data.traffic_total.requests == 3
    assert data.apdex_by_tenant is None and data.sla is None and data.quality is None
    assert data.finish_reasons is None and data.budgets is None and data.alerts == []
    assert len(data.notes) == 6
    table = render_table(data)
    assert "SLA compliance by tenant" in table and "n/a (no data in range)" in table
    assert "_n/a (no data in range)_" in render_markdown(data)
    parsed = json.loads(render_json(data))
    assert parsed["sla"] is None and parsed["quality"] is None and parsed["cost_total"]["cost_usd"] == 0


def section_rows(text: str, title: str) -> list[list[str]]:
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip("# ").startswith(title))
    rows = []
    for line in lines[start + 1:]:
        if not line.strip():
            if rows:
                break
            continue
        cells = [c.strip() for c in re.split(r"\s{2,}|\|", line.strip()) if c.strip()]
        if not set("".join(cells)) <= set("-:"):
            rows.append(cells)
    return rows


def test_table_markdown_and_json_show_the_same_figures():
    data = build_report(prom(full_stack()), WINDOW)
    table, markdown, parsed = render_table(data), render_markdown(data), json.loads(render_json(data))
    for title in ("Chat requests by tenant", "Cost by model", "Latency of answered requests", "Apdex by tenant",
                  "Model quality", "Finish reasons", "Alerts fired", "Budget"):
        assert section_rows(table, title) == section_rows(markdown, title), title
    cost = {row[0]: row for row in section_rows(table, "Cost by tenant")}
    assert cost["search"][1] == "1.6235" and cost["total"][1] == "1.6535"
    assert parsed["cost_total"]["cost_usd"] == 1.653456
    assert parsed["traffic_by_tenant"][0] == {"name": "search", "requests": 50, "ok": 48, "client_error": 0,
                                              "error": 2, "error_ratio": 0.04}
    assert section_rows(table, "Alerts fired")[1] == ["BackendErrors", "warning", "2", "6m 30s", "5m 15s"]
    assert section_rows(table, "SLA compliance")[2] == ["support", "n/a"]
    # Markdown: GitHub pipe tables, numbers right-aligned.
    assert "| tenant  | requests | ok 2xx |" in markdown
    assert re.search(r"\| -{3,} \| -+: \|", markdown)
    assert markdown.startswith("# LLM router report 2023-11-14T22:13:20.000Z .. 2023-11-14T23:13:20.000Z (1h)")


# --- the command -----------------------------------------------------------------------------


@pytest.fixture
def fake_transport(monkeypatch):
    fake = full_stack()
    monkeypatch.setattr(report, "http_transport", lambda timeout=30.0: fake)
    return fake


def run_cli(*args: str) -> int:
    return cli.main(["report", "--prometheus-url", URL, *args])


def test_cli_prints_the_report_for_a_range(fake_transport, capsys):
    assert run_cli("--from", "2023-11-14T22:13:20Z", "--to", str(T0 + 3600), "--format", "json") == 0
    out = json.loads(capsys.readouterr().out)
    assert out["start"] == "2023-11-14T22:13:20.000Z" and out["seconds"] == 3600
    assert out["traffic_total"]["requests"] == 65
    assert all('job="llm-router"' in q for q in fake_transport.queries if q.startswith("llm_router_"))


def test_since_counts_back_from_to(fake_transport, capsys):
    assert run_cli("--since", "30m", "--to", str(T0 + 3600), "--format", "markdown", "--top", "0") == 0
    assert "(30m)" in capsys.readouterr().out.splitlines()[0]


def test_apdex_thresholds_from_the_slo_config(fake_transport, capsys, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("slo:\n  apdex:\n    satisfied_seconds: 1\n    tolerating_seconds: 5\n")
    assert run_cli("--slo-config", str(config), "--to", str(T0 + 3600), "--since", "1h", "--format", "json") == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["apdex_satisfied_seconds"], out["apdex_tolerating_seconds"]) == (1, 5)
    assert {r["name"]: r["apdex"] for r in out["apdex_by_tenant"]} == {"search": pytest.approx((40 + 40) / 2 / 48)}
    config.write_text("slo:\n  period: 30d\n")
    with pytest.raises(SystemExit) as exit_:
        run_cli("--slo-config", str(config))
    assert exit_.value.code == 2
    assert "slo.apdex" in capsys.readouterr().err


def test_prometheus_unreachable_is_one_line_and_exit_code_2(capsys):
    assert cli.main(["report", "--prometheus-url", f"http://127.0.0.1:{free_port()}", "--timeout", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("llm-router report: cannot reach Prometheus at http://127.0.0.1:")
    assert "Traceback" not in err and err.count("\n") == 1


def test_a_refused_query_is_exit_code_2(monkeypatch, capsys):
    monkeypatch.setattr(report, "http_transport", lambda timeout=30.0: lambda url, params: {
        "status": "error", "errorType": "bad_data", "error": "parse error"})
    assert run_cli() == 2
    err = capsys.readouterr().err
    assert "refused" in err and "parse error" in err


def test_an_unexpected_answer_is_exit_code_2(monkeypatch, capsys):
    monkeypatch.setattr(report, "http_transport", lambda timeout=30.0: lambda url, params: {
        "status": "success", "data": {"result": [{"metric": {}, "values": [["x"]]}]}})
    assert run_cli() == 2
    assert "unexpected answer from Prometheus" in capsys.readouterr().err


def test_the_http_transport_reports_a_non_api_answer():
    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the stdlib's name)
            self.send_response(502)
            self.send_header("Content-Type", "text/html")
            self.end_headers()
            self.wfile.write(b"<html>bad gateway</html>")

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Proxy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with pytest.raises(ReportError, match="answered HTTP 502, not a Prometheus API response"):
            Prometheus(f"http://127.0.0.1:{server.server_port}", report.http_transport(5)).query("up", T0)
    finally:
        server.shutdown()
        thread.join(5)


@pytest.mark.parametrize("args", [
    ["--from", "yesterday"],
    ["--to", "2025-13-01T00:00:00Z"],
    ["--since", "24"],
    ["--since", "0h"],
    ["--since", "1h", "--from", "2025-01-01T00:00:00Z"],
    ["--from", "2025-01-02T00:00:00Z", "--to", "2025-01-01T00:00:00Z"],
    ["--top", "-1"],
    ["--format", "csv"],
    ["--apdex-satisfied", "20", "--apdex-tolerating", "5"],
])
def test_bad_arguments_are_argparse_errors(args, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_cli(*args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "usage: llm-router report" in err and "error:" in err


def test_time_and_duration_parsing():
    assert parse_time("1700000000") == 1_700_000_000
    assert parse_time("1700000000.5") == 1_700_000_000.5
    assert parse_time("2023-11-14T22:13:20Z") == T0
    assert parse_time("2023-11-14T23:13:20+01:00") == T0
    assert parse_time("2023-11-14T22:13:20") == T0  # no offset: UTC
    assert parse_duration("24h") == 86400
    assert parse_duration("1h30m") == 5400
    assert parse_duration("1.5h") == 5400
    assert parse_duration("7d") == 7 * 86400
    assert parse_duration("500ms") == 0.5
    for bad in ("", "h", "1x", "-1h", "1h 30m"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    for bad in ("nan", "-5", "2023-02-30T00:00:00Z"):
        with pytest.raises(ValueError):
            parse_time(bad)
