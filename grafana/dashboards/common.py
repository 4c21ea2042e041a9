"""Shared pieces of the LLM router dashboards (grafanalib 0.7.1).

Conventions every dashboard follows:

- Prometheus panels query the `${datasource}` variable; Loki, Jaeger and Alertmanager are
  reached by the fixed uids of grafana/provisioning/datasources/datasources.yaml.
- Every rate()/increase() window is RATE (`$__rate_interval`), so it follows the scrape
  interval and the zoom level; recording rules from prometheus/rules/ are used as they are.
- Router selectors start from prometheus/config.yaml `selectors:` and filter by the
  tenant, model and instance variables where the metric has those labels (router()).
- Every panel has a unit and a description: the constructors raise without them.
- grafanalib 0.7.1 writes Grafana's old JSON model; fix_quirks() turns what it renders into
  the current model, in one place, with a comment on each quirk.
"""

from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from urllib.parse import quote

import attr
import yaml
from attr.validators import instance_of
from grafanalib import core as g

CONFIG = yaml.safe_load((Path(__file__).resolve().parents[2] / "prometheus" / "config.yaml").read_text())
UIDS: dict[str, str] = CONFIG["dashboards"]
SLO = CONFIG["slo"]
APDEX = SLO["apdex"]
THRESHOLDS = CONFIG["thresholds"]
SELECTORS: dict[str, str] = CONFIG["selectors"]

TITLES = {
    "overview": "LLM router / Overview",
    "models": "LLM router / Models and backends",
    "tenants": "LLM router / Tenants and cost",
    "routing": "LLM router / Routing and cache",
    "logs": "LLM router / Logs and traces",
    "stack": "LLM router / Stack health",
}

# The window of every rate() and increase(): at least four scrapes, and wider when zoomed out.
RATE = "$__rate_interval"

PROMETHEUS = {"type": "prometheus", "uid": "${datasource}"}
LOKI = {"type": "loki", "uid": "loki"}
JAEGER = {"type": "jaeger", "uid": "jaeger"}
ALERTMANAGER = {"type": "alertmanager", "uid": "alertmanager"}

SCHEMA_VERSION = 39  # the JSON model fix_quirks() produces (Grafana 10.4 / 11)


# --- queries ------------------------------------------------------------------------------

def router(*matchers: str, tenant: bool = False, model: bool = False, instance: bool = True) -> str:
    """The router's selector, narrowed by the dashboard variables the metric has labels for.
    Recording rules keep only `job` (and model or tenant): pass instance=False for them."""
    parts = [SELECTORS["router"], *matchers]
    parts += ['instance=~"$instance"'] if instance else []
    parts += ['tenant=~"$tenant"'] if tenant else []
    parts += ['model=~"$model"'] if model else []
    return "{" + ", ".join(parts) + "}"


def job(component: str, *matchers: str) -> str:
    """A stack component's selector, e.g. job("loki", 'status_code=~"5.."')."""
    return "{" + ", ".join([SELECTORS[component], *matchers]) + "}"


def share(part: str, whole: str) -> str:
    """part / whole where a part with no series yet (no error so far) counts as 0, not as
    no data (the same shape as the recording rules)."""
    return f"(\n  {part}\n  or\n  0 * {whole}\n)\n/\n{whole}"


@attr.s
class PromTarget(g.Target):
    """grafanalib's Target plus `exemplar` (trace ids behind latency points) and an explicit
    range/instant choice."""

    exemplar = attr.ib(default=False, validator=instance_of(bool))

    def to_json_data(self):
        return {**super().to_json_data(), "exemplar": self.exemplar, "range": not self.instant, "editorMode": "code"}


@attr.s
class LokiTarget:
    """grafanalib 0.7.1 has no Loki target: the four fields Grafana's Loki query needs."""

    expr = attr.ib(validator=instance_of(str))
    refId = attr.ib(default="", validator=instance_of(str))
    datasource = attr.ib(default=LOKI)
    queryType = attr.ib(default="range", validator=instance_of(str))
    legendFormat = attr.ib(default="", validator=instance_of(str))

    def to_json_data(self):
        return {"datasource": self.datasource, "expr": self.expr, "legendFormat": self.legendFormat,
                "queryType": self.queryType, "refId": self.refId}


