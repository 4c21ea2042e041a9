"""`llm-router report`: a summary of a time range, asked of Prometheus' HTTP API.

Traffic, errors, latency, cost, budget, Apdex, SLA compliance, model quality and the alerts
that fired, as a terminal table, JSON or Markdown (docs/report.md describes every field).

Counts and costs are exact: `increase()` extrapolates to the edges of its range, so every
counter figure here is the sum of the raw samples' deltas instead. For each series the
baseline is its last sample at or before `from` (none: the series did not exist yet, and
prometheus-client creates a counter series at its first increment, so it counts from 0);
the increase is the sum of the positive deltas of the samples in (`from`, `to`], a decrease
being a counter reset (the router restarted) that adds the new value. Most series have no
reset, so the report asks Prometheus for `last_over_time` and `resets` first and reads the
raw samples only of the series that did reset.

One edge cannot be closed from here: a request counted after Prometheus' last scrape
before `to` is not in Prometheus yet (up to one scrape interval).

Layers: `Prometheus` (the HTTP API, with an injectable transport) -> `build_report` (typed
dataclasses) -> `render_table` / `render_markdown` / `render_json`. Unreachable Prometheus or
a refused query is a `ReportError`: one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import math
import os
import re
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_PROMETHEUS_URL = "http://127.0.0.1:9090"
PROMETHEUS_URL_ENV = "LLM_ROUTER_PROMETHEUS_URL"
DEFAULT_SINCE = "24h"
DEFAULT_APDEX_SATISFIED = 5.0
DEFAULT_APDEX_TOLERATING = 20.0
# A baseline sample older than this before `from` is not looked for (Prometheus' default
# lookback): such a series counts from 0.
BASELINE_LOOKBACK_SECONDS = 300.0
# Raw samples of a series that reset are read in windows of at most this length.
RAW_WINDOW_SECONDS = 6 * 3600.0
# When neither /api/v1/rules nor /api/v1/status/config tells the evaluation interval.
DEFAULT_EVALUATION_INTERVAL = 60.0

Transport = Callable[[str, dict[str, str]], Any]
Labels = tuple[tuple[str, str], ...]


class ReportError(Exception):
    """Prometheus is unreachable or refused a query (exit code 2)."""


# --- time arguments ----------------------------------------------------------------------

_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)")


def parse_duration(text: str) -> float:
    """`24h`, `90m`, `1h30m`, `7d`, `1.5h` (Prometheus units) -> seconds."""
    text = text.strip()
    parts = _DURATION.findall(text)
    if not text or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a duration like 24h, 90m or 1h30m: {text!r}")
    seconds = sum(float(number) * _DURATION_UNITS[unit] for number, unit in parts)
    if seconds <= 0:
        raise ValueError(f"the duration must be positive: {text!r}")
    return seconds


def parse_time(text: str) -> float:
    """RFC 3339 (`2025-01-31T12:00:00Z`, a time without offset is UTC) or unix seconds."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pass
    else:
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"not a unix time: {text!r}")
        return value
    try:
        parsed = dt.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"not an RFC 3339 time (2025-01-31T12:00:00Z) or unix seconds: {text!r}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=dt.timezone.utc)
    return parsed.timestamp()


