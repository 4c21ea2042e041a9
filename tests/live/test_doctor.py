"""`llm-router doctor` against a stack on 127.0.0.1.

Run for real (tests/live/harness.py): the gunicorn router, Prometheus 3.5 with the bundle's
rules, Alertmanager 0.33 with its routing, the alert sink; the doctor process itself, as a
user runs it. Played by local stand-ins, because their images cannot run here:

  * Jaeger: an OTLP/HTTP receiver the real router exports its spans to, which serves them
    back in the shape of Jaeger's query API (GET /api/traces/<id>: data[].spans[] with
    operationName and tags, the OTLP span kind as the `span.kind` tag) - the spans are the
    router's real ones;
  * Loki: serves the router's real log lines (read from its stdout) after the bundle's Fluent
    Bit pipeline (the real Lua filter, tests/config/test_fluent_bit_records.py), in the shape
    of GET /loki/api/v1/query_range with `categorize-labels` (values of [ts, line,
    {"structuredMetadata": ...}]);
  * Grafana and Fluent Bit: recorded answers of /api/health, /api/datasources/uid/<uid>/health
    (admin only), /api/search, and /api/v1/health, /api/v2/metrics/prometheus plus a TCP
    listener as the forward input.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from conftest import REPO, free_port
from harness import stack  # noqa: F401 (a fixture)

sys.path.insert(0, str(REPO / "tests" / "config"))
from test_fluent_bit_records import LuaFilter, docker_record, loki_entry, parse  # noqa: E402

pytestmark = pytest.mark.live

GRAFANA_PASSWORD = "doctor-test-password"
DASHBOARD_UIDS = sorted(json.loads(p.read_text())["uid"] for p in (REPO / "grafana" / "generated").glob("*.json"))


class StandIn:
    """A small HTTP server on 127.0.0.1 whose answers come from `route(handler)`."""

    def __init__(self, route) -> None:
        self.route = route
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep the test output quiet
                pass

            def do_GET(self):  # noqa: N802
                outer.route(self)

            def do_POST(self):  # noqa: N802
                outer.route(self)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def reply(handler, status: int, body, content_type: str = "application/json") -> None:
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", content_type)
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


# --- Jaeger: OTLP in, Jaeger's query API out ------------------------------------------------


class Jaeger:
    KINDS = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}

    def __init__(self) -> None:
        self.traces: dict[str, list[dict]] = {}
        self.lock = threading.Lock()
        self.standin = StandIn(self.route)

    def route(self, handler) -> None:
        path = urlsplit(handler.path).path
        if handler.command == "POST" and path == "/v1/traces":
            from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

            request = ExportTraceServiceRequest()
            request.ParseFromString(handler.rfile.read(int(handler.headers["Content-Length"])))
            with self.lock:
                for resource in request.resource_spans:
                    for scope in resource.scope_spans:
                        for span in scope.spans:
                            self.traces.setdefault(span.trace_id.hex(), []).append(self.jaeger_span(span))
            return reply(handler, 200, b"".decode(), "application/x-protobuf")
        match = re.fullmatch(r"/api/traces/([0-9a-f]{32})", path)
        if handler.command == "GET" and match:
            with self.lock:
                spans = list(self.traces.get(match.group(1), []))
            if not spans:
                return reply(handler, 404, {"data": None, "total": 0, "limit": 0, "offset": 0,
                                            "errors": [{"code": 404, "msg": "trace not found"}]})
            return reply(handler, 200, {"data": [{"traceID": match.group(1), "spans": spans, "processes": {}}],
                                        "total": 0, "limit": 0, "offset": 0, "errors": None})
        reply(handler, 404, {"errors": [{"code": 404, "msg": "not found"}]})

    def jaeger_span(self, span) -> dict:
        tags = [{"key": "span.kind", "type": "string", "value": self.KINDS.get(span.kind, "unspecified")}]
        for attribute in span.attributes:
            kind = attribute.value.WhichOneof("value")
            value = getattr(attribute.value, kind) if kind else None
            if not isinstance(value, (str, int, float, bool)):  # arrays, maps, bytes: Jaeger shows them as text
                value, kind = str(value), "string_value"
            tags.append({"key": attribute.key, "type": {"string_value": "string", "int_value": "int64",
                                                         "double_value": "float64", "bool_value": "bool"}.get(kind, "string"),
                         "value": value})
        return {"traceID": span.trace_id.hex(), "spanID": span.span_id.hex(), "operationName": span.name,
                "startTime": span.start_time_unix_nano // 1000,
                "duration": (span.end_time_unix_nano - span.start_time_unix_nano) // 1000, "tags": tags}


# --- Loki: the router's real lines through the bundle's Fluent Bit pipeline -------------------


class Loki:
    def __init__(self, broken: bool = False) -> None:
        self.log_path: Path | None = None
        self.broken = broken
        self.lua = LuaFilter()
        self.standin = StandIn(self.route)

    def route(self, handler) -> None:
        url = urlsplit(handler.path)
        if url.path != "/loki/api/v1/query_range":
            return reply(handler, 404, "404 page not found\n", "text/plain")
        query = parse_qs(url.query)["query"][0]
        match = re.fullmatch(r'\{service="([^"]+)"\} \|= "([^"]*)"', query)
        if not match:
            return reply(handler, 400, f"parse error : {query}\n", "text/plain")
        categorize = "categorize-labels" in handler.headers.get("X-Loki-Response-Encoding-Flags", "")
        streams: dict[str, dict] = {}
        lines = [] if self.broken or self.log_path is None else self.log_path.read_text().splitlines()
        for text in lines:
            if match.group(2) not in text:
                continue
            code, record = self.lua("llm-router.router", parse(docker_record(text)))
            labels, metadata, line = loki_entry(record)
            if labels.get("service") != match.group(1):
                continue
            value = [str(1764367320219000000), json.dumps(line)]
            if categorize:
                value.append({"structuredMetadata": metadata} if metadata else {})
            stream = streams.setdefault(json.dumps(labels, sort_keys=True),
                                        {"stream": labels if categorize else {**labels, **metadata}, "values": []})
            stream["values"].append(value)
        body = {"status": "success", "data": {"resultType": "streams", "result": list(streams.values()), "stats": {}}}
        if categorize:
            body["data"]["encodingFlags"] = ["categorize-labels"]
        reply(handler, 200, body)


# --- Grafana and Fluent Bit: recorded answers ----------------------------------------------


def grafana_route(broken: bool):
    health = {"commit": "0e0a2f6b9c", "database": "ok", "version": "12.4.2"}
    messages = {"prometheus": "Successfully queried the Prometheus API.", "loki": "Data source successfully connected.",
                "jaeger": "Data source is working", "alertmanager": "Health check passed."}
    expected_auth = "Basic " + base64.b64encode(f"admin:{GRAFANA_PASSWORD}".encode()).decode()

    def route(handler) -> None:
        url = urlsplit(handler.path)
        if url.path == "/api/health":
            return reply(handler, 200, health)
        if handler.headers.get("Authorization") != expected_auth:
            return reply(handler, 401, {"message": "Unauthorized"})
        match = re.fullmatch(r"/api/datasources/uid/([\w-]+)/health", url.path)
        if match and match.group(1) in messages:
            if broken and match.group(1) == "loki":
                return reply(handler, 400, {"status": "ERROR", "message": "Unable to connect with Loki. Please check "
                                            "the server logs for more details."})
            return reply(handler, 200, {"status": "OK", "message": messages[match.group(1)]})
        if url.path == "/api/search":
            return reply(handler, 200, [{"id": i + 1, "uid": uid, "title": uid, "type": "dash-db", "tags": ["llm-router"],
                                         "folderUid": "llm-router", "folderTitle": "LLM router", "url": f"/d/{uid}"}
                                        for i, uid in enumerate(DASHBOARD_UIDS)])
        reply(handler, 404, {"message": "Not found"})

    return route


FLUENT_BIT_METRICS = """# HELP fluentbit_uptime Number of seconds that Fluent Bit has been running.
# TYPE fluentbit_uptime counter
fluentbit_uptime{hostname="fluent-bit"} 1189
# HELP fluentbit_output_proc_records_total Number of processed output records.
# TYPE fluentbit_output_proc_records_total counter
fluentbit_output_proc_records_total{name="loki.0"} 12416
# HELP fluentbit_output_retries_total Number of output retries.
# TYPE fluentbit_output_retries_total counter
fluentbit_output_retries_total{name="loki.0"} 0
# HELP fluentbit_output_chunk_available_capacity_percent Available chunk capacity (percent)
# TYPE fluentbit_output_chunk_available_capacity_percent gauge
fluentbit_output_chunk_available_capacity_percent{name="loki.0"} 100
"""


def fluent_bit_route(broken: bool):
    def route(handler) -> None:
        path = urlsplit(handler.path).path
        if path == "/api/v1/health":
            return reply(handler, 500 if broken else 200, "error" if broken else "ok", "text/plain")
        if path == "/api/v2/metrics/prometheus":
            return reply(handler, 200, FLUENT_BIT_METRICS, "text/plain; version=0.0.4")
        reply(handler, 404, "", "text/plain")

    return route


class Forward:
    """Fluent Bit's forward input: accepts TCP connections (the doctor only connects)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            connection.close()

    def close(self) -> None:
        self.sock.close()


