"""The load generator (loadgen/locustfile.py) against a real router: Locust runs headless
for a few seconds, then its CSV and the router's /metrics must agree."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import requests

from conftest import REPO, metric_sum, parse_metrics

CHAT_ENTRIES = {"chat", "chat (repeat)", "chat stream", "bad input"}  # all POST /v1/chat/completions


@pytest.mark.live
def test_locust_drives_the_router_without_failures(live_router, tmp_path):
    router = live_router(workers=2)
    env = {
        **os.environ,
        # No think time, and enough bad input to see it in a 5 s run.
        "LOADGEN_WAIT": "0,0.02",
        "LOADGEN_WEIGHTS": "chat=40,repeat=20,stream=25,bad=15",
    }
    command = [
        sys.executable, "-m", "locust", "-f", str(REPO / "loadgen" / "locustfile.py"), "--headless",
        "--host", router.url, "-u", "5", "-r", "5", "-t", "5s", "--stop-timeout", "5",
        "--csv", str(tmp_path / "load"), "--html", str(tmp_path / "load.html"),
        "--only-summary", "--exit-code-on-error", "1",
    ]
    run = subprocess.run(command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    with open(tmp_path / "load_stats.csv", newline="") as file:
        rows = {(row["Type"], row["Name"]): row for row in csv.DictReader(file)}
    count = {name: int(row["Request Count"]) for (_, name), row in rows.items()}
    failures = sum(int(row["Failure Count"]) for row in rows.values())
    assert count["Aggregated"] > 0
    assert failures == 0, (tmp_path / "load_failures.csv").read_text()
    for name in ("chat", "chat (repeat)", "chat stream", "ttft", "bad input", "feedback"):
        assert count.get(name, 0) > 0, f"no {name!r} requests in {sorted(count)}"
    assert (tmp_path / "load.html").stat().st_size > 0

    samples = parse_metrics(requests.get(f"{router.url}/metrics", timeout=5).text)
    sent = sum(n for name, n in count.items() if name in CHAT_ENTRIES)
    assert metric_sum(samples, "llm_router_chat_requests_total") >= sent
    client_errors = sum(
        value for (name, labels), value in samples.items()
        if name == "llm_router_chat_requests_total" and dict(labels)["code"].startswith("4")
    )
    assert client_errors >= count["bad input"]
    assert metric_sum(samples, "llm_router_cache_requests_total", result="hit") > 0
    # Every rating Locust recorded was accepted (no failures), on whichever worker; as for the
    # chat requests, ratings sent while the users stop may be missing from Locust's CSV.
    assert metric_sum(samples, "llm_router_feedback_total") >= count["feedback"] > 0
