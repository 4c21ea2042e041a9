"""HTTP to an OpenAI-compatible upstream: a keep-alive pool per model and process.

Two transports behind one small interface, chosen by the worker model:

- gevent workers (the default): geventhttpclient, gevent's own HTTP client with a C
  response parser - about a third of urllib3's CPU per call (measured here: 70 against
  225 µs for a small JSON answer, docs/performance.md). It is what Locust's FastHttpUser
  uses, and only works on gevent's loop;
- anywhere else (gthread workers, the Flask test client): urllib3's pool.

Both keep one pool per model, sized to the model's concurrency limit so a call never
waits for a connection, and both return a connection to the pool only when its response
was read to the end - so a stream read to its `[DONE]` and the end of its body keeps its
connection, and a stream cut short closes it, which is how the upstream learns the call was
cancelled.
"""

from __future__ import annotations

import functools
import select
from collections.abc import Iterator
from http.client import HTTPException
from urllib.parse import urlsplit

from ..concurrency import green

CONNECT_TIMEOUT = 10.0
READ_SIZE = 65536
_POLL_READABLE = select.POLLIN | select.POLLPRI | select.POLLERR | select.POLLHUP
# What a read or write on an upstream connection raises (the HTTP parser's own errors too).
_IO_ERRORS = (OSError, HTTPException)


class TransportError(Exception):
    """The call failed before or while reading its response; ``timeout`` says whether it
    was a timeout (connection refused, reset and malformed answers are not)."""

    def __init__(self, message: str, timeout: bool) -> None:
        super().__init__(message)
        self.timeout = timeout


class Response:
    """One upstream response: its status, then its body whole or line by line."""

    status: int

    def body(self) -> bytes: ...

    def lines(self) -> Iterator[bytes]:
        """The body's lines (without their line ends), as they arrive."""
        ...

    def close(self, complete: bool) -> None:
        """Done with it: ``complete`` (read to the end) keeps the connection for the next
        call; otherwise it is closed."""
        ...


def transport_for(base_url: str, pool_size: int, timeout: float):
    return GeventTransport(base_url, pool_size, timeout) if green() else Urllib3Transport(base_url, pool_size, timeout)


# --- gevent -------------------------------------------------------------------------------


class GeventTransport:
    def __init__(self, base_url: str, pool_size: int, timeout: float) -> None:
        from geventhttpclient import HTTPClient

        url = urlsplit(base_url.rstrip("/"))
        self.prefix = url.path
        self.timeout = timeout
        self.client = HTTPClient.from_url(
            base_url, concurrency=pool_size, connection_timeout=min(CONNECT_TIMEOUT, timeout),
            network_timeout=timeout,
        )
        # The pool checks an idle connection with select() before reusing it, and select()
        # refuses descriptors above 1024 - which a worker holding a thousand calls (a client
        # and an upstream socket each) reaches: every check failed, so every call opened a
        # new connection. poll() has no such limit.
        self.client._connection_pool._is_socket_alive = idle_connection_alive

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str],
                timeout: float | None = None) -> "GeventResponse":
        import gevent

        # The client's network timeout bounds each read; a shorter bound (a probe's) is a
        # gevent.Timeout around the whole call.
        deadline = gevent.Timeout(timeout, TimeoutError) if timeout is not None and timeout < self.timeout else None
        try:
            if deadline is not None:
                deadline.start()
            return GeventResponse(self.client.request(method, self.prefix + path, body=body or b"", headers=headers))
        except TimeoutError as error:
            raise TransportError(f"no answer in time ({error})", timeout=True) from None
        except _IO_ERRORS as error:
            raise TransportError(type(error).__name__, timeout=False) from None
        finally:
            if deadline is not None:
                deadline.close()


@functools.cache
def _unpatched_poll():
    from gevent import monkey

    return monkey.get_original("select", "poll")