def prom(expr: str, legend: str = "", *, instant=False, table=False, exemplar=False, interval="") -> PromTarget:
    """A Prometheus query; table=True asks for one instant row per series; interval is the
    smallest step Grafana may use for it (e.g. "1h" for hourly figures)."""
    return PromTarget(expr=textwrap.dedent(expr).strip(), legendFormat=legend, instant=instant or table,
                      format="table" if table else "time_series", exemplar=exemplar, datasource=PROMETHEUS,
                      interval=interval)


def le(seconds: float) -> str:
    """A matcher for one bucket of a histogram: le="5" or "5.0" (prometheus_client writes the
    latter; other clients and Prometheus 3's normalisation may differ), like the rules."""
    text = f"{seconds:g}"
    return f'le=~"{text}(\\\\.0)?"' if "." not in text else f'le="{text}"'


def apdex(metric: str, *matchers: str, by: str = "", **variables: bool) -> str:
    """The Apdex score of a latency histogram over $__rate_interval, with the thresholds of
    prometheus/config.yaml slo.apdex (the same formula as the recording rules): (answers
    within T + answers within 4T) / 2 / answers; no value, not NaN, without answers."""
    total = f"sum by ({by}) " if by else "sum"

    def bucket(seconds: float) -> str:
        return f"{total}(rate({metric}_bucket{router(*matchers, le(seconds), **variables)}[{RATE}]))"

    return (f"(\n  {bucket(APDEX['satisfied_seconds'])}\n  +\n  {bucket(APDEX['tolerating_seconds'])}\n)\n/ 2\n/\n"
            f"({total}(rate({metric}_count{router(*matchers, **variables)}[{RATE}])) > 0)")


def loki(expr: str, legend: str = "") -> LokiTarget:
    return LokiTarget(expr=textwrap.dedent(expr).strip(), legendFormat=legend)


# --- variables and links ------------------------------------------------------------------

def _label_values(name: str, label: str, metric: str) -> g.Template:
    return g.Template(name=name, label=label, query=f"label_values({metric}{{{SELECTORS['router']}}}, {name})",
                      dataSource=PROMETHEUS, multi=True, includeAll=True, allValue=".*", refresh=2)


VARIABLES = {
    "tenant": lambda: _label_values("tenant", "Tenant", "llm_router_chat_requests_total"),
    "model": lambda: _label_values("model", "Model", "llm_router_chat_requests_total"),
    "instance": lambda: _label_values("instance", "Router instance", "llm_router_build_info"),
    # Loki's own labels (low cardinality) and a free-text line filter, for the logs dashboard.
    "level": lambda: g.Template(name="level", label="Log level", type="custom", multi=True, includeAll=True,
                                query="debug,info,warning,error,critical", allValue=".*"),
    "search": lambda: g.Template(name="search", label="Line contains", type="textbox", query="", default=""),
}


def datasource_variable() -> g.Template:
    return g.Template(name="datasource", label="Prometheus", type="datasource", query="prometheus",
                      default="prometheus")


def dashboard_links(current: str) -> list[g.DashboardLink]:
    """One link per other dashboard, by its fixed uid, keeping the time range and variables."""
    return [g.DashboardLink(title=TITLES[key], type="link", uri=f"/d/{uid}", icon="dashboard",
                            tooltip=TITLES[key], includeVars=True, keepTime=True)
            for key, uid in UIDS.items() if key != current]


_VARIABLE = re.compile(r"\$(tenant|model|instance|level)\b")