# --- the stand-ins, wired to the harness's router ----------------------------------------------

JAEGER: Jaeger | None = None


def stack_router_env(tmp_path) -> dict[str, str]:
    """harness.stack's hook: the router exports its spans to the Jaeger stand-in."""
    global JAEGER
    JAEGER = Jaeger()
    return {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": JAEGER.standin.url,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_BSP_SCHEDULE_DELAY": "200"}


def doctor(stack, loki: Loki, grafana: StandIn, fluent_bit: StandIn, forward: str, *extra: str):
    command = [
        sys.executable, "-m", "llm_router.cli", "doctor", "--wait", "60", "--requests", "2",
        "--router-url", stack["router"].url, "--prometheus-url", stack["prometheus"].url,
        "--alertmanager-url", stack["alertmanager"].url, "--alert-sink-url", stack["sink"].url,
        "--loki-url", loki.standin.url, "--jaeger-url", JAEGER.standin.url, "--grafana-url", grafana.url,
        "--grafana-password", GRAFANA_PASSWORD, "--fluent-bit-url", fluent_bit.url, "--fluent-bit-forward", forward,
        # The harness scrapes only what runs here (router, sink, Prometheus, Alertmanager).
        "--expect-jobs", "llm-router,alert-sink,prometheus,alertmanager", *extra,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


@pytest.fixture
def standins():
    made = {"loki": Loki(), "grafana": StandIn(grafana_route(False)), "fluent_bit": StandIn(fluent_bit_route(False)),
            "forward": Forward()}
    yield made
    for name in ("grafana", "fluent_bit", "forward"):
        made[name].close()
    made["loki"].standin.close()
    if JAEGER is not None:
        JAEGER.standin.close()


def test_doctor_passes_on_a_working_stack_and_names_what_breaks(stack, standins, tmp_path):
    standins["loki"].log_path = stack["router"].log_path
    result = doctor(stack, standins["loki"], standins["grafana"], standins["fluent_bit"],
                    standins["forward"].address, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    names = [check["name"] for check in report["checks"]]
    assert len(names) == 10 and all(check["ok"] for check in report["checks"]), report["checks"]
    assert report["ok"] is True and len(report["request_ids"]) == 2 and len(report["trace_ids"]) == 2
    details = {check["name"]: check["detail"] for check in report["checks"]}
    assert "+2 llm_router_chat_requests_total" in details["Prometheus counted the requests"] or \
        re.search(r"\+[2-9]", details["Prometheus counted the requests"]), details
    assert "as metadata" in details["log line in Loki with trace_id metadata"]
    assert "gen_ai attributes" in details["trace in Jaeger with the chat span"]
    print("\n" + "\n".join(f"{c['name']}: {c['seconds']}s" for c in report["checks"]))

    # The same stack with Loki answering nothing, a Grafana datasource unhealthy, Fluent Bit's
    # output failing and its forward port closed: exit 1, one ✗ line each, with a cause.
    broken_loki = Loki(broken=True)
    broken_grafana, broken_fluent_bit = StandIn(grafana_route(True)), StandIn(fluent_bit_route(True))
    closed = f"127.0.0.1:{free_port()}"
    try:
        result = doctor(stack, broken_loki, broken_grafana, broken_fluent_bit, closed, "--wait", "3")
    finally:
        for standin in (broken_loki.standin, broken_grafana, broken_fluent_bit):
            standin.close()
    assert result.returncode == 1, result.stdout + result.stderr
    failed = [line for line in result.stdout.splitlines() if line.startswith("✗")]
    assert [line.split(" (")[0] for line in failed] == [
        "✗ log line in Loki with trace_id metadata", "✗ Grafana datasources and dashboards", "✗ Fluent Bit output healthy"]
    assert "loki: Unable to connect with Loki" in result.stdout
    assert "read: docs/runbooks/FluentBitOutputRetriesFailing.md" in result.stdout
    assert "likely:" in result.stdout and result.stdout.rstrip().endswith("7 of 10 checks passed, 3 failed")
    for line in result.stdout.splitlines():
        if line.startswith(("✓", "✗")):
            assert re.search(r"\(\d+\.\d+s\): ", line), line


def test_doctor_stops_at_a_router_that_is_not_there(tmp_path):
    result = subprocess.run([sys.executable, "-m", "llm_router.cli", "doctor", "--router-url",
                             f"http://127.0.0.1:{free_port()}", "--json"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert [c["name"] for c in report["checks"]] == ["router ready"]
    assert report["checks"][0]["cause"] == "router is not running or not at this URL"


def test_doctor_reads_urls_from_an_env_file(tmp_path):
    import argparse

    from llm_router.doctor import add_arguments, resolve

    env = tmp_path / ".env"
    env.write_text("BIND_ADDRESS=127.0.0.2\nROUTER_PORT=18080\nLOKI_PORT=13100\nFLUENT_BIT_FORWARD_PORT=24225\n"
                   "GRAFANA_ADMIN_PASSWORD='s3cret'\n")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--env-file", str(env), "--jaeger-url", "http://jaeger.example:16686/"])
    urls = resolve(args)
    assert urls["router"] == "http://127.0.0.2:18080" and urls["loki"] == "http://127.0.0.2:13100"
    assert urls["prometheus"] == "http://127.0.0.2:9090" and urls["jaeger"] == "http://jaeger.example:16686"
    assert urls["fluent_bit_forward"] == "127.0.0.1:24225" and args.grafana_password == "s3cret"
