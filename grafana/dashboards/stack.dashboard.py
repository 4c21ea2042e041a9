"""Stack health: each component of the observability stack, from its own metrics, and the
router's state: its state store (SQLite or PostgreSQL), its charge journals and the shared
PostgreSQL behind the replicas (postgres_exporter).

Every metric of a component is listed in prometheus/stack-metrics.yaml; the router's are in
docs/metrics.md. postgres_exporter's counters have no `_total` suffix (they are counters
all the same: every one is read through rate() or increase()). Jaeger v2 is an
OpenTelemetry Collector: whether its counters end in `_total` depends on the collector's
metrics pipeline (Jaeger 2.19, collector v0.153 with explicit readers, exposes them without
it; other releases with it), so they are matched with a __name__ regex, as
prometheus/rules/stack-alerts.yml does.
"""

from common import RATE, THRESHOLDS, dashboard, job, prom, router, row, share, stat, steps, timeseries, value_map

UP = value_map(("0", "down", "red"), ("1", "up", "green"))
LOKI, LOKI_5XX = job("loki"), job("loki", 'status_code=~"5.."')
LOKI_REQUESTS = f"sum by (route) (rate(loki_request_duration_seconds_count{LOKI}[{RATE}]))"
LOKI_ERRORS = f"sum by (route) (rate(loki_request_duration_seconds_count{LOKI_5XX}[{RATE}]))"


def rate(metric: str, by: str, component: str, *matchers: str, legend: str = ""):
    return prom(f"sum by ({by}) (rate({metric}{job(component, *matchers)}[{RATE}]))", legend or f"{{{{{by}}}}}")


# The router's state store and its journals (service/src/llm_router/ledger.py, state.py).
STORE_OPS = "llm_router_state_operation_duration_seconds"
STATE_NOTE = ("Operations: apply (a batch of charges, every 50 ms per process), read_spend (every 0.5 s), "
              "read_faults, write_faults, feedback, prune, read_charges.")


def store_quantile(q: str):
    return prom(f"histogram_quantile({q}, sum by (instance, operation, le) "
                f"(rate({STORE_OPS}_bucket{router()}[{RATE}])))", f"{{{{instance}}}} {{{{operation}}}} p{q[2:]}")


# PostgreSQL through postgres_exporter: every database but the templates (and the shared
# catalog's nameless row that older exporters emit).
PG = job("postgres")
PG_DB = job("postgres", 'datname!~"|template0|template1"')
# Sessions inside a transaction: running one, or idle in one (`idle` is between transactions).
PG_OPEN = job("postgres", 'state=~"active|idle in transaction"')
PG_NOTE = "From postgres_exporter (compose profile scale); no data without it."


def pg_rate(metric: str, legend: str):
    return prom(f"sum by (datname) (rate({metric}{PG_DB}[{RATE}]))", legend)


def otelcol(name: str, by: str, legend: str):
    """An OpenTelemetry Collector counter under either name (with or without _total)."""
    return rate("", by, "jaeger", f'__name__=~"{name}(_total)?"', legend=legend)


