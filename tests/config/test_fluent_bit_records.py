"""What reaches Loki for each kind of router line: fluent-bit/fluent-bit.yaml's pipeline
applied to lines written by the router's own formatter.

Fluent Bit cannot run here (no package of it installs from the registries this machine
reaches, and no image can be pulled), so the pipeline is split in three:

  * the parser filter (format json, reserve_data on, preserve_key off): modelled below
    (a JSON object merges into the record and `log` goes; anything else passes unchanged);
  * the Lua filter: the REAL script (fluent-bit/llm-router.lua), run in LuaJIT 2.1 through
    lupa, with Fluent Bit's conversion rule for JSON null (nil: the key disappears);
  * the Loki output: modelled from plugins/out_loki of Fluent Bit 5.1 and driven by the
    config's own `labels`, `structured_metadata_map_keys` and `remove_keys` (record
    accessor values become labels; each entry of the metadata map becomes structured
    metadata; every key used that way, and the removed ones, leave the JSON line).

What only a host with the images verifies: Fluent Bit's real msgpack<->Lua conversion and
the loki output's HTTP payload (tests/integration/test_full_stack.py, `make doctor`).
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import yaml

pytest.importorskip("lupa", reason="lupa (LuaJIT for Python) is a test dependency: make venv")
from lupa import luajit21  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((REPO / "fluent-bit" / "fluent-bit.yaml").read_text())
ROUTER_TAG = "llm-router.router"
SINK_TAG = "llm-router.alert-sink"
CONTAINER = "/llm-router-observability-router-1"
REQUEST_FACTS = ("trace_id", "span_id", "request_id", "tenant", "model")


def _filter(name: str) -> dict:
    return next(f for f in CONFIG["pipeline"]["filters"] if f["name"] == name)


def _output() -> dict:
    return next(o for o in CONFIG["pipeline"]["outputs"] if o["name"] == "loki")


# --- the three stages ---------------------------------------------------------------------


def docker_record(line: str, source: str = "stdout") -> dict:
    """What Docker's fluentd driver sends for one line of a container's output."""
    return {"log": line, "container_name": CONTAINER, "container_id": "0" * 64, "source": source}


def parse(record: dict) -> dict:
    parser = _filter("parser")
    assert parser["key_name"] == "log" and parser["reserve_data"] in (True, "on")
    try:
        parsed = json.loads(record[parser["key_name"]])
    except ValueError:
        return dict(record)
    if not isinstance(parsed, dict):
        return dict(record)
    kept = {k: v for k, v in record.items() if k != parser["key_name"]}  # preserve_key off
    return {**kept, **parsed}


class LuaFilter:
    """fluent-bit/llm-router.lua in LuaJIT, called the way Fluent Bit calls it."""

    def __init__(self) -> None:
        lua_filter = _filter("lua")
        self.call = lua_filter["call"]
        self.script = REPO / "fluent-bit" / Path(lua_filter["script"]).name
        self.runtime = luajit21.LuaRuntime(unpack_returned_tuples=True)
        self.runtime.execute(self.script.read_text())

    def _to_lua(self, value):
        if isinstance(value, dict):
            # Fluent Bit (enable_flb_null off) turns null into nil: the key is not in the table.
            return self.runtime.table_from({k: self._to_lua(v) for k, v in value.items() if v is not None})
        if isinstance(value, list):
            return self.runtime.table_from([self._to_lua(v) for v in value])
        return value

    def _from_lua(self, value):
        if luajit21.lua_type(value) == "table":
            items = dict(value.items())
            if items and all(isinstance(k, int) for k in items):
                return [self._from_lua(items[i]) for i in sorted(items)]
            return {k: self._from_lua(v) for k, v in items.items()}
        return value

    def __call__(self, tag: str, record: dict) -> tuple[int, dict]:
        code, _, out = self.runtime.globals()[self.call](tag, 1764367320.219, self._to_lua(record))
        return code, self._from_lua(out)


def _key_values(text: str) -> list[tuple[str, str]]:
    return [tuple(part.strip() for part in item.split("=", 1)) for item in text.split(",")]


def loki_entry(record: dict) -> tuple[dict, dict, dict]:
    """(stream labels, structured metadata, the JSON line) the loki output sends."""
    output = _output()
    assert "structured_metadata" not in output, "request facts go through the metadata map (see fluent-bit.yaml)"
    labels, removed = {}, set()
    for name, value in _key_values(output["labels"]):
        if value.startswith("$"):
            removed.add(value[1:])
            if record.get(value[1:]) not in (None, ""):
                labels[name] = str(record[value[1:]])
        else:
            labels[name] = value
    metadata = {}
    for accessor in (a.strip() for a in output["structured_metadata_map_keys"].split(",")):
        key = accessor.lstrip("$")
        removed.add(key)
        if isinstance(record.get(key), dict):
            metadata.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in record[key].items()})
    removed |= {k.strip().lstrip("$") for k in output.get("remove_keys", "").split(",") if k.strip()}
    line = {k: v for k, v in record.items() if k not in removed}
    return labels, metadata, line


@pytest.fixture(scope="module")
def lua():
    return LuaFilter()


def ship(lua, line: str, tag: str = ROUTER_TAG, source: str = "stdout"):
    code, record = lua(tag, parse(docker_record(line, source)))
    assert code == 2, "the filter must keep the timestamp (code 2): code 1 rounds it through a Lua number"
    return loki_entry(record)


# --- real router lines --------------------------------------------------------------------


def router_line(message: str, logger: str = "llm_router.app", span=None, **extra) -> str:
    """One line exactly as the router writes it (its own filter and formatter), inside `span`."""
    from opentelemetry import trace

    from llm_router.telemetry.logs import ContextFilter, RouterJsonFormatter

    record = logging.LogRecord(logger, logging.INFO, __file__, 1, message, None, None)
    record.__dict__.update(extra)
    if span is None:
        ContextFilter("llm-router").filter(record)
    else:
        with trace.use_span(span, end_on_exit=False):
            ContextFilter("llm-router").filter(record)
    return RouterJsonFormatter().format(record)


@pytest.fixture(scope="module")
def span():
    from opentelemetry.sdk.trace import TracerProvider

    provider = TracerProvider()
    span = provider.get_tracer("test").start_span("POST /v1/chat/completions")
    yield span
    span.end()


def test_a_line_outside_a_request_sends_no_null_metadata(lua):
    line = router_line("config loaded")
    assert json.loads(line)["trace_id"] is None, "the router writes null outside a request: the case to handle"
    labels, metadata, shipped = ship(lua, line)
    assert "null" not in metadata.values() and "None" not in metadata.values(), metadata
    assert not set(metadata) & {"trace_id", "span_id", "request_id"}, metadata
    assert labels["service"] == "llm-router" and labels["level"] == "info"
    assert "trace_id" not in shipped


def test_an_access_line_keeps_its_ids_in_the_line_and_sends_them_as_metadata(lua, span):
    line = router_line("request", logger="llm_router.access", span=span, request_id="req-7f3a", tenant="search",
                       model="sim-fast", status=200)
    written = json.loads(line)
    labels, metadata, shipped = ship(lua, line)
    for key in REQUEST_FACTS:
        assert metadata[key] == written[key], key
        # The line keeps them: the Logs dashboard's "Line contains" finds a request or trace id.
        assert shipped[key] == written[key], key
    assert re.fullmatch(r"[0-9a-f]{32}", metadata["trace_id"])
    assert set(labels) == {"job", "service", "level", "container"}
    assert shipped["status"] == 200 and shipped["time"] == written["time"]
    assert "metadata" not in shipped, "the metadata map itself must leave the line"


def test_a_traceback_on_stderr_is_labelled_and_kept(lua):
    text = "Traceback (most recent call last):"
    labels, metadata, shipped = ship(lua, text, source="stderr")
    assert labels["service"] == "llm-router" and labels["level"] == "error"
    assert shipped["message"] == text and "log" not in shipped
    assert metadata == {}


def test_plain_stdout_and_other_services(lua):
    labels, _, _ = ship(lua, "booting worker", source="stdout")
    assert labels["level"] == "info"
    labels, _, _ = ship(lua, "Traceback (most recent call last):", tag=SINK_TAG, source="stderr")
    assert labels["service"] == "llm-alertsink" and labels["level"] == "error"
    labels, _, _ = ship(lua, "hello", tag="llm-router.something-new")
    assert labels["service"] == "something-new"


def test_the_container_label_has_no_leading_slash(lua):
    labels, _, shipped = ship(lua, router_line("config loaded"))
    assert labels["container"] == CONTAINER.lstrip("/")
    assert "container_id" not in shipped


def test_empty_strings_are_dropped_like_nulls(lua, span):
    line = router_line("request", logger="llm_router.access", span=span, request_id="r1", tenant="", model="m")
    _, metadata, shipped = ship(lua, line)
    assert "tenant" not in metadata and "tenant" not in shipped
    assert metadata["model"] == "m"


def test_labels_stay_low_cardinality(lua, span):
    line = router_line("request", logger="llm_router.access", span=span, request_id="r2", tenant="search",
                       model="sim-fast")
    labels, _, _ = ship(lua, line)
    assert not set(labels) & set(REQUEST_FACTS)


def test_the_lua_filter_runs_on_the_router_tags_after_the_parser():
    filters = CONFIG["pipeline"]["filters"]
    names = [f["name"] for f in filters]
    assert names.index("parser") < names.index("lua"), "the Lua filter works on the parsed record"
    lua_filter = _filter("lua")
    assert lua_filter["match"] == _filter("parser")["match"]
    assert not lua_filter.get("enable_flb_null"), "with flb_null, nulls would reach Loki again"
    assert (REPO / "fluent-bit" / Path(lua_filter["script"]).name).exists()
