"""Tenants and cost: spend and cost per request per tenant and model, budgets, satisfaction and SLA compliance,
tokens, usage by hour of day, top tenants and their growth, cache savings."""

from common import (APDEX, RATE, SLO, THRESHOLDS, bargauge, dashboard, gauge, heatmap, prom, router, row, stat, steps,
                    table, timeseries)

TENANT = router(tenant=True)
COST = router(tenant=True, model=True)
TENANT_RULES = router(tenant=True, instance=False)  # tenant: recording rules keep only job and tenant
BUDGET_USED = f"tenant:llm_router_budget_used:ratio{TENANT_RULES}"
BUDGET_STEPS = steps("green", (THRESHOLDS["budget_warning_ratio"], "orange"), (1, "red"))
APDEX_STEPS = steps("red", (0.5, "orange"), (APDEX["floor"], "yellow"), (0.85, "green"))  # Apdex's usual bands
APDEX_TEXT = (f"(answers within {APDEX['satisfied_seconds']:g} s + half of those within "
              f"{APDEX['tolerating_seconds']:g} s) / answers, from the tenant's end-to-end latency of answered chat "
              "requests (errors are not in it)")
SLO_TEXT = (f"both objectives met: at most {1 - SLO['availability']['target']:.1%} errors (5xx, 429) and at most "
            f"{1 - SLO['latency']['target']:.0%} of answers slower than {SLO['latency']['threshold_seconds']:g} s")
SLA_STEPS = steps("red", (0.9, "orange"), (0.99, "green"))
GROWTH = f"tenant:llm_router_chat_requests:growth1d{TENANT_RULES}"


def by_hour(record: str, selector: str) -> str:
    """Each hour of day's latest figure over the last day (the hour rules yield only during
    their hour, so last_over_time picks the most recent day's value of each)."""
    return f"sum by (hour) (last_over_time({record}{selector}[1d]))"


def per_hour(by: str, metric: str, selector: str) -> str:
    """USD per hour: the per-second rate of a USD counter, times 3600."""
    return f"sum{f' by ({by})' if by else ''} (rate({metric}{selector}[{RATE}])) * 3600"


