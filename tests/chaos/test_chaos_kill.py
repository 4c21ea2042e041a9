"""SIGKILL under load: one worker at a time (several times), then the master and every
worker at once. Nothing charged may be lost, nothing may be charged twice, and the
counters must stay exact."""

from __future__ import annotations

import os
import random
import signal
import time

import pytest
import requests

from chaoslib import chaos_router  # noqa: F401 (a fixture)
from chaoslib import (Stored, Traffic, chaos_config, dead_process_counters, metric_tokens_match, prices, reconcile,
                      record, report_cost, same_money, start_prometheus)
from conftest import as_tenant, free_port, metric_sum

pytestmark = pytest.mark.live

KILLS = 3


def rate(url: str, request_id: str, tenant: str) -> int:
    return requests.post(f"{url}/v1/feedback", json={"request_id": request_id, "thumbs": "up"},
                         headers=as_tenant(tenant), timeout=10).status_code


def test_sigkill_one_worker_at_a_time_loses_nothing(chaos_router, tmp_path):
    """Three workers under steady load; one is SIGKILLed, three times. The new workers
    replay the dead ones' journals: every answer is charged once, and rateable; the cost
    and token counters equal the store; so does the report from real Prometheus."""
    config = chaos_config(time_scale=0.03)
    table = prices(config)
    start = time.time()
    metrics_port = free_port()
    router = chaos_router(3, config, {"LLM_ROUTER_METRICS_BIND": f"127.0.0.1:{metrics_port}"})
    prometheus = start_prometheus(tmp_path, metrics_port)
    rng = random.Random(12)
    killed: dict[int, str] = {}
    try:
        with Traffic(router.url, "kill", threads=8, keep_alive=False) as traffic:
            for _ in range(KILLS):
                time.sleep(1.5)
                workers = router.workers()
                pid = rng.choice(sorted(workers))
                os.kill(pid, signal.SIGKILL)
                killed[pid] = workers[pid]
                deadline = time.monotonic() + 30
                while len(set(router.workers()) - set(killed)) < 3:  # gunicorn replaces it
                    assert time.monotonic() < deadline, "no replacement worker"
                    time.sleep(0.1)
            time.sleep(1.0)
        received = traffic.received
        samples = router.settle()
        stored = Stored.read(router.state_dir)
        result = reconcile(received, stored, table, metrics=samples, killed_journals=set(killed.values()))
        metric_tokens_match(samples, stored)
        # Only the killed workers' journals were replayed (never a live one), and removed.
        assert {e["journal"] for e in router.events("journal_replayed")} <= set(killed.values())
        assert not set(killed.values()) & {p.stem.removeprefix("journal-") for p in router.journals()}
        # Answers served by a killed worker (charge from its journal) are rateable, once.
        from_killed = [c for c in stored.charges if c.charge_id.split(":")[0] in killed.values() and c.code == 200]
        others = [c for c in stored.charges if c.code == 200 and c not in from_killed][:10]
        assert from_killed, "the killed workers had served answers"
        for charge in from_killed + others:
            assert rate(router.url, charge.request_id, charge.tenant) == 201, charge
        assert rate(router.url, from_killed[0].request_id, from_killed[0].tenant) == 409
        result.report_usd = report_cost(prometheus, start, result.stored_usd)
        assert same_money(result.report_usd, result.stored_usd), (result.report_usd, result.stored_usd)
        record("SIGKILL one worker mid-load", "SIGKILL a worker (3 times)", KILLS, result,
               rated=len(from_killed) + len(others),
               recovered_charges=metric_sum(samples, "llm_router_ledger_recovered_charges_total"))
    finally:
        prometheus.stop()


def test_sigkill_master_and_every_worker_then_restart(chaos_router):
    """The master, its workers and its helpers SIGKILLed at once under load (a container's
    OOM kill): nothing runs to store what waits. Restarted on the same state directory, the
    first worker replays every journal: nothing charged is lost, and the counters the dead
    processes left plus the recovered charges the new ones counted equal the store."""
    config = chaos_config(time_scale=0.03)
    table = prices(config)
    router = chaos_router(2, config)
    with Traffic(router.url, "crash", threads=8) as traffic:
        time.sleep(2.0)
        journals = set(router.workers().values())
        traffic.stop_sending()  # the requests in flight die with the router; no new ones
        victims = router.kill_all()
    received = traffic.received
    assert len(router.journals()) >= 2, "the dead workers' journals are still there"
    before = dead_process_counters(router.metrics_dir)
    router.start(timeout=60)
    with Traffic(router.url, "after-crash", threads=4, limit=60) as more:
        pass
    received += more.received
    samples = router.settle()
    stored = Stored.read(router.state_dir)
    result = reconcile(received, stored, table, metrics=samples, killed_journals=journals,
                       extra_metric_usd=metric_sum(before, "llm_router_cost_usd_total"))
    metric_tokens_match(samples, stored, extra=before)
    assert not journals & {p.stem.removeprefix("journal-") for p in router.journals()}, "replayed and removed"
    assert not [r for r in more.received if r.outcome != "answered"]
    record("SIGKILL master and all workers, restart", f"SIGKILL of {len(victims)} processes at once", 1, result,
           recovered_charges=metric_sum(samples, "llm_router_ledger_recovered_charges_total"))
