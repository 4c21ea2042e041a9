"""The PostgreSQL alerts and panels against a real postgres_exporter scraping a real,
throw-away PostgreSQL cluster (tests/pg.py), and a real Prometheus scraping the
exporter:

1. every postgres_exporter metric listed in prometheus/stack-metrics.yaml (the list the rule
   and dashboard tests hold every name to) is in the exporter's exposition, and every `pg_*`
   name a rule or a panel reads is in it, with the labels they aggregate or match on;
2. every PostgreSQL panel of the Stack health dashboard returns numbers from Prometheus (the
   live dashboard test exempts them: no exporter runs there), and every PostgreSQL alert's
   measured side (its expression without the final comparison) returns a number.

The exporter is Debian's prometheus-postgres-exporter (.ci/run installs it): 0.11 on Debian
12, older than the image compose pins (v0.17.1). The names used here are the same in both
(the stat_database, settings and stat_activity metrics kept their names when they moved
into collectors); 0.11 adds a `server` label that later releases dropped, which no rule or
panel relies on. Skips without the exporter or the server (fails under CI, where .ci/run
sets POSTGRES_BINDIR).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time

import pytest
import requests
import yaml

from conftest import REPO, LiveProcess, free_port
from pg import postgres, required  # noqa: F401 (a fixture)

sys.path.insert(0, str(REPO / "tests" / "config"))
from test_prometheus import _metric_names  # noqa: E402 (the PromQL lexer of the rule tests)
from toolbox import tool  # noqa: E402

pytestmark = pytest.mark.live

EXPORTER_NAMES = ("prometheus-postgres-exporter", "postgres_exporter")
STACK_METRICS = yaml.safe_load((REPO / "prometheus" / "stack-metrics.yaml").read_text())["metrics"]
LISTED = {name for name, about in STACK_METRICS.items() if about["component"] == "postgres-exporter"}
RULES = yaml.safe_load((REPO / "prometheus" / "rules" / "postgres-alerts.yml").read_text())["groups"]
ALERTS = [rule for group in RULES for rule in group["rules"] if "alert" in rule]
STACK_DASHBOARD = json.loads((REPO / "grafana" / "generated" / "llm-router-stack.json").read_text())
# Grafana's variables as Grafana would expand them for a short range with 1 s scrapes.
VARIABLES = {"__rate_interval": "4s", "__interval": "1s", "__range": "1m", "instance": ".*", "tenant": ".*",
             "model": ".*", "datasource": "prometheus"}
FINAL_COMPARISON = re.compile(r"\s*(?:==|!=|>=|<=|>|<)\s*[0-9.]+\s*$")


def exporter_binary() -> str:
    found = os.environ.get("POSTGRES_EXPORTER") or next(filter(None, map(shutil.which, EXPORTER_NAMES)), None)
    if not found:
        reason = ("postgres_exporter is not installed: apt-get install prometheus-postgres-exporter "
                  "(.ci/run does), or set POSTGRES_EXPORTER")
        (pytest.fail if required() else pytest.skip)(reason)
    return found


def expand(expr: str) -> str:
    return re.sub(r"\$\{?(\w+)\}?", lambda m: VARIABLES[m.group(1)], expr)


def postgres_panels() -> list[tuple[str, str]]:
    """(title, expr) of every Stack health query that reads postgres_exporter's metrics."""
    found = []
    for panel in STACK_DASHBOARD["panels"]:
        for target in panel.get("targets", []):
            if _metric_names(expand(target["expr"])) & LISTED:
                found.append((panel["title"], target["expr"]))
    return found


@pytest.fixture(scope="module")
def exporter(postgres, tmp_path_factory):  # noqa: F811 (the fixture imported above)
    binary = exporter_binary()
    database = postgres.new_database().rsplit("/", 1)[1]
    # Some work to count: a table, rows written, committed and rolled-back transactions.
    # (psql -c runs its statements as one transaction: one call each.)
    for sql in ("CREATE TABLE spend (tenant text PRIMARY KEY, usd numeric)",
                "INSERT INTO spend SELECT 'tenant-' || i, 0 FROM generate_series(1, 50) i",
                "UPDATE spend SET usd = usd + 1",
                "BEGIN; DELETE FROM spend; ROLLBACK"):
        postgres.admin(sql, database)
    port = free_port()
    tmp = tmp_path_factory.mktemp("postgres-exporter")
    process = LiveProcess(tmp, [binary, f"--web.listen-address=127.0.0.1:{port}"], port, env={
        # One database to connect to, as compose gives the image (DATA_SOURCE_URI); as the
        # superuser over the socket, so every session's state is visible to it.
        "DATA_SOURCE_NAME": f"postgresql://postgres@/{database}?host={postgres.folder}&port={postgres.port}"
                            "&sslmode=disable",
    }, ready_path="/metrics", name="postgres-exporter")
    process.cluster, process.database = postgres, database
    process.start()
    yield process
    process.stop()


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_]\w*)="((?:[^"\\]|\\.)*)"')


