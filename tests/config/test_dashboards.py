"""Grafana dashboards (grafana/generated/*.json) and provisioning, checked the way Grafana
and grafana/dashboard-linter would, without a running Grafana:

1. freshness: `grafana/dashboards/generate.py --check` (the JSON is what the sources render);
2. schema: Grafana's own JSON schemas (dashboard, each panel type's options and custom field
   config, Prometheus and Loki queries, units), from $GRAFANA_JSONSCHEMA_DIR;
3. lint: datasources, titles, descriptions, units, rate windows, counters, targets, uids,
   template variables;
4. every PromQL expression parses with the real promtool (one `promtool check rules` run);
5. every metric a dashboard queries is emitted by the router, recorded by prometheus/rules
   or listed in prometheus/stack-metrics.yaml;
6. every datasource uid exists in provisioning, and provisioning's cross-links (exemplars,
   derived fields, traces to logs and metrics, the dashboard provider) are consistent.

The unit rule (3): every panel except rows declares fieldConfig.defaults.unit. Logs and Text
panels show no numbers and declare exactly "none". Any other panel declares a real unit;
"none" is accepted there only when value mappings turn its numbers into words (e.g. 0/1 ->
down/up), the exception grafana/dashboard-linter makes too.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import yaml

from test_prometheus import _metric_names  # the PromQL lexer the rule tests use
from toolbox import REPO, promtool, run  # noqa: F401 (fixtures)

GRAFANA = REPO / "grafana"
GENERATED = GRAFANA / "generated"
DASHBOARDS = {path.stem: json.loads(path.read_text()) for path in sorted(GENERATED.glob("*.json"))}
CONFIG = yaml.safe_load((REPO / "prometheus" / "config.yaml").read_text())
ROUTER_SELECTOR = CONFIG["selectors"]["router"]
DATASOURCES_YAML = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "datasources.yaml").read_text())
DATASOURCES = {ds["uid"]: ds for ds in DATASOURCES_YAML["datasources"]}
PROVIDERS = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dashboards.yaml").read_text())["providers"]

DATASOURCE_VARIABLE = "${datasource}"
ROUTER_VARIABLES = ("datasource", "tenant", "model", "instance")
RATE_FUNCTIONS = ("rate", "irate", "increase")
COUNTER_SUFFIXES = ("_total", "_count", "_sum", "_bucket")
NO_NUMBERS = ("logs", "text")  # panel types that show no numbers: unit "none"
NO_QUERY = ("text",)  # panel types without targets (rows aside)
# What promtool sees in place of Grafana's variables: durations for the interval builtins,
# numbers for their _s/_ms forms, a match-anything regex for the rest (which only appear
# inside label matchers: a variable anywhere else then fails to parse, as it should).
GRAFANA_BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "__auto": "1m",
                    "__range_s": "3600", "__range_ms": "3600000", "__interval_ms": "60000"}
# $name, ${name}, ${name:format}, [[name]]; not $1 (label_replace's capture groups).
_VARIABLE = re.compile(r"\$\{([A-Za-z_]\w*)(?::[^}]*)?\}|\$([A-Za-z_]\w*)|\[\[([A-Za-z_]\w*)(?::[^\]]*)?\]\]")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')


# --- walking the dashboards ---------------------------------------------------------------

def panels(dashboard: dict):
    """Every panel, including those inside (collapsed) rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", []) if panel.get("type") == "row" else ()


def where(dashboard: dict, panel: dict | None = None, target: dict | None = None) -> str:
    text = dashboard.get("uid", "?")
    if panel is not None:
        text += f" / panel {panel.get('id')} {panel.get('title')!r}"
    if target is not None:
        text += f" / target {target.get('refId', '?')}"
    return text


def ds_type(obj: dict, panel: dict | None = None) -> str | None:
    ref = obj.get("datasource") or (panel or {}).get("datasource") or {}
    return ref.get("type") if isinstance(ref, dict) else None


def prometheus_targets(dashboard: dict):
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if ds_type(target, panel) == "prometheus":
                yield panel, target


def variable_query(variable: dict) -> str:
    query = variable.get("query", "")
    return query.get("query", "") if isinstance(query, dict) else query


