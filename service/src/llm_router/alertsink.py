"""The bundle's local alert sink: Alertmanager's webhook receivers post here.

Each accepted notification becomes one JSON log line (like the router's) and an entry in an
in-memory ring buffer that tests and humans read back from /api/notifications. Run it with
`llm-router alert-sink` (gunicorn, one worker: the buffer lives in that worker's memory).

The buffer keeps a summary of each notification, never the raw payload (whose labels and
annotations can be anything an alert rule writes), and is bounded twice: by count
(ALERT_SINK_CAPACITY) and by the bytes of its JSON (ALERT_SINK_MAX_BYTES); the oldest
entries go first. Reading is open, like Alertmanager's own API; emptying it
(DELETE /api/notifications) needs `Authorization: Bearer $ALERT_SINK_TOKEN`, and is refused
when no token is configured.

Receiver names are configured (ALERT_SINK_RECEIVERS), so the metric label set is bounded:
a post to an unknown receiver is a 404, and a malformed payload a 400, both counted only in
llm_alertsink_invalid_requests_total.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import threading
import time
from collections import deque
from datetime import datetime, timezone

from flask import Flask, Response, jsonify, request
from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.exposition import choose_encoder
from werkzeug.exceptions import RequestEntityTooLarge

from .errors import APIError, register_error_handlers
from .telemetry import logs

SERVICE = "llm-alertsink"
DEFAULT_RECEIVERS = ("pager", "chat", "low-priority", "heartbeat")
RECEIVERS_ENV = "ALERT_SINK_RECEIVERS"
CAPACITY_ENV = "ALERT_SINK_CAPACITY"
MAX_BYTES_ENV = "ALERT_SINK_MAX_BYTES"
TOKEN_ENV = "ALERT_SINK_TOKEN"
DEFAULT_MAX_BYTES = 4 * 1024 * 1024
# Per alert, the labels and annotations a reader needs; the rest of the payload is dropped.
KEPT_ANNOTATIONS = ("summary", "runbook_url", "dashboard_url")
MAX_BODY_BYTES = 1024 * 1024
STATUSES = ("firing", "resolved")
_RECEIVER_NAME = re.compile(r"^[A-Za-z0-9._-]{1,64}$")

_log = logging.getLogger("llm_router.alertsink")

# As in the router's catalogue: no *_created series.
disable_created_metrics()


def receivers_from_env() -> tuple[str, ...]:
    """ALERT_SINK_RECEIVERS (comma-separated), else the bundle's four receivers."""
    value = os.environ.get(RECEIVERS_ENV, "").strip()
    if not value:
        return DEFAULT_RECEIVERS
    return _check_receivers(name.strip() for name in value.split(",") if name.strip())


def capacity_from_env() -> int:
    """ALERT_SINK_CAPACITY, else 1000 notifications."""
    value = os.environ.get(CAPACITY_ENV, "").strip() or "1000"
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{CAPACITY_ENV} must be a positive integer, got {value!r}")
    return int(value)


def max_bytes_from_env() -> int:
    """ALERT_SINK_MAX_BYTES, else 4 MiB of buffered JSON."""
    value = os.environ.get(MAX_BYTES_ENV, "").strip() or str(DEFAULT_MAX_BYTES)
    if not value.isdigit() or int(value) < 1024:
        raise ValueError(f"{MAX_BYTES_ENV} must be an integer of at least 1024 (bytes), got {value!r}")
    return int(value)


def token_from_env() -> str | None:
    """ALERT_SINK_TOKEN (the bearer token DELETE /api/notifications needs), or None."""
    value = os.environ.get(TOKEN_ENV, "").strip()
    if value and len(value) < 16:
        raise ValueError(f"{TOKEN_ENV} must be at least 16 characters (`make up` generates one)")
    return value or None


def _check_receivers(names) -> tuple[str, ...]:
    receivers = tuple(dict.fromkeys(names))
    bad = [name for name in receivers if not _RECEIVER_NAME.match(name)]
    if bad or not receivers:
        raise ValueError(f"{RECEIVERS_ENV}: receiver names must match {_RECEIVER_NAME.pattern}, got {bad or 'none'}")
    return receivers


