"""`python -m bench.scaling <measurement>`: the figures of docs/scaling.md, measured on the
real router (gunicorn, 2 workers), the real Prometheus of `make tools`, the real Fluent Bit
Lua filter and the router's own OTLP encoder. Each measurement prints one JSON document.

    series       series one replica exposes at 50 tenants x 10 models, by metric
    prometheus   Prometheus memory, head series and ingestion against 1, 3 and 6 replicas
    loki         Loki streams and bytes per request, from the router's real access lines
    spans        spans and OTLP bytes per request, at several sampling ratios
    store        state-store transactions and rows per second per replica (the 50 ms batches)

Everything binds 127.0.0.1 on free ports and is stopped at the end. Options: --tenants,
--models (label sets), --minutes (prometheus), --rates (store), --ratios (spans).
"""

from __future__ import annotations

import argparse
import gzip
import json
import re
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml

from . import load
from .router import REPO, free_port, label_set_config, quiet_config, start_router

CHAT = "/v1/chat/completions"
PROMETHEUS = REPO / ".tools" / "bin" / "prometheus"


def log(message: str) -> None:
    print(f"[scaling {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- traffic ------------------------------------------------------------------------------


def key_of(tenant: str) -> str:
    return "sk-bench-" + tenant.rsplit("-", 1)[1]  # label_set_config's keys


def chat(client: load._Client, tenant: str, model: str, stream: bool = False, prompt: str = "Hello") -> tuple[int, dict]:
    body = json.dumps({"model": model, "stream": stream, "messages": [{"role": "user", "content": prompt}]}).encode()
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key_of(tenant)}"}
    status, data = client.request("POST", CHAT, body, headers)
    if stream or status != 200:
        return status, {}
    return status, json.loads(data)


def every_label_set(port: int, config: dict, feedback: bool = False, concurrency: int = 8) -> dict:
    """For every tenant x model: the same question twice (a cache miss, then a hit), one
    stream, and with feedback=True a positive and a negative rating (each tenant/model/
    rating is a series of its own from its first rating on)."""
    client = load._Client(port)
    tenants = [t["id"] for t in config["tenants"]]
    models = [m["id"] for m in config["models"]]

    def combo(pair) -> list[int]:
        tenant, model = pair
        prompt = f"What does {tenant} ask {model}?"
        codes = []
        status, answer = chat(client, tenant, model, prompt=prompt)
        codes.append(status)
        codes.append(chat(client, tenant, model, prompt=prompt)[0])
        codes.append(chat(client, tenant, model, stream=True)[0])
        if feedback and answer:
            for thumbs in ("up", "down"):
                _, rated = chat(client, tenant, model, prompt=f"{prompt} ({thumbs})")
                body = json.dumps({"response_id": rated.get("id"), "thumbs": thumbs}).encode()
                headers = {"Content-Type": "application/json", "Authorization": f"Bearer {key_of(tenant)}"}
                codes.append(client.request("POST", "/v1/feedback", body, headers)[0])
        return codes

    with ThreadPoolExecutor(concurrency) as pool:
        codes = Counter(code for result in pool.map(combo, [(t, m) for t in tenants for m in models])
                        for code in result)
    return dict(codes)