def _argument_type(parse: Callable[[str], float]) -> Callable[[str], float]:
    def convert(text: str) -> float:
        try:
            return parse(text)
        except ValueError as error:
            raise argparse.ArgumentTypeError(str(error)) from None

    convert.__name__ = parse.__name__.removeprefix("parse_")  # argparse names it in errors
    return convert


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 (all) or more: {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


def _iso(timestamp: float) -> str:
    moment = dt.datetime.fromtimestamp(timestamp, dt.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- the Prometheus HTTP API ---------------------------------------------------------------


def http_transport(timeout: float = 30.0) -> Transport:
    """GET `url` with `params` and decode the JSON body; connection trouble is a ReportError."""
    import requests

    session = requests.Session()

    def get(url: str, params: dict[str, str]) -> Any:
        try:
            response = session.get(url, params=params, timeout=timeout)
        except requests.Timeout:
            raise ReportError(f"Prometheus at {url} did not answer within {timeout:g}s") from None
        except requests.RequestException as error:
            raise ReportError(
                f"cannot reach Prometheus at {url} ({error.__class__.__name__}); is it running? "
                f"Set --prometheus-url or ${PROMETHEUS_URL_ENV}"
            ) from None
        try:
            return response.json()
        except ValueError:
            raise ReportError(f"{url} answered HTTP {response.status_code}, not a Prometheus API response") from None

    return get


class Prometheus:
    """The few endpoints the report reads."""

    def __init__(self, base_url: str, transport: Transport | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.transport = transport or http_transport()

    def _data(self, path: str, params: dict[str, str]) -> Any:
        body = self.transport(f"{self.base_url}{path}", params)
        if not isinstance(body, dict) or body.get("status") != "success":
            detail = body.get("error") if isinstance(body, dict) else body
            what = params.get("query", path)
            raise ReportError(f"Prometheus at {self.base_url} refused {what!r}: {detail}")
        return body.get("data")

    def query(self, expr: str, at: float) -> list[dict]:
        """An instant query at `at`: a vector ({metric, value}) or, for a range selector, a
        matrix ({metric, values})."""
        data = self._data("/api/v1/query", {"query": expr, "time": f"{at:.3f}"})
        return list(data.get("result") or []) if isinstance(data, dict) else []

    def rule_intervals(self) -> dict[str, float]:
        """Alert name -> its group's evaluation interval in seconds ({} when not available)."""
        try:
            data = self._data("/api/v1/rules", {"type": "alert"})
        except ReportError:
            return {}
        intervals: dict[str, float] = {}
        for group in (data or {}).get("groups", []):
            for rule in group.get("rules", []):
                if rule.get("name") and group.get("interval"):
                    intervals.setdefault(rule["name"], float(group["interval"]))
        return intervals

    def global_evaluation_interval(self) -> float | None:
        import yaml

        try:
            data = self._data("/api/v1/status/config", {})
            config = yaml.safe_load((data or {}).get("yaml", "")) or {}
            return parse_duration(str(config.get("global", {}).get("evaluation_interval", "")))
        except (ReportError, ValueError, AttributeError, yaml.YAMLError):
            return None


def _key(metric: dict[str, str]) -> Labels:
    return tuple(sorted((k, v) for k, v in metric.items() if k != "__name__"))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def selector(metric: str, matchers: str = "", labels: Labels = ()) -> str:
    parts = [matchers] if matchers else []
    parts += [f'{name}="{_escape(value)}"' for name, value in labels]
    return f"{metric}{{{','.join(parts)}}}"


def counter_increase(baseline: float | None, values: Iterable[float]) -> float:
    """The exact increase of a counter from `baseline` (None: the series did not exist yet,
    so it starts at 0) through its samples: the sum of positive deltas, a decrease being a
    reset after which the new value is what was counted since."""
    previous = baseline if baseline is not None else 0.0
    total = 0.0
    for value in values:
        total += value - previous if value >= previous else value
        previous = value
    return total


@dataclass(frozen=True)
class Window:
    start: float  # unix seconds, millisecond precision
    end: float

    @property
    def seconds(self) -> float:
        return (_ms(self.end) - _ms(self.start)) / 1000


def exact_increases(prom: Prometheus, metric: str, matchers: str, window: Window,
                    reset: list[str] | None = None) -> dict[Labels, float]:
    """Every series of `metric` counted in (start, end], by its labels: reset-aware deltas of
    the raw samples, never extrapolated. Series that reset are appended to `reset`."""
    sel = selector(metric, matchers)
    baselines: dict[Labels, tuple[float, float]] = {}
    for series in prom.query(f"{sel}[{_ms(BASELINE_LOOKBACK_SECONDS)}ms]", window.start):
        if series.get("values"):
            timestamp, value = series["values"][-1]
            baselines[_key(series["metric"])] = (float(timestamp), float(value))
    last = {_key(s["metric"]): float(s["value"][1])
            for s in prom.query(f"last_over_time({sel}[{_ms(window.seconds)}ms])", window.end)}
    if not last:
        return {}
    # The resets window reaches back to the oldest baseline sample, so a reset between a
    # baseline and the first sample in range is seen too (earlier samples of other series
    # can only add false alarms, which cost a raw read, never a wrong figure).
    oldest = min([timestamp for timestamp, _ in baselines.values()], default=window.start)
    reach = _ms(window.end) - _ms(oldest) + 1
    resets = {_key(s["metric"]): float(s["value"][1])
              for s in prom.query(f"resets({sel}[{reach}ms])", window.end)}
    increases: dict[Labels, float] = {}
    for labels, value in last.items():
        baseline = baselines.get(labels, (None, None))[1]
        if resets.get(labels, 0) == 0 and value >= (baseline or 0.0):
            increases[labels] = value - (baseline or 0.0)
        else:
            if reset is not None:
                reset.append(selector(metric, "", labels))
            values = raw_values(prom, metric, labels, window)
            increases[labels] = counter_increase(baseline, values)
    return increases


def raw_values(prom: Prometheus, metric: str, labels: Labels, window: Window) -> list[float]:
    """The samples of one series in (start, end], oldest first, read in bounded windows."""
    sel = selector(metric, "", labels)  # every label of the series, the job's included
    samples: dict[float, float] = {}
    start_ms, end_ms = _ms(window.start), _ms(window.end)
    while end_ms > start_ms:  # whole milliseconds: no float drift, no empty last window
        length = min(_ms(RAW_WINDOW_SECONDS), end_ms - start_ms)
        for series in prom.query(f"{sel}[{length}ms]", end_ms / 1000):
            if _key(series["metric"]) == labels:
                for timestamp, value in series.get("values", []):
                    if float(timestamp) > window.start:
                        samples[float(timestamp)] = float(value)
        end_ms -= length
    return [samples[timestamp] for timestamp in sorted(samples)]


def grouped(increases: dict[Labels, float], *names: str) -> dict[tuple[str, ...], float]:
    """Sum series by the given labels (a missing label is "")."""
    out: dict[tuple[str, ...], float] = defaultdict(float)
    for labels, value in increases.items():
        found = dict(labels)
        out[tuple(found.get(name, "") for name in names)] += value
    return dict(out)


# --- histograms ------------------------------------------------------------------------------


def _bound(le: str) -> float:
    return math.inf if le in ("+Inf", "Inf", "inf") else float(le)


def bucket_quantile(q: float, buckets: dict[float, float]) -> float | None:
    """PromQL's histogram_quantile over cumulative bucket counts {upper bound: count}."""
    if math.inf not in buckets or len(buckets) < 2:
        return None
    bounds = sorted(buckets)
    counts, highest = [], 0.0
    for bound in bounds:  # PromQL repairs non-monotonic buckets the same way
        highest = max(highest, buckets[bound])
        counts.append(highest)
    total = counts[-1]
    if total <= 0:
        return None
    rank = q * total
    index = next(i for i, count in enumerate(counts) if count >= rank)
    if index == len(bounds) - 1:
        return bounds[-2]
    if index == 0 and bounds[0] <= 0:
        return bounds[0]
    start = 0.0 if index == 0 else bounds[index - 1]
    below = 0.0 if index == 0 else counts[index - 1]
    in_bucket = counts[index] - below
    if in_bucket <= 0:
        return bounds[index]
    return start + (bounds[index] - start) * (rank - below) / in_bucket


def apdex(buckets: dict[float, float], satisfied: float, tolerating: float) -> float | None:
    """(requests within `satisfied` + requests within `tolerating`) / 2 / all requests;
    None without traffic or when a threshold is not a bucket boundary."""
    total = buckets.get(math.inf, 0.0)
    if total <= 0 or satisfied not in buckets or tolerating not in buckets:
        return None
    return (buckets[satisfied] + buckets[tolerating]) / 2 / total


def histograms(increases: dict[Labels, float], by: str) -> dict[str, dict[float, float]]:
    """Bucket increases summed by one label: {value: {upper bound: count}}."""
    out: dict[str, dict[float, float]] = defaultdict(lambda: defaultdict(float))
    for (value, le), count in grouped(increases, by, "le").items():
        out[value][_bound(le)] += count
    return {value: dict(buckets) for value, buckets in out.items()}


# --- the report's data -----------------------------------------------------------------------


@dataclass
class TrafficRow:
    name: str
    requests: int
    ok: int  # 2xx
    client_error: int  # 4xx except 429 (499: the client left a stream)
    error: int  # 5xx and 429

    @property
    def error_ratio(self) -> float | None:
        return self.error / self.requests if self.requests else None


@dataclass
class ErrorRow:
    model: str
    code: str
    status_class: str
    requests: int


@dataclass
class LatencyRow:
    model: str
    answered: int
    p50_seconds: float | None
    p95_seconds: float | None


@dataclass
class CostRow:
    name: str
    cost_usd: float
    input_tokens: int
    output_tokens: int
    answered: int
    usd_per_answered_request: float | None


@dataclass
class BudgetRow:
    tenant: str
    budget_usd: float | None
    spend_usd: float | None
    used_ratio: float | None


@dataclass
class ApdexRow:
    name: str
    answered: int
    apdex: float | None


@dataclass
class SlaRow:
    tenant: str
    compliance: float | None  # share of the range's 5-minute windows within SLO


@dataclass
class QualityRow:
    model: str
    positive: int
    negative: int
    positive_ratio: float | None
    scores: int
    mean_score: float | None


@dataclass
class FinishReasonRow:
    model: str
    reason: str
    requests: int
    share: float | None  # of the model's requests with a finish reason


@dataclass
class AlertRow:
    alertname: str
    severity: str
    instances: int  # label sets of the alert that fired
    firing_seconds: float  # summed over instances
    longest_seconds: float  # the longest single instance


@dataclass
class Report:
    start: str
    end: str
    seconds: float
    prometheus_url: str
    job: str
    traffic_total: TrafficRow
    traffic_by_tenant: list[TrafficRow]
    traffic_by_model: list[TrafficRow]
    errors: list[ErrorRow]
    latency: list[LatencyRow]
    cost_total: CostRow
    cost_by_tenant: list[CostRow]
    cost_by_model: list[CostRow]
    budgets: list[BudgetRow] | None
    apdex_satisfied_seconds: float
    apdex_tolerating_seconds: float
    apdex_by_tenant: list[ApdexRow] | None
    apdex_by_model: list[ApdexRow] | None
    sla: list[SlaRow] | None
    quality: list[QualityRow] | None
    finish_reasons: list[FinishReasonRow] | None
    alerts: list[AlertRow]
    # Series that went down in the range (a router restart) and were read sample by sample.
    counter_resets: int = 0
    notes: list[str] = field(default_factory=list)


def status_class(code: str) -> str:
    """ok (2xx), client_error (4xx but 429) or error (5xx, 429, anything else)."""
    number = int(code) if code.isdigit() else 0
    if 200 <= number < 300:
        return "ok"
    if 400 <= number < 500 and number != 429:
        return "client_error"
    return "error"


def _traffic_rows(counts: dict[tuple[str, str], float]) -> list[TrafficRow]:
    rows: dict[str, TrafficRow] = {}
    for (name, code), value in counts.items():
        row = rows.setdefault(name, TrafficRow(name, 0, 0, 0, 0))
        number = int(round(value))
        row.requests += number
        setattr(row, status_class(code), getattr(row, status_class(code)) + number)
    return sorted((row for row in rows.values() if row.requests), key=lambda r: (-r.requests, r.name))


def _top(rows: list, top: int) -> list:
    return rows if top == 0 else rows[:top]


def build_report(prom: Prometheus, window: Window, *, job: str = "llm-router", top: int = 10,
                 apdex_satisfied: float = DEFAULT_APDEX_SATISFIED,
                 apdex_tolerating: float = DEFAULT_APDEX_TOLERATING) -> Report:
    matchers = f'job="{_escape(job)}"' if job else ""
    notes: list[str] = []
    reset: list[str] = []

    def increases(metric: str) -> dict[Labels, float]:
        return exact_increases(prom, metric, matchers, window, reset)

    # Traffic and errors.
    chat = increases("llm_router_chat_requests_total")
    total = TrafficRow("total", 0, 0, 0, 0)
    for (code,), value in grouped(chat, "code").items():
        number = int(round(value))
        total.requests += number
        setattr(total, status_class(code), getattr(total, status_class(code)) + number)
    by_tenant = _traffic_rows(grouped(chat, "tenant", "code"))
    by_model = _traffic_rows(grouped(chat, "model", "code"))
    errors = sorted(
        (ErrorRow(model, code, status_class(code), int(round(value)))
         for (model, code), value in grouped(chat, "model", "code").items()
         if status_class(code) != "ok" and round(value) > 0),
        key=lambda r: (-r.requests, r.model, r.code),
    )
    answered_tenant = {row.name: row.ok for row in by_tenant}
    answered_model = {row.name: row.ok for row in by_model}

    # Latency and Apdex per model (answered requests).
    model_buckets = histograms(increases("llm_router_chat_request_duration_seconds_bucket"), "model")
    latency = sorted(
        (LatencyRow(model, int(round(buckets.get(math.inf, 0))), bucket_quantile(0.5, buckets),
                    bucket_quantile(0.95, buckets))
         for model, buckets in model_buckets.items() if buckets.get(math.inf, 0) > 0),
        key=lambda r: (-r.answered, r.model),
    )

    def apdex_rows(buckets_by: dict[str, dict[float, float]], metric: str) -> list[ApdexRow] | None:
        if not buckets_by:
            notes.append(f"apdex: no {metric} samples in range (n/a)")
            return None
        for buckets in buckets_by.values():
            if apdex_satisfied not in buckets or apdex_tolerating not in buckets:
                notes.append(f"apdex: {apdex_satisfied:g}s or {apdex_tolerating:g}s is not a bucket boundary "
                             f"of {metric} (n/a)")
                break
        rows = [ApdexRow(name, int(round(b.get(math.inf, 0))), apdex(b, apdex_satisfied, apdex_tolerating))
                for name, b in buckets_by.items() if b.get(math.inf, 0) > 0]
        return sorted(rows, key=lambda r: (-r.answered, r.name))

    apdex_by_model = apdex_rows(model_buckets, "llm_router_chat_request_duration_seconds")
    tenant_buckets = histograms(increases("llm_router_tenant_request_duration_seconds_bucket"), "tenant")
    apdex_by_tenant = apdex_rows(tenant_buckets, "llm_router_tenant_request_duration_seconds")

    # Cost and tokens.
    cost = increases("llm_router_cost_usd_total")
    tokens = increases("llm_router_tokens_total")

    def cost_rows(by: str, answered: dict[str, int]) -> list[CostRow]:
        usd = grouped(cost, by)
        typed = grouped(tokens, by, "type")
        names = {name for (name,) in usd} | {name for name, _ in typed}
        rows = []
        for name in names:
            spent = usd.get((name,), 0.0)
            done = answered.get(name, 0)
            row = CostRow(name, spent, int(round(typed.get((name, "input"), 0))),
                          int(round(typed.get((name, "output"), 0))), done, spent / done if done else None)
            if row.cost_usd or row.input_tokens or row.output_tokens or row.answered:
                rows.append(row)
        return sorted(rows, key=lambda r: (-r.cost_usd, r.name))

    cost_by_tenant = cost_rows("tenant", answered_tenant)
    cost_by_model = cost_rows("model", answered_model)
    spent_total = sum(cost.values())
    cost_total = CostRow(
        "total", spent_total, sum(r.input_tokens for r in cost_by_tenant), sum(r.output_tokens for r in cost_by_tenant),
        total.ok, spent_total / total.ok if total.ok else None,
    )

    # Budgets at the end of the range.
    def gauge(metric: str) -> dict[str, float]:
        return {s["metric"].get("tenant", ""): float(s["value"][1])
                for s in prom.query(f"max by (tenant) ({selector(metric, matchers)})", window.end)}

    budget, spend = gauge("llm_router_tenant_budget_usd"), gauge("llm_router_tenant_spend_usd")
    budgets: list[BudgetRow] | None = None
    if budget or spend:
        budgets = []
        for tenant in sorted(set(budget) | set(spend)):
            limit, used = budget.get(tenant), spend.get(tenant)
            ratio = used / limit if used is not None and limit else None
            budgets.append(BudgetRow(tenant, limit, used, ratio))
        budgets.sort(key=lambda r: (-(r.used_ratio or 0), r.tenant))
    else:
        notes.append("budget: no llm_router_tenant_budget_usd at the end of the range (n/a)")

    # SLA compliance: the share of 5-minute windows within SLO, from the recording rule.
    sla_values = {s["metric"].get("tenant", ""): float(s["value"][1]) for s in prom.query(
        f"avg by (tenant) (avg_over_time(tenant:llm_router_slo_met:bool_rate5m[{_ms(window.seconds)}ms]))",
        window.end)}
    sla: list[SlaRow] | None = None
    if sla_values:
        tenants = set(sla_values) | {row.name for row in by_tenant if row.name != "other"}
        sla = sorted((SlaRow(t, sla_values.get(t)) for t in tenants),
                     key=lambda r: (r.compliance is None, r.compliance or 0, r.tenant))
    else:
        notes.append("sla: no tenant:llm_router_slo_met:bool_rate5m samples in range (n/a)")

    # Model quality: feedback and finish reasons.
    feedback = grouped(increases("llm_router_feedback_total"), "model", "rating")
    score_sum = grouped(increases("llm_router_feedback_score_sum"), "model")
    score_count = grouped(increases("llm_router_feedback_score_count"), "model")
    quality: list[QualityRow] | None = None
    models = {model for model, _ in feedback} | {model for (model,) in score_count}
    if models:
        quality = []
        for model in models:
            positive = int(round(feedback.get((model, "positive"), 0)))
            negative = int(round(feedback.get((model, "negative"), 0)))
            scores = int(round(score_count.get((model,), 0)))
            if positive or negative or scores:
                quality.append(QualityRow(
                    model, positive, negative, positive / (positive + negative) if positive + negative else None,
                    scores, score_sum.get((model,), 0.0) / scores if scores else None,
                ))
        quality.sort(key=lambda r: (-(r.positive + r.negative), r.model))
    else:
        notes.append("quality: no llm_router_feedback_total samples in range (n/a)")
    reasons = grouped(increases("llm_router_finish_reasons_total"), "model", "reason")
    finish_reasons: list[FinishReasonRow] | None = None
    if reasons:
        per_model: dict[str, float] = defaultdict(float)
        for (model, _), value in reasons.items():
            per_model[model] += value
        kept = set(_top(sorted(per_model, key=lambda m: (-per_model[m], m)), top))
        finish_reasons = sorted(
            (FinishReasonRow(model, reason, int(round(value)), value / per_model[model] if per_model[model] else None)
             for (model, reason), value in reasons.items() if model in kept and round(value) > 0),
            key=lambda r: (-per_model[r.model], r.model, -r.requests, r.reason),
        )
    else:
        notes.append("finish reasons: no llm_router_finish_reasons_total samples in range (n/a)")

    alerts = fired_alerts(prom, window)

    return Report(
        start=_iso(window.start), end=_iso(window.end), seconds=window.seconds, prometheus_url=prom.base_url, job=job,
        traffic_total=total, traffic_by_tenant=_top(by_tenant, top), traffic_by_model=_top(by_model, top),
        errors=_top(errors, top), latency=_top(latency, top),
        cost_total=cost_total, cost_by_tenant=_top(cost_by_tenant, top), cost_by_model=_top(cost_by_model, top),
        budgets=_top(budgets, top) if budgets is not None else None,
        apdex_satisfied_seconds=apdex_satisfied, apdex_tolerating_seconds=apdex_tolerating,
        apdex_by_tenant=_top(apdex_by_tenant, top) if apdex_by_tenant is not None else None,
        apdex_by_model=_top(apdex_by_model, top) if apdex_by_model is not None else None,
        sla=_top(sla, top) if sla is not None else None,
        quality=_top(quality, top) if quality is not None else None,
        finish_reasons=finish_reasons,
        alerts=_top(alerts, top),
        counter_resets=len(reset),
        notes=notes,
    )


def fired_alerts(prom: Prometheus, window: Window) -> list[AlertRow]:
    """Alerts firing in the range: evaluations seen firing times the rule's evaluation interval."""
    counts = prom.query(f'count_over_time(ALERTS{{alertstate="firing"}}[{_ms(window.seconds)}ms])', window.end)
    if not counts:
        return []
    intervals = prom.rule_intervals()
    fallback = None
    rows: dict[tuple[str, str], AlertRow] = {}
    for series in counts:
        name = series["metric"].get("alertname", "")
        severity = series["metric"].get("severity", "")
        interval = intervals.get(name)
        if interval is None:
            if fallback is None:
                fallback = prom.global_evaluation_interval() or DEFAULT_EVALUATION_INTERVAL
            interval = fallback
        seconds = float(series["value"][1]) * interval
        row = rows.setdefault((name, severity), AlertRow(name, severity, 0, 0.0, 0.0))
        row.instances += 1
        row.firing_seconds += seconds
        row.longest_seconds = max(row.longest_seconds, seconds)
    return sorted(rows.values(), key=lambda r: (-r.firing_seconds, r.alertname, r.severity))


# --- rendering -------------------------------------------------------------------------------

NA = "n/a"


def _count(value: int | None) -> str:
    return NA if value is None else str(value)


def _usd(value: float | None) -> str:
    return NA if value is None else f"{value:.4f}"


def _usd_small(value: float | None) -> str:
    return NA if value is None else f"{value:.6f}"


def _seconds(value: float | None) -> str:
    return NA if value is None else f"{value:.3f}"


def _ratio(value: float | None) -> str:
    return NA if value is None else f"{value:.3f}"


def _percent(value: float | None) -> str:
    return NA if value is None else f"{value * 100:.2f}%"


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{days}d"] if days else []
    parts += [f"{hours}h"] if hours else []
    parts += [f"{minutes}m"] if minutes else []
    parts += [f"{secs}s"] if secs or not parts else []
    return " ".join(parts)


@dataclass
class Section:
    title: str
    headers: list[str]
    rows: list[list[str]] | None  # None: the data is not there ("n/a")
    numeric_from: int = 1  # columns from this index on are right-aligned


def _traffic_section(title: str, rows: list[TrafficRow], total: TrafficRow | None) -> Section:
    def line(row: TrafficRow) -> list[str]:
        return [row.name, _count(row.requests), _count(row.ok), _count(row.client_error), _count(row.error),
                _percent(row.error_ratio)]

    body = [line(row) for row in rows] + ([line(total)] if total is not None else [])
    return Section(title, [title.split(" by ")[-1], "requests", "ok 2xx", "client 4xx", "error 5xx+429", "error %"],
                   body)


def _cost_section(title: str, rows: list[CostRow], total: CostRow) -> Section:
    def line(row: CostRow) -> list[str]:
        return [row.name, _usd(row.cost_usd), _count(row.input_tokens), _count(row.output_tokens),
                _count(row.answered), _usd_small(row.usd_per_answered_request)]

    return Section(title, [title.split(" by ")[-1], "cost USD", "input tokens", "output tokens", "answered",
                           "USD/answered"], [line(row) for row in rows] + [line(total)])


def sections(report: Report) -> list[Section]:
    """The report as titled tables of strings: the table and Markdown renderers share them,
    so both show the same figures."""
    out = [
        _traffic_section("Chat requests by tenant", report.traffic_by_tenant, report.traffic_total),
        _traffic_section("Chat requests by model", report.traffic_by_model, report.traffic_total),
        Section("Errors by model and code", ["model", "code", "class", "requests"],
                [[r.model, r.code, r.status_class, _count(r.requests)] for r in report.errors], numeric_from=3),
        Section("Latency of answered requests by model", ["model", "answered", "p50 s", "p95 s"],
                [[r.model, _count(r.answered), _seconds(r.p50_seconds), _seconds(r.p95_seconds)]
                 for r in report.latency]),
        _cost_section("Cost by tenant", report.cost_by_tenant, report.cost_total),
        _cost_section("Cost by model", report.cost_by_model, report.cost_total),
        Section("Budget at the end of the range by tenant", ["tenant", "budget USD", "spend USD", "used"],
                None if report.budgets is None else
                [[r.tenant, _usd(r.budget_usd), _usd(r.spend_usd), _percent(r.used_ratio)] for r in report.budgets]),
    ]
    thresholds = f"satisfied <= {report.apdex_satisfied_seconds:g}s, tolerating <= {report.apdex_tolerating_seconds:g}s"
    for what, rows in (("tenant", report.apdex_by_tenant), ("model", report.apdex_by_model)):
        out.append(Section(f"Apdex by {what} ({thresholds})", [what, "answered", "apdex"],
                           None if rows is None else [[r.name, _count(r.answered), _ratio(r.apdex)] for r in rows]))
    out += [
        Section("SLA compliance by tenant (share of 5m windows within SLO)", ["tenant", "compliance"],
                None if report.sla is None else [[r.tenant, _percent(r.compliance)] for r in report.sla]),
        Section("Model quality from feedback", ["model", "positive", "negative", "positive ratio", "scores",
                                                "mean score"],
                None if report.quality is None else
                [[r.model, _count(r.positive), _count(r.negative), _ratio(r.positive_ratio), _count(r.scores),
                  _ratio(r.mean_score)] for r in report.quality]),
        Section("Finish reasons by model", ["model", "reason", "requests", "share"],
                None if report.finish_reasons is None else
                [[r.model, r.reason, _count(r.requests), _percent(r.share)] for r in report.finish_reasons],
                numeric_from=2),
        Section("Alerts fired", ["alert", "severity", "instances", "firing (all instances)", "longest"],
                [[r.alertname, r.severity, _count(r.instances), _duration(r.firing_seconds),
                  _duration(r.longest_seconds)] for r in report.alerts], numeric_from=2),
    ]
    return out


def _heading(report: Report) -> str:
    job = f", job {report.job}" if report.job else ""
    resets = f", {report.counter_resets} counter series reset (router restarts)" if report.counter_resets else ""
    return (f"LLM router report {report.start} .. {report.end} ({_duration(report.seconds)}), "
            f"Prometheus {report.prometheus_url}{job}{resets}")


def _md(cell: str) -> str:
    return cell.replace("\\", "\\\\").replace("|", "\\|")


def _grid(section: Section, markdown: bool) -> list[str]:
    widths = [len(h) for h in section.headers]
    for row in section.rows or []:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row)]

    def cells(values: Sequence[str]) -> list[str]:
        return [v.rjust(w) if i >= section.numeric_from else v.ljust(w)
                for i, (v, w) in enumerate(zip(values, widths))]

    if markdown:
        section = dataclasses.replace(section, headers=[_md(h) for h in section.headers],
                                      rows=[[_md(cell) for cell in row] for row in section.rows or []])
        widths = [max(w, len(h)) for w, h in zip(widths, section.headers)]
        for row in section.rows:
            widths = [max(w, len(cell)) for w, cell in zip(widths, row)]
        rule = [("-" * max(w - 1, 2) + ":") if i >= section.numeric_from else "-" * max(w, 3)
                for i, w in enumerate(widths)]
        rule = [r.ljust(w, "-") for r, w in zip(rule, widths)]
        return ["| " + " | ".join(line) + " |" for line in [cells(section.headers), rule,
                                                           *(cells(row) for row in section.rows or [])]]
    lines = ["  ".join(cells(section.headers)).rstrip(), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(cells(row)).rstrip() for row in section.rows or []]
    return lines


def render_table(report: Report) -> str:
    lines = [_heading(report)]
    for section in sections(report):
        lines += ["", section.title]
        if section.rows is None:
            lines.append(f"  {NA} (no data in range)")
        elif not section.rows:
            lines.append("  none")
        else:
            lines += ["  " + line for line in _grid(section, markdown=False)]
    for note in report.notes:
        lines.append(f"note: {note}")
    return "\n".join(lines) + "\n"


def render_markdown(report: Report) -> str:
    lines = [f"# {_heading(report)}"]
    for section in sections(report):
        lines += ["", f"## {section.title}", ""]
        if section.rows is None:
            lines.append(f"_{NA} (no data in range)_")
        elif not section.rows:
            lines.append("_none_")
        else:
            lines += _grid(section, markdown=True)
    if report.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in report.notes]
    return "\n".join(lines) + "\n"


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return round(value, 8) if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def render_json(report: Report) -> str:
    data = dataclasses.asdict(report)
    for key in ("traffic_total", "traffic_by_tenant", "traffic_by_model"):  # the property is data too
        rows = data[key] if isinstance(data[key], list) else [data[key]]
        for row in rows:
            row["error_ratio"] = row["error"] / row["requests"] if row["requests"] else None
    return json.dumps(_clean(data), indent=2) + "\n"


