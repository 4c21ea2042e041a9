"""gunicorn settings for the alert sink: `gunicorn -c python:llm_router.alertsink_gunicorn_conf`.

One worker, always: the recent-notifications buffer lives in that worker's memory. Threads
serve concurrent posts. Log lines are the router's JSON (same formatter and filter).
"""

from __future__ import annotations

import os

# Single process: the sink's metrics stay in memory. A multiprocess directory inherited from
# the router's environment would make prometheus_client write files there instead.
os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)

from llm_router.alertsink import SERVICE  # noqa: E402  (after the line above, on purpose)
from llm_router.telemetry.logs import gunicorn_logconfig  # noqa: E402

wsgi_app = "llm_router.alertsink:create_sink_app()"
bind = os.environ.get("ALERT_SINK_BIND", "0.0.0.0:9095")
workers = 1
threads = int(os.environ.get("ALERT_SINK_THREADS", "4"))
worker_class = "gthread"
timeout = 30
graceful_timeout = 5
keepalive = 5
# The sink logs one JSON line per notification itself; gunicorn's access lines add nothing.
accesslog = None
control_socket_disable = True

logconfig_dict = gunicorn_logconfig(SERVICE)
# As the router's: gunicorn would otherwise build its access-log fields for every request.
logger_class = "llm_router.telemetry.logs.GunicornLogger"
