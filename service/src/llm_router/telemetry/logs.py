"""JSON log lines on stdout, one object per line, each tied to its request and trace.

Fields on every line: time (UTC, RFC 3339), level, logger, message, service, request_id,
trace_id, span_id. Access and event lines add request facts as extra fields.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from datetime import datetime, timezone

from gunicorn import glogging
from opentelemetry import trace
from pythonjsonlogger.orjson import OrjsonFormatter

request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)

ACCESS_LOGGER = "llm_router.access"
EVENT_LOGGER = "llm_router.events"


class ContextFilter(logging.Filter):
    """Stamps each record with the current request id and trace context."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self.service
        if getattr(record, "request_id", None) is None:
            record.request_id = request_id_var.get()
        # Ids passed explicitly win: a stream's access line is written after its span ended.
        if getattr(record, "trace_id", None) is None:
            context = trace.get_current_span().get_span_context()
            if context.is_valid:
                record.trace_id = format(context.trace_id, "032x")
                record.span_id = format(context.span_id, "016x")
            else:
                record.trace_id = record.span_id = None
        return True


_CONTEXT_FIELDS = ("service", "request_id", "trace_id", "span_id")


class RouterJsonFormatter(OrjsonFormatter):
    """python-json-logger's formatter (its orjson flavour: encoding with the standard
    library's json was a visible share of a request) with the router's field order and
    names.

    `add_fields` is its documented extension point; this one writes the fixed fields
    directly and copies the extras in one pass over the record (the library's generic
    merge costs more than the JSON encoding itself, on every access line).
    """

    def __init__(self) -> None:
        super().__init__(
            ["time", "levelname", "name", "message", *_CONTEXT_FIELDS],
            rename_fields={"levelname": "level", "name": "logger"},
        )
        self._skip = frozenset(self._skip_fields) | {"time", "level", "logger", "message"}

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        moment = datetime.fromtimestamp(record.created, timezone.utc)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    def add_fields(self, log_data: dict, record: logging.LogRecord, message_dict: dict) -> None:
        attributes = record.__dict__
        log_data["time"] = self.formatTime(record)
        log_data["level"] = record.levelname.lower()
        log_data["logger"] = record.name
        log_data["message"] = record.message
        for field in _CONTEXT_FIELDS:
            log_data[field] = attributes.get(field)
        log_data.update(message_dict)
        skip = self._skip
        for key, value in attributes.items():
            if key not in skip and not key.startswith("_"):
                log_data[key] = value


class LineHandler(logging.StreamHandler):
    """A StreamHandler that formats a record before taking its lock.

    logging.Handler.handle holds the handler's lock through format() and emit(): with the
    JSON access line formatted under it, every request thread of a worker queued behind
    the one formatting (a profile under load showed more time waiting for this lock than
    formatting). Here the lock guards only the write and flush of the finished line, which
    is what keeps lines whole.
    """

    def handle(self, record: logging.LogRecord) -> bool:
        passed = self.filter(record)
        if passed:
            try:
                line = self.format(record) + self.terminator
                with self.lock:
                    self.stream.write(line)
                    self.stream.flush()
            except RecursionError:
                raise
            except Exception:  # noqa: BLE001 (logging's own policy: report, never raise)
                self.handleError(record)
        return passed


def configure_logging(service: str, enabled: bool = True, level: str = "INFO") -> None:
    """Route every logger (ours, Flask's, gunicorn's) through one JSON handler on stdout."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_llm_router", False):
            root.removeHandler(handler)
    if not enabled:
        # Telemetry switched off (benchmarks): warnings and errors still reach stderr.
        logging.getLogger(ACCESS_LOGGER).disabled = True
        logging.getLogger(EVENT_LOGGER).setLevel(logging.WARNING)
        return
    logging.getLogger(ACCESS_LOGGER).disabled = False
    logging.getLogger(EVENT_LOGGER).setLevel(logging.NOTSET)
    handler = LineHandler(sys.stdout)
    handler._llm_router = True  # type: ignore[attr-defined]
    handler.setFormatter(RouterJsonFormatter())
    handler.addFilter(ContextFilter(service))
    root.addHandler(handler)
    root.setLevel(level)


class GunicornLogger(glogging.Logger):
    """gunicorn's logger without its access log: the apps write their own access line, and
    gunicorn otherwise builds its access-log fields for every request (its logging config
    switches that on) only for the line to be dropped - a few percent of a request's CPU."""

    access_log_enabled = False

    def access(self, resp, req, environ, request_time) -> None:
        return None


def gunicorn_logconfig(service: str) -> dict:
    """gunicorn's `logconfig_dict`: its own lines in the same JSON; its access log off (the
    apps write their own); the root logger left to the app (it adds its handler per worker)."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": f"{__name__}.ContextFilter", "service": service}},
        "formatters": {"json": {"()": f"{__name__}.RouterJsonFormatter"}},
        "handlers": {
            "stdout": {"class": f"{__name__}.LineHandler", "stream": "ext://sys.stdout", "formatter": "json",
                       "filters": ["context"]},
        },
        "root": {"level": "INFO", "handlers": []},
        "loggers": {
            "gunicorn.error": {"handlers": ["stdout"], "level": "INFO", "propagate": False},
            "gunicorn.access": {"handlers": [], "level": "CRITICAL", "propagate": False},
        },
    }


def event(name: str, message: str, level: int = logging.INFO, **fields) -> None:
    """An event line (fallback, breaker change, budget crossing, fault injected...)."""
    logging.getLogger(EVENT_LOGGER).log(level, message, extra={"event": name, **fields})
