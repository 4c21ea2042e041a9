"""Overview: is the router healthy? Traffic, errors, latency, SLOs, Apdex, its processes and firing alerts."""

from common import (ALERTMANAGER, APDEX, CONFIG, PROMETHEUS, RATE, SLO, apdex, dashboard, explore, g, prom, router,
                    row, share, stat, steps, table, timeseries)

AVAILABILITY, LATENCY = SLO["availability"]["target"], SLO["latency"]["target"]
SLOW = SLO["latency"]["threshold_seconds"]
ERROR_BUDGET, SLOW_BUDGET = round(1 - AVAILABILITY, 9), round(1 - LATENCY, 9)  # allowed shares of bad requests
ERRORS, VALID = 'code=~"5..|429"', 'code=~"2..|5..|429"'
RULES = router(instance=False)  # the SLO recording rules keep only `job`

chat = f"llm_router_chat_requests_total{router(tenant=True, model=True)}"
error_ratio = share(
    f"sum(rate(llm_router_chat_requests_total{router(ERRORS, tenant=True, model=True)}[{RATE}]))",
    f"sum(rate(llm_router_chat_requests_total{router(VALID, tenant=True, model=True)}[{RATE}]))",
)
latency = f"llm_router_chat_request_duration_seconds_bucket{router(model=True)}"


# Apdex of every answered chat request (the chat histogram: filtered by model, not tenant).
APDEX_EXPR = apdex("llm_router_chat_request_duration_seconds", model=True)
APDEX_STEPS = steps("red", (0.5, "orange"), (APDEX["floor"], "yellow"), (0.85, "green"))  # Apdex's usual bands
APDEX_TEXT = (f"Apdex of answered chat requests: (answers within {APDEX['satisfied_seconds']:g} s + half of those "
              f"within {APDEX['tolerating_seconds']:g} s) / answers; 1 is every user satisfied, 0.5 every user "
              "tolerating, 0 every user frustrated. Errors are not in it (see the error ratio).")
PROCESS = router()  # llm_router_process_*: one series per serving process (labels pid and role)
# On Kubernetes, kube-state-metrics (which kube-prometheus-stack runs) describes the router's
# Deployment and HorizontalPodAutoscaler (deploy/kubernetes/base); elsewhere these series do
# not exist and the panels show no data.
KSM_DEPLOYMENT = '{deployment="llm-router"}'
KSM_HPA = '{horizontalpodautoscaler="llm-router"}'
KSM_NOTE = ("From kube-state-metrics on Kubernetes (deploy/kubernetes); no data where the router does not run "
            "on Kubernetes (compose).")
BY_PROCESS = "{{role}} {{pid}}"


def quantile(q: float) -> str:
    return f"histogram_quantile({q}, sum by (le) (rate({latency}[{RATE}])))"


def burn_rate(slo: str, budget: float) -> list:
    """The SLO's error ratio over the alerts' windows, as multiples of the allowed ratio."""
    return [prom(f"job:llm_router_slo_{slo}:ratio_rate{w}{RULES} / {budget:.6g}", w) for w in ("5m", "1h", "6h")]


# Dashed lines at the burn rates of the multi-window alerts (config.yaml `burn_rates:`).
BURN_STEPS = steps("green", *sorted((window["factor"], "red" if severity == "critical" else "orange")
                                    for severity, alert in CONFIG["burn_rates"].items() for window in alert["windows"]))


def firing(severity: str = "") -> str:
    """Prometheus's ALERTS series of firing alerts, less Watchdog (which always fires)."""
    matchers = ['alertstate="firing"', 'alertname!="Watchdog"'] + ([f'severity="{severity}"'] if severity else [])
    return "ALERTS{" + ", ".join(matchers) + "}"


alert_links = [
    explore("Explore: firing alerts (Prometheus)", PROMETHEUS, [{"expr": 'ALERTS{alertstate="firing"}'}]),
    # No Explore link to the Alertmanager datasource: it has no query editor, so Explore
    # opens empty. Grafana's alert-groups view below is the way in.
    g.DashboardLink(title="Alertmanager alert groups", type="link", uri="/alerting/groups?alertmanager=Alertmanager",
                    icon="bolt", tooltip="Grafana's alerting view of the Alertmanager datasource", targetBlank=True),
]

