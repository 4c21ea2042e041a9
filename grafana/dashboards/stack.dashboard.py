"""Stack health: each component of the observability stack, from its own metrics.

Every metric here is listed in prometheus/stack-metrics.yaml. Jaeger v2 is an
OpenTelemetry Collector: whether its counters end in `_total` depends on the collector's
metrics pipeline (Jaeger 2.19, collector v0.153 with explicit readers, exposes them without
it; other releases with it), so they are matched with a __name__ regex, as
prometheus/rules/stack-alerts.yml does.
"""

from common import RATE, THRESHOLDS, dashboard, job, prom, row, share, stat, steps, timeseries, value_map

UP = value_map(("0", "down", "red"), ("1", "up", "green"))
LOKI, LOKI_5XX = job("loki"), job("loki", 'status_code=~"5.."')
LOKI_REQUESTS = f"sum by (route) (rate(loki_request_duration_seconds_count{LOKI}[{RATE}]))"
LOKI_ERRORS = f"sum by (route) (rate(loki_request_duration_seconds_count{LOKI_5XX}[{RATE}]))"


def rate(metric: str, by: str, component: str, *matchers: str, legend: str = ""):
    return prom(f"sum by ({by}) (rate({metric}{job(component, *matchers)}[{RATE}]))", legend or f"{{{{{by}}}}}")


def otelcol(name: str, by: str, legend: str):
    """An OpenTelemetry Collector counter under either name (with or without _total)."""
    return rate("", by, "jaeger", f'__name__=~"{name}(_total)?"', legend=legend)


dashboard = dashboard("stack", "The stack that stores and shows the router's signals: Prometheus, Alertmanager, "
                               "Loki, Fluent Bit, Jaeger and Grafana, each from its own metrics.", [
    row("Scrape targets"),
    stat("Targets", [prom("min by (job) (up)", "{{job}}")], unit="none", w=24, h=4, graph=False,
         text_mode="value_and_name", color_mode="background", thresholds=steps("red", (1, "green")), mappings=[UP],
         description="Whether Prometheus's last scrape of each job succeeded (the worst instance of each job). "
                     f"TargetDown fires after {THRESHOLDS['target_down_for']} down."),
    timeseries("Scrape duration by job", [prom("max by (job) (scrape_duration_seconds)", "{{job}}")], unit="s",
               description="How long the slowest target of each job took to scrape (the scrape timeout is 10 s)."),
    timeseries("Samples scraped by job", [prom("sum by (job) (scrape_samples_scraped)", "{{job}}")], unit="short",
               description="Samples each job exposes per scrape: a jump means new series (cardinality)."),

    row("Prometheus"),
    timeseries("Rule evaluation failures", [rate("prometheus_rule_evaluation_failures_total", "rule_group",
                                                 "prometheus")],
               unit="ops", explore=True, thresholds=steps("green", (0.0001, "red")),
               description="Failed rule evaluations per second by rule group: recording rules and alerts from a "
                           "failing group may be missing (PrometheusRuleEvaluationFailures)."),
    timeseries("Rule group evaluation time", [prom(
        f"max by (rule_group) (prometheus_rule_group_last_duration_seconds{job('prometheus')})", "{{rule_group}}")],
        unit="s",
        description="How long the last evaluation of each rule group took; it must stay well under the "
                    "evaluation interval (15 s)."),

    row("Alertmanager"),
    timeseries("Notifications sent", [rate("alertmanager_notifications_total", "integration", "alertmanager")],
               unit="ops",
               description="Notification attempts per second by integration (webhook, email...)."),
    timeseries("Notifications failed", [rate("alertmanager_notifications_failed_total", "integration",
                                             "alertmanager")],
               unit="ops", explore=True, thresholds=steps("green", (0.0001, "red")),
               description="Failed notifications per second by integration: alerts may not reach anyone "
                           "(AlertmanagerNotificationsFailing)."),

    row("Loki"),
    timeseries("Loki requests by route", [rate("loki_request_duration_seconds_count", "route", "loki")],
               unit="reqps",
               description="Requests Loki serves per second, by route (pushes from Fluent Bit, queries from "
                           "Grafana)."),
    timeseries("Loki error ratio by route", [prom(share(LOKI_ERRORS, LOKI_REQUESTS), "{{route}}")],
        unit="percentunit", explore=True, thresholds=steps("green", (THRESHOLDS["loki_error_ratio"], "red")),
        description="Share of Loki requests answered with a 5xx, by route. Dashed: the LokiRequestErrors "
                    "threshold."),

    row("Fluent Bit"),
    timeseries("Records sent by output", [rate("fluentbit_output_proc_records_total", "name", "fluentbit")],
               unit="cps",
               description="Log records each Fluent Bit output delivered per second."),
    timeseries("Output retries, failures and drops", [
        rate("fluentbit_output_retries_total", "name", "fluentbit", legend="{{name}} retries"),
        rate("fluentbit_output_retries_failed_total", "name", "fluentbit", legend="{{name}} retries exhausted"),
        rate("fluentbit_output_dropped_records_total", "name", "fluentbit", legend="{{name}} records dropped"),
    ], unit="ops", explore=True,
        description="Chunks retried, chunks whose retries ran out (their records are lost) and records dropped, "
                    "per second by output (FluentBitOutputRetriesFailing, FluentBitRecordsDropped)."),

    row("Jaeger"),
    timeseries("Spans received", [
        otelcol("otelcol_receiver_accepted_spans", "receiver", "{{receiver}} accepted"),
        otelcol("otelcol_receiver_refused_spans", "receiver", "{{receiver}} refused"),
    ], unit="ops", explore=True,
        description="Spans Jaeger's receivers accepted and refused per second (refused spans are lost: "
                    "JaegerSpansRefused)."),
    timeseries("Spans stored", [
        otelcol("otelcol_exporter_sent_spans", "exporter", "{{exporter}} sent"),
        otelcol("otelcol_exporter_send_failed_spans", "exporter", "{{exporter}} failed"),
    ], unit="ops", explore=True,
        description="Spans Jaeger's storage exporter wrote and failed to write per second (JaegerSpansDropped)."),

    row("Grafana"),
    stat("Grafana", [prom(f"min(up{job('grafana')})")], unit="none", w=6, h=8, graph=False,
         color_mode="background", thresholds=steps("red", (1, "green")), mappings=[UP],
         description="Whether Prometheus can scrape Grafana (GrafanaDown)."),
    timeseries("Grafana HTTP requests by status", [rate("grafana_http_request_duration_seconds_count", "status_code",
                                                        "grafana")],
               unit="reqps", w=18,
               description="Requests Grafana serves per second by status code (dashboards, queries, the API)."),
], variables=())
