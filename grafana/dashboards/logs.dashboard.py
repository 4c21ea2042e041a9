"""Logs and traces: the router's JSON logs from Loki and the way into its traces in Jaeger.

Loki's labels are only the low-cardinality `service` and `level` (every line has both, a
traceback on stderr included: fluent-bit/llm-router.lua); tenant and model are fields of the
JSON access lines, so they are filtered after `| json`. Fluent Bit copies trace_id,
request_id, tenant and model into structured metadata, where the Loki datasource's derived
field makes trace_id a link to Jaeger, and leaves them in the line too, so "Line contains"
finds the id a user has in hand.
"""

from common import (JAEGER, RATE, SLO, dashboard, explore, logs, loki, prom, router, row, text, timeseries)

SLOW_MS = SLO["latency"]["threshold_seconds"] * 1000
# `${search:json}`: Grafana writes the text box as a JSON string, quotes and backslashes
# escaped, which is a valid LogQL string. A plain "$search" breaks on a typed `"`: for a
# single-value variable Grafana's Loki datasource escapes only `'`.
STREAM = '{service="llm-router", level=~"$level"} |= ${search:json}'
FIELDS = '| json | tenant=~"$tenant" | model=~"$model"'

# Jaeger searches for the router's service: (link title, what it finds, Jaeger query).
TRACES = [
    ("Jaeger: latest traces", "the latest requests", {}),
    ("Jaeger: failed requests", "spans with an error", {"tags": "error=true"}),
    ("Jaeger: slow requests", "slower than the latency SLO threshold",
     {"minDuration": f"{SLO['latency']['threshold_seconds']}s"}),
]
trace_links = [explore(title, JAEGER, [{"queryType": "search", "service": "llm-router", "limit": 20, **query}])
               for title, _, query in TRACES]
TRACES_TEXT = "\n".join([
    "Traces of the router (`llm-router`): a server span per request (carrying the routing decision and the",
    "cache result as attributes), then one `chat {model}` span per backend attempt, with OpenTelemetry GenAI",
    "attributes.",
    "",
    *(f"- [{link.title}]({link.uri}): {what}" for link, (_, what, _) in zip(trace_links, TRACES)),
    "",
    "From a log line: open it and follow **trace_id**. From a latency graph: click an exemplar dot",
    "(single-process router only).",
])


PANELS = [
    row("Logs"),
    timeseries("Log lines by level", [loki(
        f"sum by (level) (count_over_time({STREAM} [$__interval]))", "{{level}}")],
        unit="short", stack=True, w=16, h=7,
        description="Router log lines per interval by level, filtered by level and text (every kind of line, so "
                    "the tenant and model filters, which need the access lines' JSON fields, do not apply)."),
    timeseries("Error lines", [loki(
        'sum(count_over_time({service="llm-router", level=~"error|critical"} [$__interval]))', "error lines")],
        unit="short", w=8, h=7, explore=True,
        description="Lines at level error or critical per interval (unhandled exceptions, gunicorn errors); "
                    "each one is worth reading below."),
    logs("Router logs", [loki(f"{STREAM} {FIELDS}")],
         description="The router's JSON log lines, newest first. Tenant and model filter the access lines' JSON "
                     "fields (lines without those fields, e.g. events, show only when the filter is All). "
                     "Open a line for its fields; trace_id links to the trace in Jaeger."),
    logs("Failed or slow chat requests", [loki(
        f'{STREAM} {FIELDS} | logger="llm_router.access" | route="/v1/chat/completions"'
        f' | code >= 500 or duration_ms > {SLOW_MS:g} | __error__=""')], h=10,
        description="Access lines of chat requests that failed with a 5xx (including streams that broke "
                    f"mid-way) or took longer than the latency SLO threshold ({SLOW_MS:g} ms): each links to "
                    "its trace."),

    row("Traces"),
    text("Traces in Jaeger", TRACES_TEXT, w=8, h=9, links=trace_links,
         description="Links into Jaeger search (datasource uid jaeger) through Explore."),
    timeseries("Chat latency p99 with trace exemplars", [prom(
        f"histogram_quantile(0.99, sum by (le) (rate(llm_router_chat_request_duration_seconds_bucket"
        f"{router(model=True)}[{RATE}])))", "p99", exemplar=True)], unit="s", w=16, h=9,
        description="99th percentile latency of answered chat requests; each exemplar dot is one request and "
                    "opens its trace (exemplars need the single-process router)."),
]

dashboard = dashboard("logs", "The router's logs (Loki) filtered by tenant, model, level and text, and the way "
                              "from a log line or a slow request to its trace (Jaeger).",
                      PANELS,
                      variables=("tenant", "model", "instance", "level", "search"))