dashboard = dashboard("overview", "Is the LLM router healthy: traffic, errors, latency, SLOs, user satisfaction "
                                  "(Apdex), its serving processes and firing alerts.", [
    row("Now"),
    stat("Chat requests", [prom(f"sum(rate({chat}[{RATE}]))")], unit="reqps", w=5,
         description="Chat completion requests per second, every status code, for the selected tenants, models "
                     "and instances."),
    stat("Error ratio", [prom(error_ratio)], unit="percentunit", decimals=2, w=5,
         thresholds=steps("green", (ERROR_BUDGET, "red")),
         description="Share of valid chat requests answered with a server error or 429 (the availability SLO's "
                     "definition: other 4xx and cancelled streams are not errors). Red above the error budget "
                     f"({ERROR_BUDGET:.2%})."),
    stat("p95 latency", [prom(quantile(0.95))], unit="s", w=5, thresholds=steps("green", (SLOW, "red")),
         description=f"95th percentile of answered chat requests' end-to-end latency. Red above the latency SLO "
                     f"threshold ({SLOW} s). Not filtered by tenant (the histogram has no tenant label)."),
    stat("In flight", [prom(f"sum(llm_router_http_requests_in_flight{router()})")], unit="short", w=4,
         description="HTTP requests being served right now (a scrape counts itself)."),
    stat("Firing alerts", [prom(f"count({firing(s)}) or vector(0)", s) for s in ("critical", "warning")],
         unit="short", w=5, graph=False, text_mode="value_and_name", thresholds=steps("green", (1, "red")),
         links=alert_links,
         description="Alerts firing now in Prometheus, by severity (Watchdog, which always fires, left out)."),

    row("Service level objectives (30 days)"),
    stat("Availability", [prom(f"1 - job:llm_router_slo_errors:ratio_rate30d{RULES}")], unit="percentunit",
         decimals=3, graph=False, thresholds=steps("red", (AVAILABILITY, "green")),
         description=f"Share of valid chat requests answered without a server error or 429 over 30 days "
                     f"(recording rule). Target {AVAILABILITY:.2%}."),
    stat("Latency SLO", [prom(f"1 - job:llm_router_slo_slow_requests:ratio_rate30d{RULES}")], unit="percentunit",
         decimals=3, graph=False, thresholds=steps("red", (LATENCY, "green")),
         description=f"Share of answered chat requests faster than {SLOW} s over 30 days (recording rule). "
                     f"Target {LATENCY:.2%}."),
    stat("Availability error budget left", [prom(f"job:llm_router_slo_availability_budget_remaining:ratio30d{RULES}")],
         unit="percentunit", decimals=1, thresholds=steps("red", (0.25, "orange"), (0.5, "green")),
         description="Share of the 30-day availability error budget not yet spent; negative when the SLO is "
                     "missed."),
    stat("Latency error budget left", [prom(f"job:llm_router_slo_latency_budget_remaining:ratio30d{RULES}")],
         unit="percentunit", decimals=1, thresholds=steps("red", (0.25, "orange"), (0.5, "green")),
         description="Share of the 30-day latency error budget (slow requests) not yet spent; negative when the "
                     "SLO is missed."),
    timeseries("Availability burn rate", burn_rate("errors", ERROR_BUDGET), unit="suffix:x", thresholds=BURN_STEPS,
               description="Error ratio divided by the error budget (1x spends exactly the budget in 30 days). "
                           "Dashed lines: the burn rates of the ErrorBudgetBurnFast/Slow alerts."),
    timeseries("Latency burn rate", burn_rate("slow_requests", SLOW_BUDGET), unit="suffix:x", thresholds=BURN_STEPS,
               description=f"Share of requests slower than {SLOW} s divided by the latency budget. Dashed lines: "
                           "the burn rates of the LatencyBudgetBurnFast/Slow alerts."),

    row("User satisfaction (Apdex)"),
    stat("Apdex", [prom(APDEX_EXPR)], unit="short", decimals=2, w=6, h=8, thresholds=APDEX_STEPS,
         description=f"{APDEX_TEXT} For the selected models and instances, over the rate interval. Red below 0.5 "
                     f"(poor), orange below the ApdexLow floor ({APDEX['floor']:g}), yellow below 0.85, green "
                     "from 0.85 (good). The alert itself is per tenant over 1 hour (Tenants dashboard)."),
    timeseries("Apdex", [prom(APDEX_EXPR, "Apdex")], unit="short", w=18,
               thresholds=steps("green", (APDEX["floor"], "orange")), explore=True,
               description=f"{APDEX_TEXT} Dashed: the ApdexLow floor ({APDEX['floor']:g}; that alert reads each "
                           "tenant's 1-hour score)."),

    row("Traffic"),
    timeseries("Chat requests by status code", [prom(f"sum by (code) (rate({chat}[{RATE}]))", "{{code}}")],
               unit="reqps", stack=True, explore=True,
               description="Chat completion requests per second by status code (499: client left a stream; 502 "
                           "also counts streams that failed mid-way)."),
    timeseries("Error ratio", [prom(error_ratio, "errors")], unit="percentunit", explore=True,
               thresholds=steps("green", (ERROR_BUDGET, "red")),
               description="Server errors and 429s over valid chat requests. Dashed: the share the availability "
                           "SLO allows."),
    timeseries("Latency quantiles", [prom(quantile(0.5), "p50"), prom(quantile(0.95), "p95"),
                                     prom(quantile(0.99), "p99", exemplar=True)],
               unit="s", explore=True, thresholds=steps("green", (SLOW, "red")),
               description="End-to-end latency of answered chat requests (streams until the last byte). Exemplar "
                           "dots link to the trace (single-process router only). Dashed: the latency SLO threshold."),
    timeseries("In flight and queued", [
        prom(f"sum(llm_router_http_requests_in_flight{router()})", "HTTP requests in flight"),
        prom(f"sum(llm_router_backend_in_flight{router(model=True)})", "backend calls in flight"),
        prom(f"sum(llm_router_backend_queue_depth{router(model=True)})", "waiting for a backend slot"),
    ], unit="short",
        description="Concurrency now: HTTP requests being served, backend calls running, and requests waiting for "
                    "a free backend slot (a growing queue means saturation)."),

    row("Router processes"),
    timeseries("Resident memory", [prom(f"llm_router_process_resident_memory_bytes{PROCESS}", BY_PROCESS)],
               unit="bytes", w=8,
               description="Resident memory (RSS) of each serving process: the gunicorn master and every live "
                           "worker (role single: the router outside gunicorn). A steady climb is a leak; a worker "
                           "restarted by gunicorn appears with a new pid."),
    timeseries("CPU", [prom(f"rate(llm_router_process_cpu_seconds_total{PROCESS}[{RATE}])", BY_PROCESS)],
               unit="percentunit", w=8,
               description="CPU time (user and system) of each serving process per second: 100% is one core. "
                           "Workers near 100% are CPU-bound (Python runs one core per process)."),
    timeseries("Open file descriptors (share of the limit)", [prom(
        f"llm_router_process_open_fds{PROCESS}\n/\nllm_router_process_max_fds{PROCESS}", BY_PROCESS)],
        unit="percentunit", w=8, thresholds=steps("green", (0.8, "orange")),
        description="Open file descriptors of each serving process over its soft limit (sockets, files, the "
                    "multiprocess metric files). At 100% the process cannot accept connections. Dashed: 80%."),
    timeseries("Threads", [prom(f"llm_router_process_threads{PROCESS}", BY_PROCESS)], unit="short", w=8,
               description="OS threads of each serving process (gunicorn's worker threads, the health-probe and "
                           "exporter threads)."),
    stat("Uptime", [prom(f"time() - llm_router_process_start_time_seconds{PROCESS}", BY_PROCESS)], unit="s",
         w=8, h=8, graph=False, text_mode="value_and_name",
         description="Time since each serving process started. A worker much younger than the master was "
                     "restarted (a crash, a timeout kill or max_requests)."),
    timeseries("Garbage collections", [prom(
        f"sum by (role, pid, generation) (rate(llm_router_process_gc_collections_total{PROCESS}[{RATE}]))",
        "{{role}} {{pid}} gen {{generation}}")], unit="ops", w=8,
        description="Python garbage-collector runs per second, by process and generation. Frequent generation-2 "
                    "collections cost latency (they walk every object)."),

    row("Kubernetes: replicas and autoscaling"),
    timeseries("Replicas", [
        prom(f"sum by (namespace) (kube_deployment_spec_replicas{KSM_DEPLOYMENT})", "{{namespace}} wanted"),
        prom(f"sum by (namespace) (kube_deployment_status_replicas_available{KSM_DEPLOYMENT})",
             "{{namespace}} available"),
    ], unit="short", w=9, description=f"Router replicas the Deployment wants and those available (ready long "
                                      f"enough), per namespace. {KSM_NOTE}"),
    timeseries("Autoscaler", [
        prom(f"sum by (namespace) (kube_horizontalpodautoscaler_status_current_replicas{KSM_HPA})",
             "{{namespace}} current"),
        prom(f"sum by (namespace) (kube_horizontalpodautoscaler_status_desired_replicas{KSM_HPA})",
             "{{namespace}} desired"),
        prom(f"sum by (namespace) (kube_horizontalpodautoscaler_spec_max_replicas{KSM_HPA})", "{{namespace}} max"),
    ], unit="short", w=9, description=f"The HorizontalPodAutoscaler's current and desired replicas and its "
                                      f"ceiling: desired above current is a scale-up under way, desired at max "
                                      f"means it cannot add more. {KSM_NOTE}"),
    stat("Scaling decisions", [prom(f"sum(changes(kube_horizontalpodautoscaler_status_desired_replicas{KSM_HPA}"
                                    "[$__range]))")],
         unit="short", w=6, h=8, graph=False,
         description=f"How many times the autoscaler changed its desired replica count over the time range. "
                     f"{KSM_NOTE}"),

    row("Alerts"),
    table("Firing alerts", [prom(f"count by (alertname, severity) ({firing()})", table=True)],
          unit="short", w=24, h=7, sort_by="firing series", links=alert_links,
          transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True},
                                                           "renameByName": {"Value": "firing series"}}}],
          description="Alerts firing now, from Prometheus's ALERTS series (Alertmanager holds silences and "
                      "routing: see the panel links). Watchdog, which always fires, is left out."),
])