class SinkMetrics:
    """The sink's own metrics, in its own registry (never the router's global one)."""

    def __init__(self, receivers: tuple[str, ...]) -> None:
        self.registry = CollectorRegistry()
        self.notifications = Counter(
            "llm_alertsink_notifications_total", "Alertmanager notifications accepted, by receiver and status.",
            ["receiver", "status"], registry=self.registry,
        )
        self.alerts = Counter(
            "llm_alertsink_alerts_total", "Alerts inside accepted notifications, by receiver and alert status.",
            ["receiver", "status"], registry=self.registry,
        )
        self.invalid = Counter(
            "llm_alertsink_invalid_requests_total",
            "Webhook posts rejected: malformed payload (400), unknown receiver (404) or too large (413).",
            registry=self.registry,
        )
        self.last = Gauge(
            "llm_alertsink_last_notification_timestamp_seconds", "Unix time of the last notification, by receiver.",
            ["receiver"], registry=self.registry,
        )
        for receiver in receivers:  # every series reads 0 before the first notification
            self.last.labels(receiver)
            for status in STATUSES:
                self.notifications.labels(receiver, status)
                self.alerts.labels(receiver, status)


def _size(entry: dict) -> int:
    return len(json.dumps(entry, separators=(",", ":")).encode())


class NotificationBuffer:
    """The most recent notifications, oldest first, within a count and a byte budget; safe
    to use from many threads. An entry alone over the budget keeps its header fields and
    loses its alert list (alerts_omitted says how many)."""

    def __init__(self, capacity: int, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self._items: deque[tuple[dict, int]] = deque()
        self._capacity, self._max_bytes = capacity, max_bytes
        self._bytes = 0
        self._lock = threading.Lock()
        self._next_id = 1

    def add(self, entry: dict) -> dict:
        with self._lock:
            entry = {"id": self._next_id, **entry}
            self._next_id += 1
            size = _size(entry)
            if size > self._max_bytes:
                entry = {**entry, "alerts": [], "alerts_omitted": len(entry.get("alerts", []))}
                size = _size(entry)
            self._items.append((entry, size))
            self._bytes += size
            while len(self._items) > self._capacity or (self._bytes > self._max_bytes and len(self._items) > 1):
                _, dropped = self._items.popleft()
                self._bytes -= dropped
        return entry

    def snapshot(self) -> list[dict]:
        with self._lock:
            return [entry for entry, _ in self._items]

    def clear(self) -> int:
        with self._lock:
            count = len(self._items)
            self._items.clear()
            self._bytes = 0
        return count


# --- validation ------------------------------------------------------------------------------


def _invalid(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param, code="invalid_payload")


def _reject_constant(name: str):
    raise ValueError(f"{name} is not valid JSON")


def _string_map(value: object, param: str) -> dict:
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise _invalid(f"{param} must be an object of strings", param)
    return value


def _status(value: object, param: str) -> str:
    if value not in STATUSES:
        raise _invalid(f"{param} must be 'firing' or 'resolved'", param)
    return value


def validate_payload(body: bytes) -> dict:
    """Alertmanager's webhook payload (version "4"), or a 400 naming the bad field."""
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise _invalid("The body is not valid JSON.") from None
    if not isinstance(payload, dict):
        raise _invalid("The body must be a JSON object.")
    if payload.get("version", "4") != "4":
        raise _invalid("Only webhook payload version '4' is supported.", "version")
    _status(payload.get("status"), "status")
    for key in ("receiver", "groupKey", "externalURL"):
        if key in payload and not isinstance(payload[key], str):
            raise _invalid(f"{key} must be a string", key)
    for key in ("groupLabels", "commonLabels", "commonAnnotations"):
        if key in payload:
            _string_map(payload[key], key)
    truncated = payload.get("truncatedAlerts", 0)
    if not isinstance(truncated, int) or isinstance(truncated, bool) or truncated < 0:
        raise _invalid("truncatedAlerts must be a non-negative integer", "truncatedAlerts")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        raise _invalid("alerts must be a non-empty list", "alerts")
    for i, alert in enumerate(alerts):
        param = f"alerts[{i}]"
        if not isinstance(alert, dict):
            raise _invalid(f"{param} must be an object", param)
        _status(alert.get("status"), f"{param}.status")
        _string_map(alert.get("labels"), f"{param}.labels")
        _string_map(alert.get("annotations", {}), f"{param}.annotations")
        for key in ("startsAt", "endsAt", "generatorURL", "fingerprint"):
            if key in alert and not isinstance(alert[key], str):
                raise _invalid(f"{param}.{key} must be a string", f"{param}.{key}")
    return payload


def _summary(alert: dict) -> dict:
    """What the log line says about one alert: its name, state and one-line summary."""
    return {
        "alertname": alert["labels"].get("alertname"),
        "status": alert["status"],
        "severity": alert["labels"].get("severity"),
        "summary": alert.get("annotations", {}).get("summary"),
        "fingerprint": alert.get("fingerprint"),
    }


def _held(alert: dict) -> dict:
    """What the buffer keeps about one alert: the summary, its labels (which identify it:
    Alertmanager groups and routes by them) and the links a reader follows; the free-text
    description and any other annotation are dropped."""
    annotations = alert.get("annotations", {})
    return {
        **_summary(alert),
        "labels": dict(alert["labels"]),
        **{key: annotations[key] for key in KEPT_ANNOTATIONS[1:] if key in annotations},
        "starts_at": alert.get("startsAt"),
        "ends_at": alert.get("endsAt"),
    }


def _since(value: str) -> float:
    """Unix seconds, or an RFC 3339 time (UTC when it names no zone)."""
    try:
        return float(value)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise APIError(400, "since must be Unix seconds or an RFC 3339 time", param="since", code="invalid_value") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# --- the app -----------------------------------------------------------------------------------


_UNSET = object()


def create_sink_app(receivers: tuple[str, ...] | None = None, capacity: int | None = None,
                    max_bytes: int | None = None, token: str | None | object = _UNSET) -> Flask:
    """The sink: receivers default to $ALERT_SINK_RECEIVERS, capacity to $ALERT_SINK_CAPACITY or
    1000, max_bytes to $ALERT_SINK_MAX_BYTES or 4 MiB, the DELETE token to $ALERT_SINK_TOKEN."""
    receivers = _check_receivers(receivers) if receivers is not None else receivers_from_env()
    capacity = capacity if capacity is not None else capacity_from_env()
    max_bytes = max_bytes if max_bytes is not None else max_bytes_from_env()
    token = token_from_env() if token is _UNSET else token
    if capacity < 1:
        raise ValueError("capacity must be at least 1")
    logs.configure_logging(SERVICE)
    metrics = SinkMetrics(receivers)
    buffer = NotificationBuffer(capacity, max_bytes)

    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.json.sort_keys = False
    app.extensions["llm_alertsink"] = buffer
    register_error_handlers(app)

    @app.post("/webhook/<receiver>")
    def webhook(receiver: str):
        try:
            if receiver not in receivers:
                raise APIError(404, f"Unknown receiver; configured: {', '.join(receivers)}.",
                               type="not_found_error", code="unknown_receiver", param="receiver")
            payload = validate_payload(request.get_data())
        except (APIError, RequestEntityTooLarge) as error:
            metrics.invalid.inc()
            status, reason = (error.status, error.message) if isinstance(error, APIError) else (413, "body too large")
            _log.warning("invalid alert notification",
                         extra={"receiver": receiver[:64], "status_code": status, "reason": reason})
            raise
        now = time.time()
        alerts = [_summary(alert) for alert in payload["alerts"]]
        entry = buffer.add({
            "received_at": _rfc3339(now),
            "received_at_seconds": now,
            "receiver": receiver,
            "status": payload["status"],
            "alertnames": sorted({a["alertname"] for a in alerts if a["alertname"] is not None}),
            "alert_count": len(alerts),
            "truncated_alerts": payload.get("truncatedAlerts", 0),
            "group_key": payload.get("groupKey"),
            "alerts": [_held(alert) for alert in payload["alerts"]],
        })
        metrics.notifications.labels(receiver, payload["status"]).inc()
        for alert in alerts:
            metrics.alerts.labels(receiver, alert["status"]).inc()
        metrics.last.labels(receiver).set(now)
        _log.info("alert notification", extra={
            **{key: entry[key] for key in ("receiver", "status", "alertnames", "alert_count", "group_key")},
            "alerts": alerts,
        })
        return jsonify(status="accepted", id=entry["id"])

    @app.get("/api/notifications")
    def notifications():
        wanted = {key: request.args.get(key) or None for key in ("receiver", "status", "alertname")}
        since = _since(request.args["since"]) if request.args.get("since") else None
        found = [
            entry for entry in buffer.snapshot()
            if (wanted["receiver"] is None or entry["receiver"] == wanted["receiver"])
            and (wanted["status"] is None or entry["status"] == wanted["status"])
            and (wanted["alertname"] is None or wanted["alertname"] in entry["alertnames"])
            and (since is None or entry["received_at_seconds"] >= since)
        ]
        return jsonify(count=len(found), notifications=found)

    @app.delete("/api/notifications")
    def clear_notifications():
        if token is None:
            raise APIError(403, f"Emptying the buffer is disabled: start the sink with {TOKEN_ENV} set.",
                           type="permission_error", code="delete_disabled")
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(presented.strip().encode(), token.encode()):
            raise APIError(401, "A valid bearer token is required to empty the buffer.",
                           type="authentication_error", code="invalid_token")
        return jsonify(deleted=buffer.clear())

    @app.get("/healthz")
    def healthz():
        return jsonify(status="ok")

    @app.get("/metrics")
    def exposition():
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(encoder(metrics.registry), content_type=content_type)

    _log.info("alert sink ready", extra={"receivers": list(receivers), "capacity": capacity, "max_bytes": max_bytes,
                                         "delete_enabled": token is not None})
    return app