RENDERERS = {"table": render_table, "json": render_json, "markdown": render_markdown}


# --- the command -----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    when = parser.add_argument_group("time range (default: the last 24h up to now)")
    start = when.add_mutually_exclusive_group()
    start.add_argument("--from", dest="start", type=_argument_type(parse_time), metavar="TIME",
                       help="start: RFC 3339 (2025-01-31T12:00:00Z) or unix seconds")
    start.add_argument("--since", type=_argument_type(parse_duration), metavar="DURATION",
                       help=f"start this long before --to: 24h, 90m, 7d, 1h30m (default {DEFAULT_SINCE})")
    when.add_argument("--to", dest="end", type=_argument_type(parse_time), metavar="TIME",
                      help="end: RFC 3339 or unix seconds (default: now)")
    parser.add_argument("--prometheus-url", default=os.environ.get(PROMETHEUS_URL_ENV, DEFAULT_PROMETHEUS_URL),
                        help=f"Prometheus base URL (default ${PROMETHEUS_URL_ENV}, else {DEFAULT_PROMETHEUS_URL})")
    parser.add_argument("--job", default="llm-router",
                        help='the router\'s scrape job, as job="..." on every router metric; "" for none '
                             "(default llm-router)")
    parser.add_argument("--format", choices=sorted(RENDERERS), default="table", help="output format (default table)")
    parser.add_argument("--top", type=_non_negative_int, default=10, metavar="N",
                        help="rows per table, largest first; 0 for all (default 10; totals always count everything)")
    apdex_from = parser.add_mutually_exclusive_group()
    apdex_from.add_argument("--slo-config", type=Path, metavar="PATH",
                            help="read the Apdex thresholds from slo.apdex of this file (prometheus/config.yaml)")
    apdex_from.add_argument("--apdex-satisfied", type=_positive_float, metavar="SECONDS",
                            help=f"Apdex satisfied threshold (default {DEFAULT_APDEX_SATISFIED:g})")
    parser.add_argument("--apdex-tolerating", type=_positive_float, metavar="SECONDS",
                        help=f"Apdex tolerating threshold (default {DEFAULT_APDEX_TOLERATING:g})")
    parser.add_argument("--timeout", type=_positive_float, default=30.0, metavar="SECONDS",
                        help="timeout of each Prometheus request (default 30)")


