"""docs/metrics.md is the telemetry contract: keep it and the code in step.

Each check runs both ways where it can: what the doc lists must exist, and what the
service emits must be listed. Metrics are checked against the metric objects declared in
telemetry/metrics.py (so metrics that only appear after rare events are still covered) and
against a live in-process /metrics after traffic; log fields against captured JSON lines;
spans against an in-memory exporter.
"""

from __future__ import annotations

import gc
import json
import re
import time

import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.openmetrics.parser import text_string_to_metric_families as openmetrics_families
from prometheus_client.parser import text_string_to_metric_families

from llm_router.state import Charge
from conftest import REPO, captured_json_lines, chat_body, parse_metrics, stuck_span_queue, as_tenant, SHIPPED_KEYS

DOC = REPO / "docs" / "metrics.md"
ADMIN_TOKEN = "catalogue-admin-token"
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"

# Metrics the driven traffic below cannot produce (checked against the module only).
# Empty today: every declared metric shows up live. Add a name here, with a reason, only
# when its trigger cannot be driven in-process.
ONLY_AFTER_RARE_EVENTS: frozenset[str] = frozenset()


# --- reading the doc -----------------------------------------------------------------------


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def doc_tables(text: str) -> list[tuple[list[str], list[dict[str, str]]]]:
    """Every Markdown table as (header, rows as {column: cell})."""
    lines = text.splitlines()
    tables = []
    i = 0
    while i < len(lines):
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|\s*:?-", lines[i + 1]):
            header = _cells(lines[i])
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                cells = _cells(lines[i])
                assert len(cells) == len(header), f"malformed table row in {DOC.name}: {lines[i]}"
                rows.append(dict(zip(header, cells)))
                i += 1
            tables.append((header, rows))
        else:
            i += 1
    return tables


def rows(first_column: str) -> list[dict[str, str]]:
    """Rows of every table whose first header cell is ``first_column``."""
    found = [row for header, table in doc_tables(DOC.read_text()) if header[0] == first_column for row in table]
    assert found, f"{DOC.name} has no table headed '{first_column}'"
    return found