def variable_promql(variable: dict) -> str | None:
    """A Prometheus query variable's query as PromQL: Grafana's label_values(selector, label)
    becomes the selector, label_values(label) {label!=""}, query_result(e) e, metrics(re) a
    __name__ selector; None for anything that is not a Prometheus query variable."""
    if variable.get("type") != "query" or ds_type(variable) != "prometheus":
        return None
    query = variable_query(variable).strip()
    if m := re.fullmatch(r"label_values\((.+),\s*(\w+)\s*\)", query, re.S):
        return m.group(1).strip()
    if m := re.fullmatch(r"label_values\(\s*(\w+)\s*\)", query):
        return f'{{{m.group(1)}!=""}}'
    if m := re.fullmatch(r"query_result\((.+)\)", query, re.S):
        return m.group(1).strip()
    if m := re.fullmatch(r"metrics\((.+)\)", query, re.S):
        return f'{{__name__=~"{m.group(1).strip()}"}}'
    return query


def expand(expr: str) -> str:
    """Grafana's variables replaced by what promtool can parse (GRAFANA_BUILTINS, else .*)."""
    def value(m: re.Match) -> str:
        name = next(g for g in m.groups() if g)
        return GRAFANA_BUILTINS.get(name, ".*")
    return _VARIABLE.sub(value, expr)


def all_promql() -> list[tuple[str, str]]:
    """(where, PromQL with Grafana's variables expanded) of every panel target and query
    variable of every dashboard, and of provisioning's trace-to-metrics queries."""
    exprs = []
    for dashboard in DASHBOARDS.values():
        for variable in dashboard["templating"]["list"]:
            if (promql := variable_promql(variable)) is not None:
                exprs.append((f"{where(dashboard)} / variable {variable['name']}", expand(promql)))
        for panel, target in prometheus_targets(dashboard):
            exprs.append((where(dashboard, panel, target), expand(target.get("expr", ""))))
    for query in jaeger()["jsonData"].get("tracesToMetrics", {}).get("queries", []):
        # $__tags is the span's mapped tags as matchers (model="..."), written $$ in provisioning.
        promql = provisioned(query["query"]).replace("$__tags", 'model="gpt"')
        exprs.append((f"datasources.yaml / Jaeger tracesToMetrics {query['name']!r}", expand(promql)))
    return exprs


# --- PromQL lint (a lexer, not a parser: promtool is the parser) --------------------------

def mask(expr: str) -> str:
    """String literals blanked, same length, so brackets and names inside them do not count."""
    return _STRING.sub(lambda m: m.group()[0] + " " * (len(m.group()) - 2) + m.group()[-1], expr)


def _closing(text: str, start: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        if text[i] in "([{":
            depth += 1
        elif text[i] in ")]}":
            depth -= 1
            if depth == 0:
                return i
    return len(text)


def range_problems(expr: str) -> list[str]:
    """rate()/irate()/increase() windows that are not $__rate_interval. A recording rule
    (a name with `:`) already carries its window and is left alone."""
    masked, problems = mask(expr), []
    for call in re.finditer(rf"(?<![\w:])({'|'.join(RATE_FUNCTIONS)})\s*\(", masked):
        end = _closing(masked, call.end() - 1)
        argument = expr[call.end():end]
        if any(":" in name for name in _metric_names(argument)):
            continue
        arg = masked[call.end():end]
        ranges, i = [], 0
        while i < len(arg):  # the top-level [...] of the argument: its range (or subquery)
            if arg[i] in "({":
                i = _closing(arg, i)
            elif arg[i] == "[":
                close = _closing(arg, i)
                ranges.append(argument[i + 1:close].strip())
                i = close
            i += 1
        if not ranges or ranges[-1] != "$__rate_interval":
            window = f"[{ranges[-1]}]" if ranges else "no range"
            problems.append(f"{call.group(1)}() over {window}: use [$__rate_interval] "
                            f"(in {' '.join(expr[call.start():end + 1].split())})")
    return problems


def selectors(expr: str, name: str):
    """(start, end) of each vector selector of metric `name`: `name{...}` or `{__name__=~...}`."""
    masked = mask(expr)
    found = []
    for m in re.finditer(rf"(?<![\w:]){re.escape(name)}(?![\w:])", masked):
        end = m.end()
        rest = masked[end:]
        if rest.lstrip().startswith("{"):
            end = _closing(masked, end + len(rest) - len(rest.lstrip())) + 1
        found.append((m.start(), end))
    for m in re.finditer(r"\{", masked):
        before = masked[:m.start()].rstrip()
        if before and (before[-1].isalnum() or before[-1] in "_:"):
            continue  # the label matchers of a named selector
        start, end = m.start(), _closing(masked, m.start()) + 1
        block = expr[start:end]
        if "__name__" in block and name in _metric_names(block):
            found.append((start, end))
    return found


def counter_problems(expr: str) -> list[str]:
    """Counters (_total, _count, _sum, _bucket) read other than as the direct argument of
    rate()/irate()/increase(): a raw counter, or one aggregated before the rate, is wrong
    after every restart. Recording rules (names with `:`) are left alone."""
    masked, problems = mask(expr), []
    for name in sorted(_metric_names(expr)):
        if ":" in name or not name.endswith(COUNTER_SUFFIXES):
            continue
        for start, end in selectors(expr, name):
            inside = re.search(rf"(?<![\w:])({'|'.join(RATE_FUNCTIONS)})\s*\(\s*$", masked[:start])
            if not inside or not masked[end:].lstrip().startswith("["):
                problems.append(f"counter {name} is not the direct argument of rate()/increase()")
    return problems


# --- the lint -----------------------------------------------------------------------------

def datasource_problems(ref, dashboard: dict, required: bool) -> list[str]:
    """A datasource reference must be {type, uid} with uid ${datasource} (a Prometheus
    datasource variable of this dashboard) or a provisioned uid of the same type."""
    if ref is None:
        return ["no datasource"] if required else []
    if not isinstance(ref, dict) or set(ref) != {"type", "uid"}:
        return [f"datasource {ref!r} is not a {{type, uid}} reference"]
    if ref["uid"] == DATASOURCE_VARIABLE:
        names = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}
        variable = names.get("datasource", {})
        if variable.get("type") != "datasource" or variable.get("query") != ref["type"]:
            return [f"datasource {ref} needs a `datasource` variable of type datasource and query {ref['type']!r}"]
        return []
    provisioned_ds = DATASOURCES.get(ref["uid"])
    if provisioned_ds is None:
        return [f"datasource uid {ref['uid']!r} is neither {DATASOURCE_VARIABLE} nor provisioned "
                f"({sorted(DATASOURCES)})"]
    if provisioned_ds["type"] != ref["type"]:
        return [f"datasource {ref} but uid {ref['uid']!r} is provisioned as type {provisioned_ds['type']!r}"]
    return []


