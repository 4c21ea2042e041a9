"""The Logs dashboard's "Line contains" box and the Overview's alert links, on the generated
JSON (grafana/generated/): what Grafana sends for what a user types.

Grafana's Loki datasource escapes only `'` in a single-value variable, so a query that puts
"$search" between double quotes breaks on a typed `"`. The dashboard uses `${search:json}`:
Grafana's `json` variable format writes the value with JSON.stringify, i.e. a quoted string
whose escapes (\\" \\\\ \\n \\uXXXX) are the ones a LogQL string literal takes. Here the
substitution is done with Python's json.dumps, the same encoding.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import unquote

import pytest

REPO = Path(__file__).resolve().parents[2]
GENERATED = REPO / "grafana" / "generated"
TYPED = ['abc', 'say "hi"', 'C:\\path', "it's", "a|b", "req-7f3a2c9d", "", "ünïcode", "tab\there", "`tick`"]


def _dashboard(uid: str) -> dict:
    return json.loads((GENERATED / f"{uid}.json").read_text())


def _loki_exprs(dashboard: dict) -> list[str]:
    return [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])
            if t.get("datasource", {}).get("type") == "loki"]


def _string_after_line_filter(query: str) -> str:
    """The string literal of the first `|=` line filter, decoded as LogQL decodes it."""
    match = re.search(r'\|=\s*("(?:[^"\\]|\\.)*")', query)
    assert match, f"no double-quoted |= filter in {query!r}"
    return json.loads(match.group(1))


def test_search_box_is_written_as_a_json_string():
    exprs = [e for e in _loki_exprs(_dashboard("llm-router-logs-traces")) if "search" in e]
    assert exprs, "the Logs dashboard has no query using the search box"
    for expr in exprs:
        assert '"$search"' not in expr and "${search:json}" in expr, expr


@pytest.mark.parametrize("typed", TYPED)
def test_whatever_is_typed_reaches_loki_as_a_valid_string(typed):
    for expr in _loki_exprs(_dashboard("llm-router-logs-traces")):
        if "${search:json}" not in expr:
            continue
        query = expr.replace("${search:json}", json.dumps(typed, ensure_ascii=False))
        assert _string_after_line_filter(query) == typed, query


def test_explore_links_keep_valid_pane_json():
    """In a link the query sits inside the URL's JSON: the `:json` form would close that
    string early, so links use the variable between escaped quotes."""
    dashboard = _dashboard("llm-router-logs-traces")
    urls = [link["url"] for p in dashboard["panels"] for link in p.get("links", []) if "{search" in link.get("url", "")]
    assert urls
    for url in urls:
        assert "${search:json}" not in url
        panes = unquote(url.split("panes=", 1)[1]).replace("${search}", "req-7f3a")
        for name in ("level:regex", "tenant:regex", "model:regex", "__from", "__to"):
            panes = panes.replace("${" + name + "}", "x")
        expr = json.loads(panes)["a"]["queries"][0]["expr"]
        assert _string_after_line_filter(expr) == "req-7f3a"


def test_overview_has_no_explore_link_to_alertmanager():
    """The Alertmanager datasource has no query editor: Explore on it opens empty."""
    for panel in _dashboard("llm-router-overview")["panels"]:
        for link in panel.get("links", []):
            url = unquote(link.get("url", ""))
            if url.startswith("/explore"):
                assert '"datasource":"alertmanager"' not in url.replace(" ", ""), (panel["title"], link["title"])
    titles = [link["title"] for p in _dashboard("llm-router-overview")["panels"] for link in p.get("links", [])]
    assert "Alertmanager alert groups" in titles, "the alert-groups link is the way into Alertmanager"