def explore(title: str, datasource: dict, queries: list[dict]) -> g.DashboardLink:
    """A link that opens Explore on `datasource` with these queries and the panel's time range.
    Multi-value variables are written ${var:regex} so a selection of several stays a regex."""
    queries = [{"refId": chr(ord("A") + i), "datasource": datasource, **q} for i, q in enumerate(queries)]
    for q in queries:
        if "expr" in q:
            q["expr"] = _VARIABLE.sub(r"${\1:regex}", q["expr"])
            # A panel writes the search box as ${search:json} (a quoted JSON string); inside
            # the link the query is itself a JSON string, which that would end early: the
            # plain variable between quotes, escaped with the rest below, stays inside it.
            q["expr"] = q["expr"].replace("${search:json}", '"${search}"')
    pane = {"datasource": datasource["uid"], "queries": queries, "range": {"from": "${__from}", "to": "${__to}"}}
    panes = quote(json.dumps({"a": pane}, sort_keys=True, separators=(",", ":")), safe="${}:,")
    return g.DashboardLink(title=title, type="link", uri=f"/explore?schemaVersion=1&panes={panes}", icon="bolt",
                           tooltip="Open these queries in Explore", targetBlank=True)


def explore_targets(title: str, targets: list) -> g.DashboardLink:
    fields = ("expr", "queryType") if isinstance(targets[0], LokiTarget) else ("expr",)
    return explore(title, targets[0].datasource, [{f: getattr(t, f) for f in fields} for t in targets])


# --- panels -------------------------------------------------------------------------------

def steps(base: str, *more: tuple[float, str]) -> list[g.Threshold]:
    """Threshold steps: a base colour, then (value, colour) pairs in increasing order."""
    return [g.Threshold(base, 0, 0.0)] + [g.Threshold(color, i, float(value))
                                          for i, (value, color) in enumerate(more, 1)]


def value_map(*items: tuple[str, str, str]) -> g.StatValueMappings:
    """Value mappings from (value, text, colour) triples."""
    return g.StatValueMappings(*(g.StatValueMappingItem(text, value, color) for value, text, color in items))


def _common(title: str, targets: list, unit: str, description: str, w: int, h: int, links, explore_link) -> dict:
    if not unit or not description:
        raise ValueError(f"panel {title!r}: a unit and a description are required")
    if not targets:
        raise ValueError(f"panel {title!r}: no query")
    targets = [attr.evolve(t, refId=t.refId or chr(ord("A") + i)) for i, t in enumerate(targets)]
    links = ([explore_targets(f"Explore: {title}", targets)] if explore_link else []) + list(links)
    return dict(title=title, description=description, targets=targets, dataSource=targets[0].datasource,
                gridPos=g.GridPos(h=h, w=w, x=0, y=0), links=links)


def timeseries(title, targets, *, unit, description, w=12, h=8, stack=False, thresholds=None, links=(),
               explore=False) -> g.TimeSeries:
    """Lines (or stacked areas); thresholds are drawn as dashed lines."""
    return g.TimeSeries(**_common(title, targets, unit, description, w, h, links, explore), unit=unit,
                        fillOpacity=40 if stack else 10, stacking={"mode": "normal", "group": "A"} if stack else {},
                        thresholds=thresholds or steps("green"), thresholdsStyleMode="dashed" if thresholds else "off",
                        tooltipMode="multi", tooltipSort="desc")


def stat(title, targets, *, unit, description, w=6, h=4, thresholds=None, mappings=(), decimals=None, graph=True,
         text_mode="auto", color_mode="value", links=(), explore=False) -> g.Stat:
    """The last value of each series, coloured by thresholds."""
    return g.Stat(**_common(title, targets, unit, description, w, h, links, explore), format=unit,
                  thresholds=thresholds or steps("green"), mappings=list(mappings), decimals=decimals,
                  graphMode="area" if graph else "none", textMode=text_mode, colorMode=color_mode,
                  reduceCalc="lastNotNull", color={"mode": "thresholds"},
                  noValue=None)  # grafanalib's default shows the word "none" when there is no data


def gauge(title, targets, *, unit, description, thresholds, min=0, max=1, w=6, h=6, links=(),
          explore=False) -> g.GaugePanel:
    return g.GaugePanel(**_common(title, targets, unit, description, w, h, links, explore), format=unit,
                        thresholds=thresholds, min=min, max=max, calc="lastNotNull")


def bargauge(title, targets, *, unit, description, thresholds, min=0, max=None, w=12, h=8, links=(),
             explore=False) -> g.BarGauge:
    return g.BarGauge(**_common(title, targets, unit, description, w, h, links, explore), format=unit,
                      thresholds=thresholds, min=min, max=max, calc="lastNotNull", displayMode="gradient")