def resolve_window(args: argparse.Namespace, now: float | None = None) -> Window:
    end = args.end if args.end is not None else (now if now is not None else time.time())
    start = args.start if args.start is not None else end - (args.since or parse_duration(DEFAULT_SINCE))
    start, end = _ms(start) / 1000, _ms(end) / 1000
    if start >= end:
        raise ValueError(f"the range is empty: --from {_iso(start)} is not before --to {_iso(end)}")
    return Window(start, end)


def apdex_thresholds(args: argparse.Namespace) -> tuple[float, float]:
    if args.slo_config is not None:
        import yaml

        if args.apdex_tolerating is not None:
            raise ValueError("--apdex-tolerating and --slo-config are exclusive")
        try:
            data = yaml.safe_load(args.slo_config.read_text()) or {}
            section = data["slo"]["apdex"]
            satisfied, tolerating = float(section["satisfied_seconds"]), float(section["tolerating_seconds"])
        except OSError as error:
            raise ValueError(f"cannot read --slo-config: {error}") from None
        except (yaml.YAMLError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{args.slo_config}: no slo.apdex.satisfied_seconds and tolerating_seconds "
                             f"({error.__class__.__name__}: {error})") from None
    else:
        satisfied = args.apdex_satisfied if args.apdex_satisfied is not None else DEFAULT_APDEX_SATISFIED
        tolerating = args.apdex_tolerating if args.apdex_tolerating is not None else DEFAULT_APDEX_TOLERATING
    if not 0 < satisfied < tolerating:
        raise ValueError(f"the Apdex thresholds need 0 < satisfied < tolerating, got {satisfied:g} and {tolerating:g}")
    return satisfied, tolerating


def run(args: argparse.Namespace, parser: argparse.ArgumentParser, transport: Transport | None = None,
        out=None, err=None) -> int:
    """Parse-level problems go to `parser.error` (exit 2, usage on stderr); Prometheus
    problems print one line on stderr and return 2."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        window = resolve_window(args)
        satisfied, tolerating = apdex_thresholds(args)
    except ValueError as error:
        parser.error(str(error))
    prom = Prometheus(args.prometheus_url, transport or http_transport(args.timeout))
    try:
        report = build_report(prom, window, job=args.job, top=args.top,
                              apdex_satisfied=satisfied, apdex_tolerating=tolerating)
    except ReportError as error:
        print(f"llm-router report: {error}", file=err)
        return 2
    except (KeyError, IndexError, TypeError, ValueError) as error:
        print(f"llm-router report: unexpected answer from Prometheus at {prom.base_url}: "
              f"{error.__class__.__name__}: {error}", file=err)
        return 2
    out.write(RENDERERS[args.format](report))
    return 0
