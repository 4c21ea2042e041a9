"""Routing and cache: which model each strategy picks and why, fallbacks, and the response cache."""

from common import RATE, THRESHOLDS, dashboard, prom, router, row, stat, steps, timeseries

DECISIONS = f"llm_router_routing_decisions_total{router(model=True)}"
CACHE = router(tenant=True)
HITS, LOOKUPS = router('result="hit"', tenant=True), router('result=~"hit|miss"', tenant=True)
RULES = router(instance=False)  # job: recording rules keep only `job`

dashboard = dashboard("routing", "How requests are routed: decisions by strategy and reason, the models chosen, "
                                 "fallbacks, and how well the response cache works.", [
    row("Routing"),
    timeseries("Decisions by strategy and reason", [prom(
        f"sum by (strategy, reason) (rate({DECISIONS}[{RATE}]))", "{{strategy}} / {{reason}}")],
        unit="ops", stack=True, explore=True,
        description="Successful routing decisions per second: requested (a named model), fallback, or the "
                    "strategy's first choice (best_score, lowest_cost, lowest_latency, highest_quality)."),
    timeseries("Models chosen by strategy", [prom(
        f"sum by (strategy, model) (rate({DECISIONS}[{RATE}]))", "{{strategy}} → {{model}}")],
        unit="ops", stack=True, explore=True,
        description="Which model answered, per strategy, in decisions per second."),
    timeseries("Chat requests by strategy", [prom(
        f"sum by (strategy) (rate(llm_router_chat_requests_total{router(tenant=True, model=True)}[{RATE}]))",
        "{{strategy}}")], unit="reqps", stack=True,
        description="Chat requests per second by routing strategy (X-Route-Strategy, or the configured default), "
                    "every status code."),
    timeseries("Fallback ratio", [prom(f"job:llm_router_fallbacks:ratio_rate5m{RULES}", "fallbacks per request")],
               unit="percentunit", thresholds=steps("green", (THRESHOLDS["fallback_ratio"], "orange")),
               description="Fallbacks per chat request over 5 minutes (recording rule; all tenants and models). "
                           "Dashed: the FallbackRateHigh threshold."),

    row("Response cache"),
    stat("Hit ratio", [prom(f"job:llm_router_cache_hits:ratio_rate30m{RULES}", "30 minutes"),
                       prom(f"job:llm_router_cache_hits:ratio_rate1d{RULES}", "1 day")],
         unit="percentunit", decimals=1, w=8, text_mode="value_and_name",
         description="Hits over hits and misses (bypasses left out), over 30 minutes and over a day (recording "
                     "rules; all tenants). CacheHitRatioCollapsed fires when the first falls below "
                     f"{THRESHOLDS['cache_hit_ratio_drop']:.0%} of the second."),
    stat("Cache entries", [prom(f"sum(llm_router_cache_entries{router()})")], unit="short", w=8,
         description="Entries in the response cache, summed over workers (expired entries count until evicted or "
                     "looked up)."),
    stat("Lookups", [prom(f"sum(rate(llm_router_cache_requests_total{CACHE}[{RATE}]))")], unit="ops", w=8,
         description="Cache decisions per second (hit, miss or bypass) for the selected tenants."),
    timeseries("Hit ratio", [
        prom(f"sum(rate(llm_router_cache_requests_total{HITS}[{RATE}]))\n/\n"
             f"sum(rate(llm_router_cache_requests_total{LOOKUPS}[{RATE}]))", "hit ratio"),
        prom(f"job:llm_router_cache_hits:ratio_rate1d{RULES}", "1-day average"),
        prom(f"{THRESHOLDS['cache_hit_ratio_drop']} * job:llm_router_cache_hits:ratio_rate1d{RULES}", "alert line"),
    ], unit="percentunit", w=8, explore=True,
        description="Hits over hits and misses for the selected tenants, against the 1-day average and the "
                    "CacheHitRatioCollapsed line (a share of that average)."),
    timeseries("Lookups by result", [prom(
        f"sum by (result) (rate(llm_router_cache_requests_total{CACHE}[{RATE}]))", "{{result}}")],
        unit="ops", w=8, stack=True, explore=True,
        description="Cache decisions per second: hit, miss, or bypass (streams and Cache-Control: no-cache or "
                    "no-store)."),
    timeseries("Cache entries", [prom(f"sum(llm_router_cache_entries{router()})", "entries")], unit="short", w=8,
               description="Entries in the response cache over time, summed over workers and instances."),
])
