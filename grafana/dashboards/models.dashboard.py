"""Models and backends: traffic, latency, tokens and the resilience machinery per model."""

from common import (RATE, SLO, THRESHOLDS, dashboard, heatmap, prom, router, row, stat, steps, timeseries,
                    value_map)

SLOW = SLO["latency"]["threshold_seconds"]
MODEL = router(model=True)
RULES = router(model=True, instance=False)  # the model: recording rules keep only job and model
OUTPUT = router('type="output"', model=True)
FAILED = router('outcome!="success"', model=True)
FROM = router('from_model=~"$model"')  # fallbacks have from_model/to_model, not model


def rule(name: str, legend: str):
    return prom(f"model:{name}{RULES}", legend)


def quantile(q: float, metric: str, by: str = "", selector: str = MODEL, exemplar: bool = False, legend: str = ""):
    grouping = ", ".join([*filter(None, [by]), "le"])
    return prom(f"histogram_quantile({q}, sum by ({grouping}) (rate({metric}_bucket{selector}[{RATE}])))",
                legend, exemplar=exemplar)


def per_model(expr: str):
    return prom(expr, "{{model}}")


dashboard = dashboard("models", "Per model: traffic, latency, time to first token, tokens, backend errors, circuit "
                                "breakers, fallbacks, retries, queues and the router's own overhead.", [
    row("Traffic and errors"),
    timeseries("Chat requests by model", [per_model(
        f"sum by (model) (rate(llm_router_chat_requests_total{router(tenant=True, model=True)}[{RATE}]))")],
        unit="reqps", stack=True, explore=True,
        description="Chat completion requests per second by the model that served them (`auto`: no model served "
                    "an auto request; `unknown`: rejected before the model was known)."),
    timeseries("Error ratio by model", [rule("llm_router_chat_errors:ratio_rate5m", "{{model}} chat"),
                                        rule("llm_router_backend_errors:ratio_rate5m", "{{model}} backend calls")],
               unit="percentunit", explore=True,
               description="Chat requests answered with a 5xx or 429, and backend calls that failed (retries "
                           "included, cancelled streams not), over 5 minutes (recording rules)."),

    row("Latency"),
    timeseries("Chat latency p50 / p95 / p99 by model", [
        rule("llm_router_chat_request_duration_seconds:p50_5m", "{{model}} p50"),
        rule("llm_router_chat_request_duration_seconds:p95_5m", "{{model}} p95"),
        rule("llm_router_chat_request_duration_seconds:p99_5m", "{{model}} p99"),
    ], unit="s", explore=True, thresholds=steps("green", (SLOW, "red")),
        description="End-to-end latency of answered chat requests per model over 5 minutes (recording rules). "
                    "Dashed: the latency SLO threshold."),
    heatmap("Chat latency distribution", [prom(
        f"sum by (le) (rate(llm_router_chat_request_duration_seconds_bucket{MODEL}[{RATE}]))", "{{le}}",
        exemplar=True)], unit="s",
        description="Answered chat requests per second in each latency bucket, for the selected models. Exemplar "
                    "dots link to the request's trace (single-process router only)."),
    timeseries("Time to first token p50 / p95 by model", [
        rule("llm_router_time_to_first_token_seconds:p50_5m", "{{model}} p50"),
        rule("llm_router_time_to_first_token_seconds:p95_5m", "{{model}} p95"),
    ], unit="s", w=8, thresholds=steps("green", (THRESHOLDS["ttft_p95_seconds"], "red")),
        description="Streams only: from request arrival to the first chunk from the backend, over 5 minutes "
                    "(recording rules). Dashed: the TimeToFirstTokenHigh threshold on p95."),
    timeseries("Backend call latency p95 by model", [quantile(
        0.95, "llm_router_backend_request_duration_seconds", "model", exemplar=True, legend="{{model}}")],
        unit="s", w=8,
        description="One backend call (retries each count; failed calls included), 95th percentile. Exemplars "
                    "link to the `chat {model}` span (sampled traces, single-process router only)."),
    timeseries("Router overhead", [quantile(q, "llm_router_overhead_seconds", selector=router(), legend=f"p{q * 100:g}")
                                   for q in (0.5, 0.95, 0.99)],
               unit="s", w=8,
               description="Time the router adds to a successful chat request beyond its backend calls (a cache "
                           "hit's whole duration counts). All models: the histogram has no model label."),

    row("Tokens"),
    timeseries("Tokens per second by model", [prom(
        f"sum by (model, type) (rate(llm_router_tokens_total{router(tenant=True, model=True)}[{RATE}]))",
        "{{model}} {{type}}")], unit="short", stack=True, explore=True,
        description="Input and output tokens processed per second by served requests (cache hits add none)."),
    timeseries("Generation speed by model", [per_model(
        f"sum by (model) (rate(llm_router_tokens_total{OUTPUT}[{RATE}]))\n/\n"
        f"sum by (model) (rate(llm_router_backend_request_duration_seconds_sum{MODEL}[{RATE}]))")],
        unit="short",
        description="Output tokens per second of backend time: how fast each model writes. Failed calls add "
                    "time but no tokens, so errors pull this down."),

    row("Backends and resilience"),
    stat("Circuit breakers", [per_model(f"max by (model) (llm_router_circuit_breaker_state{MODEL})")],
         unit="none", w=24, h=4, graph=False, text_mode="value_and_name", color_mode="background",
         thresholds=steps("green", (1, "orange"), (2, "red")),
         mappings=[value_map(("0", "closed", "green"), ("1", "half-open", "orange"), ("2", "open", "red"))],
         description="Circuit breaker state per model, the worst live worker: closed (calls flow), half-open "
                     "(a probe is let through), open (calls are skipped until the reset timeout and a probe)."),
    timeseries("Backend errors by kind", [prom(
        f"sum by (model, outcome) (rate(llm_router_backend_requests_total{FAILED}[{RATE}]))",
        "{{model}} {{outcome}}")], unit="ops", stack=True, w=8, explore=True,
        description="Backend calls that did not succeed, per second, by model and outcome (server_error, "
                    "timeout, rate_limited, connection_error, bad_response, client_error; cancelled: the "
                    "client left mid-stream)."),
    timeseries("Calls not attempted", [prom(
        f"sum by (model, reason) (rate(llm_router_backend_rejections_total{MODEL}[{RATE}]))",
        "{{model}} {{reason}}")], unit="ops", stack=True, w=8,
        description="Backend calls skipped per second: circuit_open, or saturated (no concurrency slot within "
                    "the queue timeout)."),
    timeseries("Fallbacks", [prom(
        f"sum by (from_model, to_model) (rate(llm_router_fallbacks_total{FROM}[{RATE}]))",
        "{{from_model}} → {{to_model}}")], unit="ops", w=8, explore=True,
        description="Requests moved from a failing backend to the next candidate, per second, from the "
                    "selected models."),
    timeseries("Retries", [per_model(f"sum by (model) (rate(llm_router_retries_total{MODEL}[{RATE}]))")],
               unit="ops", w=8,
               description="Retries of a backend call on the same backend, per second."),
    timeseries("Queue depth", [per_model(f"sum by (model) (llm_router_backend_queue_depth{MODEL})")],
               unit="short", w=8,
               description="Requests waiting for a free backend slot, summed over workers and instances."),
    timeseries("Backend calls in flight", [per_model(f"sum by (model) (llm_router_backend_in_flight{MODEL})")],
               unit="short", w=8,
               description="Backend calls in progress, summed over workers and instances (the limit is the "
                           "model's max_concurrency per worker)."),
])
