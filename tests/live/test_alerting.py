"""A real alert path on 127.0.0.1 (see harness.py): a backend fault fires an alert at the
sink and recovery resolves it; inhibition and routing in the real Alertmanager."""

from __future__ import annotations

import time

import pytest
import requests

from harness import SHORT_FOR, Load, admin, stack  # noqa: F401 (stack is a fixture)

pytestmark = pytest.mark.live


# --- the tests -------------------------------------------------------------------------------


def test_a_backend_fault_fires_then_resolves_at_the_sink(stack):
    router, sink = stack["router"], stack["sink"]
    sink.wait_for(60, receiver="heartbeat", alertname="Watchdog")
    with Load(router.url, "sim-frontier") as load:
        time.sleep(3)  # a few scrapes of healthy traffic first
        injected = time.monotonic()
        assert admin(router, "POST", model="sim-frontier", error_rate=1.0, duration_seconds=600).status_code == 201
        firing = sink.wait_for(90, receiver="chat", alertname="BackendCircuitOpen", status="firing")
        fired = time.monotonic()
        alert = next(a for a in firing["alerts"] if a["labels"]["alertname"] == "BackendCircuitOpen")
        assert alert["labels"]["model"] == "sim-frontier"
        assert alert["labels"]["severity"] == "warning"
        assert alert["runbook_url"].endswith("/BackendCircuitOpen.md")

        assert admin(router, "DELETE").status_code == 200
        recovered = time.monotonic()
        sink.wait_for(90, receiver="chat", alertname="BackendCircuitOpen", status="resolved")
        resolved = time.monotonic()
    # Fallbacks kept every request answered while the backend failed.
    assert set(load.codes) == {200}
    print(f"\nfault -> firing at the sink: {fired - injected:.1f}s; recovery -> resolved: {resolved - recovered:.1f}s "
          f"(scrape and evaluation 1s, for: {SHORT_FOR}, group_wait 1s, group_interval 2s)")


def test_inhibition_and_routing_in_the_real_alertmanager(stack):
    """A fast burn (critical, to the pager) silences the slow burn of the same SLO (warning)."""
    sink, alertmanager = stack["sink"], stack["alertmanager"]
    common = {"job": "llm-router", "slo": "availability"}
    alerts = [
        {"labels": {"alertname": "ErrorBudgetBurnFast", "severity": "critical", **common},
         "annotations": {"summary": "fast burn"}},
        {"labels": {"alertname": "ErrorBudgetBurnSlow", "severity": "warning", **common},
         "annotations": {"summary": "slow burn"}},
    ]
    response = requests.post(f"{alertmanager.url}/api/v2/alerts", json=alerts, timeout=5)
    assert response.status_code == 200
    sink.wait_for(30, receiver="pager", alertname="ErrorBudgetBurnFast")
    state = {a["labels"]["alertname"]: a["status"] for a in
             requests.get(f"{alertmanager.url}/api/v2/alerts", params={"filter": 'slo="availability"'}, timeout=5).json()}
    assert state["ErrorBudgetBurnSlow"]["state"] == "suppressed"
    assert state["ErrorBudgetBurnSlow"]["inhibitedBy"]
    time.sleep(3)  # past group_wait and group_interval: the warning would have arrived by now
    assert sink.notifications(alertname="ErrorBudgetBurnSlow") == []
