"""Models and backends: traffic, latency, quality, tokens, the resilience machinery and health probes per model."""

from common import (APDEX, RATE, SLO, THRESHOLDS, dashboard, heatmap, prom, router, row, stat, steps, timeseries,
                    value_map)

SLOW = SLO["latency"]["threshold_seconds"]
MODEL = router(model=True)
RULES = router(model=True, instance=False)  # the model: recording rules keep only job and model
OUTPUT = router('type="output"', model=True)
FAILED = router('outcome!="success"', model=True)
FROM = router('from_model=~"$model"')  # fallbacks have from_model/to_model, not model
FEEDBACK = router(tenant=True, model=True)
POSITIVE_FLOOR = THRESHOLDS["feedback_positive_ratio"]


def rule(name: str, legend: str):
    return prom(f"model:{name}{RULES}", legend)


def quantile(q: float, metric: str, by: str = "", selector: str = MODEL, exemplar: bool = False, legend: str = ""):
    grouping = ", ".join([*filter(None, [by]), "le"])
    return prom(f"histogram_quantile({q}, sum by ({grouping}) (rate({metric}_bucket{selector}[{RATE}])))",
                legend, exemplar=exemplar)


def per_model(expr: str):
    return prom(expr, "{{model}}")


dashboard = dashboard("models", "Per model: traffic, latency, time to first token, quality (Apdex, user feedback, "
                                "finish reasons), tokens, backend errors, circuit breakers, fallbacks, retries, "
                                "queues, health probes, load times and the router's own overhead.", [
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

    row("Quality: satisfaction, feedback and finish reasons"),
    timeseries("Apdex by model", [rule("llm_router_apdex:ratio_rate5m", "{{model}}")], unit="short",
               thresholds=steps("green", (APDEX["floor"], "orange")), explore=True,
               description=f"Apdex over 5 minutes (recording rule): (answers within {APDEX['satisfied_seconds']:g} s "
                           f"+ half of those within {APDEX['tolerating_seconds']:g} s) / answers, from each model's "
                           "end-to-end latency of answered chat requests. 1 is every user satisfied, 0 every user "
                           f"frustrated. Dashed: the floor of the per-tenant ApdexLow alert ({APDEX['floor']:g})."),
    timeseries("Positive feedback ratio by model", [rule("llm_router_feedback_positive:ratio_rate1h", "{{model}}")],
               unit="percentunit", thresholds=steps("green", (POSITIVE_FLOOR, "orange")), explore=True,
               description="Share of the last hour's feedback (POST /v1/feedback) on each model that is positive "
                           "(a score of 0.5 or more; recording rule); no line without feedback. Dashed: the "
                           f"FeedbackPositiveRatioLow floor ({POSITIVE_FLOOR:.0%}, which also needs at least "
                           f"{THRESHOLDS['feedback_min_per_hour']:g} ratings an hour)."),
    timeseries("Feedback per hour by model", [prom(
        f"sum by (model, rating) (rate(llm_router_feedback_total{FEEDBACK}[{RATE}])) * 3600", "{{model}} {{rating}}")],
        unit="short", w=8, stack=True,
        description="Feedback received per hour at the current rate, by the model that answered the rated "
                    "request and the rating (positive: score of 0.5 or more), for the selected tenants."),
    heatmap("Feedback score distribution", [prom(
        f"sum by (le) (rate(llm_router_feedback_score_bucket{MODEL}[{RATE}]))", "{{le}}")],
        unit="short", cell_unit="ops", w=8,
        description="Feedback scores (0 to 1: thumbs down is 0, thumbs up 1) per second in each score bucket, for "
                    "the selected models. Scores piling up at 0 are outright rejections; a spread to the middle "
                    "is lukewarm answers."),
    timeseries("Finish reasons by model", [prom(
        f"sum by (model, reason) (rate(llm_router_finish_reasons_total{MODEL}[{RATE}]))", "{{model}} {{reason}}")],
        unit="reqps", w=8, stack=True, explore=True,
        description="How each chat request that got past validation ended, per second: stop (complete answer), "
                    "length (cut at max_tokens), content_filter, tool_calls, error (5xx, 429, a stream failed "
                    "mid-way), cancelled (the client left), other."),
    timeseries("Finish reason shares by model", [prom(
        f"model_reason:llm_router_finish_reasons:ratio_rate5m{RULES}", "{{model}} {{reason}}")],
        unit="percentunit", w=24,
        description="Each finish reason's share of a model's chat requests over 5 minutes (recording rule). "
                    "Rising length means truncated answers, content_filter filtered ones: both lower user "
                    "satisfaction without any error."),

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
    stat("Backend health probes", [per_model(f"min by (model) (llm_router_backend_up{MODEL})")],
         unit="none", w=24, h=4, graph=False, text_mode="value_and_name", color_mode="background",
         thresholds=steps("red", (1, "green")),
         mappings=[value_map(("0", "down", "red"), ("1", "up", "green"))],
         description="Whether the last health probe of each model's backend succeeded, the worst live worker "
                     "(each process probes every backend in the background)."),
    timeseries("Health probe duration p95 by model", [quantile(
        0.95, "llm_router_backend_probe_duration_seconds", "model", legend="{{model}}")], unit="s",
        description="95th percentile duration of the backends' health probes (successful and failed), by model. "
                    "A probe slower than its timeout fails."),
    timeseries("Model and config load time", [
        quantile(0.95, "llm_router_model_load_duration_seconds", "model", legend="{{model}} p95"),
        quantile(0.95, "llm_router_config_load_duration_seconds", selector=router(), legend="whole configuration p95"),
    ], unit="s",
        description="How long building each model's backend took, and loading and validating the whole "
                    "configuration and building the app, when a process started or reloaded (95th percentile "
                    "over the rate interval). Points appear only around (re)loads: no line in between is "
                    "normal."),
])