def scrape(exporter) -> dict[tuple[str, frozenset], float]:
    """{(name, labels): value}, names as Prometheus stores them (prometheus_client's parser
    would add `_total` to the exporter's counters, which have none)."""
    samples = {}
    for line in requests.get(f"{exporter.url}/metrics", timeout=10).text.splitlines():
        if match := _SAMPLE.match(line):
            name, labels, value = match.groups()
            samples[(name, frozenset(_LABEL.findall(labels or "")))] = float(value)
    return samples


def test_every_listed_and_used_name_is_emitted_with_its_labels(exporter):
    samples = scrape(exporter)
    emitted = {name for name, _ in samples}
    assert any(name == "pg_up" and value == 1 for (name, _), value in samples.items()), "no connection to PostgreSQL"
    assert LISTED, "stack-metrics.yaml lists no postgres-exporter metric"
    assert LISTED - emitted == set(), f"listed in stack-metrics.yaml, not emitted by {exporter_binary()}"

    used = {name for rule in ALERTS for name in _metric_names(rule["expr"]) if name.startswith("pg_")}
    used |= {name for _, expr in postgres_panels() for name in _metric_names(expand(expr))}
    assert used, "no rule or panel reads postgres_exporter"
    assert used - emitted == set(), "rules or panels read names the real exporter does not emit"

    def labels(name: str) -> set[str]:
        return {key for sample, label_set in samples for key, _ in label_set if sample == name}

    # What the rules and panels aggregate by or match on.
    for name in LISTED - {"pg_up", "pg_settings_max_connections", "pg_settings_superuser_reserved_connections"}:
        assert "datname" in labels(name), f"{name} has no datname label"
    states = {value for (name, label_set), _ in samples.items() if name == "pg_stat_activity_max_tx_duration"
              for key, value in label_set if key == "state"}
    assert {"active", "idle in transaction"} <= states, states
    datnames = {value for (name, label_set), _ in samples.items() if name == "pg_database_size_bytes"
                for key, value in label_set if key == "datname"}
    assert exporter.database in datnames, datnames


def test_postgres_panels_and_alerts_read_numbers_through_prometheus(exporter, tmp_path):
    data = tmp_path / "prometheus"
    data.mkdir()
    config = data / "prometheus.yml"
    config.write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        # The job name the rules and panels select (prometheus/prometheus.yml, config.yaml).
        "scrape_configs": [{"job_name": "postgres-exporter",
                            "static_configs": [{"targets": [f"127.0.0.1:{exporter.port}"]}]}],
    }))
    port = free_port()
    prometheus = LiveProcess(tmp_path, [
        str(tool("prometheus")), f"--config.file={config}", f"--storage.tsdb.path={data / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ], port, ready_path="/-/ready", name="prometheus")
    prometheus.start()
    try:
        def query(expr: str) -> list:
            response = requests.get(f"{prometheus.url}/api/v1/query", params={"query": expr}, timeout=10)
            assert response.status_code == 200, (expr, response.text)
            return response.json()["data"]["result"]

        # Enough scrapes for every rate() window ($__rate_interval 4 s: at least two samples).
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and float((query('count_over_time(pg_up{job="postgres-exporter"}[1m])')
                                                      or [{"value": [0, "0"]}])[0]["value"][1]) < 5:
            time.sleep(0.5)

        # Reads inside the panels' window, as the routers' batches make (the cache hit ratio
        # has no value for a database that reads nothing).
        for _ in range(5):
            exporter.cluster.admin("UPDATE spend SET usd = usd + 1", exporter.database)
            time.sleep(0.3)
        time.sleep(1.5)  # a scrape after the last of them

        panels = postgres_panels()
        assert {title for title, _ in panels} >= {"PostgreSQL", "Connections", "Transactions per second",
                                                  "Cache hit ratio", "Deadlocks", "Database size"}
        empty = [f"{title}: {expr}" for title, expr in panels
                 if not [s for s in query(expand(expr)) if s["value"][1] != "NaN"]]
        assert empty == [], "PostgreSQL panels without data from a real exporter:\n" + "\n".join(empty)

        measured = {rule["alert"]: FINAL_COMPARISON.sub("", rule["expr"]) for rule in ALERTS}
        assert all(measured[name] != rule["expr"] for name, rule in zip(measured, ALERTS)), measured
        silent = [f"{name}: {expr}" for name, expr in measured.items() if not query(expr)]
        assert silent == [], "alerts whose measured side reads nothing from a real exporter:\n" + "\n".join(silent)
        # And nothing fires on a healthy database.
        assert [name for name, rule in zip(measured, ALERTS) if query(rule["expr"])] == []
    finally:
        prometheus.stop()