def ticks(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def key(row: dict[str, str], column: str) -> str:
    names = ticks(row[column])
    assert names, f"first column without a `name`: {row}"
    return names[0]


def section(title_prefix: str) -> str:
    """The text of the '## <title_prefix>...' section."""
    text = DOC.read_text()
    match = re.search(rf"^## {re.escape(title_prefix)}.*?$(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"{DOC.name} has no section '## {title_prefix}'"
    return match.group(1)


def documented_metrics() -> dict[str, dict]:
    documented = {}
    for row in rows("Metric"):
        name = key(row, "Metric")
        assert name not in documented, f"{name} is documented twice"
        documented[name] = {
            "type": row["Type"].strip(),
            "labels": set(ticks(row["Labels"])),
            "mode": row["Multiprocess mode"].strip(),
        }
    return documented


def family_name(name: str, kind: str) -> str:
    """The family name prometheus_client uses: counters lose their _total suffix."""
    return name.removesuffix("_total") if kind == "counter" else name


def documented_label_values() -> dict[str, set[str]]:
    values: dict[str, set[str]] = {}
    for row in rows("Label"):
        for label in ticks(row["Label"]):
            values.setdefault(label, set()).update(ticks(row["Values"]))
    return values


# --- the code's view -------------------------------------------------------------------------


def declared_metrics() -> dict[str, MetricWrapperBase]:
    """Every prometheus_client metric object in telemetry/metrics.py, by exposed name."""
    from llm_router.telemetry import metrics as m

    declared = {}
    for obj in vars(m).values():
        if isinstance(obj, MetricWrapperBase):
            exposed = obj._name + "_total" if obj._type == "counter" else obj._name
            declared[exposed] = obj
    return declared


# The multiprocess mode column of metrics built by a collector at scrape time, one series
# per process (the pid label), never merged across workers.
PER_PROCESS = "per process"


def collected_metrics() -> dict:
    """Metrics that telemetry/metrics.py's custom collectors build at scrape time (no metric
    object to find): the process-health collector's specs, by exposed name. The collector
    must be registered where /metrics renders in single-process mode; the live exposition
    test below proves its metrics really appear."""
    from prometheus_client import REGISTRY

    from llm_router.telemetry import metrics as m
    from llm_router.telemetry.process import METRICS, ServingProcessCollector

    collectors = [obj for obj in vars(m).values() if isinstance(obj, ServingProcessCollector)]
    assert collectors, "telemetry/metrics.py declares no process collector"
    assert all(collector in REGISTRY._collector_to_names for collector in collectors)
    return {spec.name: spec for spec in METRICS}


def code_label_values(app) -> dict[str, set[str]]:
    """The bounded value set of each label, from the code and the app's configuration."""
    from llm_router.backends import BackendError
    from llm_router.config import STRATEGIES
    from llm_router.resilience import STATE_VALUES
    from llm_router.routing import REASONS
    from llm_router.telemetry.metrics import FINISH_REASONS, PROBE_OUTCOMES

    config = app.extensions["llm_router"].config
    models = {model.id for model in config.models}
    literal = code_literal_label_values(app)
    return {
        **literal,
        "tenant": literal["tenant"] | {tenant.id for tenant in config.tenants},
        "model": literal["model"] | models,
        "from_model": models,
        "to_model": models,
        "provider": literal["provider"] | {model.gen_ai_provider for model in config.models},
        "strategy": set(STRATEGIES),
        "reason": set(REASONS) | {"circuit_open", "saturated"} | set(FINISH_REASONS),
        "outcome": {"success", "cancelled", *BackendError.KINDS} | set(PROBE_OUTCOMES),
        "state": set(STATE_VALUES),
    }


def code_literal_label_values(app) -> dict[str, set[str]]:
    """The label values fixed by the code (not by the config): the doc must list each one."""
    from llm_router.backends import BackendError
    from llm_router.config import STRATEGIES
    from llm_router.resilience import STATE_VALUES
    from llm_router.routing import REASONS
    from llm_router.telemetry.metrics import FINISH_REASONS, PROBE_OUTCOMES, RATINGS

    from llm_router.telemetry.process import ROLES

    return {
        "role": set(ROLES),
        "generation": {str(generation) for generation in range(len(gc.get_stats()))},
        "route": {rule.rule for rule in app.url_map.iter_rules()} | {"unmatched"},
        "tenant": {"other", "anonymous"},
        "model": {"auto", "unknown"},
        "strategy": set(STRATEGIES),
        "reason": set(REASONS) | {"circuit_open", "saturated"} | set(FINISH_REASONS),
        "outcome": {"success", "cancelled", *BackendError.KINDS} | set(PROBE_OUTCOMES),
        "rating": set(RATINGS),
        "state": set(STATE_VALUES),
        "result": {"hit", "miss", "bypass"},
        "type": {"input", "output"},
        "stream": {"true", "false"},
        "action": {"rejected", "flagged"},
        "provider": {"simulated", "openai"},
    }


# --- traffic -----------------------------------------------------------------------------------


def drive_traffic(client, app, monkeypatch) -> None:
    """Exercise every metric, event and span: success, cache hit, stream, bad requests,
    budgets, feedback, and an injected fault on a model with fallbacks (retries, fallbacks,
    an open circuit, a rejection, a failed health probe)."""
    monkeypatch.setenv("LLM_ROUTER_ADMIN_TOKEN", ADMIN_TOKEN)
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    store = app.extensions["llm_router"].store

    def chat(body: dict, tenant: str | None = None):
        headers = (as_tenant(tenant) if tenant in SHIPPED_KEYS else {"X-Tenant-ID": tenant}) if tenant else {}
        response = client.post("/v1/chat/completions", json=body, headers=headers)
        response.get_data()  # drain streams, so they finish
        return response

    first = chat(chat_body(content="catalogue: cache me"), "search")
    assert first.status_code == 200 and first.headers["X-Router-Cache"] == "miss"
    again = chat(chat_body(content="catalogue: cache me"), "search")
    assert again.status_code == 200 and again.headers["X-Router-Cache"] == "hit"
    stream = chat(chat_body("sim-fast", content="catalogue: stream", stream=True), "support")
    assert stream.status_code == 200 and stream.mimetype == "text/event-stream"
    tuned = chat(chat_body("sim-mini", content="catalogue: tuned", max_tokens=8, temperature=0.2))
    assert tuned.status_code == 200
    assert chat({"model": "auto"}).status_code == 400
    assert chat(chat_body(content="catalogue: who"), "no-such-tenant").status_code == 403
    assert client.get("/no/such/page").status_code == 404
    assert client.get("/v1/models").status_code == 200

    # Budgets: one tenant over its budget (rejected), one crossing an alert threshold.
    ledger = app.extensions["llm_router"].ledger

    def spent(tenant: str, usd: float) -> None:  # as if another process had stored it
        store.apply([Charge(f"elsewhere:{tenant}:{usd}", "elsewhere", tenant, "sim-fast", time.time(), 0, 0, usd, 200)])
        ledger.refresh()

    spent("internal-tools", 1_000.0)
    assert chat(chat_body(content="catalogue: broke"), "internal-tools").status_code == 402
    spent("search", 250.0 - store.spend("search") - 1e-9)  # just under 50% of 500
    assert chat(chat_body(content="catalogue: spend"), "search").status_code == 200
    ledger.drain()  # the crossing is logged when the charge is stored

    # Feedback on the first answer: accepted once (with a free-text comment), then a 409.
    rated = {"response_id": first.get_json()["id"], "thumbs": "up", "reason": "other", "comment": "catalogue: nice"}
    assert client.post("/v1/feedback", json=rated, headers={**as_tenant("search")}).status_code == 201
    assert client.post("/v1/feedback", json=rated, headers={**as_tenant("search")}).status_code == 409

    # A fault on a model with fallbacks: each request retries it, then falls back; after
    # failure_threshold failures its circuit opens and the next request is rejected there.
    injected = client.post(
        "/admin/faults", json={"model": "sim-frontier", "error_rate": 1, "duration_seconds": 60}, headers=admin
    )
    assert injected.status_code == 201
    for attempt in range(4):
        response = chat(chat_body("sim-frontier", content=f"catalogue: fault {attempt}"))
        assert response.status_code == 200 and response.headers["X-Router-Model"] != "sim-frontier"
    # Health probes now, not on the background loop's schedule: sim-frontier's fails.
    probed = app.extensions["llm_router"].prober.probe_all()
    assert probed["sim-frontier"] is False and probed["sim-fast"] is True
    assert client.delete("/admin/faults", headers=admin).status_code == 200
    drive_ledger(client, app, monkeypatch)


def drive_ledger(client, app, monkeypatch) -> None:
    """The ledger's events and metrics: a store that fails then recovers, the journal of a
    process that died (a stream cut short, a finished request it had not counted), a stray
    file among the journals, and the state file deleted, then replaced, under the router."""
    import os
    import sqlite3

    from llm_router.ledger import Journal
    from llm_router.state import StoreError

    ledger = app.extensions["llm_router"].ledger
    ledger._stop.set()  # this test runs the loop's rounds itself
    if ledger._thread is not None:
        ledger._thread.join(5)
    store = ledger.store
    ledger.drain()

    def failing(*args):
        raise StoreError("catalogue: the disk is full")

    monkeypatch.setattr(store, "apply", failing)
    monkeypatch.setattr(store, "rate_response", failing)
    unrated = client.post("/v1/feedback", json={"request_id": "catalogue-none", "thumbs": "up"})
    assert unrated.status_code == 503 and unrated.get_json()["error"]["code"] == "state_store_unavailable"
    assert client.post("/v1/chat/completions", json=chat_body(content="catalogue: waits"),
                       headers={"Cache-Control": "no-cache"}).status_code == 200
    ledger.tick()
    assert ledger.waiting == 1
    monkeypatch.undo()
    ledger._next_try = 0.0
    ledger.tick()
    assert ledger.waiting == 0

    dead = Journal(ledger.journal.directory, 8)
    streaming, finished = dead.take(), dead.take()
    dead.write(streaming, 1, 0, time.time(), 12, 3, 0.001, 0.002, "research", "sim-fast", "catalogue-cut-short")
    dead.write(finished, 2, 200, time.time(), 12, 30, 0.001, 0.002, "research", "sim-fast", "catalogue-uncounted")
    dead.map.close()
    os.close(dead.fd)  # the process "dies": its lock is free, its journal stays
    (ledger.journal.directory / "journal-stray.bin").write_bytes(b"not a journal")
    assert ledger.sweep() == 2

    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(f"{store.path}{suffix}")
        except FileNotFoundError:
            pass
    assert client.post("/v1/chat/completions", json=chat_body(content="catalogue: after rm"),
                       headers={"Cache-Control": "no-cache"}).status_code == 200
    ledger.tick()
    assert store.path.exists() and ledger.waiting == 0
    copy = sqlite3.connect(f"{store.path}.copy")
    with sqlite3.connect(store.path) as original:
        original.backup(copy)
    copy.close()
    os.replace(f"{store.path}.copy", store.path)
    assert store.spend("research") > 0


# --- metrics -------------------------------------------------------------------------------------


def test_documented_metrics_match_declared_objects():
    documented = documented_metrics()
    declared = declared_metrics()
    collected = collected_metrics()
    assert not set(declared) & set(collected), "a metric both declared and collected"
    assert set(documented) == set(declared) | set(collected), (
        f"undocumented: {sorted((set(declared) | set(collected)) - set(documented))}; "
        f"documented but not declared: {sorted(set(documented) - set(declared) - set(collected))}"
    )
    for name, doc in documented.items():
        if name in collected:
            spec = collected[name]
            assert doc["type"] == spec.type, f"{name}: documented {doc['type']}, collected {spec.type}"
            assert doc["labels"] == set(spec.labels), f"{name}: labels {doc['labels']} != {spec.labels}"
            assert doc["mode"] == PER_PROCESS, f"{name}: multiprocess mode documented {doc['mode']}, not {PER_PROCESS}"
            continue
        metric = declared[name]
        assert doc["type"] == metric._type, f"{name}: documented {doc['type']}, declared {metric._type}"
        assert doc["labels"] == set(metric._labelnames), f"{name}: labels {doc['labels']} != {metric._labelnames}"
        mode = getattr(metric, "_multiprocess_mode", None) if metric._type == "gauge" else "sum"
        assert doc["mode"] == mode, f"{name}: multiprocess mode documented {doc['mode']}, declared {mode}"


def test_documented_metrics_match_live_exposition(app, client, monkeypatch):
    before = parse_metrics(client.get("/metrics").get_data(as_text=True))
    drive_traffic(client, app, monkeypatch)
    text = client.get("/metrics").get_data(as_text=True)

    live = {
        family.name: family
        for family in text_string_to_metric_families(text)
        if family.name.startswith("llm_router_") and family.samples
    }
    documented = {family_name(name, doc["type"]): doc for name, doc in documented_metrics().items()}
    assert set(live) <= set(documented), f"exposed but undocumented: {sorted(set(live) - set(documented))}"
    expected_live = set(documented) - {family_name(name, "counter") for name in ONLY_AFTER_RARE_EVENTS}
    assert expected_live <= set(live), f"documented but not exposed after traffic: {sorted(expected_live - set(live))}"
    for name, family in live.items():
        assert family.type == documented[name]["type"], f"{name}: exposed as {family.type}"
        labels = {label for sample in family.samples for label in sample.labels} - {"le"}
        assert labels == documented[name]["labels"], f"{name}: exposed labels {labels}"

    # The label values this traffic produced stay inside the bounded sets. Only series that
    # this test created or changed are checked: the registry is shared by the whole process.
    allowed = code_label_values(app)
    doc_values = documented_label_values()
    after = parse_metrics(text)
    touched = [key_ for key_, value in after.items() if key_[0].startswith("llm_router_") and before.get(key_) != value]
    assert touched
    for sample, labels in touched:
        for label, value in labels:
            if label in allowed:
                assert value in allowed[label], f"{sample}: {label}={value!r} is outside the bounded set"
            elif label in ("status", "code"):
                assert value in doc_values[label], f"{sample}: {label}={value!r} is not documented"


def test_documented_label_values_cover_the_code(app):
    doc_values = documented_label_values()
    metric_labels = {label for doc in documented_metrics().values() for label in doc["labels"]}
    assert set(doc_values) == metric_labels, (
        f"labels without documented values: {sorted(metric_labels - set(doc_values))}; "
        f"documented values of unknown labels: {sorted(set(doc_values) - metric_labels)}"
    )
    for label, values in code_literal_label_values(app).items():
        missing = values - doc_values[label]
        assert not missing, f"label {label}: values {sorted(missing)} are missing from {DOC.name}"


def test_process_metrics_are_exposed_in_single_process_mode(client):
    text = client.get("/metrics").get_data(as_text=True)
    # prometheus_client's default collectors: process_* and python_* (platform and GC).
    live = {
        family.name
        for family in text_string_to_metric_families(text)
        if family.samples and family.name.startswith(("process_", "python_"))
    }
    documented = {family_name(key(row, "Process metric"), row["Type"].strip()) for row in rows("Process metric")}
    assert documented == live, (
        f"exposed but undocumented: {sorted(live - documented)}; documented but not exposed: {sorted(documented - live)}"
    )


def test_exemplars_only_on_documented_histograms_and_only_single_process(client, monkeypatch):
    from llm_router.telemetry.signals import RequestRecord, trace_exemplar

    assert client.post("/v1/chat/completions", json=chat_body(content="catalogue: exemplar")).status_code == 200
    response = client.get("/metrics", headers={"Accept": OPENMETRICS})
    assert response.mimetype == "application/openmetrics-text"
    with_exemplars = {
        family.name
        for family in openmetrics_families(response.get_data(as_text=True))
        if any(sample.exemplar is not None and "trace_id" in sample.exemplar.labels for sample in family.samples)
    }
    documented = set(re.findall(r"^- `(llm_router_[a-z0-9_]+)`", section("4."), re.M))
    assert documented and with_exemplars == documented

    classic = client.get("/metrics").get_data(as_text=True)
    assert " # {" not in classic, "the classic text format must not carry exemplars"

    record = RequestRecord(started=0.0, request_id="r", trace_id="ab" * 16, sampled=True)
    assert trace_exemplar(record) == {"trace_id": "ab" * 16}
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", "/nonexistent-multiproc-dir")
    assert trace_exemplar(record) is None, "multiprocess mode must not attach exemplars"


# --- logs ------------------------------------------------------------------------------------------


def test_documented_log_fields_match_emitted_lines(make_app, monkeypatch):
    from llm_router import api
    from llm_router.app import Telemetry

    fields = {key(row, "Field"): row["Lines"] for row in rows("Field")}
    common = {name for name, lines in fields.items() if lines == "every line"}
    access = {name for name, lines in fields.items() if lines.startswith("access")}
    events = {key(row, "Event"): row for row in rows("Event")}

    with captured_json_lines() as read:
        # Content logging on, so the opt-in fields show up too.
        app = make_app(telemetry=Telemetry(log_content=True))
        client = app.test_client()
        drive_traffic(client, app, monkeypatch)

        def boom():
            raise RuntimeError("catalogue: an unexpected failure")

        monkeypatch.setattr(api, "_openapi_document", boom)
        assert client.get("/openapi.json").status_code == 500
        # A collector that cannot keep up: spans dropped, summarised in one event line.
        with stuck_span_queue(1) as provider:
            stuck = make_app(tracer_provider=provider).test_client()
            for _ in range(3):
                assert stuck.post("/v1/chat/completions", json=chat_body(), headers={"Cache-Control": "no-cache"}).status_code == 200
        lines = read()

    assert lines
    for line in lines:
        assert common <= set(line), f"line without the common fields {sorted(common - set(line))}: {line}"

    access_lines = [line for line in lines if line["logger"] == "llm_router.access"]
    assert access_lines
    emitted_access = {name for line in access_lines for name in line} - common
    assert emitted_access <= access, f"undocumented access-line fields: {sorted(emitted_access - access)}"
    assert access <= emitted_access, f"documented access-line fields never emitted: {sorted(access - emitted_access)}"

    event_lines = [line for line in lines if "event" in line]
    emitted_events = {line["event"] for line in event_lines}
    assert emitted_events == set(events), (
        f"undocumented events: {sorted(emitted_events - set(events))}; "
        f"documented events not emitted: {sorted(set(events) - emitted_events)}"
    )
    for line in event_lines:
        row = events[line["event"]]
        extra = set(line) - common - {"event"}
        assert extra <= set(ticks(row["Extra fields"])), f"{line['event']}: undocumented fields {extra}"
        assert line["logger"] == key(row, "Logger"), f"{line['event']} logged on {line['logger']}"
        assert line["level"] in row["Level"], f"{line['event']} logged at {line['level']}"


# --- spans -------------------------------------------------------------------------------------------


# What each placeholder of a documented span name stands for.
PLACEHOLDERS = {"METHOD": r"[A-Z]+", "route": r"(/\S*|unmatched)", "path": r"/\S*", "model": r"\S+"}


def span_pattern(name: str) -> re.Pattern:
    """`chat {model}` -> ^chat \\S+$, `{METHOD} {route}` -> ^[A-Z]+ /\\S*$."""
    pattern = ""
    for literal, placeholder in re.findall(r"([^{]*)(?:\{([^}]+)\})?", name):
        pattern += re.escape(literal) + (f"(?:{PLACEHOLDERS[placeholder]})" if placeholder else "")
    return re.compile(f"^{pattern}$")


def test_documented_spans_match_emitted_spans(make_app, monkeypatch):
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    app = make_app(tracer_provider=provider)
    drive_traffic(app.test_client(), app, monkeypatch)
    spans = exporter.get_finished_spans()
    assert spans

    documented = {}
    for row in rows("Span name"):
        name = key(row, "Span name")
        attributes = {tick for tick in ticks(row["Attributes"]) if "." in tick and " " not in tick}
        documented[name] = {"pattern": span_pattern(name), "kind": row["Kind"].strip(), "attributes": attributes}

    seen: dict[str, list] = {name: [] for name in documented}
    for span in spans:
        matches = [name for name, doc in documented.items() if doc["pattern"].match(span.name)]
        assert len(matches) == 1, f"span {span.name!r} matches documented names {matches}"
        doc = documented[matches[0]]
        assert span.kind.name == doc["kind"], f"{span.name}: kind {span.kind.name}, documented {doc['kind']}"
        seen[matches[0]].append(span)
    assert all(seen.values()), f"documented spans never produced: {[n for n, s in seen.items() if not s]}"

    for name, produced in seen.items():
        doc = documented[name]
        keys = {attribute for span in produced for attribute in span.attributes}
        if doc["kind"] == "SERVER":
            # The instrumentation's own attributes depend on OTEL_SEMCONV_STABILITY_OPT_IN;
            # the router's must be documented and produced.
            keys = {attribute for attribute in keys if attribute.startswith("llm_router.")} | {"http.route"}
            wanted = {attribute for attribute in doc["attributes"] if attribute.startswith("llm_router.")}
            assert keys - {"http.route"} == wanted, f"{name}: router attributes {keys}, documented {wanted}"
            assert "http.route" in doc["attributes"]
        else:
            assert keys == doc["attributes"], (
                f"{name}: undocumented attributes {sorted(keys - doc['attributes'])}; "
                f"documented but never produced {sorted(doc['attributes'] - keys)}"
            )

    # The GenAI conventions pinned in the doc: gen_ai.provider.name, never gen_ai.system.
    assert "v1.37.0" in section("3.")
    chat_spans = seen["chat {model}"]
    assert all("gen_ai.provider.name" in span.attributes for span in chat_spans)
    assert not any("gen_ai.system" in span.attributes for span in spans)
    failed = [span for span in chat_spans if "error.type" in span.attributes]
    assert failed and all(span.attributes["error.type"] in rows_values("outcome") for span in failed)


def rows_values(label: str) -> set[str]:
    return documented_label_values()[label]


@pytest.fixture(autouse=True)
def _doc_exists():
    assert DOC.is_file(), f"{DOC} is missing"
