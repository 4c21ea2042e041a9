"""`make bench-quick`: the performance harness still runs end to end (its figures are never
asserted — they belong to the machine, not to the code)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.live

CONFIGS = ["off", "metrics", "metrics+logs", "full", "full-sampled-10%", "full-collector-down"]
SECTIONS = [
    "# Performance", "## How to reproduce", "## Machine", "## The worker model: why gevent", "## Throughput by telemetry level",
    "## Router overhead (open loop)", "## /metrics scrape time against label sets and workers",
    "### Does a scrape block request serving?", "## Memory (RSS per worker)", "## Observations from this run",
    "## Targets (issue 11)", "## Scenarios: the router in front of a fake upstream",
    "### 500 ms answers, not streaming", "### 500 ms answers, streaming", "### Router-added latency at one client",
    "## Peers",
]
# The scenarios' quick cells, and the targets every row of them is measured on.
SCENARIO_ROWS = ["| 8 | `direct` |", "| 8 | `default` |", "| 8 | `gthread-8` |", "| 128 | `default` |",
                 "| plain | `direct` |", "| plain | `default` |"]


@pytest.mark.skipif(shutil.which("wrk") is None, reason="wrk (Debian package) is not installed: make bench-quick installs it")
def test_quick_bench_writes_report_and_plots(tmp_path):
    pytest.importorskip("matplotlib", reason="the bench extra (matplotlib) is not installed")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "bench", "--quick", "--out", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = (out / "performance.md").read_text()
    for section in SECTIONS:
        assert section in report, section
    for config in CONFIGS:
        assert f"| `{config}` |" in report, config
        assert f"| throughput `{config}` |" in report, config
    for row in SCENARIO_ROWS:
        assert row in report, row
    # The targets table is computed: a quick run measures the one-client latency, not the rest.
    assert "| Router-added latency at one client ≤ 2 ms p50 |" in report
    assert report.count("| not measured |") >= 3
    assert "img/throughput.png" in report and "img/scrape.png" in report and "img/scenarios.png" in report
    assert "llm_router_overhead_seconds" in report
    for workers in (1, 2):
        assert f"scrape series, {workers} worker(s)" in report
    for plot in ("throughput.png", "scrape.png", "scenarios.png"):
        assert (out / "img" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
    # The report says it comes from the quick mode (its figures mean little).
    assert "Quick mode" in report