def lint(dashboard: dict) -> list[str]:
    """What grafana/dashboard-linter checks, for this bundle's conventions (module docstring)."""
    problems = []
    variables = {v["name"]: v for v in dashboard.get("templating", {}).get("list", [])}

    for variable in variables.values():
        here = f"{where(dashboard)} / variable {variable['name']}"
        if variable.get("type") == "query":
            problems += [f"{here}: {p}" for p in datasource_problems(variable.get("datasource"), dashboard, True)]
            if variable.get("refresh") != 2:
                problems.append(f"{here}: refresh {variable.get('refresh')!r}, not 2 (on time range change)")
            problems += [f"{here}: {p}" for p in undefined_variables(variable_query(variable), variables)]
    if "datasource" in variables:
        variable = variables["datasource"]
        if variable.get("type") != "datasource" or variable.get("query") != "prometheus":
            problems.append(f"{where(dashboard)}: variable datasource must be of type datasource, query prometheus")

    ids = [panel.get("id") for panel in panels(dashboard)]
    if len(set(ids)) != len(ids):
        problems.append(f"{where(dashboard)}: duplicate panel ids {ids}")
    router_dashboard = False
    for panel in panels(dashboard):
        here = where(dashboard, panel)
        kind = panel.get("type")
        if kind == "row":
            problems += [f"{here}: {p}" for p in datasource_problems(panel.get("datasource"), dashboard, False)]
            if not panel.get("title"):
                problems.append(f"{here}: a row without a title")
            continue
        grid = panel.get("gridPos", {})
        if grid.get("x", 0) + grid.get("w", 0) > 24:
            problems.append(f"{here}: gridPos {grid} is wider than the 24 columns")
        if not panel.get("title", "").strip():
            problems.append(f"{here}: no title")
        if not panel.get("description", "").strip():
            problems.append(f"{here}: no description")
        defaults = panel.get("fieldConfig", {}).get("defaults", {})
        unit = defaults.get("unit")
        if not unit:
            problems.append(f"{here}: no unit")
        elif kind in NO_NUMBERS and unit != "none":
            problems.append(f"{here}: a {kind} panel shows no numbers: unit must be 'none', not {unit!r}")
        elif kind not in NO_NUMBERS and unit == "none" and not defaults.get("mappings"):
            problems.append(f"{here}: unit 'none' on a {kind} panel without value mappings: give it a real unit")
        targets = panel.get("targets", [])
        problems += [f"{here}: {p}" for p in datasource_problems(panel.get("datasource"), dashboard,
                                                                 kind not in NO_QUERY or bool(targets))]
        if not targets and kind not in NO_QUERY:
            problems.append(f"{here}: no targets")
        for target in targets:
            here = where(dashboard, panel, target)
            problems += [f"{here}: {p}" for p in datasource_problems(target.get("datasource"), dashboard, True)]
            mixed = (panel.get("datasource") or {}).get("uid") == "-- Mixed --"
            if target.get("datasource") != panel.get("datasource") and not mixed:
                problems.append(f"{here}: datasource {target.get('datasource')} differs from the panel's "
                                f"{panel.get('datasource')}")
            expr = target.get("expr", "")
            if not expr.strip():
                problems.append(f"{here}: empty expr")
            problems += [f"{here}: {p}" for p in undefined_variables(expr, variables)]
            if ds_type(target, panel) != "prometheus":
                continue
            problems += [f"{here}: {p}" for p in range_problems(expr) + counter_problems(expr)]
            names = _metric_names(expand(expr))
            if any("llm_router_" in name for name in names):
                router_dashboard = True
            if "instance" in variables:
                problems += [f"{here}: {p}" for p in instance_problems(expr, names)]

    if router_dashboard:
        missing = [name for name in ROUTER_VARIABLES if name not in variables]
        if missing:
            problems.append(f"{where(dashboard)}: a router dashboard without the variables {missing}")
    return problems


