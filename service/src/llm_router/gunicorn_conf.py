"""gunicorn settings for the router: `gunicorn -c python:llm_router.gunicorn_conf`.

Workers and threads come from the environment. With more than one worker the metrics use
prometheus_client's multiprocess mode: its directory is wiped when the master starts and
each dead worker's files are marked, so totals stay exact across workers and restarts.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path

# prometheus_client picks its value store when first imported, so this module must set
# the multiprocess directory before anything imports it (hence no imports of it up here).
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

wsgi_app = "llm_router.wsgi:app"
bind = os.environ.get("LLM_ROUTER_BIND", "0.0.0.0:8080")
workers = int(os.environ.get("LLM_ROUTER_WORKERS", "2"))
threads = int(os.environ.get("LLM_ROUTER_THREADS", "8"))
worker_class = "gthread"
# Streams can run for minutes; the worker heartbeat must outlast a slow generation.
timeout = int(os.environ.get("LLM_ROUTER_WORKER_TIMEOUT", "300"))
graceful_timeout = int(os.environ.get("LLM_ROUTER_GRACEFUL_TIMEOUT", "10"))
keepalive = 5
# How long a stopping worker may spend sending its last spans.
SPAN_FLUSH_SECONDS = float(os.environ.get("LLM_ROUTER_SPAN_FLUSH_SECONDS", "2"))
# The app writes its own JSON access line (with tenant, model, trace id).
accesslog = None
# gunicorn >= 25.1 opens a control socket in $HOME by default; the router needs none.
control_socket_disable = True

if workers > 1:
    os.environ.setdefault(MULTIPROC_ENV, str(Path(tempfile.gettempdir()) / f"llm-router-metrics-{os.getpid()}"))
else:
    # One worker: the in-memory registry, which also renders exemplars (trace ids).
    os.environ.pop(MULTIPROC_ENV, None)

# The JSON logging module imports no prometheus_client, so it is safe this early.
from llm_router.telemetry.logs import gunicorn_logconfig  # noqa: E402

logconfig_dict = gunicorn_logconfig(os.environ.get("OTEL_SERVICE_NAME", "llm-router"))


def on_starting(server) -> None:
    """Wipe the multiprocess directory: files from an earlier run would be summed in."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return
    path = Path(directory)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    server.log.info("metrics multiprocess directory ready: %s", path)


def child_exit(server, worker) -> None:
    """Drop a dead worker's live gauges (its counters stay summed in)."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def worker_exit(server, worker) -> None:
    """Flush the worker's buffered spans, for at most a few seconds.

    The exporter's own shutdown retries each batch until its timeout: with the collector
    down that would hold a graceful stop for tens of seconds. The flush runs on a daemon
    thread instead, and the worker leaves when the budget is spent.
    """
    from llm_router.wsgi import app

    provider = app.extensions["llm_router"].tracer_provider
    if provider is None:
        return
    flush = threading.Thread(target=provider.shutdown, name="span-flush", daemon=True)
    flush.start()
    flush.join(SPAN_FLUSH_SECONDS)
    if flush.is_alive():
        server.log.warning("span flush did not finish in %.1fs; unsent spans dropped", SPAN_FLUSH_SECONDS)