def background_traffic(ports: list[int], config: dict, rate: float, stop: threading.Event) -> threading.Thread:
    """`rate` requests per second in all, round robin over the routers (`ports` is read on
    every request: a router replaced meanwhile gets its share) and the label sets."""
    tenants = [t["id"] for t in config["tenants"]]
    models = [m["id"] for m in config["models"]]
    clients: dict[int, load._Client] = {}

    def run() -> None:
        i = 0
        while not stop.wait(1 / rate):
            port = ports[i % len(ports)]
            client = clients.setdefault(port, load._Client(port))
            chat(client, tenants[i % len(tenants)], models[(i // len(tenants)) % len(models)], prompt=f"background {i}")
            i += 1

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def exposition(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        return response.read().decode()


def count_series(text: str) -> tuple[int, dict[str, int]]:
    """Samples of a text exposition, in all and by metric family."""
    families: Counter = Counter()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0)
        families[re.sub(r"_(bucket|sum|count|total)$", "", name)] += 1
    return sum(families.values()), dict(families.most_common())


# --- series per replica -------------------------------------------------------------------


def measure_series(args, work: Path) -> dict:
    config = label_set_config(args.tenants, args.models)
    router = start_router(work, "series", config, {}, workers=2)
    try:
        before, _ = count_series(exposition(router.metrics_port))
        codes = every_label_set(router.port, config)
        after, families = count_series(exposition(router.metrics_port))
        codes_feedback = every_label_set(router.port, config, feedback=True)
        with_feedback, families_feedback = count_series(exposition(router.metrics_port))
        return {
            "tenants": args.tenants, "models": args.models, "workers": 2,
            "series_at_start": before, "series_after_traffic": after, "series_with_feedback": with_feedback,
            "codes": codes, "codes_feedback_round": codes_feedback,
            "by_family": families, "by_family_with_feedback": families_feedback,
        }
    finally:
        router.stop()


# --- Prometheus against 1, 3, 6 replicas ------------------------------------------------


def prometheus_config(directory: Path, targets: list[int], prom_port: int) -> Path:
    """prometheus/prometheus.yml's global settings and rules, scraping `targets` as job
    llm-router (one instance each, as DNS discovery of the scale profile gives) and itself."""
    shipped = yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())
    config = {
        "global": {k: v for k, v in shipped["global"].items()},
        "rule_files": [str(path) for path in sorted((REPO / "prometheus" / "rules").glob("*.yml"))],
        "scrape_configs": [
            {"job_name": "llm-router", "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in targets]}]},
            {"job_name": "prometheus", "static_configs": [{"targets": [f"127.0.0.1:{prom_port}"]}]},
        ],
    }
    path = directory / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def prom_query(port: int, expr: str) -> float | None:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=30) as response:
        result = json.loads(response.read())["data"]["result"]
    return float(result[0]["value"][1]) if result else None


def measure_prometheus(args, work: Path) -> dict:
    """Every replica is a real router (2 workers) that has served every label set; one fresh
    Prometheus (the shipped global settings and rule files) per replica count. A run counts
    only if every target stayed up throughout (on a shared machine a router can be stopped
    by someone else): otherwise the dead routers are replaced and the run repeated."""
    import subprocess

    config = label_set_config(args.tenants, args.models)
    routers: list = []
    ports: list[int] = []
    stop = threading.Event()
    results = []
    started = 0

    def new_router():
        nonlocal started
        started += 1
        log(f"starting router {started}")
        router = start_router(work, f"replica-{started}", config, {}, workers=2)
        every_label_set(router.port, config)  # every label set exists on every replica
        return router

    def replace_dead() -> None:
        for i, router in enumerate(routers):
            if router.process.poll() is not None:
                log(f"router {router.name} is gone (exit {router.process.returncode}): replacing it")
                routers[i] = new_router()
                ports[i] = routers[i].port

    try:
        for _ in range(max(args.replicas)):
            routers.append(new_router())
            ports.append(routers[-1].port)
        background_traffic(ports, config, args.background_rate, stop)
        for count in args.replicas:
            for attempt in range(1, 4):
                replace_dead()
                directory = work / f"prometheus-{count}-{attempt}"
                directory.mkdir()
                port = free_port()
                path = prometheus_config(directory, [r.metrics_port for r in routers[:count]], port)
                log(f"Prometheus against {count} replica(s) for {args.minutes} min (attempt {attempt})")
                with (directory / "prometheus.log").open("wb") as out:
                    process = subprocess.Popen([str(PROMETHEUS), f"--config.file={path}",
                                                f"--storage.tsdb.path={directory / 'data'}",
                                                f"--web.listen-address=127.0.0.1:{port}"], stdout=out,
                                               stderr=subprocess.STDOUT)
                    try:
                        time.sleep(args.minutes * 60)
                        job, window = '{job="prometheus"}', f"{int(args.minutes * 60) - 30}s"
                        run = {
                            "replicas": count, "minutes": args.minutes,
                            "targets_up_throughout": prom_query(
                                port, f'sum(min_over_time(up{{job="llm-router"}}[{window}]))'),
                            "head_series": prom_query(port, f"prometheus_tsdb_head_series{job}"),
                            "router_series": prom_query(port, 'count({job="llm-router"})'),
                            "recorded_series": prom_query(port, 'count({__name__=~".+:.+"})'),
                            "samples_per_scrape": prom_query(port, 'sum(scrape_samples_scraped{job="llm-router"})'),
                            "ingestion_samples_per_second": prom_query(
                                port, f"rate(prometheus_tsdb_head_samples_appended_total{job}[2m])"),
                            "resident_memory_bytes": prom_query(port, f"process_resident_memory_bytes{job}"),
                            "go_heap_inuse_bytes": prom_query(port, f"go_memstats_heap_inuse_bytes{job}"),
                            "rule_evaluation_seconds": prom_query(
                                port, f"sum(prometheus_rule_group_last_duration_seconds{job})"),
                            "scrape_duration_seconds_max": prom_query(
                                port, 'max(scrape_duration_seconds{job="llm-router"})'),
                        }
                    finally:
                        process.terminate()
                        process.wait(60)
                log(json.dumps(run))
                if run["targets_up_throughout"] == count:
                    results.append(run)
                    break
                log("a target was down during the run: repeating it")
    finally:
        stop.set()
        for router in routers:
            router.stop()
    return {"tenants": args.tenants, "models": args.models, "workers": 2,
            "scrape_interval": yaml.safe_load((REPO / "prometheus" / "prometheus.yml").read_text())["global"][
                "scrape_interval"], "background_requests_per_second": args.background_rate,
            "routers_started": started, "runs": results}


# --- Loki ---------------------------------------------------------------------------------


def measure_loki(args, work: Path) -> dict:
    """The router's access lines, through the real Lua filter and the model of the loki
    output in tests/config/test_fluent_bit_records.py (labels, structured metadata, the
    line as Loki stores it)."""
    sys.path.insert(0, str(REPO / "tests" / "config"))
    import test_fluent_bit_records as pipeline

    lua = pipeline.LuaFilter()
    config = label_set_config(args.tenants, args.models)
    router = start_router(work, "loki", config, {}, workers=2)
    try:
        codes = every_label_set(router.port, config)
    finally:
        router.stop()
    lines = [line for line in router.log_path.read_text().splitlines() if line.startswith("{")]
    access = [line for line in lines if json.loads(line).get("logger") == "llm_router.access"]
    streams: set[tuple] = set()
    shipped_bytes, metadata_bytes, raw_bytes = [], [], []
    shipped_lines = []
    for line in access:
        labels, metadata, shipped = pipeline.ship(lua, line)
        streams.add(tuple(sorted(labels.items())))
        text = json.dumps(shipped, separators=(",", ":"), ensure_ascii=False)
        shipped_lines.append(text)
        raw_bytes.append(len(line.encode()) + 1)
        shipped_bytes.append(len(text.encode()))
        metadata_bytes.append(sum(len(k.encode()) + len(v.encode()) for k, v in metadata.items()))
    other = len(lines) - len(access)
    batch = "\n".join(shipped_lines).encode()

    def mean(values):
        return sum(values) / len(values)

    return {
        "requests": sum(codes.values()), "codes": codes, "access_lines": len(access), "other_lines": other,
        "label_names": sorted({name for stream in streams for name, _ in stream}),
        "streams_from_access_lines": [dict(stream) for stream in sorted(streams)],
        "router_line_bytes_mean": mean(raw_bytes),
        "loki_line_bytes_mean": mean(shipped_bytes),
        "structured_metadata_bytes_mean": mean(metadata_bytes),
        "gzip_ratio_of_the_lines": len(batch) / len(gzip.compress(batch, 6)),
    }


# --- spans --------------------------------------------------------------------------------


class SpanSink:
    """OTLP/HTTP on 127.0.0.1: decodes each ExportTraceServiceRequest and counts spans by name."""

    def __init__(self) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

        sink = self
        self.bytes = 0
        self.batches = 0
        self.names: Counter = Counter()
        self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                message = ExportTraceServiceRequest.FromString(body)
                with sink.lock:
                    sink.bytes += len(body)
                    sink.batches += 1
                    for resource in message.resource_spans:
                        for scope in resource.scope_spans:
                            sink.names.update(span.name for span in scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def measure_spans(args, work: Path) -> dict:
    config = quiet_config()
    runs = []
    for ratio in args.ratios:
        sink = SpanSink()
        env = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": sink.url,
               "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_SERVICE_NAME": "llm-router",
               "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": str(ratio),
               "OTEL_BSP_SCHEDULE_DELAY": "200"}
        router = start_router(work, f"spans-{ratio}", config, env, workers=2)
        client = load._Client(router.port)
        tenants = [t["id"] for t in config["tenants"]]
        keys = {t["id"]: t["api_keys"][0] for t in config["tenants"] if t.get("api_keys")}
        codes: Counter = Counter()
        try:
            for i in range(args.requests):
                tenant = tenants[i % len(tenants)]
                body = json.dumps({"model": "auto", "stream": i % 4 == 0,
                                   "messages": [{"role": "user", "content": f"question {i}"}]}).encode()
                headers = {"Content-Type": "application/json", "Cache-Control": "no-cache"}
                if tenant in keys:
                    headers["Authorization"] = f"Bearer {keys[tenant]}"
                codes[client.request("POST", CHAT, body, headers)[0]] += 1
            time.sleep(2)  # the last batch (schedule delay 200 ms)
        finally:
            router.stop()  # flushes what is left
            time.sleep(0.5)
            sink.close()
        spans = sum(sink.names.values())
        runs.append({"sampling_ratio": ratio, "requests": args.requests, "codes": dict(codes), "spans": spans,
                     "spans_per_request": spans / args.requests, "span_names": dict(sink.names.most_common(8)),
                     "otlp_bytes": sink.bytes, "batches": sink.batches,
                     "bytes_per_span": sink.bytes / spans if spans else None,
                     "bytes_per_request": sink.bytes / args.requests})
        log(json.dumps(runs[-1]))
    return {"runs": runs, "stream_share": 0.25}


# --- state-store writes ---------------------------------------------------------------------


def store_counters(port: int) -> dict[str, float]:
    text = exposition(port)
    values: Counter = Counter()
    for line in text.splitlines():
        if match := re.match(r'llm_router_state_operation_duration_seconds_count\{operation="(\w+)"\} (\S+)', line):
            values[match.group(1)] += float(match.group(2))
        elif match := re.match(r'llm_router_chat_requests_total\{[^}]*code="200"[^}]*\} (\S+)', line):
            values["answered"] += float(match.group(1))
    return dict(values)


def measure_store(args, work: Path) -> dict:
    config = label_set_config(args.tenants, args.models)
    router = start_router(work, "store", config, {}, workers=2)
    runs = []
    try:
        client = load._Client(router.port)
        tenants = [t["id"] for t in config["tenants"]]
        models = [m["id"] for m in config["models"]]
        idle_before = store_counters(router.metrics_port)
        time.sleep(args.seconds)
        idle_after = store_counters(router.metrics_port)
        runs.append(rates(idle_before, idle_after, args.seconds, 0))
        for rate in args.rates:
            before = store_counters(router.metrics_port)
            started = time.monotonic()
            count = int(rate * args.seconds)
            lock = threading.Lock()
            sent = Counter()

            def send(i: int) -> None:
                status, _ = chat(client, tenants[i % len(tenants)], models[i % len(models)], prompt=f"store {rate} {i}")
                with lock:
                    sent[status] += 1

            with ThreadPoolExecutor(32) as pool:
                for i in range(count):
                    delay = started + i / rate - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    pool.submit(send, i)
            elapsed = time.monotonic() - started
            time.sleep(0.5)  # the last batches
            after = store_counters(router.metrics_port)
            runs.append({**rates(before, after, elapsed, rate), "codes": dict(sent)})
            log(json.dumps(runs[-1]))
    finally:
        router.stop()
    return {"store": "sqlite", "workers": 2, "tenants": args.tenants, "runs": runs}


def rates(before: dict, after: dict, seconds: float, offered: float) -> dict:
    delta = {key: after.get(key, 0) - before.get(key, 0) for key in set(before) | set(after)}
    applies = delta.get("apply", 0)
    return {
        "offered_requests_per_second": offered,
        "answered_per_second": delta.get("answered", 0) / seconds,
        "transactions_per_second": sum(delta.values()) / seconds - delta.get("answered", 0) / seconds,
        "by_operation_per_second": {k: v / seconds for k, v in sorted(delta.items()) if k != "answered"},
        "charges_per_apply": delta.get("answered", 0) / applies if applies else None,
    }


# --- main -----------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("measurement", choices=["series", "prometheus", "loki", "spans", "store"])
    parser.add_argument("--tenants", type=int, default=50)
    parser.add_argument("--models", type=int, default=10)
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 3, 6])
    parser.add_argument("--minutes", type=float, default=4)
    parser.add_argument("--background-rate", type=float, default=6)
    parser.add_argument("--ratios", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--rates", type=float, nargs="+", default=[10, 50, 100])
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="llm-router-scaling-") as tmp:
        measure = globals()[f"measure_{args.measurement}"]
        result = measure(args, Path(tmp))
    print(json.dumps({"measurement": args.measurement, **result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