def undefined_variables(text: str, variables: dict) -> list[str]:
    used = {next(g for g in m.groups() if g) for m in _VARIABLE.finditer(text)}
    return [f"uses ${name}, which is not a variable of the dashboard"
            for name in sorted(used) if not name.startswith("__") and name not in variables]


def instance_problems(expr: str, names: set[str]) -> list[str]:
    """The router's own series (not recording rules, which keep no instance label) follow
    the instance variable, as dashboard-linter's target-instance-rule asks."""
    problems = []
    for name in sorted(n for n in names if n.startswith("llm_router_")):
        for start, end in selectors(expr, name):
            if not re.search(r'instance=~"\$\{?instance(?::\w+)?\}?"', expr[start:end]):
                problems.append(f'{expr[start:end]} does not filter by instance=~"$instance"')
    return problems


def test_lint_flags_what_it_should():
    """The lint can fail: a hand-made dashboard with the usual mistakes."""
    bad = {
        "uid": "bad", "templating": {"list": [{"name": "datasource", "type": "datasource", "query": "prometheus"}]},
        "panels": [
            {"id": 1, "type": "timeseries", "title": "Requests", "description": "Requests per second.",
             "datasource": {"type": "prometheus", "uid": "${datasource}"}, "fieldConfig": {"defaults": {}},
             "targets": [{"refId": "A", "datasource": {"type": "prometheus", "uid": "${datasource}"},
                          "expr": 'rate(llm_router_chat_requests_total{job="llm-router", tenant=~"$tenant"}[5m])'}]},
            {"id": 2, "type": "stat", "title": "Tokens", "description": "",
             "datasource": {"type": "prometheus", "uid": "prom"}, "fieldConfig": {"defaults": {"unit": "none"}},
             "targets": [{"refId": "A", "datasource": {"type": "prometheus", "uid": "prom"},
                          "expr": "rate(sum(llm_router_tokens_total)[$__rate_interval:])"}]},
            {"id": 3, "type": "gauge", "title": "Nothing", "description": "No query.",
             "fieldConfig": {"defaults": {"unit": "short"}}},
        ],
    }
    problems = "\n".join(lint(bad))
    for expected in [
        "panel 1 'Requests': no unit",
        "rate() over [5m]: use [$__rate_interval]",
        "uses $tenant, which is not a variable",
        "panel 2 'Tokens': no description",
        "unit 'none' on a stat panel without value mappings",
        "datasource uid 'prom' is neither",
        "counter llm_router_tokens_total is not the direct argument",
        "panel 3 'Nothing': no targets",
        "panel 3 'Nothing': no datasource",
        "a router dashboard without the variables ['tenant', 'model', 'instance']",
    ]:
        assert expected in problems, f"{expected!r} not in:\n{problems}"
    # and passes the same shapes when they are right
    assert range_problems("sum(rate(x_total{a=\"[5m]\"}[$__rate_interval]))") == []
    assert range_problems("rate(job:x:rate5m[1h])") == []
    assert counter_problems('sum by (le) (rate(x_bucket{a="b"}[$__rate_interval]))') == []
    assert counter_problems('rate({job="j", __name__=~"y_spans(_total)?"}[$__rate_interval])') == []
    assert counter_problems('sum({job="j", __name__=~"y_spans(_total)?"})') != []
    expr = 'rate(llm_router_tokens_total{job="llm-router"}[$__rate_interval])'
    assert instance_problems(expr, {"llm_router_tokens_total"}) == [
        'llm_router_tokens_total{job="llm-router"} does not filter by instance=~"$instance"']
    assert instance_problems(expr.replace('"}', '", instance=~"$instance"}'), {"llm_router_tokens_total"}) == []
    assert counter_problems("increase(x_count[1h]) / x_sum") == ["counter x_sum is not the direct argument "
                                                                  "of rate()/increase()"]


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_dashboard_passes_the_lint(uid):
    problems = lint(DASHBOARDS[uid])
    assert problems == [], "\n".join(problems)