def idle_connection_alive(sock) -> bool:
    """An idle keep-alive connection can be reused when nothing is waiting on it: readable
    means the server closed it (or sent something unasked). A zero-timeout poll() with the
    standard library's own (unpatched) poll: it never blocks, and works for any descriptor."""
    try:
        fileno = sock.fileno()
        if fileno < 0:
            return False
        poller = _unpatched_poll()()
        poller.register(fileno, _POLL_READABLE)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False


class GeventResponse(Response):
    def __init__(self, response) -> None:
        self.response = response
        self.status = response.status_code

    def body(self) -> bytes:
        try:
            return self.response.read()
        except TimeoutError:
            raise TransportError("no answer in time", timeout=True) from None
        except _IO_ERRORS as error:
            raise TransportError(type(error).__name__, timeout=False) from None

    def lines(self) -> Iterator[bytes]:
        readline = self.response.readline
        try:
            while True:
                line = readline(b"\n")
                if not line:
                    return
                yield line.rstrip(b"\r\n")
        except TimeoutError:
            raise TransportError("stream interrupted: no data in time", timeout=True) from None
        except _IO_ERRORS as error:
            raise TransportError(f"stream interrupted ({type(error).__name__})", timeout=False) from None

    def close(self, complete: bool) -> None:
        response = self.response
        if complete and response.message_complete:
            response.release()  # already back in the pool, or returned now
            return
        # Cut short: the connection holds unread data, so it cannot serve another call.
        pool, sock = getattr(response, "_pool", None), getattr(response, "_sock", None)
        response._pool = response._sock = None
        if sock is not None:
            if pool is not None:
                pool.release_socket(sock)  # closes it and frees its place in the pool
            else:
                sock.close()


# --- urllib3 ------------------------------------------------------------------------------


class Urllib3Transport:
    def __init__(self, base_url: str, pool_size: int, timeout: float) -> None:
        import urllib3

        self.prefix = urlsplit(base_url.rstrip("/")).path
        self.pool = urllib3.connection_from_url(
            base_url, maxsize=pool_size, block=False, retries=False,  # the router retries itself
            timeout=urllib3.Timeout(connect=min(CONNECT_TIMEOUT, timeout), read=timeout),
        )

    def request(self, method: str, path: str, body: bytes | None, headers: dict[str, str],
                timeout: float | None = None) -> "Urllib3Response":
        import urllib3
        from urllib3.exceptions import HTTPError

        options = {"timeout": urllib3.Timeout(total=timeout)} if timeout is not None else {}
        try:
            response = self.pool.urlopen(method, self.prefix + path, body=body, headers=headers, preload_content=False,
                                         **options)
        except (HTTPError, OSError) as error:
            raise _urllib3_error(error) from None
        return Urllib3Response(response)


def _urllib3_error(error: Exception) -> TransportError:
    from urllib3.exceptions import NewConnectionError, TimeoutError as Urllib3Timeout

    # NewConnectionError (refused, unreachable) is a ConnectTimeoutError in urllib3 2.x.
    timeout = isinstance(error, (Urllib3Timeout, TimeoutError)) and not isinstance(error, NewConnectionError)
    return TransportError(type(error).__name__, timeout=timeout)


class Urllib3Response(Response):
    def __init__(self, response) -> None:
        self.response = response
        self.status = response.status

    def body(self) -> bytes:
        from urllib3.exceptions import HTTPError

        try:
            return self.response.read()
        except (HTTPError, OSError) as error:
            raise _urllib3_error(error) from None

    def lines(self) -> Iterator[bytes]:
        from urllib3.exceptions import HTTPError

        pending = b""
        try:
            while True:
                data = self.response.read1(READ_SIZE)
                if not data:
                    if pending:
                        yield pending
                    return
                pending += data
                if b"\n" in data:
                    *complete, pending = pending.split(b"\n")
                    for line in complete:
                        yield line.rstrip(b"\r")
        except (HTTPError, OSError) as error:
            raise _urllib3_error(error) from None

    def close(self, complete: bool) -> None:
        if complete:
            self.response.drain_conn()
        else:
            self.response.close()
        self.response.release_conn()
