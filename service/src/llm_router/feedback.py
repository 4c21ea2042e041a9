"""Feedback on answered chat requests: POST /v1/feedback.

Every answered chat request (code 200: backend answers, cache hits, finished streams) is
in the shared ledger with its tenant and model, for ``feedback.retention_hours``
(ledger.py). Feedback names one by its request id or
response id ("chatcmpl-<request id>"), once, from the same tenant; the labels of the feedback metrics
come from that stored row, never from the client, so they stay bounded.
"""

from __future__ import annotations

from flask import Blueprint, jsonify, request

from .api import parse_json_body
from .app import services
from .errors import APIError
from .schema import validate_feedback
from .telemetry import logs
from .telemetry import metrics as m

feedback = Blueprint("feedback", __name__)


def rating(score: float) -> str:
    return "positive" if score >= 0.5 else "negative"


@feedback.post("/v1/feedback")
def post_feedback():
    state = services()
    tenant = state.tenants.resolve(request.headers.get("Authorization"), request.headers.get("X-Tenant-ID"))
    given = validate_feedback(parse_json_body())
    request_id, score = given.rated_request_id, given.value
    outcome, model = state.ledger.rate(request_id, tenant, score)
    if outcome == "unknown":
        # Also for another tenant's request: whether it exists is none of this caller's business.
        raise APIError(
            404, "No answered request with this id (it may be older than the feedback retention).",
            type="not_found_error", param="request_id" if given.request_id is not None else "response_id",
            code="response_not_found",
        )
    if outcome == "already_rated":
        raise APIError(409, "Feedback was already given for this response.", code="feedback_already_given")
    # Rows written under an earlier configuration may name a model or tenant that is gone:
    # fold them like any unknown value, so the labels stay inside the configured sets.
    model_label = model if state.config.model(model) is not None else "unknown"
    tenant_label = tenant if tenant in state.tenants.ids or tenant == "anonymous" else "other"
    verdict = rating(score)
    if state.telemetry.metrics:
        m.child(m.FEEDBACK, tenant_label, model_label, verdict).inc()
        m.child(m.FEEDBACK_SCORE, model_label).observe(score)
    fields = {"request_id": request_id, "tenant": tenant, "model": model, "score": score, "rating": verdict,
              "reason": given.reason}
    if state.telemetry.log_content and given.comment is not None:
        fields["comment"] = given.comment
    logs.event("feedback_received", f"feedback on {request_id}: {verdict}", **fields)
    return jsonify(
        object="feedback", request_id=request_id, response_id=f"chatcmpl-{request_id}", model=model,
        score=score, rating=verdict, reason=given.reason,
    ), 201
