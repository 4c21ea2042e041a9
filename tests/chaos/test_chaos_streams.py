"""Streams cut short from every side: the client leaves, the upstream resets or hangs, the
router stops with 200 streams open. Each is charged for what it produced - the prompt and
the tokens that went out - and nothing else."""

from __future__ import annotations

import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from chaoslib import chaos_router  # noqa: F401 (a fixture)
from chaoslib import (Client, Stored, Traffic, chaos_config, dead_process_counters, metric_tokens_match, prices,
                      reconcile, record, upstream_model)
from conftest import REPO, metric_sum

sys.path.insert(0, str(REPO))
from bench.upstream import Upstream, UpstreamProcess  # noqa: E402

pytestmark = pytest.mark.live

ROUNDS = 6


@pytest.fixture
def upstream():
    with Upstream(delay=0.2, events=12).running() as up:
        yield up


def test_clients_disconnect_mid_stream(chaos_router, upstream):
    """Clients read n chunks of a stream whose upstream then says nothing more, and close
    the connection (n = 2, 5, 9); others leave before the first token. Each is charged the
    prompt plus exactly the n tokens that went out (nothing for the ones that left before
    any), counted as 499 in the metrics and the access log; the upstream sees every one of
    its connections closed; the backend slots come back (six rounds on four slots each)."""
    hang = {f"up-hang-{n}": n for n in (2, 5, 9)}
    models = [upstream_model(name, upstream.base_url, f"hang-after-{n}", timeout=30, concurrency=4)
              for name, n in hang.items()]
    models.append(upstream_model("up-wait", upstream.base_url, "hang-after-headers", timeout=30, concurrency=4))
    config = chaos_config(time_scale=0.02, upstream_models=models)
    table = prices(config)
    router = chaos_router(2, config)
    gone = []
    with Traffic(router.url, "disconnect-load", threads=3, pause=0.02) as traffic:
        for round_ in range(ROUNDS):
            def leave(model: str, i: int = round_):
                return Client(router.url).chat(f"leave-{model}-{i}", "support", model, f"stream {i} for {model}",
                                               stream=True, leave_after=hang[model])

            with ThreadPoolExecutor(len(hang)) as pool:
                gone += list(pool.map(leave, hang))
            started = upstream.stats()["streams_started"]
            got = Client(router.url).abandon(f"leave-up-wait-{round_}", "search", "up-wait", f"wait {round_}",
                                             until=lambda: upstream.stats()["streams_started"] > started)
            gone.append(got)
        stats = upstream.wait_for(lambda s: s["streams_cancelled"] == len(gone))
    samples = router.settle()
    assert [g.outcome for g in gone] == ["gone"] * len(gone)
    assert sorted(g.output_tokens for g in gone) == sorted([n for n in hang.values()] * ROUNDS + [0] * ROUNDS)
    assert stats["streams_started"] == len(gone) and stats["streams_completed"] == 0
    # 499 in the metrics and in the access line of each, the upstream slots all free.
    assert metric_sum(samples, "llm_router_chat_requests_total", code="499") == len(gone)
    lines = router.access_lines()
    assert {g.request_id: lines[g.request_id]["code"] for g in gone} == {g.request_id: 499 for g in gone}
    for model in [*hang, "up-wait"]:
        assert metric_sum(samples, "llm_router_backend_in_flight", model=model) == 0
        assert metric_sum(samples, "llm_router_backend_requests_total", model=model, outcome="cancelled") == ROUNDS
        assert metric_sum(samples, "llm_router_backend_rejections_total", model=model) == 0
    stored = Stored.read(router.state_dir)
    result = reconcile(traffic.received + gone, stored, table, metrics=samples)
    metric_tokens_match(samples, stored)
    assert result.partial == len(gone)
    record("clients disconnect mid-stream", "client closes after n chunks (n=0,2,5,9)", len(gone), result,
           upstream_connections_closed=stats["streams_cancelled"])