def table(title, targets, *, unit, description, w=12, h=8, transformations=(), sort_by=None, links=(),
          explore=False) -> g.Table:
    """Instant rows (use prom(..., table=True)), sorted by one column, highest first."""
    return g.Table(**_common(title, targets, unit, description, w, h, links, explore), unit=unit,
                   transformations=list(transformations),
                   sortBy=[g.TableSortByField(displayName=sort_by, desc=True)] if sort_by else [])


def heatmap(title, targets, *, unit, description, cell_unit="reqps", w=12, h=8, links=(), rows=False,
            explore=False) -> g.Heatmap:
    """Histogram buckets over time: `unit` is the bucket axis, `cell_unit` the colour scale.
    rows=True: each series is a row of its own, labelled by its legend, in the order Prometheus
    returns them (a range query's series are sorted by their labels); for buckets that are not
    a cumulative `le` histogram, e.g. hours of the day."""
    if not rows:
        targets = [attr.evolve(t, format="heatmap") for t in targets]
    options = {"cellValues": {"unit": cell_unit}}
    if rows:
        options["rowsFrame"] = {"layout": "unknown"}  # a row's label is its name, not a bucket bound
    return g.Heatmap(**_common(title, targets, unit, description, w, h, links, explore), dataFormat="tsbuckets",
                     yAxis=g.YAxis(format=unit), options=options,
                     extraJson={"fieldConfig": {"defaults": {"unit": unit}}})


def logs(title, targets, *, description, w=24, h=14, links=(), explore=True) -> g.Logs:
    """Log lines (unit "none": a line has no unit, but every panel declares one)."""
    return g.Logs(**_common(title, targets, "none", description, w, h, links, explore), showTime=True,
                  wrapLogMessages=True, enableLogDetails=True,
                  extraJson={"fieldConfig": {"defaults": {"unit": "none"}}})


def text(title, content, *, description, w=24, h=6, links=()) -> g.Text:
    """Markdown (unit "none", as for logs); the only panel without a query."""
    if not description:
        raise ValueError(f"panel {title!r}: a description is required")
    return g.Text(title=title, description=description, content=textwrap.dedent(content).strip(), links=list(links),
                  gridPos=g.GridPos(h=h, w=w, x=0, y=0), extraJson={"fieldConfig": {"defaults": {"unit": "none"}}})


def row(title: str) -> g.RowPanel:
    """A row header (Grafana's row model has no description or unit)."""
    return g.RowPanel(title=title, gridPos=g.GridPos(h=1, w=24, x=0, y=0))


def layout(panels: list) -> list:
    """Place panels left to right in their sizes, wrapping at 24 columns; rows start a line."""
    placed, x, y, line = [], 0, 0, 0
    for panel in panels:
        w, h = panel.gridPos.w, panel.gridPos.h
        if isinstance(panel, g.RowPanel) or x + w > 24:
            x, y, line = 0, y + line, 0
        placed.append(attr.evolve(panel, gridPos=g.GridPos(h=h, w=w, x=x, y=y)))
        x, line = x + w, max(line, h)
    return placed


def dashboard(key: str, description: str, panels: list, variables=("tenant", "model", "instance")) -> g.Dashboard:
    """A dashboard with its fixed uid, the shared variables and links, panel ids 1..n in order."""
    return g.Dashboard(
        title=TITLES[key], uid=UIDS[key], description=description, tags=["llm-router"],
        panels=layout(panels), links=dashboard_links(key),
        templating=g.Templating([datasource_variable(), *(VARIABLES[name]() for name in variables)]),
        time=g.Time("now-1h", "now"), refresh="30s", graphTooltip=g.GRAPH_TOOLTIP_MODE_SHARED_CROSSHAIR,
        # Provisioned from code: edits belong in the grafanalib source, not the UI.
        editable=False,
    ).auto_panel_ids()


# --- grafanalib 0.7.1 quirks --------------------------------------------------------------