def test_dashboards_are_the_configured_uids():
    assert set(DASHBOARDS) == set(CONFIG["dashboards"].values()), "grafana/generated/ vs config.yaml `dashboards:`"
    for name, dashboard in DASHBOARDS.items():
        assert dashboard["uid"] == name, f"{name}.json has uid {dashboard['uid']!r}"
    titles = [d["title"] for d in DASHBOARDS.values()]
    assert len(set(titles)) == len(titles), f"duplicate titles {titles}"


# --- freshness -------------------------------------------------------------------------

def test_generated_dashboards_are_current():
    run(sys.executable, GRAFANA / "dashboards" / "generate.py", "--check")


# --- Grafana's JSON schemas ------------------------------------------------------------

# Fields grafanalib 0.7.1 writes that Grafana's current JSON model does not have, removed
# before validation: {path pattern ("*" = any key or index): why it may stay}. Empty:
# grafana/dashboards/common.py fix_quirks() removes every one of them at generation, so the
# schemas see grafanalib's output as Grafana would store it.
LEGACY_FIELDS: dict[tuple[str, ...], str] = {}

PANEL_SCHEMAS = ("timeseries", "stat", "gauge", "bargauge", "table", "logs", "heatmap", "text")
TARGET_SCHEMAS = {"prometheus": ("prometheus", "Dataquery"), "loki": ("loki", "dataquery")}
CUSTOM_UNIT = re.compile(r"^(suffix|prefix|time|si|count|currency):.+")


@pytest.fixture(scope="session")
def schemas() -> dict[str, dict]:
    value = os.environ.get("GRAFANA_JSONSCHEMA_DIR")
    if not value:
        pytest.skip("GRAFANA_JSONSCHEMA_DIR is not set (.ci/run sets it to the Grafana JSON schemas "
                    "in ../shared/reference/grafana-jsonschema)")
    folder = Path(value) if Path(value).is_absolute() else REPO / value
    if not (folder / "dashboard.jsonschema.json").is_file():
        pytest.fail(f"GRAFANA_JSONSCHEMA_DIR={value}: no dashboard.jsonschema.json in {folder}")
    return {path.name.removesuffix(".jsonschema.json"): json.loads(path.read_text())
            for path in folder.glob("*.jsonschema.json")}


