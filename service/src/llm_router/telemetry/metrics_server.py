"""/metrics from a process of its own, so a scrape never holds up a request.

With several gunicorn workers, a scrape served by a worker merges every worker's metric
files in pure Python: tens of milliseconds at the bundle's default label sets, during which
that worker's other request threads wait for the GIL. When LLM_ROUTER_METRICS_BIND is set,
the gunicorn master (gunicorn_conf.when_ready) binds that address and forks one small
process that serves only the merged registry there; Prometheus scrapes it instead of the
request port. The request port keeps its /metrics (same content) for people and tests.

The process is a child of the master: it exits when the master goes (checked every
second, and the master's on_exit stops it), and serves nothing but the exposition. With one
worker there is no file to merge and the registry lives in the worker's memory, so that
worker serves LLM_ROUTER_METRICS_BIND from a thread of its own (serve_in_thread).
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable

METRICS_BIND_ENV = "LLM_ROUTER_METRICS_BIND"
# Signals gunicorn's master handles; the forked child must not inherit its handlers.
_MASTER_SIGNALS = ("SIGHUP", "SIGQUIT", "SIGINT", "SIGTERM", "SIGTTIN", "SIGTTOU", "SIGUSR1", "SIGUSR2",
                   "SIGWINCH", "SIGCHLD")


def parse_bind(value: str) -> tuple[str, int]:
    """'host:port' (IPv6 as '[::1]:9464') -> (host, port); a clear ValueError otherwise."""
    host, sep, port = value.strip().rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{METRICS_BIND_ENV}={value!r}: expected host:port, e.g. 0.0.0.0:9464")
    return host.strip("[]") or "0.0.0.0", int(port)


def start(bind: str, registry_factory: Callable[[], object], log: Callable[[str], None]) -> int:
    """Bind ``bind`` here (so a bad address fails loudly at start), then fork the server.

    Returns the child's pid. ``registry_factory`` runs in the child and returns the registry
    to render (the multiprocess collector reads the workers' files at each scrape).
    """
    from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler, make_wsgi_app
    from wsgiref.simple_server import make_server

    host, port = parse_bind(bind)
    holder: dict = {}

    def app(environ, start_response):  # the real app is built in the child
        return holder["app"](environ, start_response)

    httpd = make_server(host, port, app, ThreadingWSGIServer, handler_class=_SilentHandler)
    master = os.getpid()
    pid = os.fork()
    if pid:
        httpd.server_close()  # the child owns the socket now
        log(f"metrics served on {host}:{port} by process {pid}")
        return pid
    try:  # the child: never returns into gunicorn's code
        for name in _MASTER_SIGNALS:
            signal.signal(getattr(signal, name), signal.SIG_DFL)
        _set_process_title()
        holder["app"] = make_wsgi_app(registry_factory())
        threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()
        while os.getppid() == master:
            time.sleep(1)
    except BaseException as error:  # noqa: BLE001 (report, then leave without unwinding gunicorn)
        print(f"llm-router metrics server stopped: {error!r}", file=sys.stderr, flush=True)
    finally:
        os._exit(0)


def serve_in_thread(bind: str, registry: object) -> None:
    """One worker (in-memory registry, exemplars): serve it on ``bind`` from a thread of
    the worker itself, so Prometheus scrapes the same address whatever the worker count.
    SO_REUSEPORT lets a worker replaced on SIGHUP bind while the old one drains."""
    from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler, make_wsgi_app
    from wsgiref.simple_server import make_server

    class Server(ThreadingWSGIServer):
        allow_reuse_port = True

    host, port = parse_bind(bind)
    httpd = make_server(host, port, make_wsgi_app(registry), Server, handler_class=_SilentHandler)
    threading.Thread(target=httpd.serve_forever, name="metrics-http", daemon=True).start()


def stop(pid: int | None, timeout: float = 2.0) -> None:
    """Stop the metrics process (from the master's on_exit)."""
    if not pid:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
        except ChildProcessError:  # already reaped by gunicorn's own loop
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _set_process_title() -> None:
    """Name the process in ps/top where the OS allows it (Linux: the comm name)."""
    try:
        with open("/proc/self/comm", "w") as comm:
            comm.write("llm-router-metrics")
    except OSError:
        pass
