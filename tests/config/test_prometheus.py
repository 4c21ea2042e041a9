"""Prometheus config and rules, checked with the real promtool, and the contract between
alerts, their unit tests, runbooks, dashboards and the metrics the router emits."""

from __future__ import annotations

import re
import sys

import pytest
import yaml

from toolbox import REPO, amtool, promtool, run  # noqa: F401 (fixtures)

PROM = REPO / "prometheus"
RULE_FILES = sorted((PROM / "rules").glob("*.yml"))
TEST_FILES = sorted((PROM / "tests").glob("*.test.yml"))
CONFIG = yaml.safe_load((PROM / "config.yaml").read_text())
SEVERITIES = {"critical", "warning", "info", "none"}
RUNBOOK_SECTIONS = ["## Impact", "## What to check", "## What to do", "## Tuning"]


def rules():
    for path in RULE_FILES:
        for group in yaml.safe_load(path.read_text())["groups"]:
            yield from group["rules"]


ALERTS = {rule["alert"]: rule for rule in rules() if "alert" in rule}
RECORDS = {rule["record"]: rule for rule in rules() if "record" in rule}


def test_generated_rules_are_current():
    run(sys.executable, PROM / "generate.py", "--check")


def _generator():
    import importlib.util

    spec = importlib.util.spec_from_file_location("prometheus_generate", PROM / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_latency_thresholds_must_be_bucket_boundaries_of_both_latency_histograms():
    import copy

    generate = _generator()
    buckets = {name: generate.histogram_buckets(name) for name in generate.LATENCY_HISTOGRAMS}
    assert set(buckets) == {"llm_router_chat_request_duration_seconds", "llm_router_tenant_request_duration_seconds"}
    generate.check_thresholds(CONFIG, buckets)  # the shipped configuration
    for path, value, culprit in (
        (("latency", "threshold_seconds"), 7.5, "llm_router_tenant_request_duration_seconds"),  # chat only
        (("apdex", "satisfied_seconds"), 4, "llm_router_chat_request_duration_seconds"),
        (("apdex", "tolerating_seconds"), 25, "llm_router_tenant_request_duration_seconds"),
    ):
        config = copy.deepcopy(CONFIG)
        config["slo"][path[0]][path[1]] = value
        expected = f"slo.{path[0]}.{path[1]} = {value} is not a bucket boundary of {culprit}"
        with pytest.raises(ValueError, match=expected):
            generate.check_thresholds(config, buckets)
    config = copy.deepcopy(CONFIG)
    config["slo"]["apdex"]["satisfied_seconds"] = config["slo"]["apdex"]["tolerating_seconds"]
    with pytest.raises(ValueError, match="must be below"):
        generate.check_thresholds(config, buckets)


def test_config_and_rules_pass_promtool_with_every_lint(promtool):
    run(promtool, "check", "config", "--lint=all", "--lint-fatal", PROM / "prometheus.yml")
    run(promtool, "check", "rules", "--lint=all", "--lint-fatal", *RULE_FILES)


def test_promtool_unit_tests_pass(promtool):
    result = run(promtool, "test", "rules", *[p.name for p in TEST_FILES], cwd=PROM / "tests")
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_silent_unit_test():
    firing: set[str] = set()
    silent: set[str] = set()
    for path in TEST_FILES:
        for case in yaml.safe_load(path.read_text()).get("tests", []):
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else silent).add(check["alertname"])
    assert set(ALERTS) - firing == set(), "alerts without a case where they fire"
    # Watchdog always fires by design: it has no silent case.
    assert set(ALERTS) - silent - {"Watchdog"} == set(), "alerts without a case where they must not fire"


@pytest.mark.parametrize("name", sorted(ALERTS))
def test_alert_is_labelled_annotated_and_has_a_runbook(name):
    alert = ALERTS[name]
    assert alert["labels"]["severity"] in SEVERITIES
    annotations = alert["annotations"]
    assert set(annotations) >= {"summary", "description", "runbook_url", "dashboard_url"}
    assert annotations["runbook_url"].endswith(f"/{name}.md")
    runbook = REPO / "docs" / "runbooks" / f"{name}.md"
    assert runbook.exists(), f"missing runbook {runbook}"
    text = runbook.read_text()
    assert text.startswith(f"# {name}\n")
    positions = [text.find(section) for section in RUNBOOK_SECTIONS]
    assert -1 not in positions and positions == sorted(positions), f"{runbook} needs sections {RUNBOOK_SECTIONS}"
    uid = annotations["dashboard_url"].rsplit("/d/", 1)[1]
    assert uid in CONFIG["dashboards"].values()


def test_recording_rule_names_follow_level_metric_operations():
    for name in RECORDS:
        level, metric, operations = name.split(":")
        assert level and operations and metric.startswith("llm_router_"), name


_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "offset", "bool"}


def _metric_names(expr: str) -> set[str]:
    """Metric names a PromQL expression selects (a small lexer: strings, matchers, ranges
    and grouping clauses out; what is left that is not a function or keyword is a name)."""
    from_regex = {re.sub(r"\(_total\)\?$", "_total", m) for m in re.findall(r'__name__=~"([^"]+)"', expr)}
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"(?<![0-9.])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        if match.group() in _KEYWORDS or text[match.end():].lstrip().startswith("("):
            continue
        names.add(match.group())
    return names | from_regex


def test_every_metric_a_rule_uses_is_emitted_or_listed():
    from llm_router.telemetry import metrics

    router = set()
    for value in vars(metrics).values():
        name = getattr(value, "_name", None)
        if isinstance(name, str) and name.startswith("llm_router_"):
            kind = getattr(value, "_type", "")
            router.add(name + ("_total" if kind == "counter" else ""))
            if kind == "histogram":
                router |= {name + suffix for suffix in ("_bucket", "_count", "_sum")}
    stack = set(yaml.safe_load((PROM / "stack-metrics.yaml").read_text())["metrics"].keys())
    unknown = {}
    for rule in rules():
        for name in _metric_names(rule["expr"]):
            if name not in router and name not in stack and name not in RECORDS:
                unknown.setdefault(rule.get("alert") or rule.get("record"), set()).add(name)
    assert unknown == {}
