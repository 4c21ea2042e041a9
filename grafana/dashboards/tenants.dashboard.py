"""Tenants and cost: spend per tenant and model, budgets, tokens, top tenants, cache savings."""

from common import RATE, THRESHOLDS, bargauge, dashboard, gauge, prom, router, row, stat, steps, table, timeseries

TENANT = router(tenant=True)
COST = router(tenant=True, model=True)
BUDGET_USED = f"tenant:llm_router_budget_used:ratio{router(tenant=True, instance=False)}"
BUDGET_STEPS = steps("green", (THRESHOLDS["budget_warning_ratio"], "orange"), (1, "red"))


def per_hour(by: str, metric: str, selector: str) -> str:
    """USD per hour: the per-second rate of a USD counter, times 3600."""
    return f"sum{f' by ({by})' if by else ''} (rate({metric}{selector}[{RATE}])) * 3600"


dashboard = dashboard("tenants", "Per tenant: what they spend and on which models, how much of their monthly "
                                 "budget is used, their tokens, and what the response cache saves them.", [
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
    timeseries("Over-budget requests by tenant", [prom(
        f"sum by (tenant, action) (rate(llm_router_budget_exceeded_total{TENANT}[{RATE}]))", "{{tenant}} {{action}}")],
        unit="reqps",
        description="Requests per second from tenants over budget: rejected (HTTP 402) or flagged (served with "
                    "X-Router-Over-Budget)."),
])
