"""A fake OpenAI-compatible upstream on stdlib asyncio, far faster than the router.

    python -m bench.upstream --port 8000 --delay 0.5 --events 20     # own process (benchmarks)

    with Upstream(delay=1.0).running() as up:                         # in-process (tests)
        up.base_url            # http://127.0.0.1:PORT/v1, the router's `base_url`
        up.stats()             # the counters, a dict
        up.reset()             # zero them

    with UpstreamProcess(delay=0.5).running() as up:                  # a child process
        up.base_url, up.stats(), up.reset(), up.pid                   # same interface, over HTTP

`Upstream.running()` serves from a thread of its own with its own event loop (so it shares
the GIL with the test: fine for functional tests, not for benchmarks, which use the
separate process). Dependency-free: the standard library only.

HTTP/1.1 with keep-alive (and pipelining, one request at a time per connection); request
bodies with Content-Length or chunked. Endpoints:

- `POST /v1/chat/completions`: answers after the delay with an OpenAI `chat.completion`
  (Content-Length) whose content is N tokens ("tok "), `usage.prompt_tokens` estimated from
  the messages (about four characters a token, as the router estimates) and
  `usage.completion_tokens` = N. `max_tokens` below N cuts the answer (finish_reason
  `length`). With `"stream": true`: `text/event-stream` in chunked encoding, headers at
  once, then N content events (one token each), event i at delay × i / N, then the event
  with `finish_reason`, then a usage event when `stream_options.include_usage` is true,
  then `data: [DONE]`; all of it ends at the delay, like the non-streamed answer.
- `GET /v1/models`: the behaviours below as models.
- `GET /stats`: the counters as JSON; `POST /stats/reset`: zero them (returns the counters
  before). Connections that only ever carry /stats requests are not counted as connections.

Behaviour per request, chosen by the model name the router sends (`upstream_model`), one or
more tokens joined with `+` (e.g. `slow-5000+events-100`); any other name behaves as `ok`:

- `ok`: the defaults (delay, events).
- `slow-<ms>`: this request's delay, in milliseconds.
- `events-<n>`: this request's token count (stream events).
- `status-<code>`: answer that status at once (after `slow-<ms>` if given) with an OpenAI
  error body (`Retry-After: 1` with 429).
- `reset-after-<n>`: stream n content events on schedule, then reset the TCP connection
  (SO_LINGER 0: an RST, no FIN). Not streaming: reset at the delay, nothing sent.
- `hang-after-headers`: send 200 and the SSE headers, then nothing until the client goes
  away. Not streaming: the 200 headers (with a Content-Length) and no body.
- `hang-after-<n>`: stream n content events on schedule, then nothing until the client goes
  away. Not streaming: nothing at all.
- `chunked`: a non-streamed answer in chunked encoding (two chunks) instead of
  Content-Length.

Counters (`stats()`): `connections_accepted`, `connections_closed_by_peer` (the client
closed or reset it, not us), `connections_open`, `requests` (every HTTP request but /stats),
`chat_requests`, `stream_requests`, `requests_cancelled` (non-streamed chat requests whose
client went away before the answer), `streams_started`, `streams_completed` (`[DONE]`
written), `streams_cancelled` (the client closed before the end: hung streams end here),
`streams_reset` (reset by `reset-after-<n>`), `in_flight` (chat requests being answered
now), `max_in_flight` (since the last reset), `responses_by_status`; and `cpu_seconds`, the
process's CPU time so far (`time.process_time()`: finer than /proc's clock ticks; in-process,
it is the test's process).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import resource
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

DEFAULT_DELAY = 0.5
DEFAULT_EVENTS = 20
MAX_HEADER_BYTES = 64 * 1024
MAX_BODY_BYTES = 16 * 1024 * 1024
TOKEN = "tok "
REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
           405: "Method Not Allowed", 408: "Request Timeout", 413: "Payload Too Large",
           429: "Too Many Requests", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout"}
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 429: "rate_limit_error"}
MODELS = ["ok", "slow-<ms>", "events-<n>", "status-<code>", "reset-after-<n>", "hang-after-headers",
          "hang-after-<n>", "chunked"]

GAUGES = ("connections_open", "in_flight")
COUNTERS = ("connections_accepted", "connections_closed_by_peer", "requests", "chat_requests", "stream_requests",
            "requests_cancelled", "streams_started", "streams_completed", "streams_cancelled", "streams_reset",
            "max_in_flight")


def new_stats() -> dict:
    return {**{name: 0 for name in GAUGES + COUNTERS}, "responses_by_status": {}}


class Behaviour:
    __slots__ = ("delay", "events", "status", "reset_after", "hang_after", "chunked")

    def __init__(self) -> None:
        self.delay: float | None = None
        self.events: int | None = None
        self.status: int | None = None
        self.reset_after: int | None = None
        self.hang_after: int | None = None  # 0: right after the headers
        self.chunked = False


@functools.lru_cache(maxsize=1024)
def parse_behaviour(model: str) -> Behaviour:
    """The behaviour a model name asks for (unknown tokens are ignored: any name is `ok`)."""
    b = Behaviour()
    for token in str(model).split("+"):
        head, _, number = token.rpartition("-")
        try:
            if token == "hang-after-headers":
                b.hang_after = 0
            elif token == "chunked":
                b.chunked = True
            elif head == "slow":
                b.delay = max(0.0, int(number) / 1000)
            elif head == "events":
                b.events = max(0, int(number))
            elif head == "status":
                b.status = int(number)
            elif head == "reset-after":
                b.reset_after = max(0, int(number))
            elif head == "hang-after":
                b.hang_after = max(0, int(number))
        except ValueError:
            pass
    return b


def prompt_tokens(messages: object) -> int:
    """About four characters a token over the messages' text (as the router estimates)."""
    parts = []
    if isinstance(messages, list):
        for message in messages:
            content = message.get("content") if isinstance(message, dict) else None
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts.extend(p.get("text", "") for p in content if isinstance(p, dict))
    return max(1, (len("\n".join(parts)) + 3) // 4)


def error_body(status: int, message: str) -> bytes:
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return json.dumps({"error": {"message": message, "type": kind, "param": None, "code": str(status)}}).encode()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class _Server:
    """What the connections share: settings, counters, request ids."""

    def __init__(self, delay: float, events: int) -> None:
        self.delay = delay
        self.events = events
        self.stats = new_stats()
        self.next_id = 0
        self.connections: set[_Connection] = set()

    def count_status(self, status: int) -> None:
        by = self.stats["responses_by_status"]
        by[str(status)] = by.get(str(status), 0) + 1

    def start_flight(self) -> None:
        s = self.stats
        s["in_flight"] += 1
        if s["in_flight"] > s["max_in_flight"]:
            s["max_in_flight"] = s["in_flight"]

    def snapshot(self) -> dict:
        s = self.stats
        return {**s, "responses_by_status": dict(s["responses_by_status"]), "cpu_seconds": time.process_time()}

    def reset(self) -> dict:
        before = self.snapshot()
        for name in COUNTERS:
            self.stats[name] = 0
        self.stats["max_in_flight"] = self.stats["in_flight"]
        self.stats["responses_by_status"] = {}
        return before


class _Connection(asyncio.Protocol):
    def __init__(self, server: _Server) -> None:
        self.server = server
        self.stats = server.stats
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.busy = False  # a response is being produced: later requests wait in the buffer
        self.keep_alive = True
        self.closed = False
        self.closed_by_us = False
        self.control = None  # None until the first request; True: /stats only (not counted)
        self.timer: asyncio.TimerHandle | None = None
        self.active: str | None = None  # "plain" / "stream" while a chat answer is pending
        self.stream: dict | None = None

    # --- the transport's callbacks -------------------------------------------------------

    def connection_made(self, transport) -> None:
        self.transport = transport
        self.server.connections.add(self)
        self.stats["connections_accepted"] += 1
        self.stats["connections_open"] += 1

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.busy:
            self._parse()
        elif len(self.buffer) > MAX_HEADER_BYTES + MAX_BODY_BYTES:
            self._close(abort=True)

    def eof_received(self) -> bool:
        # The client closed its side: whatever it asked for, nobody is reading any more.
        self._client_gone()
        return False  # let the transport close

    def connection_lost(self, exc) -> None:
        self._client_gone()
        self.closed = True
        self.server.connections.discard(self)
        if self.control:
            return
        self.stats["connections_open"] -= 1
        if not self.closed_by_us:
            self.stats["connections_closed_by_peer"] += 1

    # --- requests ------------------------------------------------------------------------

    def _parse(self) -> None:
        while not self.busy and not self.closed and self.buffer:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buffer) > MAX_HEADER_BYTES:
                    self._simple(431, error_body(431, "headers too large"), close=True)
                return
            head = bytes(self.buffer[:end]).decode("latin-1")
            lines = head.split("\r\n")
            try:
                method, target, version = lines[0].split(" ", 2)
            except ValueError:
                self._simple(400, error_body(400, "bad request line"), close=True)
                return
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            start = end + 4
            if "chunked" in headers.get("transfer-encoding", "").lower():
                decoded = self._dechunk(start)
                if decoded is None:
                    return  # more to come
                body, consumed = decoded
            else:
                try:
                    length = int(headers.get("content-length") or 0)
                except ValueError:
                    self._simple(400, error_body(400, "bad Content-Length"), close=True)
                    return
                if length > MAX_BODY_BYTES:
                    self._simple(413, error_body(413, "body too large"), close=True)
                    return
                if len(self.buffer) < start + length:
                    return  # more to come
                body, consumed = bytes(self.buffer[start:start + length]), start + length
            del self.buffer[:consumed]
            connection = headers.get("connection", "").lower()
            self.keep_alive = ("close" not in connection if version == "HTTP/1.1" else "keep-alive" in connection)
            self._handle(method, target.split("?", 1)[0], body)

    def _dechunk(self, start: int) -> tuple[bytes, int] | None:
        body, pos, buf = bytearray(), start, self.buffer
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(bytes(buf[pos:eol]).split(b";")[0] or b"0", 16)
            if size == 0:
                trailer_end = buf.find(b"\r\n", eol + 2)
                # Trailers are ignored: up to the empty line.
                while trailer_end >= 0 and trailer_end != eol + 2:
                    eol, trailer_end = trailer_end, buf.find(b"\r\n", trailer_end + 2)
                return None if trailer_end < 0 else (bytes(body), trailer_end + 2)
            if len(buf) < eol + 2 + size + 2:
                return None
            body += buf[eol + 2:eol + 2 + size]
            pos = eol + 2 + size + 2

    def _handle(self, method: str, path: str, body: bytes) -> None:
        control = path.startswith("/stats")
        if self.control is None:
            self.control = control
            if control:  # this connection is the harness reading counters: not traffic
                self.stats["connections_accepted"] -= 1
                self.stats["connections_open"] -= 1
        if control:
            if path == "/stats" and method == "GET":
                self._simple(200, json.dumps(self.server.snapshot()).encode(), count=False)
            elif path == "/stats/reset" and method == "POST":
                self._simple(200, json.dumps(self.server.reset()).encode(), count=False)
            else:
                self._simple(404, error_body(404, f"no route {method} {path}"), count=False)
            return
        self.stats["requests"] += 1
        if path in ("/v1/chat/completions", "/chat/completions"):
            if method != "POST":
                self._simple(405, error_body(405, "use POST"))
                return
            self._chat(body)
        elif path in ("/v1/models", "/models"):
            data = [{"id": m, "object": "model", "created": 0, "owned_by": "bench"} for m in MODELS]
            self._simple(200, json.dumps({"object": "list", "data": data}).encode())
        elif path in ("/healthz", "/"):
            self._simple(200, b'{"status": "ok"}')
        else:
            self._simple(404, error_body(404, f"no route {method} {path}"))

    def _chat(self, body: bytes) -> None:
        s = self.stats
        s["chat_requests"] += 1
        try:
            request = json.loads(body)
            if not isinstance(request, dict):
                raise ValueError
        except ValueError:
            self._simple(400, error_body(400, "the body is not a JSON object"))
            return
        model = request.get("model")
        model = model if isinstance(model, str) else "ok"
        b = parse_behaviour(model)
        server = self.server
        delay = server.delay if b.delay is None else b.delay
        events = server.events if b.events is None else b.events
        finish = "stop"
        max_tokens = request.get("max_tokens")
        if isinstance(max_tokens, int) and 0 <= max_tokens < events:
            events, finish = max_tokens, "length"
        stream = request.get("stream") is True
        server.next_id += 1
        rid = f"chatcmpl-fake-{server.next_id}"
        usage = {"prompt_tokens": prompt_tokens(request.get("messages")), "completion_tokens": events}
        usage["total_tokens"] = usage["prompt_tokens"] + events
        if stream:
            s["stream_requests"] += 1
        self.busy = True
        server.start_flight()
        if b.status is not None:
            self.active = "plain"
            self.timer = self.loop.call_later(delay, self._answer_status, b.status, model) if delay else None
            if not delay:
                self._answer_status(b.status, model)
            return
        if stream:
            self._start_stream(rid, model, events, finish, usage, delay, b,
                               include_usage=bool((request.get("stream_options") or {}).get("include_usage")))
            return
        self.active = "plain"
        if b.hang_after is not None:
            if b.hang_after == 0:
                answer = self._completion(rid, model, events, finish, usage)
                self._write(self._head(200, "application/json", len(answer)))
            return  # nothing more until the client goes away
        if b.reset_after is not None:
            self.timer = self.loop.call_later(delay, self._reset)
            return
        self.timer = self.loop.call_later(delay, self._answer_plain, rid, model, events, finish, usage, b.chunked)

    def _completion(self, rid: str, model: str, events: int, finish: str, usage: dict) -> bytes:
        return json.dumps({
            "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": TOKEN * events},
                         "finish_reason": finish}],
            "usage": usage,
        }).encode()

    def _answer_plain(self, rid, model, events, finish, usage, chunked) -> None:
        self.timer = None
        answer = self._completion(rid, model, events, finish, usage)
        self._done_flight()
        if chunked:
            half = len(answer) // 2
            self._write(self._head(200, "application/json", None) + _chunk(answer[:half]) + _chunk(answer[half:])
                        + b"0\r\n\r\n")
        else:
            self._write(self._head(200, "application/json", len(answer)) + answer)
        self.server.count_status(200)
        self._response_done()

    def _answer_status(self, status: int, model: str) -> None:
        self.timer = None
        self._done_flight()
        extra = b"Retry-After: 1\r\n" if status == 429 else b""
        self._simple(status, error_body(status, f"{model}: injected status {status}"), extra=extra)

    # --- streams -------------------------------------------------------------------------

    def _start_stream(self, rid, model, events, finish, usage, delay, b: Behaviour, include_usage: bool) -> None:
        self.stats["streams_started"] += 1
        self.active = "stream"
        created = int(time.time())
        prefix = ('data: {"id":"%s","object":"chat.completion.chunk","created":%d,"model":%s,"choices":['
                  % (rid, created, json.dumps(model)))
        event = '%s{"index":0,"delta":{%%s"content":"%s"},"finish_reason":null}]}\n\n' % (prefix, TOKEN)
        self.stream = {
            # Every content event is the same bytes (the first also carries the role): built once.
            "first": _chunk((event % '"role":"assistant",').encode()), "event": _chunk((event % "").encode()),
            "prefix": prefix, "sent": 0, "events": events, "finish": finish, "usage": usage,
            "include_usage": include_usage, "start": self.loop.time(), "delay": delay,
            "stop_after": b.reset_after if b.reset_after is not None else b.hang_after,
            "reset": b.reset_after is not None,
        }
        self._write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
                    b"Transfer-Encoding: chunked\r\n" + (b"" if self.keep_alive else b"Connection: close\r\n")
                    + b"\r\n")
        self.server.count_status(200)
        self._stream_step()

    def _stream_step(self) -> None:
        self.timer = None
        st = self.stream
        if st is None or self.closed:
            return
        n, sent = st["events"], st["sent"]
        if st["stop_after"] is not None and sent >= st["stop_after"]:
            if st["reset"]:
                self.stats["streams_reset"] += 1
                self._reset()
            return  # hang: nothing more until the client goes away
        if sent < n:
            if self.loop.time() >= st["start"] + st["delay"] * (sent + 1) / n - 0.0005:
                self._write(st["first"] if sent == 0 else st["event"])
                st["sent"] = sent = sent + 1
                if st["stop_after"] is not None and sent >= st["stop_after"]:
                    self._stream_step()
                    return
            if sent < n:
                self.timer = self.loop.call_at(st["start"] + st["delay"] * (sent + 1) / n, self._stream_step)
                return
        elif n == 0 and self.loop.time() < st["start"] + st["delay"] - 0.0005:
            self.timer = self.loop.call_at(st["start"] + st["delay"], self._stream_step)
            return
        tail = st["prefix"] + '{"index":0,"delta":{},"finish_reason":"%s"}]}\n\n' % st["finish"]
        if st["include_usage"]:
            tail += st["prefix"] + '],"usage":%s}\n\n' % json.dumps(st["usage"])
        tail += "data: [DONE]\n\n"
        self._write(_chunk(tail.encode()) + b"0\r\n\r\n")
        self.stream = None
        self.stats["streams_completed"] += 1
        self._done_flight()
        self._response_done()

    # --- plumbing ------------------------------------------------------------------------

    def _head(self, status: int, content_type: str, length: int | None, extra: bytes = b"") -> bytes:
        framing = b"Transfer-Encoding: chunked\r\n" if length is None else b"Content-Length: %d\r\n" % length
        return (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%s%s%s\r\n" % (
            status, REASONS.get(status, "Status").encode(), content_type.encode(), framing, extra,
            b"" if self.keep_alive else b"Connection: close\r\n"))

    def _simple(self, status: int, body: bytes, close: bool = False, extra: bytes = b"", count: bool = True) -> None:
        if close:
            self.keep_alive = False
        self._write(self._head(status, "application/json", len(body), extra) + body)
        if count:
            self.server.count_status(status)
        self._response_done()

    def _write(self, data: bytes) -> None:
        if not self.closed and self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def _response_done(self) -> None:
        self.active = None
        self.busy = False
        if not self.keep_alive:
            self._close()
        elif self.buffer:
            self.loop.call_soon(self._parse)

    def _done_flight(self) -> None:
        self.stats["in_flight"] -= 1
        self.active = None

    def _client_gone(self) -> None:
        """The client closed (or reset) the connection: end what was being answered."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.active == "stream":
            self.stats["streams_cancelled"] += 1
            self.stream = None
            self._done_flight()
        elif self.active == "plain":
            self.stats["requests_cancelled"] += 1
            self._done_flight()
        self.busy = True  # nothing more is parsed on this connection

    def _reset(self) -> None:
        """Close with an RST (SO_LINGER 0), not a FIN: the client sees 'connection reset'."""
        if self.active is not None:
            self._done_flight()
        self.stream = None
        self.busy = True
        sock = self.transport.get_extra_info("socket") if self.transport else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._close(abort=True)

    def _close(self, abort: bool = False) -> None:
        if self.transport is None or self.closed_by_us:
            return
        self.closed_by_us = not self.closed
        if abort:
            self.transport.abort()
        else:
            self.transport.close()


async def _serve(host: str, port: int, delay: float, events: int, backlog: int,
                 started: Callable[[asyncio.AbstractServer, _Server], None], stop: asyncio.Event) -> None:
    state = _Server(delay, events)
    server = await asyncio.get_running_loop().create_server(lambda: _Connection(state), host, port,
                                                            backlog=backlog, reuse_address=True)
    started(server, state)
    async with server:
        await stop.wait()
        # Stopping: drop the connections still open (hung streams, idle keep-alive ones).
        for connection in list(state.connections):
            connection.closed_by_us = True
            connection.transport.abort()
        await asyncio.sleep(0)


def raise_nofile_limit() -> int:
    """Raise the soft limit on open files to the hard limit (2,000 clients need it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Upstream:
    """The upstream in this process, on a thread with its own event loop (for tests)."""

    def __init__(self, delay: float = DEFAULT_DELAY, events: int = DEFAULT_EVENTS, host: str = "127.0.0.1",
                 port: int = 0, backlog: int = 4096) -> None:
        self.delay, self.events, self.host, self.port, self.backlog = delay, events, host, port, backlog
        self._state: _Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    @contextlib.contextmanager
    def running(self) -> Iterator["Upstream"]:
        self.start()
        try:
            yield self
        finally:
            self.stop()

    def start(self) -> "Upstream":
        ready = threading.Event()
        failure: list[BaseException] = []

        def started(server: asyncio.AbstractServer, state: _Server) -> None:
            self.port = server.sockets[0].getsockname()[1]
            self._state = state
            ready.set()

        def run() -> None:
            loop = self._loop = asyncio.new_event_loop()
            self._stop = asyncio.Event()
            try:
                loop.run_until_complete(_serve(self.host, self.port, self.delay, self.events, self.backlog,
                                               started, self._stop))
            except BaseException as error:  # noqa: BLE001 - reported to start()
                failure.append(error)
                ready.set()
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure or self._state is None:
            raise RuntimeError(f"the fake upstream did not start: {failure[:1]}")
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def _call(self, fn: Callable[[], dict]) -> dict:
        """Run fn on the upstream's loop and wait for its result (a consistent snapshot)."""
        done = threading.Event()
        out: list[dict] = []

        def call() -> None:
            out.append(fn())
            done.set()

        self._loop.call_soon_threadsafe(call)
        if not done.wait(10):
            raise TimeoutError("the fake upstream's loop did not answer")
        return out[0]

    def stats(self) -> dict:
        return self._call(self._state.snapshot)

    def reset(self) -> dict:
        """Zero the counters; returns them as they were."""
        return self._call(self._state.reset)

    def wait_for(self, predicate: Callable[[dict], bool], timeout: float = 10, interval: float = 0.02) -> dict:
        """Poll stats() until predicate(stats) holds; returns the stats (raises TimeoutError)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if predicate(stats):
                return stats
            if time.monotonic() > deadline:
                raise TimeoutError(f"the upstream's counters never matched: {stats}")
            time.sleep(interval)


class UpstreamProcess(Upstream):
    """The upstream as a child process (`python -m bench.upstream`): what benchmarks use, so
    it never shares a GIL with the load client or the router. Counters over HTTP."""

    def __init__(self, delay: float = DEFAULT_DELAY, events: int = DEFAULT_EVENTS, host: str = "127.0.0.1",
                 port: int = 0, backlog: int = 4096, log: Path | None = None) -> None:
        super().__init__(delay, events, host, port, backlog)
        self.log = log
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self) -> "UpstreamProcess":
        command = [sys.executable, "-m", "bench.upstream", "--host", self.host, "--port", str(self.port),
                   "--delay", repr(self.delay), "--events", str(self.events), "--backlog", str(self.backlog)]
        stderr = self.log.open("ab") if self.log else None
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(Path(__file__).resolve().parents[1])] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, env=env,
                                        preexec_fn=raise_nofile_limit)
        if stderr:
            stderr.close()
        line = self.process.stdout.readline().decode()
        if not line.startswith("listening on "):
            self.stop()
            raise RuntimeError(f"the fake upstream did not start: {line!r}")
        self.port = int(line.split()[-1].rsplit(":", 1)[1])
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None and self.process.stdout:
            self.process.stdout.close()

    def _http(self, method: str, path: str) -> dict:
        request = urllib.request.Request(self.url + path, method=method, data=b"" if method == "POST" else None)
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())

    def stats(self) -> dict:
        return self._http("GET", "/stats")

    def reset(self) -> dict:
        return self._http("POST", "/stats/reset")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.upstream", description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port (printed)")
    parser.add_argument("--delay", type=float, default=DEFAULT_DELAY, help="seconds to answer (default 0.5)")
    parser.add_argument("--events", type=int, default=DEFAULT_EVENTS, help="tokens per answer = stream events")
    parser.add_argument("--backlog", type=int, default=4096, help="listen backlog (capped by net.core.somaxconn)")
    args = parser.parse_args(argv)
    raise_nofile_limit()

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)

        def started(server: asyncio.AbstractServer, _state: _Server) -> None:
            host, port = server.sockets[0].getsockname()[:2]
            print(f"listening on http://{host}:{port}", flush=True)

        await _serve(args.host, args.port, args.delay, args.events, args.backlog, started, stop)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
