"""Admin API: inject and clear backend faults at run time (demos, alert tests).

Off unless $LLM_ROUTER_ADMIN_TOKEN is set; every call needs that token as a bearer token.
"""

from __future__ import annotations

import hmac
import logging
import os

from flask import Blueprint, jsonify, request

from .app import services
from .errors import APIError
from .faults import ERROR_KINDS, Fault
from .telemetry import logs
from .telemetry import metrics as m

admin = Blueprint("admin", __name__, url_prefix="/admin")
TOKEN_ENV = "LLM_ROUTER_ADMIN_TOKEN"


@admin.before_request
def _authorise() -> None:
    token = os.environ.get(TOKEN_ENV, "")
    if not token:
        raise APIError(404, "The admin API is disabled (set LLM_ROUTER_ADMIN_TOKEN).", type="not_found_error", code="admin_disabled")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise APIError(401, "A valid admin token is required.", type="authentication_error", code="invalid_admin_token")


def _number(body: dict, name: str, default: float, low: float, high: float) -> float:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise APIError(400, f"'{name}' must be a number between {low} and {high}.", param=name, code="invalid_value")
    return float(value)


@admin.get("/faults")
def list_faults():
    return jsonify(faults=services().router.faults.describe())


@admin.post("/faults")
def inject_fault():
    state = services()
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_body")
    model = body.get("model")
    if not isinstance(model, str) or state.config.model(model) is None:
        raise APIError(404, "Unknown model.", param="model", code="model_not_found")
    kind = body.get("error_kind", "server_error")
    if kind not in ERROR_KINDS:
        raise APIError(400, f"'error_kind' must be one of {', '.join(ERROR_KINDS)}.", param="error_kind", code="invalid_value")
    fault = Fault(
        error_rate=_number(body, "error_rate", 1.0, 0, 1),
        error_kind=kind,
        latency_ms=_number(body, "latency_ms", 0, 0, 600_000),
    )
    duration = _number(body, "duration_seconds", 300, 1, 86_400)
    state.router.faults.inject(model, fault, duration)
    if state.telemetry.metrics:
        m.child(m.FAULTS_INJECTED, model).inc()
    logs.event(
        "fault_injected", f"fault injected into {model}", logging.WARNING,
        model=model, error_rate=fault.error_rate, error_kind=fault.error_kind, latency_ms=fault.latency_ms,
        duration_seconds=duration,
    )
    return jsonify(model=model, error_rate=fault.error_rate, error_kind=fault.error_kind,
                   latency_ms=fault.latency_ms, duration_seconds=duration), 201


@admin.delete("/faults")
def clear_faults():
    model = request.args.get("model")
    if model is not None and services().config.model(model) is None:
        raise APIError(404, "Unknown model.", param="model", code="model_not_found")
    removed = services().router.faults.clear(model)
    logs.event("fault_cleared", "faults cleared", model=model or "all", removed=removed)
    return jsonify(removed=removed)
