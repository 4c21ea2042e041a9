"""bench/upstream.py: the fake OpenAI-compatible upstream the benchmarks and the router's
tests point the router at. What it serves, and that its counters say what happened."""

from __future__ import annotations

import http.client
import json
import socket
import time

import pytest


from bench.upstream import Upstream, UpstreamProcess


def post(conn: http.client.HTTPConnection, body: dict) -> http.client.HTTPResponse:
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    return conn.getresponse()


def chat(model: str = "ok", stream: bool = False, **extra) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": "x" * 40}]}
    if stream:
        body.update(stream=True, stream_options={"include_usage": True})
    return {**body, **extra}


def hang_up(conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
    """Close the client's socket for good (the response holds a reference to it too)."""
    response.close()
    conn.close()


def sse_events(response: http.client.HTTPResponse) -> list[tuple[float, str]]:
    """(arrival time, data) of each event, read as the bytes arrive."""
    events, buffer = [], b""
    while True:
        data = response.read1(65536)
        if not data:
            return events
        buffer += data
        while b"\n\n" in buffer:
            raw, buffer = buffer.split(b"\n\n", 1)
            events.append((time.monotonic(), raw.decode().removeprefix("data: ")))


@pytest.fixture
def upstream():
    with Upstream(delay=0.5, events=5).running() as up:
        yield up


@pytest.fixture(autouse=True)
def _close_clients(monkeypatch):
    """Close every http.client connection a test opened (no ResourceWarning left behind)."""
    opened = []
    original = http.client.HTTPConnection.__init__

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        opened.append(self)

    monkeypatch.setattr(http.client.HTTPConnection, "__init__", init)
    yield
    for conn in opened:
        conn.close()


def test_completion_has_openai_shape_and_usage(upstream):
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    started = time.monotonic()
    response = post(conn, chat(events=1))
    data = json.loads(response.read())
    elapsed = time.monotonic() - started
    assert response.status == 200 and response.getheader("Content-Length")
    assert 0.45 <= elapsed < 1.5
    assert data["object"] == "chat.completion" and data["choices"][0]["finish_reason"] == "stop"
    assert data["choices"][0]["message"]["content"] == "tok " * 5
    # 40 characters of prompt: ten tokens by the four-characters rule the router uses too.
    assert data["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    # max_tokens below the answer's length cuts it.
    short = json.loads(post(conn, chat("slow-0", max_tokens=2)).read())
    assert short["usage"]["completion_tokens"] == 2 and short["choices"][0]["finish_reason"] == "length"
    # GET /v1/models lists the behaviours.
    conn.request("GET", "/v1/models")
    assert "ok" in [m["id"] for m in json.loads(conn.getresponse().read())["data"]]


def test_stream_arrives_evenly_then_usage_and_done(upstream):
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    started = time.monotonic()
    response = post(conn, chat("events-5+slow-1000", stream=True))
    assert response.status == 200 and response.getheader("Content-Type") == "text/event-stream"
    assert response.getheader("Transfer-Encoding") == "chunked"
    events = sse_events(response)
    payloads = [data for _, data in events]
    assert payloads[-1] == "[DONE]"
    content = [json.loads(p) for p in payloads[:5]]
    assert [c["choices"][0]["delta"]["content"] for c in content] == ["tok "] * 5
    assert json.loads(payloads[5])["choices"][0]["finish_reason"] == "stop"
    assert json.loads(payloads[6])["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    assert len(payloads) == 8
    # Event i at 1 s x i / 5, within scheduling noise; the whole stream lasts the delay.
    for i, (arrived, _) in enumerate(events[:5], start=1):
        assert abs(arrived - started - 0.2 * i) < 0.1, (i, arrived - started)
    assert 0.95 <= events[-1][0] - started < 1.3
    stats = upstream.stats()
    assert stats["streams_started"] == stats["streams_completed"] == 1 and stats["in_flight"] == 0


def test_no_usage_event_unless_asked(upstream):
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    payloads = [d for _, d in sse_events(post(conn, chat("slow-0+events-2", stream=True, stream_options={})))]
    assert len(payloads) == 4 and not any("usage" in p for p in payloads)


def test_keep_alive_reuse_is_counted(upstream):
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    for body in (chat("slow-10"), chat("slow-10", stream=True), chat("slow-10+chunked"), chat("slow-10")):
        response = post(conn, body)
        response.read()
        assert response.status == 200
    other = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    post(other, chat("slow-0")).read()
    other.close()
    conn.close()
    stats = upstream.wait_for(lambda s: s["connections_open"] == 0, timeout=5)
    # Five requests over two connections: the stream did not cost the connection.
    assert stats["requests"] == stats["chat_requests"] == 5
    assert stats["connections_accepted"] == 2 and stats["connections_closed_by_peer"] == 2
    assert stats["responses_by_status"] == {"200": 5}
    # Reading and resetting the counters over HTTP is not counted as traffic.
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    conn.request("POST", "/stats/reset")
    assert json.loads(conn.getresponse().read())["requests"] == 5
    conn.request("GET", "/stats")
    assert json.loads(conn.getresponse().read())["connections_accepted"] == 0


def test_client_cancel_mid_stream_is_counted(upstream):
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    response = post(conn, chat("slow-5000+events-50", stream=True))
    assert response.read1(65536).startswith(b"data: ")  # the first event, at 0.1 s
    assert upstream.stats()["in_flight"] == 1
    hang_up(conn, response)  # the client goes away mid-stream
    stats = upstream.wait_for(lambda s: s["streams_cancelled"] == 1, timeout=2)
    assert stats["in_flight"] == 0 and stats["streams_completed"] == 0
    assert stats["connections_closed_by_peer"] == 1


def test_client_cancel_before_a_plain_answer_is_counted(upstream):
    with socket.create_connection(("127.0.0.1", upstream.port)) as sock:
        body = json.dumps(chat("slow-5000")).encode()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        upstream.wait_for(lambda s: s["in_flight"] == 1, timeout=2)
    stats = upstream.wait_for(lambda s: s["requests_cancelled"] == 1, timeout=2)
    assert stats["in_flight"] == 0


def test_reset_after_n_events(upstream):
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    response = post(conn, chat("reset-after-2+slow-200+events-10", stream=True))
    received = b""
    with pytest.raises((ConnectionResetError, http.client.IncompleteRead)):
        while True:
            data = response.read1(65536)
            if not data:
                raise http.client.IncompleteRead(received)
            received += data
    assert received.count(b"data: ") == 2 and b"[DONE]" not in received
    stats = upstream.wait_for(lambda s: s["connections_open"] == 0, timeout=2)
    assert stats["streams_reset"] == 1 and stats["in_flight"] == 0
    # An RST, not a close by the peer: the upstream did it.
    assert stats["connections_closed_by_peer"] == 0


def test_hang_after_headers_until_the_client_leaves(upstream):
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=0.5)
    response = post(conn, chat("hang-after-headers", stream=True))
    assert response.status == 200 and response.getheader("Content-Type") == "text/event-stream"
    with pytest.raises(TimeoutError):
        response.read1(65536)
    assert upstream.stats()["in_flight"] == 1
    hang_up(conn, response)
    stats = upstream.wait_for(lambda s: s["streams_cancelled"] == 1, timeout=2)
    assert stats["in_flight"] == 0


def test_hang_after_n_events(upstream):
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=0.8)
    response = post(conn, chat("hang-after-3+slow-300+events-6", stream=True))
    received = b""
    with pytest.raises(TimeoutError):
        while True:
            received += response.read1(65536)
    assert received.count(b"data: ") == 3
    hang_up(conn, response)
    upstream.wait_for(lambda s: s["streams_cancelled"] == 1, timeout=2)


@pytest.mark.parametrize("status", [429, 500, 503, 400])
def test_status_behaviour_answers_an_openai_error(upstream, status):
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    response = post(conn, chat(f"status-{status}", stream=True))
    error = json.loads(response.read())["error"]
    assert response.status == status
    assert set(error) == {"message", "type", "param", "code"}
    assert (response.getheader("Retry-After") == "1") == (status == 429)
    assert upstream.stats()["responses_by_status"] == {str(status): 1}


def test_pipelined_requests_answer_in_order(upstream):
    with socket.create_connection(("127.0.0.1", upstream.port), timeout=5) as sock:
        bodies = [json.dumps(chat(f"slow-{ms}+events-{n}")).encode() for ms, n in ((200, 1), (0, 2))]
        sock.sendall(b"".join(b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s" % (len(b), b)
                              for b in bodies))
        received = b""
        while received.count(b"HTTP/1.1 200") < 2 or not received.endswith(b"}}"):
            received += sock.recv(65536)
    first, second = received.index(b'"completion_tokens": 1'), received.index(b'"completion_tokens": 2')
    assert first < second


def test_subprocess_serves_and_counts_over_http():
    with UpstreamProcess(delay=0.05, events=3).running() as up:
        assert up.base_url.endswith("/v1")
        conn = http.client.HTTPConnection("127.0.0.1", up.port, timeout=5)
        for _ in range(3):
            post(conn, chat(stream=True)).read()
        stats = up.stats()
        assert stats["stream_requests"] == stats["streams_completed"] == 3
        assert stats["connections_accepted"] == 1
        assert stats["cpu_seconds"] > 0  # what the scenarios read as the upstream's CPU
        assert up.reset()["requests"] == 3 and up.stats()["requests"] == 0
