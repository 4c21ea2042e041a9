"""The worker model under real gunicorn: an in-flight call costs a greenlet, not a thread.

Against bench/upstream.py (a fake OpenAI-compatible upstream in its own process): hundreds
of slow calls at once on two workers; a client that leaves mid-stream (or while its
request waits) cancels the upstream call and frees the backend slot; keep-alive to the
upstream survives streams; the concurrency limit is the container's, whatever the worker.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from bench.upstream import UpstreamProcess
from conftest import chat_body, config_dict, metric_sum

pytestmark = pytest.mark.live


def upstream_config(base_url: str, **models: dict) -> dict:
    """The shipped config with models on the upstream stand-in: name -> overrides."""
    data = config_dict(health_probes={"enabled": False}, cache={"enabled": False})
    data["routing"].update(retries=0, max_backends=1)
    data["models"] = [
        {"id": name, "provider": "openai", "base_url": base_url, "upstream_model": "ok",
         "price": {"input_per_1k": 0.001, "output_per_1k": 0.002}, "quality": 0.8, "timeout_seconds": 30,
         "max_concurrency": 1000, **overrides}
        for name, overrides in models.items()
    ]
    return data


def wait_for(condition, timeout: float = 10.0, interval: float = 0.05):
    """Poll ``condition`` until it returns something truthy; bounded."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def post(port: int, body: dict, timeout: float = 30) -> int:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        connection.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def test_hundreds_of_slow_calls_at_once_on_two_workers(live_router):
    """300 calls to a 1 s upstream at once: with a thread per call (gthread, 2 workers x 8
    threads) they would take at least 300/16 = 19 s; greenlets take about one upstream delay."""
    calls = 300
    with UpstreamProcess(delay=1.0).running() as upstream:
        router = live_router(workers=2, config=upstream_config(upstream.base_url, up={}))
        upstream.reset()
        started = time.monotonic()
        with ThreadPoolExecutor(calls) as pool:
            codes = list(pool.map(lambda _: post(router.port, chat_body("up")), range(calls)))
        elapsed = time.monotonic() - started
        stats = upstream.stats()
    assert codes == [200] * calls
    assert stats["chat_requests"] == calls
    # Held at once upstream: far more than the 16 a thread-per-call router could.
    assert stats["max_in_flight"] > 100, stats
    assert elapsed < 8, f"{calls} one-second calls took {elapsed:.1f}s"


def open_stream(port: int, body: dict) -> socket.socket:
    """A raw client that sends a streaming request and reads the response headers."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\n"
                 b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
    received = b""
    while b"data: " not in received:
        chunk = sock.recv(65536)
        assert chunk, received
        received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    return sock


def test_a_client_that_leaves_cancels_the_upstream_call_and_frees_the_slot(live_router):
    with UpstreamProcess(delay=1.0).running() as upstream:
        config = upstream_config(
            upstream.base_url,
            # A 10 s stream of 100 events; the slot limit of 1 shows whether it was freed.
            streamer={"upstream_model": "slow-10000+events-100", "max_concurrency": 1},
            thinker={"upstream_model": "slow-10000", "max_concurrency": 1},
        )
        config["routing"]["queue_timeout_seconds"] = 0
        router = live_router(workers=2, config=config)
        upstream.reset()

        # Mid-stream: read a few events, then hang up.
        sock = open_stream(router.port, chat_body("streamer", stream=True))
        sock.close()
        left = time.monotonic()
        cancelled = wait_for(lambda: upstream.stats()["streams_cancelled"] == 1, timeout=5)
        assert cancelled, upstream.stats()
        noticed = time.monotonic() - left
        # While waiting for an answer: the request is cancelled before any byte is sent.
        thinking = socket.create_connection(("127.0.0.1", router.port), timeout=10)
        payload = json.dumps(chat_body("thinker")).encode()
        thinking.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\n"
                         b"Content-Length: %d\r\n\r\n" % len(payload) + payload)
        assert wait_for(lambda: upstream.stats()["in_flight"] == 1, timeout=5)
        thinking.close()
        assert wait_for(lambda: upstream.stats()["requests_cancelled"] == 1, timeout=5), upstream.stats()

        samples = wait_for(lambda: (lambda s: s if metric_sum(s, "llm_router_chat_requests_total", code="499") == 2
                                    else None)(router.scrape()), timeout=5)
        assert samples, "both requests should be counted as 499"
        for model in ("streamer", "thinker"):
            assert metric_sum(samples, "llm_router_backend_in_flight", model=model) == 0
            assert metric_sum(samples, "llm_router_backend_requests_total", model=model, outcome="cancelled") == 1
        # The streamed tokens the client got were charged; the answer that never came was not.
        assert metric_sum(samples, "llm_router_cost_usd_total", model="streamer") > 0
        assert metric_sum(samples, "llm_router_cost_usd_total", model="thinker") == 0
        # Both slots are free again: with a limit of 1 and no queue, a held slot would be a 429.
        for model in ("streamer", "thinker"):
            response = requests.post(f"{router.url}/v1/chat/completions", json=chat_body(model, stream=True),
                                     stream=True, timeout=30)
            assert response.status_code == 200, response.text
            response.close()
    print(f"\nupstream saw the stream's client leave {noticed:.2f}s after it closed")


def test_streams_and_answers_reuse_upstream_connections(live_router):
    with UpstreamProcess(delay=0.05, events=5).running() as upstream:
        router = live_router(workers=2, config=upstream_config(upstream.base_url, up={}))
        session = requests.Session()
        upstream.reset()
        for i in range(40):
            body = chat_body("up", content=f"reuse {i}", stream=i % 2 == 0,
                             **({"stream_options": {"include_usage": True}} if i % 2 == 0 else {}))
            response = session.post(f"{router.url}/v1/chat/completions", json=body, timeout=30)
            assert response.status_code == 200
            assert "[DONE]" in response.text if i % 2 == 0 else response.json()["usage"]["completion_tokens"] == 5
        stats = upstream.stats()
    assert stats["chat_requests"] == 40 and stats["streams_completed"] == 20
    # One keep-alive connection per worker at most: streams do not drop theirs.
    assert stats["connections_accepted"] <= 2, stats
    assert stats["connections_closed_by_peer"] == 0, stats


def test_the_concurrency_limit_is_the_containers_not_each_workers(live_router):
    """max_concurrency 4 with 2 workers: 4 calls at once in all, not 4 per worker."""
    with UpstreamProcess(delay=1.5).running() as upstream:
        config = upstream_config(upstream.base_url, up={"max_concurrency": 4})
        config["routing"]["queue_timeout_seconds"] = 0
        router = live_router(workers=2, config=config)
        upstream.reset()
        with ThreadPoolExecutor(12) as pool:
            codes = list(pool.map(lambda _: post(router.port, chat_body("up")), range(12)))
        stats = upstream.stats()
        samples = router.scrape()
    assert sorted(set(codes)) == [200, 429], codes
    assert codes.count(200) == 4 and stats["max_in_flight"] == 4, (codes, stats)
    assert metric_sum(samples, "llm_router_backend_rejections_total", model="up", reason="saturated") == 8