# Top-level keys of the pre-Grafana-5 model (rows, style...) that the current one has not.
_LEGACY_DASHBOARD = ("__inputs", "hideControls", "rows", "sharedCrosshair", "style")
# Panel keys of the Angular era; maxDataPoints is grafanalib's default of 100 points per
# panel, which would coarsen every graph (Grafana derives it from the panel width).
_LEGACY_PANEL = ("editable", "error", "height", "maxDataPoints", "minSpan", "span")
# Target keys of old query editors; intervalFactor 2 would halve every query's resolution.
_LEGACY_TARGET = ("intervalFactor", "metric", "query", "step", "target")
_ROW_KEYS = ("collapsed", "datasource", "gridPos", "id", "panels", "repeat", "title", "type")
# Options of current panels that grafanalib 0.7.1 predates (Grafana fills in these same
# defaults on load; writing them keeps each panel valid against its plugin's schema).
_OPTION_DEFAULTS = {
    "bargauge": {"legend": {"calcs": [], "displayMode": "list", "placement": "bottom", "showLegend": False},
                 "maxVizHeight": 300, "minVizHeight": 16, "minVizWidth": 8, "sizing": "auto"},
    "gauge": {"minVizHeight": 75, "minVizWidth": 75, "sizing": "auto"},
    "logs": {"showLogContextToggle": False},
    "stat": {"percentChangeColorMode": "standard", "showPercentChange": False, "wideLayout": True},
    "table": {"frameIndex": 0},
}


def fix_quirks(dashboard: dict) -> dict:
    """Turn grafanalib 0.7.1's rendering of a dashboard into Grafana's current JSON model."""
    d = _drop_nulls(dashboard)  # grafanalib writes every unset option as null
    d["schemaVersion"] = SCHEMA_VERSION  # grafanalib says 12 (Grafana 4), which re-runs every migration
    for key in _LEGACY_DASHBOARD:
        d.pop(key, None)
    d["timepicker"].pop("time_options", None)  # dropped from the model in Grafana 8
    for variable in d["templating"]["list"]:
        _fix_variable(variable)
    for panel in d["panels"]:
        _fix_panel(panel)
    return d


def _drop_nulls(value):
    if isinstance(value, dict):
        return {k: _drop_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_nulls(v) for v in value]
    return value


def _fix_variable(var: dict) -> None:
    for key in ("tagValuesQuery", "tagsQuery", "useTags"):  # tags on variables went in Grafana 8
        var.pop(key, None)
    if var["type"] != "interval":  # interval-only settings written on every variable
        for key in ("auto", "auto_count", "auto_min"):
            var.pop(key, None)
    var.get("current", {}).pop("tags", None)
    if var.get("includeAll") and not var.get("current", {}).get("value"):
        # Without a default grafanalib writes current {text: null, value: null}: start on All.
        all_ = ["$__all"] if var.get("multi") else "$__all"
        var["current"] = {"selected": True, "text": ["All"] if var.get("multi") else "All", "value": all_}


def _fix_panel(panel: dict) -> None:
    if panel["type"] == "row":
        # RowPanel inherits every panel field (targets, fieldConfig...), which rows have not.
        for key in [k for k in panel if k not in _ROW_KEYS]:
            del panel[key]
        return
    for key in _LEGACY_PANEL:
        panel.pop(key, None)
    for target in panel.get("targets", []):
        for key in _LEGACY_TARGET:
            target.pop(key, None)
        if target.get("interval") == "":
            del target["interval"]
    defaults = panel["fieldConfig"]["defaults"]
    panel["fieldConfig"].setdefault("overrides", [])
    # Thresholds: Stat's default is the string "" instead of a list; the base step's value is
    # the string "null" instead of null (-Infinity); and each step carries the Angular graph's
    # op/yaxis/line/index, which the current model has not.
    steps_ = defaults.setdefault("thresholds", {"mode": "absolute", "steps": []})["steps"]
    defaults["thresholds"]["steps"] = [
        {"color": s["color"], "value": None if s.get("value", "null") == "null" else s["value"]}
        for s in (steps_ if isinstance(steps_, list) else [])
    ] or [{"color": "green", "value": None}]
    fix = {"bargauge": _fix_bargauge, "gauge": _fix_gauge, "heatmap": _fix_heatmap, "table": _fix_table}
    if panel["type"] in fix:
        fix[panel["type"]](panel, defaults)
    if "options" in panel:
        panel["options"] = {**_OPTION_DEFAULTS.get(panel["type"], {}), **panel["options"]}
    if panel["type"] == "timeseries":
        panel["options"]["legend"]["showLegend"] = True  # TimeSeries' legend predates showLegend


