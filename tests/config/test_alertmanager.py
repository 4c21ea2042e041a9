"""Alertmanager config, routing and templates, checked with the real amtool."""

from __future__ import annotations

import json

import yaml

from toolbox import REPO, amtool, run  # noqa: F401 (amtool is a fixture)

AM = REPO / "alertmanager"
CONFIGS = [AM / "alertmanager.yml", *sorted((AM / "examples").glob("*.yml"))]


def test_configs_pass_amtool(amtool):
    run(amtool, "check-config", *CONFIGS)


def test_route_table_reaches_the_expected_receivers(amtool):
    result = run("bash", REPO / "scripts" / "check-alertmanager-routes.sh", *CONFIGS)
    cases = sum(1 for line in (AM / "tests" / "routes.txt").read_text().splitlines() if line and not line.startswith("#"))
    assert f"{cases * len(CONFIGS)} of {cases * len(CONFIGS)} cases" in result.stdout


def test_route_table_catches_a_wrong_receiver(amtool):
    wrong = run(amtool, "config", "routes", "test", f"--config.file={CONFIGS[0]}", "--verify.receivers=pager",
                "alertname=X", "severity=warning", check=False)
    assert wrong.returncode != 0


def test_opt_in_example_routes_and_inhibits_like_the_default():
    """The example only swaps receivers: routing and inhibition must not drift apart."""
    default = yaml.safe_load(CONFIGS[0].read_text())
    for example in CONFIGS[1:]:
        other = yaml.safe_load(example.read_text())
        assert other["route"] == default["route"], example
        assert other["inhibit_rules"] == default["inhibit_rules"], example
        assert {r["name"] for r in other["receivers"]} == {r["name"] for r in default["receivers"]}
        inline = _keys(other) & {"slack_api_url", "api_url", "routing_key", "service_key", "smtp_auth_password",
                                  "auth_password"}
        assert inline == set(), "secrets must come from *_file fields"


def _keys(node) -> set[str]:
    if isinstance(node, dict):
        return set(node) | set().union(*(_keys(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(_keys(item) for item in node))
    return set()


def test_every_default_receiver_posts_to_the_alert_sink():
    default = yaml.safe_load(CONFIGS[0].read_text())
    for receiver in default["receivers"]:
        (hook,) = receiver["webhook_configs"]
        assert hook["url"] == f"http://alert-sink:9095/webhook/{receiver['name']}"


def test_notification_template_shows_summary_severity_labels_and_runbook(amtool, tmp_path):
    alert = {
        "status": "firing",
        "labels": {"alertname": "TenantBudgetExhausted", "severity": "warning", "tenant": "search", "job": "llm-router"},
        "annotations": {"summary": "Tenant search has exhausted its monthly budget", "description": "402s follow.",
                        "runbook_url": "docs/runbooks/TenantBudgetExhausted.md",
                        "dashboard_url": "http://127.0.0.1:3000/d/llm-router-tenants"},
        "startsAt": "2026-11-28T10:00:00Z", "endsAt": "0001-01-01T00:00:00Z",
    }
    data = {"receiver": "chat", "status": "firing", "alerts": [alert], "groupLabels": {"alertname": "TenantBudgetExhausted"},
            "commonLabels": alert["labels"], "commonAnnotations": alert["annotations"], "externalURL": "http://am:9093"}
    path = tmp_path / "data.json"
    path.write_text(json.dumps(data))
    result = run(amtool, "template", "render", f"--template.glob={AM / 'templates' / '*.tmpl'}",
                 f"--template.data={path}", '--template.text={{ template "llm_router.title" . }}\n{{ template "llm_router.text" . }}')
    text = result.stdout
    assert text.startswith("[FIRING:1] TenantBudgetExhausted (warning)")
    for expected in ("Tenant search has exhausted its monthly budget", "Severity: warning | Tenant: search",
                     "Runbook: docs/runbooks/TenantBudgetExhausted.md", "Dashboard: http://127.0.0.1:3000/d/llm-router-tenants"):
        assert expected in text, text
