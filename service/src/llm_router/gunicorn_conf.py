"""gunicorn settings for the router: `gunicorn -c python:llm_router.gunicorn_conf`.

The worker model comes from the environment: gevent workers by default (an in-flight call
costs a greenlet, so a worker holds LLM_ROUTER_WORKER_CONNECTIONS of them; worker.py), or
gunicorn's gthread workers (LLM_ROUTER_WORKER_CLASS=gthread, a thread per call, kept for
comparison). With more than one worker the metrics use prometheus_client's multiprocess
mode: its directory is wiped when the master starts and each dead worker's files are
marked, so totals stay exact across workers and restarts. The master also creates the
container's backend concurrency slots (resilience.SharedSlots) before the workers fork.
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

WORKER_CLASSES = {"gevent": "llm_router.worker.RouterGeventWorker", "gthread": "gthread"}

wsgi_app = "llm_router.wsgi:app"
# Loopback unless told otherwise: the container image sets 0.0.0.0:8080.
bind = os.environ.get("LLM_ROUTER_BIND", "127.0.0.1:8080")
workers = int(os.environ.get("LLM_ROUTER_WORKERS", "2"))
WORKER_CLASS = os.environ.get("LLM_ROUTER_WORKER_CLASS", "gevent").strip().lower()
if WORKER_CLASS not in WORKER_CLASSES:
    raise SystemExit(f"LLM_ROUTER_WORKER_CLASS={WORKER_CLASS!r}: use one of {', '.join(WORKER_CLASSES)}")
worker_class = WORKER_CLASSES[WORKER_CLASS]
# gevent: concurrent connections per worker (each in-flight call holds one, plus its
# upstream socket). gthread: threads per worker, the calls it can hold at once.
worker_connections = int(os.environ.get("LLM_ROUTER_WORKER_CONNECTIONS", "1000"))
threads = int(os.environ.get("LLM_ROUTER_THREADS", "8"))
# The worker heartbeat: a gevent worker beats from its own greenlet whatever its requests
# do, so this only catches a worker whose loop is stuck. A gthread worker beats between
# requests, so there it must outlast the longest stream.
timeout = int(os.environ.get("LLM_ROUTER_WORKER_TIMEOUT", "30" if WORKER_CLASS == "gevent" else "300"))
# How long a stop lets open requests and streams finish (the master kills workers after
# it; a gevent worker ends what is left a few seconds before, see worker.py).
graceful_timeout = int(os.environ.get("LLM_ROUTER_GRACEFUL_TIMEOUT", "20"))
keepalive = 5
backlog = 4096
# How long a stopping worker may spend sending its last spans.
SPAN_FLUSH_SECONDS = float(os.environ.get("LLM_ROUTER_SPAN_FLUSH_SECONDS", "1.5"))
# The app writes its own JSON access line (with tenant, model, trace id).
accesslog = None
# gunicorn >= 25.1 opens a control socket in $HOME by default; the router needs none.
control_socket_disable = True

# Process health (telemetry/process.py): the master records its pid here in on_starting, so
# a worker knows its parent is the gunicorn master; every process of the group keeps its
# GC counts in the process directory (on /dev/shm when there is one: rewritten at every
# collection, those pages should never go to disk). Same names as in telemetry/process.py.
MASTER_PID_ENV = "LLM_ROUTER_MASTER_PID"
PROCESS_DIR_ENV = "LLM_ROUTER_PROCESS_DIR"
_shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else tempfile.gettempdir()
if not os.environ.get(PROCESS_DIR_ENV):
    # Private (0700) and unguessable: /dev/shm is shared by every user of the host.
    os.environ[PROCESS_DIR_ENV] = tempfile.mkdtemp(prefix="llm-router-process-", dir=_shm)

# A metrics directory this master made itself (not one given in the environment) is
# removed when it stops.
_OWN_METRICS_DIR: list[str] = []
if workers > 1:
    if not os.environ.get(MULTIPROC_ENV):
        _OWN_METRICS_DIR.append(tempfile.mkdtemp(prefix="llm-router-metrics-"))  # private: 0700, unguessable
        os.environ[MULTIPROC_ENV] = _OWN_METRICS_DIR[0]
else:
    # One worker: the in-memory registry, which also renders exemplars (trace ids).
    os.environ.pop(MULTIPROC_ENV, None)

# The JSON logging module imports no prometheus_client, so it is safe this early.
from llm_router.telemetry.logs import gunicorn_logconfig  # noqa: E402

logconfig_dict = gunicorn_logconfig(os.environ.get("OTEL_SERVICE_NAME", "llm-router"))
logger_class = "llm_router.telemetry.logs.GunicornLogger"


def on_starting(server) -> None:
    """Wipe the multiprocess directory: files from an earlier run would be summed in.

    Also record the master's pid for the workers (inherited through the environment) and
    start recording the master's GC counts.
    """
    os.environ[MASTER_PID_ENV] = str(os.getpid())
    _start_process_health(server)
    _create_shared_limits(server)
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return
    path = Path(directory)
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True, mode=0o700)
    server.log.info("metrics multiprocess directory ready: %s", path)


def _create_shared_limits(server) -> None:
    """One semaphore per model holding its max_concurrency, for all workers together."""
    from llm_router.config import ConfigError, load_config
    from llm_router.resilience import SHARED_LIMITS_ENV, create_set

    try:
        config = load_config()
        os.environ[SHARED_LIMITS_ENV] = create_set({m.id: m.max_concurrency for m in config.models})
    except (ConfigError, OSError) as error:
        # The workers then limit each their own calls (and fail on a bad config themselves).
        server.log.warning("concurrency limits are per worker, not shared: %s", error)


# LLM_ROUTER_METRICS_BIND (host:port): with several workers, /metrics is also served by a
# process of its own there (telemetry/metrics_server.py), so scrapes never wait on requests.
METRICS_BIND_ENV = "LLM_ROUTER_METRICS_BIND"
_metrics_server: dict[str, int] = {}


def when_ready(server) -> None:
    """Start the metrics process (multiprocess mode only: a single worker's metrics live in
    its memory, which no other process can read; it serves them on the request port)."""
    bind = os.environ.get(METRICS_BIND_ENV, "").strip()
    if not bind:
        return
    if not os.environ.get(MULTIPROC_ENV):
        return  # one worker: it serves the address itself (post_fork)
    from llm_router.telemetry import metrics_server

    def registry():
        from llm_router.telemetry import metrics, process

        process.record_gc(os.environ[PROCESS_DIR_ENV], role="metrics")
        return metrics.exposition_registry()

    try:
        _metrics_server["pid"] = metrics_server.start(bind, registry, server.log.info)
    except (OSError, ValueError) as error:
        # The request port still serves /metrics: degrade, and say so loudly.
        server.log.error("metrics server not started on %s: %s", bind, error)


def _start_process_health(server) -> None:
    from llm_router.telemetry import process

    directory = os.environ.get(PROCESS_DIR_ENV)
    if not directory:
        return
    try:
        process.prepare_directory(directory)
    except OSError as error:
        server.log.warning("process health directory %s unusable, no GC counts: %s", directory, error)
        return
    process.record_gc(directory)


def post_fork(server, worker) -> None:
    """Each worker records its own GC counts (the master's recorder stops in the child)."""
    from llm_router.telemetry import process

    if os.environ.get(PROCESS_DIR_ENV):
        process.record_gc(os.environ[PROCESS_DIR_ENV])  # never raises: no GC counts at worst


def post_worker_init(worker) -> None:
    """One worker: it serves LLM_ROUTER_METRICS_BIND itself, from a thread of its own - a
    greenlet in a gevent worker, since this runs after the worker patched the standard
    library (a real thread started before the patch deadlocked on the registry's locks)."""
    bind = os.environ.get(METRICS_BIND_ENV, "").strip()
    if bind and not os.environ.get(MULTIPROC_ENV):
        from llm_router.telemetry import metrics, metrics_server

        try:
            metrics_server.serve_in_thread(bind, metrics.exposition_registry())
        except (OSError, ValueError) as error:
            worker.log.error("metrics not served on %s: %s", bind, error)


def child_exit(server, worker) -> None:
    """Drop a dead worker's live gauges (its counters stay summed in) and its GC file."""
    from llm_router.telemetry import process

    if os.environ.get(PROCESS_DIR_ENV):
        process.forget(os.environ[PROCESS_DIR_ENV], worker.pid)
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    """Stop the metrics process; remove the master's GC file, and the process directory
    once it is empty."""
    from llm_router.telemetry import metrics_server, process

    from llm_router.resilience import SHARED_LIMITS_ENV, remove_set

    pid = _metrics_server.pop("pid", None)
    metrics_server.stop(pid)
    if pid and os.environ.get(PROCESS_DIR_ENV):
        process.forget(os.environ[PROCESS_DIR_ENV], pid)
    if os.environ.get(PROCESS_DIR_ENV):
        process.remove_directory(os.environ[PROCESS_DIR_ENV])
    if os.environ.get(SHARED_LIMITS_ENV):
        remove_set(os.environ[SHARED_LIMITS_ENV])
    for directory in _OWN_METRICS_DIR:
        shutil.rmtree(directory, ignore_errors=True)


def worker_exit(server, worker) -> None:
    """Store what the worker still holds - charges and answers first, then spans - within
    the few seconds the worker keeps for it before the master's kill (worker.py).

    The exporter's own shutdown retries each batch until its timeout: with the collector
    down that would hold a graceful stop for tens of seconds. The span flush runs on a
    daemon thread instead, and the worker leaves when its budget is spent.
    """
    from llm_router.telemetry.tracing import flush_dropped_spans
    from llm_router.wsgi import app

    services = app.extensions["llm_router"]
    services.close()  # charges and answers (one journal, one transaction), before spans
    provider = services.tracer_provider
    if provider is None:
        return
    flush = threading.Thread(target=provider.shutdown, name="span-flush", daemon=True)
    flush.start()
    flush.join(SPAN_FLUSH_SECONDS)
    if flush.is_alive():
        server.log.warning("span flush did not finish in %.1fs; unsent spans dropped", SPAN_FLUSH_SECONDS)
    flush_dropped_spans()