def prune(value, path=()):
    """The JSON without nulls (grafanalib's unset options) and LEGACY_FIELDS, except the first
    threshold step's value: null there is Grafana's -Infinity, and the schema requires it."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            here = (*path, key)
            if any(len(p) == len(here) and all(a in ("*", b) for a, b in zip(p, here)) for p in LEGACY_FIELDS):
                continue
            if item is None and not (here[-4:-2] == ("thresholds", "steps") and here[-2] == 0 and key == "value"):
                continue
            out[key] = prune(item, here)
        return out
    if isinstance(value, list):
        return [prune(item, (*path, i)) for i, item in enumerate(value)]
    return value


@functools.cache
def _validator(schema_json: str, ref: str | None):
    import jsonschema

    schema = json.loads(schema_json)
    if ref:
        schema = {**schema, "$ref": f"#/definitions/{ref}"}
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


def schema_errors(instance, schema: dict, ref: str | None = None, prefix: str = "") -> list[str]:
    validator = _validator(json.dumps(schema, sort_keys=True), ref)
    errors = []
    for error in sorted(validator.iter_errors(instance), key=lambda e: list(map(str, e.absolute_path))):
        # A panel is oneOf Panel / RowPanel: report the branch its type chooses, by field.
        if error.validator == "oneOf" and error.context and isinstance(error.instance, dict):
            branch = 1 if error.instance.get("type") == "row" else 0
            detail = [e for e in error.context if e.relative_schema_path[0] == branch]
            if detail:
                errors += [f"{prefix}{'/'.join(map(str, e.absolute_path))}: {e.message[:300]}" for e in detail]
                continue
        errors.append(f"{prefix}{'/'.join(map(str, error.absolute_path))}: {error.message[:300]}")
    return errors


def units(schemas: dict) -> set[str]:
    return {d["const"] for d in schemas["units"]["definitions"].values() if "const" in d}


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_dashboard_validates_against_grafana_schemas(uid, schemas):
    dashboard = prune(DASHBOARDS[uid])
    errors = schema_errors(dashboard, schemas["dashboard"])
    known_units = units(schemas)
    for panel in panels(dashboard):
        here = f"panel {panel.get('id')} {panel.get('title')!r} ({panel.get('type')}) "
        kind = panel.get("type")
        if kind == "row":
            continue
        if kind not in PANEL_SCHEMAS:
            errors.append(f"{here}: no schema for panel type {kind!r} (one of {PANEL_SCHEMAS})")
            continue
        schema = schemas[kind]
        errors += schema_errors(panel.get("options", {}), schema, "Options", f"{here}options/")
        custom = panel.get("fieldConfig", {}).get("defaults", {}).get("custom", {})
        if schema["definitions"].get("FieldConfig"):
            errors += schema_errors(custom, schema, "FieldConfig", f"{here}fieldConfig/defaults/custom/")
        elif custom:
            errors.append(f"{here}fieldConfig/defaults/custom: a {kind} panel has no custom field config: {custom}")
        unit_values = [panel.get("fieldConfig", {}).get("defaults", {}).get("unit")]
        unit_values += [p.get("value") for o in panel.get("fieldConfig", {}).get("overrides", [])
                        for p in o.get("properties", []) if p.get("id") == "unit"]
        for unit in unit_values:
            if unit is not None and unit not in known_units and not CUSTOM_UNIT.match(str(unit)):
                errors.append(f"{here}unit {unit!r} is not a Grafana unit (units.jsonschema.json) or custom unit")
        for i, target in enumerate(panel.get("targets", [])):
            kind = ds_type(target, panel)
            if kind not in TARGET_SCHEMAS:
                errors.append(f"{here}targets/{i}: no query schema for datasource type {kind!r}")
                continue
            name, ref = TARGET_SCHEMAS[kind]
            errors += schema_errors(target, schemas[name], ref, f"{here}targets/{i}/")
    assert errors == [], f"{uid}: {len(errors)} schema errors\n" + "\n".join(errors)


def test_prune_keeps_the_base_threshold_and_drops_other_nulls():
    panel = {"fieldConfig": {"defaults": {"thresholds": {"steps": [{"color": "green", "value": None},
                                                                   {"color": "red", "value": None}]},
                                          "unit": None}}}
    assert prune(panel) == {"fieldConfig": {"defaults": {"thresholds": {"steps": [{"color": "green", "value": None},
                                                                                  {"color": "red"}]}}}}


# --- PromQL parses with promtool -------------------------------------------------------

def test_every_promql_expression_parses_with_promtool(promtool, tmp_path):
    exprs = all_promql()
    assert len(exprs) > 50, "the dashboards' queries were not found"
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboards:expr_{i}:check", "expr": expr} for i, (_, expr) in enumerate(exprs)]}]}
    path = tmp_path / "dashboards.rules.yml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False, width=1000))
    result = run(promtool, "check", "rules", "--lint=none", path, check=False)
    failures = [f"{exprs[int(m.group(1))][0]}: {m.group(2)}\n    {exprs[int(m.group(1))][1]}"
                for m in re.finditer(r'"dashboards:expr_(\d+):check": (.*)', result.stdout + result.stderr)]
    assert result.returncode == 0 and not failures, (
        "\n".join(failures) or f"promtool failed:\n{result.stdout}\n{result.stderr}")
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout + result.stderr


def test_variables_expand_to_promql():
    assert expand('rate(x{a=~"$tenant", b=~"${model:regex}"}[$__rate_interval])') == 'rate(x{a=~".*", b=~".*"}[5m])'
    assert undefined_variables('label_replace(up, "a", "$1", "b", "(.*)")', {}) == []
    variable = {"type": "query", "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "query": 'label_values(llm_router_build_info{job="llm-router"}, instance)'}
    assert variable_promql(variable) == 'llm_router_build_info{job="llm-router"}'


# --- every metric is emitted, recorded or listed ---------------------------------------

@functools.cache
def known_metrics() -> tuple[frozenset, frozenset, frozenset]:
    from llm_router.telemetry import metrics, process

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_count", "_sum"), "summary": ("", "_count", "_sum"),
                "info": ("_info",)}
    router = set()
    for value in vars(metrics).values():
        name = getattr(value, "_name", None)
        if isinstance(name, str) and name.startswith("llm_router_"):
            router |= {name + suffix for suffix in suffixes.get(getattr(value, "_type", ""), ("",))}
    # llm_router_process_*: a custom collector's families (telemetry/process.py), named as queried.
    router |= {spec.name for spec in process.METRICS}
    stack = set(yaml.safe_load((REPO / "prometheus" / "stack-metrics.yaml").read_text())["metrics"])
    records = {rule["record"] for path in sorted((REPO / "prometheus" / "rules").glob("*.yml"))
               for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"] if "record" in rule}
    return frozenset(router), frozenset(stack), frozenset(records)


def test_every_metric_a_dashboard_uses_is_emitted_recorded_or_listed():
    router, stack, records = known_metrics()
    assert "llm_router_chat_requests_total" in router and "llm_router_chat_request_duration_seconds_bucket" in router
    unknown = {}
    for place, expr in all_promql():
        for name in _metric_names(expr) - router - stack - records:
            unknown.setdefault(name, []).append(place)
    assert unknown == {}, "metrics in neither metrics.py, prometheus/rules nor stack-metrics.yaml:\n" + "\n".join(
        f"{name}: {', '.join(places)}" for name, places in sorted(unknown.items()))


# --- datasources and provisioning ------------------------------------------------------

def provisioned(text: str) -> str:
    """A provisioning string as Grafana reads it: `$$` is a literal `$`."""
    return text.replace("$$", "$")


def jaeger() -> dict:
    return next(ds for ds in DATASOURCES_YAML["datasources"] if ds["type"] == "jaeger")


def explore_uids(value) -> set[str]:
    """Datasource uids inside Explore links (`/explore?...&panes=<json>`) anywhere in value."""
    uids = set()
    if isinstance(value, dict):
        for item in value.values():
            uids |= explore_uids(item)
    elif isinstance(value, list):
        for item in value:
            uids |= explore_uids(item)
    elif isinstance(value, str):
        for url in re.findall(r"/explore\?[^\s)\"']+", value):
            for panes in parse_qs(urlsplit(url).query).get("panes", []):
                for pane in json.loads(unquote(panes) if "%" in panes else panes).values():
                    uids.add(pane["datasource"])
                    uids |= {q["datasource"]["uid"] for q in pane.get("queries", []) if "datasource" in q}
    return uids


def referenced_uids(dashboard: dict) -> set[str]:
    uids = set()

    def walk(value):
        if isinstance(value, dict):
            if isinstance(value.get("datasource"), dict) and "uid" in value["datasource"]:
                uids.add(value["datasource"]["uid"])
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(dashboard)
    return uids | explore_uids(dashboard)


@pytest.mark.parametrize("uid", sorted(DASHBOARDS))
def test_every_datasource_a_dashboard_refers_to_is_provisioned(uid):
    dashboard = DASHBOARDS[uid]
    uids = referenced_uids(dashboard)
    assert uids, "no datasource references found"
    if DATASOURCE_VARIABLE in uids:
        uids.discard(DATASOURCE_VARIABLE)
        variable = next(v for v in dashboard["templating"]["list"] if v["name"] == "datasource")
        default = variable.get("current", {}).get("value")
        prometheus = {k for ds in DATASOURCES.values() if ds["type"] == "prometheus" for k in (ds["uid"], ds["name"])}
        assert default in prometheus, f"the datasource variable's default {default!r} is not a provisioned Prometheus"
    assert uids <= set(DATASOURCES), f"{uid} refers to datasource uids {sorted(uids - set(DATASOURCES))} " \
                                     f"that datasources.yaml does not provision ({sorted(DATASOURCES)})"


def test_datasources_have_the_uids_dashboards_expect():
    assert {ds["uid"]: ds["type"] for ds in DATASOURCES_YAML["datasources"]} == {
        "prometheus": "prometheus", "loki": "loki", "jaeger": "jaeger", "alertmanager": "alertmanager"}
    assert [ds["name"] for ds in DATASOURCES_YAML["datasources"] if ds.get("isDefault")] == ["Prometheus"]


def test_literal_dollars_are_escaped_in_provisioning():
    """Grafana expands $VAR and ${VAR} from its environment in provisioning files: a literal
    `$` (Grafana's own ${__value.raw}, $__tags...) must be written `$$`."""
    for path in (GRAFANA / "provisioning").rglob("*.yaml"):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "$" in line.replace("$$", "") and not line.lstrip().startswith("#"):
                pytest.fail(f"{path.relative_to(REPO)}:{number}: unescaped $ (environment expansion): {line.strip()}")


def test_exemplars_link_the_label_the_router_emits_to_jaeger(monkeypatch):
    from opentelemetry import trace
    from llm_router.telemetry.signals import Signals

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    span = trace.NonRecordingSpan(trace.SpanContext(trace_id=0xABC, span_id=0xDEF, is_remote=False,
                                                    trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED)))
    exemplar = Signals.span_exemplar(span)
    assert exemplar is not None and len(exemplar) == 1, exemplar
    label = next(iter(exemplar))
    destinations = DATASOURCES["prometheus"]["jsonData"]["exemplarTraceIdDestinations"]
    assert [d["name"] for d in destinations] == [label], f"the router's exemplar label is {label!r}"
    for destination in destinations:
        assert DATASOURCES.get(destination.get("datasourceUid"), {}).get("type") == "jaeger", destination
        assert "url" not in destination, "an internal link (datasourceUid) takes no url"