def _reduce(calcs: list, values: bool, limit=None) -> dict:
    return {"calcs": calcs, "fields": "", "values": values, **({"limit": limit} if limit else {})}


def _fix_bargauge(panel: dict, defaults: dict) -> None:
    # BarGauge writes the Grafana 6 `options.fieldOptions` (with a second copy of the thresholds)
    # instead of fieldConfig.defaults + options.reduceOptions, and Gauge-only marker options.
    options = panel["options"]
    legacy = options.pop("fieldOptions")
    defaults.update(legacy["defaults"])
    if "title" in defaults:
        defaults["displayName"] = defaults.pop("title")
    defaults["mappings"] = legacy["mappings"]
    options["reduceOptions"] = _reduce(legacy["calcs"], legacy["values"], legacy.get("limit"))
    options.pop("showThresholdLabels", None)
    options.pop("showThresholdMarkers", None)
    options.update({"showUnfilled": True, "valueMode": "color", "namePlacement": "auto"})


def _fix_gauge(panel: dict, defaults: dict) -> None:
    # GaugePanel writes its reduce options into fieldConfig.defaults (calcs, values, limit,
    # override) and its marker options into fieldConfig itself; it has no `options` at all.
    field_config = panel["fieldConfig"]
    panel["options"] = {
        "reduceOptions": _reduce(defaults.pop("calcs"), defaults.pop("values"), defaults.pop("limit", None)),
        "showThresholdLabels": field_config.pop("showThresholdLabels"),
        "showThresholdMarkers": field_config.pop("showThresholdMarkers"),
        "orientation": "auto",
    }
    defaults.pop("override", None)
    if "title" in defaults:
        defaults["displayName"] = defaults.pop("title")


def _fix_heatmap(panel: dict, defaults: dict) -> None:
    # Heatmap writes the Angular heatmap's top-level fields and `options: []` (a list): the
    # current heatmap reads everything from an options object.
    legacy = {key: panel.pop(key, None) for key in (
        "cards", "color", "dataFormat", "heatmap", "hideZeroBuckets", "highlightCards", "legend",
        "reverseYBuckets", "tooltip", "xAxis", "xBucketNumber", "xBucketSize", "yAxis", "yBucketBound",
        "yBucketNumber", "yBucketSize")}
    panel["options"] = {
        "calculate": False,  # the buckets come from Prometheus (format "heatmap")
        "cellGap": 1,
        "color": {"mode": "scheme", "scheme": "Oranges", "fill": "dark-orange", "scale": "exponential",
                  "exponent": 0.5, "steps": 64, "reverse": False},
        "exemplars": {"color": "rgba(255,0,255,0.7)"},
        "filterValues": {"le": 1e-9},
        "legend": {"show": True},
        "rowsFrame": {"layout": "auto"},
        "showValue": "never",
        "tooltip": {"mode": "single", "yHistogram": True},
        "yAxis": {"axisPlacement": "left", "reverse": False, "unit": legacy["yAxis"]["format"]},
        **(panel["options"] if isinstance(panel["options"], dict) else {}),
    }


def _fix_table(panel: dict, defaults: dict) -> None:
    # Table writes Grafana 7's top-level color/columns/fontSize/mappings and the deprecated
    # custom.displayMode "auto" (now custom.cellOptions, whose default is the same).
    for key in ("color", "columns", "fontSize"):
        panel.pop(key, None)
    defaults["mappings"] = panel.pop("mappings", [])
    if defaults["custom"].pop("displayMode") != "auto":
        raise ValueError(f"table {panel['title']!r}: set cell display modes through overrides")
    defaults["custom"]["inspect"] = False