dashboard = dashboard("stack", "The stack that stores and shows the router's signals: Prometheus, Alertmanager, "
                               "Loki, Fluent Bit, Jaeger and Grafana, each from its own metrics; the router's state "
                               "store and charge journals, and the PostgreSQL its replicas share.", [
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
               unit="cps", w=8,
               description="Log records each Fluent Bit output delivered per second."),
    timeseries("Output retries, failures and drops", [
        rate("fluentbit_output_retries_total", "name", "fluentbit", legend="{{name}} retries"),
        rate("fluentbit_output_retries_failed_total", "name", "fluentbit", legend="{{name}} retries exhausted"),
        rate("fluentbit_output_dropped_records_total", "name", "fluentbit", legend="{{name}} records dropped"),
    ], unit="ops", explore=True, w=8,
        description="Chunks retried, chunks whose retries ran out (their records are lost) and records dropped, "
                    "per second by output (FluentBitOutputRetriesFailing, FluentBitRecordsDropped)."),
    timeseries("Buffer free by output", [prom(
        f"min by (name) (fluentbit_output_chunk_available_capacity_percent{job('fluentbit')})", "{{name}}")],
        unit="percent", w=8, thresholds=steps("red", (THRESHOLDS["fluentbit_buffer_free_percent"], "green")),
        description="Free share of each output's filesystem buffer (storage.total_limit_size): it shrinks while "
                    "Loki is unreachable; at 0 Fluent Bit deletes the oldest chunks. Dashed: the "
                    "FluentBitBufferFilling threshold."),

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

    row("State store and journals"),
    stat("State store", [prom(f"min by (instance) (llm_router_state_store_up{router()})", "{{instance}}")],
         unit="none", w=6, h=8, graph=False, text_mode="value_and_name", color_mode="background",
         thresholds=steps("red", (1, "green")), mappings=[UP],
         description="Whether each router instance's state store takes its writes: down from a process's first "
                     "failed store operation until one succeeds again (the worst process of the instance). "
                     f"StateStoreDown pages after {THRESHOLDS['state_store_down_for']} down."),
    timeseries("State-store latency p50 / p99 by operation", [store_quantile("0.50"), store_quantile("0.99")],
               unit="s", w=18, thresholds=steps("green", (THRESHOLDS["state_store_p99_seconds"], "red")),
               description="How long one state-store operation takes (failed ones included), by instance and "
                           f"operation. {STATE_NOTE} Dashed: the StateStoreSlow threshold for p99."),
    timeseries("State-store operations by operation", [prom(
        f"sum by (instance, operation) (rate({STORE_OPS}_count{router()}[{RATE}]))", "{{instance}} {{operation}}")],
        unit="ops", w=8,
        description=f"State-store operations per second, by instance and operation. {STATE_NOTE}"),
    timeseries("State-store errors by operation", [prom(
        f"sum by (instance, operation) (rate(llm_router_state_errors_total{router()}[{RATE}]))",
        "{{instance}} {{operation}}")],
        unit="ops", w=8, explore=True, thresholds=steps("green", (0.0001, "red")),
        description="Failed state-store operations per second (unwritable or full SQLite file, PostgreSQL down): "
                    "charges wait in the journals meanwhile. StateStoreErrors fires when over "
                    f"{THRESHOLDS['state_store_error_ratio']:.0%} of an operation's calls fail."),
    timeseries("Charges waiting to be stored", [prom(
        f"sum by (instance) (llm_router_ledger_waiting_charges{router()})", "{{instance}}")],
        unit="short", w=8,
        description="Charges in the processes' journals that the store has not taken yet: a few normally (the "
                    "journals drain every 50 ms), growing while the store fails. Nothing is lost while they wait."),
    timeseries("Journal fill", [prom(
        f"sum by (instance) (llm_router_ledger_journal_slots_in_use{router()})\n/\n"
        f"sum by (instance) (llm_router_ledger_journal_slots{router()})", "{{instance}}")],
        unit="percentunit", w=8, thresholds=steps("green", (THRESHOLDS["journal_fill_ratio"], "red")),
        description="Share of each instance's journal slots taken by requests in flight and charges not stored "
                    "yet. At 100% a process refuses chat requests with 503. Dashed: the LedgerJournalFilling "
                    "threshold."),
    timeseries("Requests refused: journal full", [prom(
        f"sum by (instance) (rate(llm_router_ledger_full_total{router()}[{RATE}]))", "{{instance}}")],
        unit="reqps", w=8, thresholds=steps("green", (0.0001, "red")),
        description="Chat requests refused with 503 (state_store_unavailable) per second because a journal had no "
                    "free slot: a request that could not be charged is not served (LedgerJournalFull)."),
    timeseries("Charges recovered from killed processes", [prom(
        f"sum by (instance, slot) (increase(llm_router_ledger_recovered_charges_total{router()}[{RATE}]))",
        "{{instance}} {{slot}}")],
        unit="short", w=8,
        description="Charges of processes that died without a graceful stop (SIGKILL, OOM kill), replayed from "
                    "their journals by another process: open = streams cut short, final = finished requests not "
                    "yet counted. Nothing is lost, but something kills workers (LedgerChargesRecovered). The "
                    "series appear with a router's first recovery, which is therefore not drawn here; the alert "
                    "counts it."),

    row("PostgreSQL"),
    stat("PostgreSQL", [prom(f"min by (instance) (pg_up{PG})", "{{instance}}")], unit="none", w=4, h=8,
         graph=False, text_mode="value_and_name", color_mode="background", thresholds=steps("red", (1, "green")),
         mappings=[UP],
         description="Whether postgres_exporter reaches PostgreSQL, the state store the router replicas share "
                     f"(PostgresDown). {PG_NOTE}"),
    timeseries("Connections", [
        prom(f"sum by (datname) (pg_stat_database_numbackends{PG_DB})", "{{datname}}"),
        prom(f"max(pg_settings_max_connections{PG} - pg_settings_superuser_reserved_connections{PG})", "allowed"),
    ], unit="short", w=10, stack=False,
        description="Backends connected to each database, and the connections ordinary users may open "
                    f"(max_connections less the superuser reserve); PostgresTooManyConnections fires over "
                    f"{THRESHOLDS['postgres_connections_ratio']:.0%}. Each router process holds its own. {PG_NOTE}"),
    timeseries("Transactions per second", [
        pg_rate("pg_stat_database_xact_commit", "{{datname}} commits"),
        pg_rate("pg_stat_database_xact_rollback", "{{datname}} rollbacks"),
    ], unit="ops", w=10,
        description="Transactions committed and rolled back per second by database. The router commits one "
                    f"transaction per process every 50 ms while it has charges to store. {PG_NOTE}"),
    timeseries("Rows written per second", [
        pg_rate("pg_stat_database_tup_inserted", "{{datname}} inserted"),
        pg_rate("pg_stat_database_tup_updated", "{{datname}} updated"),
        pg_rate("pg_stat_database_tup_deleted", "{{datname}} deleted"),
    ], unit="ops", w=8,
        description="Rows inserted, updated and deleted per second by database: the router inserts one ledger "
                    "row per charge and updates each charged tenant's spend once per batch; pruning deletes "
                    f"old answers. {PG_NOTE}"),
    timeseries("Cache hit ratio", [prom(
        f"sum by (datname) (rate(pg_stat_database_blks_hit{PG_DB}[{RATE}]))\n/\n(\n"
        f"  sum by (datname) (rate(pg_stat_database_blks_hit{PG_DB}[{RATE}]))\n  +\n"
        f"  sum by (datname) (rate(pg_stat_database_blks_read{PG_DB}[{RATE}]))\n  > 0\n)", "{{datname}}")],
        unit="percentunit", w=8, thresholds=steps("red", (0.9, "green")),
        description="Share of block reads served from PostgreSQL's shared buffers rather than the disk (or the "
                    f"OS cache), by database; no value while a database reads nothing. {PG_NOTE}"),
    timeseries("Deadlocks", [prom(f"sum by (datname) (increase(pg_stat_database_deadlocks{PG_DB}[{RATE}]))",
                                  "{{datname}}")],
               unit="short", w=8, thresholds=steps("green", (0.5, "red")),
               description="Deadlocks PostgreSQL detected (and broke by aborting a transaction) per interval, by "
                           f"database. {PG_NOTE}"),
    timeseries("Longest open transaction", [prom(
        f"max by (datname, state) (pg_stat_activity_max_tx_duration{PG_OPEN})", "{{datname}} {{state}}")],
        unit="s", w=12, thresholds=steps("green", (THRESHOLDS["postgres_transaction_seconds"], "red")),
        description="Age of the oldest transaction running, or idle inside a transaction, by database: it holds "
                    "its locks and keeps vacuum from cleaning up. Dashed: the PostgresLongTransaction threshold. "
                    f"{PG_NOTE}"),
    timeseries("Database size", [prom(f"max by (datname) (pg_database_size_bytes{PG_DB})", "{{datname}}")],
               unit="bytes", w=12,
               description="Disk space of each database. The router's holds the ledger of charged requests for "
                           "feedback.retention_hours (older rows are pruned) and each tenant's monthly spend. "
                           f"{PG_NOTE}"),
])
