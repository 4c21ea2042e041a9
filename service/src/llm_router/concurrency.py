"""What the worker model changes for the code that waits.

Under gunicorn's gevent worker (the default, see worker.py) the standard library is
monkey-patched before the app is imported: sockets, `time.sleep`, `threading` locks,
events and threads all become cooperative, so an in-flight call costs a greenlet. Two
things cannot be patched and live here:

- calls into C libraries that block (SQLite; libpq for PostgreSQL): `NativeThread` runs
  them on one real OS thread and lets the calling greenlet wait for the result;
- a client that goes away while its request waits on a backend: nobody reads its socket
  until the response is written, so `ClientWatch` watches it and interrupts the request
  (nginx's 499) within a loop iteration of the close.

Under the gthread worker (LLM_ROUTER_WORKER_CLASS=gthread, kept for comparison) nothing
is patched: `NativeThread` is a plain one-thread executor and `ClientWatch` is inert (a
client that left is noticed at the next write, as before).
"""

from __future__ import annotations

import errno
import socket
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")


def green() -> bool:
    """True in a gevent worker (sockets patched): waiting must cooperate."""
    if "gevent" not in sys.modules:
        return False
    from gevent import monkey

    return bool(monkey.is_module_patched("socket"))


class NativeThread:
    """One real OS thread that runs blocking calls in order (a database connection used
    only from it never crosses threads). Started on first use, so after gunicorn's fork."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._pool = None
        self._lock = threading.Lock()

    def _executor(self):
        if self._pool is None:
            with self._lock:
                if self._pool is None:
                    if green():
                        from gevent.threadpool import ThreadPool

                        self._pool = ThreadPool(1)
                    else:
                        self._pool = ThreadPoolExecutor(1, thread_name_prefix=self.name)
        return self._pool

    def call(self, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run ``fn`` on the thread; the caller (thread or greenlet) waits for its result,
        or gets its exception."""
        pool = self._executor()
        if isinstance(pool, ThreadPoolExecutor):
            return pool.submit(fn, *args, **kwargs).result()
        # An exception goes back to the caller as a value: raised inside gevent's pool, the
        # hub would also print its traceback on stderr - one per failed call, where a store
        # that is down must log once per change of state (ledger.py).
        ok, value = pool.apply(_captured, (fn, args, kwargs))
        if ok:
            return value
        raise value


    def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if isinstance(pool, ThreadPoolExecutor):
            pool.shutdown(wait=True)
        else:
            pool.kill()


def _captured(fn, args, kwargs) -> tuple[bool, object]:
    try:
        return True, fn(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 (re-raised by the caller)
        return False, error


class ClientGone(BaseException):
    """Raised into a request whose client closed the connection (counted as 499).

    A BaseException, like GreenletExit: no `except Exception` on the way may swallow it,
    while every `finally` (slot release, span end, upstream close) still runs."""


class ServerStopping(BaseException):
    """Raised into requests still running when a stopping worker's grace period is spent:
    they end cleanly (an error event for a stream, 503 otherwise) and are counted."""


# The chat requests of this process that are waiting on a backend or streaming, so that a
# stopping worker can end them (worker.py). Only ever touched from the hub's thread.
ACTIVE: set["ClientWatch"] = set()


def client_socket(environ: dict) -> socket.socket | None:
    """The client connection of a WSGI request, where the server exposes it."""
    return environ.get("gunicorn.socket") or environ.get("gunicorn.sock")


class ClientWatch:
    """Interrupts the current greenlet with ClientGone when its client closes the
    connection: an I/O watcher on the client socket, no greenlet of its own.

    Armed once the request body is read, so the socket becomes readable again only when
    the client closes it (or pipelines its next request: then the watch gives up, since it
    cannot tell, and the request runs to its end as before).
    """

    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock
        self.watcher = None
        self.greenlet = None

    def arm(self) -> None:
        if self.sock is None or self.watcher is not None or not green():
            return
        import gevent

        try:
            fileno = self.sock.fileno()
        except OSError:
            return
        if fileno < 0:
            return
        self.greenlet = gevent.getcurrent()
        hub = gevent.get_hub()
        self.watcher = hub.loop.io(fileno, 1)  # 1: readable
        self.watcher.start(self._readable)
        ACTIVE.add(self)

    def disarm(self) -> None:
        watcher, self.watcher = self.watcher, None
        ACTIVE.discard(self)
        if watcher is not None:
            watcher.stop()
            watcher.close()

    def _readable(self) -> None:
        """In the hub: readable means closed, reset, or pipelined data."""
        try:
            data = self.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return  # a spurious wake-up
        except OSError as error:
            closed = error.errno in (errno.ECONNRESET, errno.ENOTCONN, errno.EPIPE, errno.EBADF)
            data = b"" if closed else b"?"
        greenlet = self.greenlet
        self.disarm()
        if data or greenlet is None or greenlet.dead:
            return
        # From the hub, like gevent.Timeout: the exception surfaces where the request waits.
        greenlet.throw(ClientGone())

    def interrupt(self, exception: BaseException) -> None:
        """End the request with ``exception`` (a stopping worker's last word)."""
        greenlet = self.greenlet
        self.disarm()
        if greenlet is not None and not greenlet.dead:
            import gevent

            gevent.kill(greenlet, exception)  # asynchronous: raised where it waits
