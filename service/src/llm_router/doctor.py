"""`llm-router doctor`: check a running stack end to end.

It sends a little tagged traffic through the router (a unique X-Request-ID per request, as
a tenant with its API key), then asks each backend what it saw: Prometheus (targets up by
job, the requests counted, recording rules evaluating), Alertmanager and the alert sink
(the Watchdog heartbeat), Loki (the request's log line, its trace_id as structured
metadata), Jaeger (the trace, its `chat` span with gen_ai attributes), Grafana (its
datasources healthy, every dashboard present) and Fluent Bit (healthy output, forward port
open). One line per check with ✓/✗ and the time it took; on failure the likely cause and
what to read. Exit status 1 when any check fails; --json for CI.

URLs default to the bundle's ports on 127.0.0.1; `--env-file .env` reads BIND_ADDRESS and
the *_PORT values `make up` uses; every URL has its own option for another deployment, and
`--skip` leaves out components a deployment does not run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import Callable

import requests

# The bundle's defaults (.env.example): component -> (port variable, default port).
PORTS = {
    "router": ("ROUTER_PORT", 8080),
    "prometheus": ("PROMETHEUS_PORT", 9090),
    "alertmanager": ("ALERTMANAGER_PORT", 9093),
    "alert_sink": ("ALERT_SINK_PORT", 9095),
    "loki": ("LOKI_PORT", 3100),
    "jaeger": ("JAEGER_UI_PORT", 16686),
    "grafana": ("GRAFANA_PORT", 3000),
    "fluent_bit": ("FLUENT_BIT_HTTP_PORT", 2020),
}
FORWARD_PORT = ("FLUENT_BIT_FORWARD_PORT", 24224)
JOBS = ("llm-router", "alert-sink", "prometheus", "alertmanager", "grafana", "loki", "jaeger", "fluent-bit")
DASHBOARDS = ("llm-router-overview", "llm-router-models", "llm-router-tenants", "llm-router-routing",
              "llm-router-logs-traces", "llm-router-stack")
DATASOURCES = ("prometheus", "loki", "jaeger", "alertmanager")
COMPONENTS = ("prometheus", "alertmanager", "loki", "jaeger", "grafana", "fluent_bit")
RUNBOOKS = "docs/runbooks"


@dataclass
class Result:
    name: str
    ok: bool
    seconds: float
    detail: str = ""
    cause: str = ""
    read: str = ""


class CheckFailed(Exception):
    def __init__(self, detail: str, cause: str = "", read: str = "") -> None:
        super().__init__(detail)
        self.detail, self.cause, self.read = detail, cause, read


@dataclass
class Traffic:
    request_ids: list[str] = field(default_factory=list)
    trace_ids: list[str] = field(default_factory=list)
    sent_at: float = 0.0


# --- settings -------------------------------------------------------------------------------


def env_file_values(path: str) -> dict[str, str]:
    values = {}
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip().strip("'\"")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env-file", help="a compose .env (make up's): BIND_ADDRESS and the *_PORT values give the URLs")
    for component in PORTS:
        flag = component.replace("_", "-")
        parser.add_argument(f"--{flag}-url", dest=f"{component}_url", help=f"{flag} base URL")
    parser.add_argument("--fluent-bit-forward", help="host:port of Fluent Bit's forward input")
    parser.add_argument("--tenant", default=os.environ.get("LLM_ROUTER_DOCTOR_TENANT", "search"),
                        help="the tenant the tagged requests use (default: %(default)s)")
    parser.add_argument("--api-key", default=os.environ.get("LLM_ROUTER_DOCTOR_API_KEY", "sk-demo-search"),
                        help="that tenant's API key, sent as a bearer token (default: the shipped demo key; "
                             "$LLM_ROUTER_DOCTOR_API_KEY)")
    parser.add_argument("--grafana-user", default="admin")
    parser.add_argument("--grafana-password", default=os.environ.get("GRAFANA_ADMIN_PASSWORD"),
                        help="for the datasource health API ($GRAFANA_ADMIN_PASSWORD, or from --env-file)")
    parser.add_argument("--requests", type=int, default=3, help="tagged chat requests to send (default: %(default)s)")
    parser.add_argument("--wait", type=float, default=90.0,
                        help="seconds to wait for the traffic to show up in each backend (default: %(default)s)")
    parser.add_argument("--expect-jobs", default=",".join(JOBS), help="Prometheus jobs that must be up")
    parser.add_argument("--expect-dashboards", default=",".join(DASHBOARDS), help="Grafana dashboard uids")
    parser.add_argument("--skip", action="append", default=[], choices=COMPONENTS,
                        help="leave a component out (repeatable)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of lines")


def resolve(args: argparse.Namespace) -> dict[str, str]:
    """Base URLs by component, from the options, else --env-file, else the defaults."""
    values = env_file_values(args.env_file) if args.env_file else {}
    host = values.get("BIND_ADDRESS") or "127.0.0.1"
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    urls = {}
    for component, (variable, default) in PORTS.items():
        explicit = getattr(args, f"{component}_url")
        urls[component] = (explicit or f"http://{host}:{values.get(variable) or default}").rstrip("/")
    variable, default = FORWARD_PORT
    urls["fluent_bit_forward"] = args.fluent_bit_forward or f"127.0.0.1:{values.get(variable) or default}"
    if args.grafana_password is None and values.get("GRAFANA_ADMIN_PASSWORD"):
        args.grafana_password = values["GRAFANA_ADMIN_PASSWORD"]
    return urls


# --- the checks -----------------------------------------------------------------------------


class Doctor:
    def __init__(self, args: argparse.Namespace, urls: dict[str, str]) -> None:
        self.args, self.urls = args, urls
        self.http = requests.Session()
        self.traffic = Traffic()
        self.deadline = 0.0
        self.counted_before: float | None = None

    def get(self, component: str, path: str, **kwargs) -> requests.Response:
        try:
            return self.http.get(f"{self.urls[component]}{path}", timeout=kwargs.pop("timeout", 10), **kwargs)
        except requests.RequestException as error:
            raise CheckFailed(f"{self.urls[component]} does not answer ({type(error).__name__})",
                              f"{component.replace('_', ' ')} is not running or not at this URL",
                              "README.md (What `make up` starts); `make ps`") from None

    def json(self, component: str, path: str, **kwargs):
        response = self.get(component, path, **kwargs)
        if response.status_code != 200:
            raise CheckFailed(f"GET {path} answered {response.status_code}: {response.text[:200]}")
        return response.json()

    def poll(self, attempt: Callable[[], str], waiting_for: str, cause: str, read: str) -> str:
        """attempt() until it returns a detail (success) or the shared deadline passes."""
        last = ""
        while True:
            try:
                return attempt()
            except CheckFailed as error:
                last = error.detail
                cause, read = error.cause or cause, error.read or read
            if time.monotonic() >= self.deadline:
                raise CheckFailed(f"{waiting_for} not seen within {self.args.wait:g}s ({last})", cause, read)
            time.sleep(1.0)

    # router -----------------------------------------------------------------------------

    def router_ready(self) -> str:
        response = self.get("router", "/readyz")
        if response.status_code != 200:
            raise CheckFailed(f"/readyz answered {response.status_code}: {response.text[:200]}",
                              "no model backend is usable", f"{RUNBOOKS}/NoBackendAvailable.md")
        return "/readyz 200"

    def send_traffic(self) -> str:
        if "prometheus" not in self.args.skip:
            self.counted_before = self._counted()
        run = uuid.uuid4().hex[:12]
        headers = {"Authorization": f"Bearer {self.args.api_key}", "X-Tenant-ID": self.args.tenant,
                   "Cache-Control": "no-cache", "Content-Type": "application/json"}
        for i in range(self.args.requests):
            request_id = f"doctor-{run}-{i}"
            body = {"model": "auto", "messages": [{"role": "user", "content": f"llm-router doctor {request_id}"}]}
            try:
                response = self.http.post(f"{self.urls['router']}/v1/chat/completions", json=body,
                                          headers={**headers, "X-Request-ID": request_id}, timeout=60)
            except requests.RequestException as error:
                raise CheckFailed(f"the chat request failed ({type(error).__name__})", "the router is not running",
                                  "README.md (The router)") from None
            if response.status_code != 200:
                cause = {401: "the API key is not the tenant's (--api-key)",
                         403: "the tenant is not configured (--tenant)",
                         402: "the tenant's budget is exhausted"}.get(response.status_code, "the router failed it")
                raise CheckFailed(f"chat request answered {response.status_code}: {response.text[:200]}", cause,
                                  "README.md (The router)")
            self.traffic.request_ids.append(response.headers.get("X-Request-ID", request_id))
            if response.headers.get("X-Trace-ID"):
                self.traffic.trace_ids.append(response.headers["X-Trace-ID"])
        self.traffic.sent_at = time.time()
        self.deadline = time.monotonic() + self.args.wait
        return f"{self.args.requests} requests as tenant {self.args.tenant}, ids doctor-{run}-*"

    # Prometheus -------------------------------------------------------------------------

    def _query(self, expr: str) -> list[dict]:
        data = self.json("prometheus", "/api/v1/query", params={"query": expr})
        return data["data"]["result"]

    def _counted(self) -> float:
        result = self._query(f'sum(llm_router_chat_requests_total{{tenant="{self.args.tenant}"}})')
        return float(result[0]["value"][1]) if result else 0.0

    def prometheus_targets(self) -> str:
        expected = [job for job in self.args.expect_jobs.split(",") if job]

        def attempt() -> str:
            targets = self.json("prometheus", "/api/v1/targets", params={"state": "active"})["data"]["activeTargets"]
            jobs: dict[str, list[dict]] = {}
            for target in targets:
                jobs.setdefault(target["labels"].get("job", target.get("scrapePool", "?")), []).append(target)
            missing = [job for job in expected if job not in jobs]
            down = {job: next(t.get("lastError") or t["health"] for t in ts if t["health"] != "up")
                    for job, ts in jobs.items() if job in expected and any(t["health"] != "up" for t in ts)}
            if missing or down:
                raise CheckFailed("; ".join([*(f"no target for job {j}" for j in missing),
                                             *(f"{j} down: {e}" for j, e in down.items())]),
                                  "a component is down or Prometheus cannot reach it", f"{RUNBOOKS}/TargetDown.md")
            return f"{len(expected)} jobs up: {', '.join(expected)}"

        return self.poll(attempt, "every expected job up", "a component is down", f"{RUNBOOKS}/TargetDown.md")

    def prometheus_counted(self) -> str:
        before, wanted = self.counted_before or 0.0, self.args.requests

        def attempt() -> str:
            counted = self._counted() - before
            if counted < wanted:
                raise CheckFailed(f"{counted:g} of {wanted} counted so far")
            return f"+{counted:g} llm_router_chat_requests_total{{tenant=\"{self.args.tenant}\"}} (sent {wanted})"

        return self.poll(attempt, "the tagged requests in llm_router_chat_requests_total",
                         "Prometheus does not scrape the router's metrics port", f"{RUNBOOKS}/RouterDown.md")

    def recording_rules(self) -> str:
        def attempt() -> str:
            groups = self.json("prometheus", "/api/v1/rules", params={"type": "record"})["data"]["groups"]
            rules = [rule for group in groups for rule in group["rules"]]
            if not rules:
                raise CheckFailed("Prometheus has no recording rules", "the rule files are not loaded",
                                  "prometheus/prometheus.yml (rule_files)")
            bad = [f"{r['name']}: {r.get('lastError') or r.get('health')}" for r in rules if r.get("health") != "ok"]
            if bad:
                raise CheckFailed(f"{len(bad)} of {len(rules)} failing ({bad[0]})", "a rule does not evaluate",
                                  f"{RUNBOOKS}/PrometheusRuleEvaluationFailures.md")
            evaluated = [r for r in rules if not str(r.get("lastEvaluation", "")).startswith("0001-")]
            if not evaluated:
                raise CheckFailed("no rule evaluated yet")
            return f"{len(rules)} rules in {len(groups)} groups, all ok"

        return self.poll(attempt, "recording rules evaluating", "rule groups not evaluated yet",
                         f"{RUNBOOKS}/PrometheusRuleEvaluationFailures.md")

    # alerts -----------------------------------------------------------------------------

    def watchdog(self) -> str:
        def attempt() -> str:
            alerts = self.json("alertmanager", "/api/v2/alerts", params={"filter": 'alertname="Watchdog"'})
            if not alerts:
                raise CheckFailed("Alertmanager holds no Watchdog alert",
                                  "Prometheus does not send alerts to Alertmanager (alerting.alertmanagers)",
                                  f"{RUNBOOKS}/Watchdog.md")
            found = self.json("alert_sink", "/api/notifications", params={"alertname": "Watchdog"})
            if not found.get("count"):
                raise CheckFailed("no Watchdog notification at the sink",
                                  "Alertmanager cannot deliver to the alert sink (its webhook URL, or the sink is down)",
                                  f"{RUNBOOKS}/AlertmanagerNotificationsFailing.md")
            last = found["notifications"][-1]
            return f"{found['count']} heartbeat(s) at the sink, last {last.get('received_at')} to {last.get('receiver')}"

        return self.poll(attempt, "Watchdog at the alert sink", "the alert path is broken", f"{RUNBOOKS}/Watchdog.md")

    # logs and traces --------------------------------------------------------------------

    def loki_line(self) -> str:
        request_id = self.traffic.request_ids[0]
        trace_id = self.traffic.trace_ids[0] if self.traffic.trace_ids else None
        now = time.time_ns()
        params = {"query": f'{{service="llm-router"}} |= "{request_id}"', "limit": 20,
                  "start": now - 30 * 60 * 10**9, "end": now + 60 * 10**9, "direction": "backward"}
        # Loki 3: ask for labels and structured metadata apart, so the check can tell them apart.
        headers = {"X-Loki-Response-Encoding-Flags": "categorize-labels"}

        def attempt() -> str:
            streams = self.json("loki", "/loki/api/v1/query_range", params=params, headers=headers)["data"]["result"]
            entries = [(stream["stream"], value) for stream in streams for value in stream["values"]]
            if not entries:
                raise CheckFailed(f"no line with {request_id}",
                                  "logs do not reach Loki (Fluent Bit down or retrying, or the router does not "
                                  "log through the fluentd driver)", f"{RUNBOOKS}/FluentBitOutputRetriesFailing.md")
            labels, value = entries[0]
            metadata = value[2].get("structuredMetadata", {}) if len(value) > 2 and isinstance(value[2], dict) else {}
            if "trace_id" in labels:
                raise CheckFailed("trace_id is a stream label (unbounded cardinality), not structured metadata",
                                  "the Fluent Bit loki output's labels", "fluent-bit/fluent-bit.yaml")
            if trace_id and metadata.get("trace_id") != trace_id:
                raise CheckFailed(f"the line's trace_id metadata is {metadata.get('trace_id')!r}, not {trace_id}",
                                  "Fluent Bit does not send the request facts as structured metadata",
                                  "fluent-bit/fluent-bit.yaml (structured_metadata_map_keys)")
            return (f"{len(entries)} line(s) for {request_id}, labels {sorted(labels)}, "
                    f"trace_id {'as metadata' if trace_id else 'not checked (no X-Trace-ID)'}")

        return self.poll(attempt, "the request's log line in Loki", "logs do not reach Loki",
                         f"{RUNBOOKS}/FluentBitOutputRetriesFailing.md")

    def jaeger_trace(self) -> str:
        if not self.traffic.trace_ids:
            raise CheckFailed("the router sent no X-Trace-ID header", "tracing is off in the router (OTEL_* settings)",
                              "README.md (Signals: Traces)")
        trace_id = self.traffic.trace_ids[0]

        def attempt() -> str:
            response = self.get("jaeger", f"/api/traces/{trace_id}")
            if response.status_code == 404:
                raise CheckFailed(f"trace {trace_id} not found", "spans do not reach Jaeger (OTLP endpoint)",
                                  f"{RUNBOOKS}/JaegerSpansRefused.md")
            if response.status_code != 200:
                raise CheckFailed(f"GET /api/traces answered {response.status_code}")
            spans = [span for trace in response.json().get("data") or [] for span in trace["spans"]]
            chat = [s for s in spans if s["operationName"].startswith("chat ")]
            if not chat:
                raise CheckFailed(f"{len(spans)} span(s) but no `chat` span", "the backend call was not traced",
                                  "docs/metrics.md (spans)")
            tags = {tag["key"]: tag["value"] for tag in chat[0]["tags"]}
            gen_ai = sorted(key for key in tags if key.startswith("gen_ai."))
            if tags.get("span.kind") != "client" or not gen_ai:
                raise CheckFailed(f"`{chat[0]['operationName']}` lacks span.kind=client or gen_ai attributes",
                                  "the router's span attributes", "docs/metrics.md (spans)")
            return f"{len(spans)} spans, `{chat[0]['operationName']}` with {len(gen_ai)} gen_ai attributes"

        return self.poll(attempt, "the request's trace in Jaeger", "spans do not reach Jaeger",
                         f"{RUNBOOKS}/JaegerSpansRefused.md")

    # Grafana and Fluent Bit -------------------------------------------------------------

    def grafana(self) -> str:
        health = self.json("grafana", "/api/health")
        if health.get("database") != "ok":
            raise CheckFailed(f"Grafana's database is {health.get('database')!r}", "Grafana's storage",
                              f"{RUNBOOKS}/GrafanaDown.md")
        auth = (self.args.grafana_user, self.args.grafana_password) if self.args.grafana_password else None
        unhealthy = []
        for uid in DATASOURCES:
            response = self.get("grafana", f"/api/datasources/uid/{uid}/health", auth=auth, timeout=30)
            if response.status_code in (401, 403):
                raise CheckFailed(f"datasource health needs a login ({response.status_code})",
                                  "give --grafana-password or --env-file .env (GRAFANA_ADMIN_PASSWORD)")
            body = response.json() if response.headers.get("Content-Type", "").startswith("application/json") else {}
            if response.status_code != 200 or body.get("status") != "OK":
                unhealthy.append(f"{uid}: {body.get('message') or response.status_code}")
        if unhealthy:
            raise CheckFailed(f"datasources unhealthy: {'; '.join(unhealthy)}",
                              "the backend behind the datasource is down or unreachable from Grafana",
                              "grafana/provisioning/datasources/datasources.yaml")
        found = {item.get("uid") for item in self.json("grafana", "/api/search", params={"type": "dash-db"}, auth=auth)}
        missing = [uid for uid in self.args.expect_dashboards.split(",") if uid and uid not in found]
        if missing:
            raise CheckFailed(f"dashboards missing: {', '.join(missing)}", "dashboard provisioning (its path or mount)",
                              "grafana/provisioning/dashboards/dashboards.yaml")
        return f"{len(DATASOURCES)} datasources OK, {len(found & set(self.args.expect_dashboards.split(',')))} dashboards"

    def fluent_bit(self) -> str:
        response = self.get("fluent_bit", "/api/v1/health")
        if response.status_code != 200 or response.text.strip() != "ok":
            raise CheckFailed(f"/api/v1/health answered {response.status_code} {response.text.strip()[:80]!r}",
                              "its outputs report errors (Loki rejects records)", f"{RUNBOOKS}/FluentBitRecordsDropped.md")
        metrics = self.get("fluent_bit", "/api/v2/metrics/prometheus").text
        retrying = [line for line in metrics.splitlines()
                    if line.startswith("fluentbit_output_chunk_available_capacity_percent") and float(line.split()[-1]) < 25]
        if retrying:
            raise CheckFailed(f"buffer nearly full: {retrying[0]}", "the output cannot deliver",
                              f"{RUNBOOKS}/FluentBitBufferFilling.md")
        host, _, port = self.urls["fluent_bit_forward"].rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except OSError as error:
            raise CheckFailed(f"forward input {host}:{port} refuses connections ({error.strerror or error})",
                              "Docker's fluentd driver cannot ship the logs", "compose.yaml (fluent-bit ports)") from None
        return f"/api/v1/health ok, forward {host}:{port} accepts"


# --- running and reporting ------------------------------------------------------------------


def plan(doctor: Doctor) -> list[tuple[str, str, Callable[[], str]]]:
    """(name, component, check) in order: traffic first, then what each backend saw."""
    steps = [("router ready", "router", doctor.router_ready), ("tagged traffic", "router", doctor.send_traffic),
             ("Prometheus targets up", "prometheus", doctor.prometheus_targets),
             ("Prometheus counted the requests", "prometheus", doctor.prometheus_counted),
             ("recording rules evaluating", "prometheus", doctor.recording_rules),
             ("Watchdog at the alert sink", "alertmanager", doctor.watchdog),
             ("log line in Loki with trace_id metadata", "loki", doctor.loki_line),
             ("trace in Jaeger with the chat span", "jaeger", doctor.jaeger_trace),
             ("Grafana datasources and dashboards", "grafana", doctor.grafana),
             ("Fluent Bit output healthy", "fluent_bit", doctor.fluent_bit)]
    return [step for step in steps if step[1] not in doctor.args.skip]


def run_checks(doctor: Doctor, report: Callable[[Result], None]) -> list[Result]:
    results = []
    for name, _, check in plan(doctor):
        started = time.monotonic()
        try:
            result = Result(name, True, 0.0, check())
        except CheckFailed as error:
            result = Result(name, False, 0.0, error.detail, error.cause, error.read)
        result.seconds = round(time.monotonic() - started, 2)
        results.append(result)
        report(result)
        if not result.ok and name in ("router ready", "tagged traffic"):
            break  # nothing downstream can be checked without the traffic
    return results


def line(result: Result) -> str:
    text = f"{'✓' if result.ok else '✗'} {result.name} ({result.seconds:.1f}s): {result.detail}"
    if not result.ok:
        if result.cause:
            text += f"\n    likely: {result.cause}"
        if result.read:
            text += f"\n    read: {result.read}"
    return text


def run(args: argparse.Namespace) -> int:
    if args.requests < 1 or args.wait < 0:
        print("--requests must be at least 1 and --wait not negative", file=sys.stderr)
        return 2
    try:
        urls = resolve(args)
    except OSError as error:
        print(f"--env-file: {error}", file=sys.stderr)
        return 2
    doctor = Doctor(args, urls)
    results = run_checks(doctor, (lambda r: None) if args.json else (lambda r: print(line(r), flush=True)))
    failed = [r for r in results if not r.ok]
    if args.json:
        print(json.dumps({"ok": not failed, "urls": urls, "request_ids": doctor.traffic.request_ids,
                          "trace_ids": doctor.traffic.trace_ids, "checks": [asdict(r) for r in results]}, indent=2))
    else:
        print(f"{len(results) - len(failed)} of {len(results)} checks passed" + (f", {len(failed)} failed" if failed else ""))
    return 1 if failed else 0