def test_loki_derived_field_opens_the_trace_in_jaeger():
    fields = DATASOURCES["loki"]["jsonData"]["derivedFields"]
    trace_fields = [f for f in fields if f.get("datasourceUid")]
    assert trace_fields, "no derived field links to a trace datasource"
    for field in trace_fields:
        assert DATASOURCES.get(field["datasourceUid"], {}).get("type") == "jaeger", field
        assert provisioned(field["url"]) == "${__value.raw}", "the internal link's query must be the matched trace id"
        if field.get("matcherType") == "label":
            # the trace id field of the router's log lines (telemetry/logs.py), which Fluent Bit
            # sends to Loki as structured metadata; Grafana searches field names with the regex
            # (re.search semantics), so only an anchored pattern picks that one field.
            pattern = re.compile(provisioned(field["matcherRegex"]))
            assert pattern.search("trace_id"), field
            assert not [name for name in ("parent_trace_id", "trace_id_old", "x_trace_id") if pattern.search(name)], (
                f"{field['matcherRegex']!r} also matches other fields: anchor it (^trace_id$)")


def test_jaeger_links_spans_to_loki_logs_and_prometheus_metrics():
    data = jaeger()["jsonData"]
    logs, metrics = data["tracesToLogsV2"], data["tracesToMetrics"]
    assert DATASOURCES.get(logs["datasourceUid"], {}).get("type") == "loki", logs
    assert DATASOURCES.get(metrics["datasourceUid"], {}).get("type") == "prometheus", metrics
    if logs.get("customQuery"):
        assert "${__trace.traceId}" in provisioned(logs["query"]), "the log query must select the span's trace"
    for query in metrics.get("queries", []):
        assert "$__tags" in provisioned(query["query"]), f"{query['name']}: without $__tags it ignores the span"


