"""Abuse from clients: a flood of feedback for answers that do not exist, and requests
that claim a tenant they cannot prove."""

from __future__ import annotations

import multiprocessing
import statistics
import threading
import time
import uuid

import pytest
import requests

from chaoslib import chaos_router  # noqa: F401 (a fixture)
from chaoslib import Client, Stored, Traffic, chaos_config, metric_tokens_match, prices, reconcile, record
from conftest import as_tenant, metric_sum

pytestmark = pytest.mark.live

FLOODERS = 24
CHATS = 150


def chat_latencies(url: str, name: str, count: int) -> tuple[list, list[float]]:
    client = Client(url)
    received = [client.chat(f"{name}-{i:04d}", "search", "sim-fast", f"{name} {i}") for i in range(count)]
    client.drop()
    return received, [r.seconds for r in received]


def flood_feedback(url: str, clients: int, stop, results) -> None:
    """``clients`` threads posting feedback for ids never answered until ``stop``; puts
    (statuses, seconds) on ``results``."""
    statuses: list[int] = []
    seconds: list[float] = []

    def post() -> None:
        session = requests.Session()
        while not stop.is_set():
            started = time.monotonic()
            response = session.post(f"{url}/v1/feedback", headers=as_tenant("support"), timeout=30,
                                    json={"request_id": uuid.uuid4().hex, "thumbs": "down"})
            seconds.append(time.monotonic() - started)
            statuses.append(response.status_code)

    threads = [threading.Thread(target=post) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    results.put((statuses, seconds))


def quantile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


def test_bogus_feedback_flood_does_not_hold_up_chat(chaos_router):
    """24 clients post feedback for ids that were never answered, as fast as they can,
    while one client chats. Every bogus feedback gets 404 (none waits for long: a
    bounded few wait once for another worker's answer); chat latency with and without the
    flood is reported (p50, p99, their ratios) - not asserted - and the chats reconcile."""
    config = chaos_config()
    table = prices(config)
    router = chaos_router(2, config)
    warm, _ = chat_latencies(router.url, "warm", 20)
    quiet, quiet_seconds = chat_latencies(router.url, "quiet", CHATS)
    # The flood runs in a process of its own, so its 24 threads do not compete with the
    # chatting client for this process's GIL (what is measured is the router).
    context = multiprocessing.get_context("fork")
    stop, results = context.Event(), context.Queue()
    flood = context.Process(target=flood_feedback, args=(router.url, FLOODERS, stop, results), daemon=True)
    flood.start()
    time.sleep(0.5)
    flooded, flooded_seconds = chat_latencies(router.url, "flooded", CHATS)
    stop.set()
    statuses, feedback_seconds = results.get(timeout=60)
    flood.join(30)
    samples = router.settle()
    assert statuses and set(statuses) == {404}, set(statuses)
    assert metric_sum(samples, "llm_router_feedback_total") == 0
    received = warm + quiet + flooded
    assert {r.outcome for r in received} == {"answered"}
    stored = Stored.read(router.state_dir)
    result = reconcile(received, stored, table, metrics=samples)
    metric_tokens_match(samples, stored)
    figures = {
        "chat_p50_ms": [round(quantile(quiet_seconds, 0.5) * 1000, 1), round(quantile(flooded_seconds, 0.5) * 1000, 1)],
        "chat_p99_ms": [round(quantile(quiet_seconds, 0.99) * 1000, 1),
                        round(quantile(flooded_seconds, 0.99) * 1000, 1)],
    }
    figures["p50_ratio"] = round(figures["chat_p50_ms"][1] / figures["chat_p50_ms"][0], 2)
    figures["p99_ratio"] = round(figures["chat_p99_ms"][1] / figures["chat_p99_ms"][0], 2)
    print(f"\nchat latency without / with {FLOODERS} bogus-feedback clients: {figures}")
    record("24 clients posting bogus feedback ids", f"{FLOODERS} clients posting unknown ids", len(statuses), result,
           bogus_feedback=len(statuses), feedback_p50_ms=round(quantile(feedback_seconds, 0.5) * 1000, 1), **figures)


def test_spoofed_tenant_header_is_refused(chaos_router):
    """Requests naming tenant research by header with no key, with a wrong key, or with
    another tenant's key, under load: 401 (403 for the other tenant's key), nothing
    charged to research, no answer from research's cache, no feedback accepted on
    research's answers - then research, with its key, rates its answer: 201."""
    config = chaos_config(time_scale=0.01)
    table = prices(config)
    router = chaos_router(2, config)
    legit_client = Client(router.url)
    # research's own answers, cacheable (the same body again and again, on one connection:
    # one worker, so the later ones are cache hits).
    legit = [legit_client.chat(f"research-own-{i}", "research", "sim-balanced", "what does research know?",
                               cache=True) for i in range(4)]
    assert [r.outcome for r in legit] == ["answered"] * 4 and legit[-1].cache == "hit"
    answer = legit[0].request_id
    spoofs = {
        "no key": ({"X-Tenant-ID": "research"}, 401, "missing_api_key"),
        "wrong key": ({"X-Tenant-ID": "research", "Authorization": "Bearer sk-not-research"}, 401,
                      "invalid_api_key"),
        "wrong key alone": ({"Authorization": "Bearer sk-not-research"}, 401, "invalid_api_key"),
        "another tenant's key": ({"X-Tenant-ID": "research", **as_tenant("support")}, 403, "tenant_mismatch"),
    }
    attempts: list = []
    feedback: dict[str, int] = {}
    before = router.scrape()
    with Traffic(router.url, "spoof-load", threads=4, pause=0.01) as traffic:
        client = Client(router.url)
        for round_ in range(10):
            for name, (headers, status, code) in spoofs.items():
                for stream in (False, True):
                    got = client.chat(f"spoof-{round_}-{name.replace(' ', '-').replace(chr(39), '')}-{int(stream)}",
                                      "research", "sim-balanced", "what does research know?", stream=stream,
                                      cache=True, headers={"Content-Type": "application/json", **headers})
                    assert (got.status, got.error, got.cache) == (status, code, None), (name, got)
                    attempts.append(got)
        for name, (headers, _, _) in spoofs.items():
            feedback[name] = requests.post(f"{router.url}/v1/feedback", json={"request_id": answer, "thumbs": "down"},
                                           headers=headers, timeout=10).status_code
        feedback["support's own key"] = requests.post(
            f"{router.url}/v1/feedback", json={"request_id": answer, "thumbs": "down"}, headers=as_tenant("support"),
            timeout=10).status_code
        time.sleep(1.0)  # the load goes on a little after the spoofing
    samples = router.settle()
    assert feedback == {"no key": 401, "wrong key": 401, "wrong key alone": 401, "another tenant's key": 403,
                        "support's own key": 404}
    rated = requests.post(f"{router.url}/v1/feedback", json={"request_id": answer, "thumbs": "up"},
                          headers=as_tenant("research"), timeout=10)
    assert rated.status_code == 201 and rated.json()["rating"] == "positive"
    # No cache lookup for research happened during the spoofing but the load's own.
    hits = metric_sum(samples, "llm_router_cache_requests_total", tenant="research", result="hit") - \
        metric_sum(before, "llm_router_cache_requests_total", tenant="research", result="hit")
    load_hits = sum(1 for r in traffic.received if r.tenant == "research" and r.cache == "hit")
    assert hits == load_hits
    assert metric_sum(samples, "llm_router_chat_requests_total", tenant="other", code="401") == \
        sum(1 for a in attempts if a.status == 401)
    stored = Stored.read(router.state_dir)
    result = reconcile(legit + attempts + traffic.received, stored, table, metrics=samples)
    metric_tokens_match(samples, stored)
    research = sum(c.cost_usd for c in stored.charges if c.tenant == "research")
    assert research == pytest.approx(sum(r.cost(table) for r in legit + traffic.received if r.tenant == "research"),
                                     abs=1e-12)
    assert stored.spend["research"] == pytest.approx(research, abs=1e-12)
    record("spoofed tenant header", "X-Tenant-ID research with no key / a wrong key / another tenant's key",
           len(attempts) + len(feedback), result, spoofed_chats=len(attempts), spoofed_feedback=len(feedback),
           research_spend_usd=round(research, 6))