def test_upstream_resets_or_hangs_mid_stream(chaos_router, upstream):
    """The upstream resets the connection after 3 chunks (RST), stops after 4 chunks, or
    sends its headers and nothing else. A stream cut mid-way is charged the prompt and the
    tokens it had (502 on the reset, 504 when the model's timeout_seconds passes), a stream
    that never started is charged nothing (504); every failure counts in the breaker (one
    failure opens it here: later requests on that worker are refused at once, 503)."""
    models = [
        upstream_model("up-reset", upstream.base_url, "reset-after-3", timeout=10),
        upstream_model("up-stall", upstream.base_url, "hang-after-4", timeout=1),
        upstream_model("up-mute", upstream.base_url, "hang-after-headers", timeout=1),
    ]
    config = chaos_config(time_scale=0.02, upstream_models=models,
                          circuit_breaker={"failure_threshold": 1, "reset_timeout_seconds": 600})
    table = prices(config)
    router = chaos_router(2, config)
    faulty: list = []
    with Traffic(router.url, "upstream-load", threads=3, pause=0.02) as traffic:
        client = Client(router.url)
        for i in range(4):
            for model in ("up-reset", "up-stall", "up-mute"):
                faulty.append(client.chat(f"fault-{model}-{i}", "research", model, f"fault {i} {model}", stream=True))
        stats = upstream.wait_for(lambda s: s["in_flight"] == 0)
    samples = router.settle()
    by_model = {m: [g for g in faulty if g.requested == m] for m in ("up-reset", "up-stall", "up-mute")}
    reset_cut = [g for g in by_model["up-reset"] if g.outcome == "cut"]
    stall_cut = [g for g in by_model["up-stall"] if g.outcome == "cut"]
    mute_timeout = [g for g in by_model["up-mute"] if g.status == 504]
    for model, cut, code in (("up-reset", reset_cut, 502), ("up-stall", stall_cut, 504), ("up-mute", mute_timeout, 504)):
        assert 1 <= len(cut) <= 2, (model, by_model[model])  # one per worker at most: then its breaker is open
        refused = [g for g in by_model[model] if g not in cut]
        assert all(g.status == 503 and g.error == "no_backend_available" for g in refused), refused
        assert metric_sum(samples, "llm_router_circuit_breaker_transitions_total", model=model, state="open") == \
            len(cut)
        assert metric_sum(samples, "llm_router_backend_rejections_total", model=model, reason="circuit_open") == \
            len(refused)
        assert metric_sum(samples, "llm_router_chat_requests_total", model=model, code=str(code)) == len(cut)
    assert all(g.output_tokens == 3 and g.error == "backend_error" for g in reset_cut)
    assert all(g.output_tokens == 4 and g.error == "backend_error" for g in stall_cut)
    assert all(g.error == "backend_timeout" and g.output_tokens == 0 for g in mute_timeout)
    assert metric_sum(samples, "llm_router_backend_requests_total", model="up-reset",
                      outcome="connection_error") == len(reset_cut)
    for model, cut in (("up-stall", stall_cut), ("up-mute", mute_timeout)):
        assert metric_sum(samples, "llm_router_backend_requests_total", model=model, outcome="timeout") == len(cut)
    # The upstream saw its resets, and the router close every connection it gave up on.
    assert stats["streams_reset"] == len(reset_cut)
    assert stats["streams_cancelled"] == len(stall_cut) + len(mute_timeout)
    stored = Stored.read(router.state_dir)
    result = reconcile(traffic.received + faulty, stored, table, metrics=samples)
    metric_tokens_match(samples, stored)
    record("upstream resets / hangs mid-stream", "RST after 3 chunks; silence after 4 chunks; silence after headers",
           len(reset_cut) + len(stall_cut) + len(mute_timeout), result,
           timeout_seconds=1, stall_seconds=[round(g.seconds, 2) for g in stall_cut],
           mute_seconds=[round(g.seconds, 2) for g in mute_timeout])


IN_FLIGHT = 200
GRACEFUL_TIMEOUT = 8


def test_stop_with_200_streams_in_flight(chaos_router, tmp_path):
    """SIGTERM with 200 streams open to a slow upstream: half end within the grace period,
    the other half are ended by the worker (an error event and [DONE]). Every stream is
    either finished or ended that way - none broken - each charged for what it produced;
    the workers store everything before they exit (no journal left), within
    graceful_timeout (no worker killed by the master). The stop time is recorded."""
    with UpstreamProcess(delay=0.5, events=10, log=tmp_path / "upstream.log").running() as up:
        models = [upstream_model("up-short", up.base_url, "slow-2500+events-25", concurrency=512),
                  upstream_model("up-long", up.base_url, "slow-60000+events-600", concurrency=512)]
        config = chaos_config(upstream_models=models)
        table = prices(config)
        router = chaos_router(2, config, {"LLM_ROUTER_GRACEFUL_TIMEOUT": str(GRACEFUL_TIMEOUT)})
        first_chunks = threading.Semaphore(0)
        received: list = []

        def stream(i: int) -> None:
            model = "up-short" if i % 2 else "up-long"
            client = Client(router.url, timeout=60)
            received.append(client.chat(f"stop-{i:03d}", ["search", "support", "research"][i % 3], model,
                                        f"stream {i}", stream=True, on_first=first_chunks.release))

        threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(IN_FLIGHT)]
        for thread in threads:
            thread.start()
        for _ in range(IN_FLIGHT):
            assert first_chunks.acquire(timeout=60), "every stream started"
        open_upstream = up.stats()["in_flight"]
        seconds = router.stop(timeout=GRACEFUL_TIMEOUT + 30)
        for thread in threads:
            thread.join(30)
    outcomes = {(g.requested, g.outcome, g.error) for g in received}
    assert len(received) == IN_FLIGHT
    # Finished, or ended by the worker with its error event and [DONE]: never broken. (The
    # long ones cannot finish in time; the short ones do unless the machine is very slow.)
    assert outcomes <= {("up-short", "answered", None), ("up-short", "cut", "server_shutting_down"),
                        ("up-long", "cut", "server_shutting_down")}, outcomes
    assert not router.journals(), "every worker stored its charges before it exited"
    logs = "\n".join(router.logs())
    assert "WORKER TIMEOUT" not in logs and "SIGKILL" not in logs
    ending = [e for e in router.events() if "ending" in e.get("message", "") and "open request" in e["message"]]
    stored = Stored.read(router.state_dir)
    counters = dead_process_counters(router.metrics_dir)
    result = reconcile(received, stored, table, metrics=counters)
    metric_tokens_match(counters, stored)
    assert result.answered + result.partial == IN_FLIGHT and result.answered <= IN_FLIGHT // 2
    record("stop with 200 streams in flight", "SIGTERM to the master (graceful_timeout 8 s)", 1, result,
           upstream_streams_open_at_sigterm=open_upstream, stop_seconds=round(seconds, 2),
           graceful_timeout=GRACEFUL_TIMEOUT, ended_by_worker=[e["message"] for e in ending])