def test_dashboard_provider_settings_are_consistent():
    assert len(PROVIDERS) == 1, PROVIDERS
    provider = PROVIDERS[0]
    assert provider["type"] == "file" and provider.get("name")
    path = provider.get("options", {}).get("path")
    assert path and path.startswith("/"), f"options.path {path!r} must be an absolute path in the container"
    if provider.get("options", {}).get("foldersFromFilesStructure"):
        assert not provider.get("folder") and not provider.get("folderUid"), (
            "foldersFromFilesStructure takes the folders from the files: folder and folderUid must be empty")
    else:
        assert provider.get("folder"), "without foldersFromFilesStructure the dashboards need a folder"
    if provider.get("allowUiUpdates") is False:
        assert provider.get("disableDeletion") is True or "disableDeletion" not in provider
    # Where compose runs Grafana, it must mount the generated dashboards at that path.
    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    grafana = compose.get("services", {}).get("grafana")
    if grafana:
        mounts = [v if isinstance(v, str) else f"{v['source']}:{v['target']}" for v in grafana.get("volumes", [])]
        targets = {m.split(":")[1].rstrip("/"): m.split(":")[0] for m in mounts if ":" in m}
        assert path.rstrip("/") in targets, f"compose mounts nothing at the provider path {path}: {mounts}"
        assert Path(targets[path.rstrip("/")]).as_posix().rstrip("/").endswith("grafana/generated"), mounts