dashboard = dashboard("tenants", "Per tenant: what they spend and on which models, what a request costs, how "
                                 "much of their monthly budget is used, how satisfied their users are (Apdex) and "
                                 "how much of the time they were within SLO, their tokens, usage by hour of day "
                                 "and growth, and what the response cache saves them.", [
    row("Spend"),
    stat("Spend per hour", [prom(per_hour("", "llm_router_cost_usd_total", COST))], unit="currencyUSD", decimals=2,
         description="Cost of served requests at the configured prices, USD per hour at the current rate, for the "
                     "selected tenants and models."),
    stat("Saved by the cache per hour", [prom(per_hour("", "llm_router_cache_saved_usd_total", TENANT))],
         unit="currencyUSD", decimals=2,
         description="Backend cost avoided by answering from the response cache, USD per hour at the current rate."),
    stat("Tenants over budget", [prom(f"count({BUDGET_USED} >= 1) or vector(0)")], unit="short", graph=False,
         thresholds=steps("green", (1, "red")),
         description="Budgeted tenants whose month-to-date spend has reached their monthly budget (what happens "
                     "next depends on budgets.on_exhausted: reject with 402, or serve and flag)."),
    gauge("Highest budget use", [prom(f"max({BUDGET_USED})")], unit="percentunit", h=4, thresholds=BUDGET_STEPS,
          description="The largest share of its monthly budget that any selected tenant has spent this month."),
    timeseries("Spend per hour by tenant", [prom(per_hour("tenant", "llm_router_cost_usd_total", COST), "{{tenant}}")],
               unit="currencyUSD", stack=True, explore=True,
               description="USD per hour by tenant at the configured prices (cache hits cost nothing)."),
    timeseries("Spend per hour by model", [prom(per_hour("model", "llm_router_cost_usd_total", COST), "{{model}}")],
               unit="currencyUSD", stack=True, explore=True,
               description="USD per hour by the model that served the requests, for the selected tenants."),
    table("Spend per hour by tenant and model", [prom(per_hour("tenant, model", "llm_router_cost_usd_total", COST),
                                                      table=True)],
          unit="currencyUSD", w=24, sort_by="USD per hour",
          transformations=[{"id": "organize", "options": {"excludeByName": {"Time": True},
                                                           "renameByName": {"Value": "USD per hour"}}}],
          description="Current spend rate for each tenant and model pair, highest first."),
    timeseries("Cost per request by tenant and model", [prom(
        f"tenant_model:llm_router_cost_per_request_usd:ratio_rate1h{router(tenant=True, model=True, instance=False)}",
        "{{tenant}} / {{model}}")], unit="currencyUSD", w=24,
        description="Average cost of an answered chat request over the last hour, per tenant and the model that "
                    "answered (recording rule): spend over answered requests, cache hits (free) included. A rise "
                    "means longer prompts or answers, or a pricier model."),

    row("Satisfaction and SLA compliance"),
    timeseries("Apdex per tenant", [prom(f"tenant:llm_router_apdex:ratio_rate5m{TENANT_RULES}", "{{tenant}}")],
               unit="short", thresholds=steps("green", (APDEX["floor"], "orange")), explore=True,
               description=f"Apdex over 5 minutes (recording rule): {APDEX_TEXT}. 1 is every user satisfied, 0 "
                           f"every user frustrated. Dashed: the ApdexLow floor ({APDEX['floor']:g})."),
    bargauge("Apdex per tenant, last hour", [prom(f"tenant:llm_router_apdex:ratio_rate1h{TENANT_RULES}",
                                                  "{{tenant}}", instant=True)],
             unit="short", max=1, thresholds=APDEX_STEPS,
             description=f"Apdex over the last hour (recording rule), the score ApdexLow reads: it fires below "
                         f"{APDEX['floor']:g} for {APDEX['for']} when the tenant had at least "
                         f"{APDEX['min_requests_per_second']:g} answered requests a second. Red below 0.5, orange "
                         "below the floor, yellow below 0.85."),
    bargauge("SLA compliance over the dashboard's time range", [prom(
        f"avg_over_time(tenant:llm_router_slo_met:bool_rate5m{TENANT_RULES}[$__range])", "{{tenant}}",
        instant=True)], unit="percentunit", max=1, thresholds=SLA_STEPS,
        description=f"Share of the time range's rule evaluations (each over 5 minutes) in which the tenant had "
                    f"{SLO_TEXT}. Evaluations without a valid request from the tenant do not count. Red below "
                    "90%, green from 99%."),
    timeseries("SLA compliance, rolling day", [prom(f"tenant:llm_router_sla_compliance:ratio1d{TENANT_RULES}",
                                                    "{{tenant}}")],
               unit="percentunit", thresholds=steps("green", (0.99, "orange")),
               description=f"Share of the last 24 hours' 5-minute evaluations in which the tenant had {SLO_TEXT} "
                           "(recording rule tenant:llm_router_sla_compliance:ratio1d, the figure the report "
                           "prints)."),

    row("Budgets (month to date)"),
    bargauge("Budget used", [prom(BUDGET_USED, "{{tenant}}")], unit="percentunit", max=1, thresholds=BUDGET_STEPS,
             description="Month-to-date spend over the monthly budget, per budgeted tenant (recording rule). Orange "
                         "from the TenantBudgetNearlyExhausted threshold, red when exhausted."),
    table("Spend and budget", [
        prom(f"max by (tenant) (llm_router_tenant_spend_usd{TENANT})", table=True),
        prom(f"max by (tenant) (llm_router_tenant_budget_usd{TENANT})", table=True),
    ], unit="currencyUSD", sort_by="spent",
        transformations=[
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True},
                                           "renameByName": {"Value #A": "spent", "Value #B": "budget"}}},
        ],
        description="Month-to-date spend (from the shared state store, exact across workers) and the monthly "
                    "budget of each budgeted tenant."),

    row("Usage"),
    bargauge("Top tenants by cost, last hour", [prom(
        f"topk(10, tenant:llm_router_cost_usd:increase1h{router(tenant=True, instance=False)})", "{{tenant}}",
        instant=True)], unit="currencyUSD", w=8, thresholds=steps("blue"),
        description="The ten tenants that spent most over the last hour (recording rule)."),
    bargauge("Top tenants by requests", [prom(
        f"topk(10, sum by (tenant) (rate(llm_router_chat_requests_total{COST}[{RATE}])))", "{{tenant}}",
        instant=True)], unit="reqps", w=8, thresholds=steps("blue"),
        description="The ten busiest tenants now, chat requests per second (`other`: rejected before a tenant "
                    "was known)."),
    timeseries("Tokens per second by tenant", [prom(
        f"sum by (tenant, type) (rate(llm_router_tokens_total{COST}[{RATE}]))", "{{tenant}} {{type}}")],
        unit="short", w=8, stack=True,
        description="Input and output tokens processed per second by served requests, per tenant."),
    timeseries("Saved by the cache per hour by tenant", [prom(
        per_hour("tenant", "llm_router_cache_saved_usd_total", TENANT), "{{tenant}}")],
        unit="currencyUSD", stack=True, explore=True,
        description="Backend cost each tenant avoided through cache hits, USD per hour."),
    table("Top tenants by growth", [
        prom(f"topk(10, sum by (tenant) ({GROWTH}))", table=True),
        prom(f"sum by (tenant) (tenant:llm_router_chat_requests:increase1d{TENANT_RULES})\n"
             f"and on (tenant)\ntopk(10, sum by (tenant) ({GROWTH}))", table=True),
    ], unit="short", sort_by="growth",
        transformations=[
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True},
                                           "renameByName": {"Value #A": "growth", "Value #B": "last 24 h"}}},
        ],
        description="The ten tenants whose chat requests over the last 24 hours grew most against the 24 hours "
                    "before (recording rules; every status code). A tenant new since then grows from 0, and so "
                    "does every tenant while Prometheus is younger than two days."),
    heatmap("Requests by hour of day (UTC)", [prom(
        by_hour("tenant_hour:llm_router_chat_requests:increase1h", TENANT_RULES), "{{hour}}", interval="1h")],
        unit="short", cell_unit="short", rows=True,
        description="Chat requests of the selected tenants in each hour of the day (rows 00 to 23, UTC), as of "
                    "each moment: a column shows the latest 24 hours, so reading across shows how the daily "
                    "profile shifts. From the tenant_hour:llm_router_chat_requests:increase1h rules (one per "
                    "hour of day); the current hour's row holds the last 60 minutes."),
    heatmap("Tokens by hour of day (UTC)", [prom(
        by_hour("type_hour:llm_router_tokens:increase1h", router(instance=False)), "{{hour}}", interval="1h")],
        unit="short", cell_unit="short", rows=True,
        description="Input and output tokens processed in each hour of the day (rows 00 to 23, UTC), as of each "
                    "moment (a column: the latest 24 hours). All tenants: the type_hour rules keep no tenant "
                    "label."),
    timeseries("Over-budget requests by tenant", [prom(
        f"sum by (tenant, action) (rate(llm_router_budget_exceeded_total{TENANT}[{RATE}]))", "{{tenant}} {{action}}")],
        unit="reqps",
        description="Requests per second from tenants over budget: rejected (HTTP 402) or flagged (served with "
                    "X-Router-Over-Budget)."),
])
