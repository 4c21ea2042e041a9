"""bench/report_scenarios.py: the targets table of docs/performance.md is computed from the
run's figures (here synthetic ones), met or not met by the issue's thresholds."""

from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO))
from bench.report_scenarios import target_rows  # noqa: E402
from bench.scenarios import cells, parse_router_config  # noqa: E402


def run(ok_rps: float, p50_ms: float = 500, p99_ms: float = 510, errors: int = 0, cpu_us: float = 1500,
        steady: float = 0.01, max_in_flight: int = 2000, rss: float = 90, rnd: int = 1) -> dict:
    duration_s = 10
    return {"round": rnd, "ok_rps": ok_rps, "p50_us": p50_ms * 1e3, "p99_us": p99_ms * 1e3,
            "requests": int(ok_rps * duration_s) + errors, "connect": 0, "read": 0, "write": 0, "timeout": 0,
            "status": errors, "incomplete": 0, "cpu_us_per_request": cpu_us, "upstream_cpu_us_per_request": 50,
            "wrk_cpu_us_per_request": 20, "new_connections_per_request": steady,
            "steady_connections_per_request": steady, "rss_worker_max_mib": rss, "rss_total_mib": 3 * rss,
            "other_cpu_s": 0.1, "duration_us": duration_s * 1e6, "upstream_max_in_flight": max_in_flight}


def results(ours: dict, peer: dict | None = None) -> dict:
    plan = cells(quick=False)
    direct = {c.key: [run(c.clients / c.delay, p50_ms=c.delay * 1000 + 1, p99_ms=c.delay * 1000 + 2,
                          max_in_flight=c.clients)] for c in plan}
    runs = {"direct": direct, "default": {c.key: [ours.get(c.key) or run(c.clients / c.delay)] for c in plan}}
    targets = [{"name": "direct", "kind": "direct"}, {"name": "default", "kind": "router"}]
    if peer is not None:
        runs["litellm"] = {c.key: [peer.get(c.key) or run(c.clients / c.delay / 10)] for c in plan}
        targets.append({"name": "litellm", "kind": "peer"})
    return {"scenarios": {"cells": [{"key": c.key, "group": c.group, "clients": c.clients, "stream": c.stream}
                                    for c in plan], "runs": runs, "targets": targets}}


def verdicts(res: dict) -> dict[str, bool | None]:
    return {target.split(":")[0].split(" (")[0]: met for target, _, met in target_rows(res, None)}


def test_targets_met_and_not_met_follow_the_figures():
    fast = {"latency/50ms/plain/1": run(19, p50_ms=51.5), "latency/50ms/stream/1": run(19, p50_ms=51.5)}
    good = verdicts(results(fast, peer={}))
    assert good["512 clients, 500 ms, not streaming"] is True
    assert good["… p99 ≤ 1.5 × the upstream's"] is True
    assert good["… 0 errors"] is True
    assert good["Streaming at 512 clients"] is True
    assert good["2,000 concurrent streams of 5 s"] is True
    assert good["… RSS ≤ 150 MiB per worker"] is True
    assert good["Router CPU per request ≤ 2 ms, metrics and logs on"] is True
    assert good["Router-added latency at one client ≤ 2 ms p50"] is True
    assert good["New upstream connections per request ≤ 0.05, streams included"] is True
    assert good["Ahead of LiteLLM at every client count, in throughput"] is True

    bad = verdicts(results({
        "matrix/500ms/plain/512": run(500, p99_ms=900, errors=3, cpu_us=3700),
        "matrix/500ms/stream/512": run(700),
        "long/5s/stream/2000": run(300, max_in_flight=16, rss=200),
        "latency/50ms/plain/1": run(19, p50_ms=55),
        "matrix/500ms/stream/128": run(256, steady=1.0),
    }, peer={"matrix/500ms/plain/512": run(900)}))
    assert bad["512 clients, 500 ms, not streaming"] is False  # 0.49 x direct
    assert bad["… p99 ≤ 1.5 × the upstream's"] is False
    assert bad["… 0 errors"] is False
    assert bad["Streaming at 512 clients"] is False  # 0.68 x direct
    assert bad["2,000 concurrent streams of 5 s"] is False  # 16 at once
    assert bad["… RSS ≤ 150 MiB per worker"] is False
    assert bad["Router CPU per request ≤ 2 ms, metrics and logs on"] is False
    assert bad["Router-added latency at one client ≤ 2 ms p50"] is False
    assert bad["New upstream connections per request ≤ 0.05, streams included"] is False
    assert bad["Ahead of LiteLLM at every client count, in throughput"] is False


def test_targets_not_measured_without_cells_or_peers():
    rows = target_rows({"scenarios": None}, None)
    assert rows and all(met is None for _, _, met in rows)
    assert verdicts(results({}))["Ahead of LiteLLM at every client count, in throughput and added latency"] is None


def test_router_configuration_specs():
    assert parse_router_config("default:") == ("default", {})
    assert parse_router_config("gthread-8:LLM_ROUTER_WORKER_CLASS=gthread, LLM_ROUTER_THREADS=8") == (
        "gthread-8", {"LLM_ROUTER_WORKER_CLASS": "gthread", "LLM_ROUTER_THREADS": "8"})
