"""The router's gunicorn worker: gevent's, with a stop that leaves time for the money.

An LLM call waits 0.3-30 s on its upstream. In a gevent worker a call in flight is a
greenlet, so one worker holds thousands of them; the CPU is the only limit (see
docs/performance.md for why gevent, and the measurements).

What differs from gunicorn's own GeventWorker is the graceful stop. There, the worker
waits for its requests until ``graceful_timeout`` - the very moment the master's SIGKILL
comes - so its exit hooks (store the last charges and answers, send the last spans) could
be cut off. Here:

1. stop accepting; let requests and streams run until ``graceful_timeout - STOP_RESERVE``;
2. end what is still running: each request gets ServerStopping where it waits (a stream
   ends with an error event and [DONE], a request waiting on a backend gets 503), is
   charged for what was produced, and counted (code 503, error type ``shutdown``);
3. leave; gunicorn runs worker_exit (gunicorn_conf.py) within the reserve: charges and
   answers first, then spans.
"""

from __future__ import annotations

import resource
import time

from functools import partial

import gevent
from gevent.pool import Pool
from gevent.server import StreamServer
from gunicorn.workers.ggevent import GeventWorker

from . import concurrency

# Seconds of graceful_timeout kept for ending open requests (ENDING_SECONDS) and the exit
# hooks (the rest); the master's SIGKILL comes at graceful_timeout.
STOP_RESERVE = 4.0
ENDING_SECONDS = 1.0


def raise_open_files_limit() -> int:
    """Each call in flight holds two sockets (client and upstream): lift the soft limit on
    open files to the hard one (1024 is a common soft default). Returns the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (ValueError, OSError):
            pass
    return soft


class RouterGeventWorker(GeventWorker):
    def init_process(self) -> None:
        limit = raise_open_files_limit()
        if limit < 2 * self.worker_connections + 64:
            self.log.warning(
                "open files limited to %d: fewer than 2 per worker connection (%d); raise `ulimit -n`",
                limit, self.worker_connections,
            )
        super().init_process()

    # Requests being served (any route), from gunicorn's handing over the parsed request to
    # the end of its response body (a stream's last byte): a stopping worker waits for these,
    # not for idle keep-alive connections. Every request runs on this worker's one hub thread.
    in_progress = 0

    def handle_request(self, *args):
        self.in_progress += 1
        try:
            return super().handle_request(*args)
        finally:
            self.in_progress -= 1

    def run(self) -> None:
        servers = []
        for listener in self.sockets:
            listener.setblocking(1)
            server = StreamServer(listener, handle=partial(self.handle, listener), spawn=Pool(self.worker_connections))
            if self.cfg.workers > 1:
                server.max_accept = 1  # share new connections fairly between workers
            server.start()
            servers.append(server)

        while self.alive:
            self.notify()
            gevent.sleep(1.0)

        try:
            self._stop(servers)
        except Exception:  # noqa: BLE001 (the exit hooks must run whatever happens here)
            self.log.exception("error while stopping the worker")
        finally:
            # Whatever is left (idle keep-alive connections; requests, if ending them failed)
            # goes before the exit hooks close the journal under them.
            for server in servers:
                server.stop(timeout=0.5)

    def _stop(self, servers) -> None:
        for server in servers:
            server.close()  # stop accepting
        # Idle keep-alive connections do not count: waiting for them would hold every stop
        # for the clients' keep-alive time (gunicorn's own loop does).
        drain_until = time.monotonic() + max(0.0, self.cfg.graceful_timeout - STOP_RESERVE)
        while self.in_progress and time.monotonic() < drain_until:
            self.notify()
            gevent.sleep(0.05)
        open_requests = list(concurrency.ACTIVE)
        if open_requests:
            self.log.warning("graceful stop: ending %d open request(s)", len(open_requests))
            for watch in open_requests:
                watch.interrupt(concurrency.ServerStopping())
            ending_until = time.monotonic() + ENDING_SECONDS
            while self.in_progress and time.monotonic() < ending_until:
                gevent.sleep(0.02)
