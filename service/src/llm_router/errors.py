"""OpenAI-style errors: every failure leaves the API as {"error": {...}} with a fitting status."""

from __future__ import annotations

import logging

from flask import Flask, jsonify
from opentelemetry import trace
from werkzeug.exceptions import HTTPException

from .state import StoreError
from .telemetry.logs import EVENT_LOGGER


class APIError(Exception):
    """An error the client should see, in OpenAI's error shape."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self):
        response = jsonify(self.body())
        response.status_code = self.status
        response.headers.update(self.headers)
        return response


def invalid(message: str, param: str | None = None, code: str = "invalid_value") -> APIError:
    return APIError(400, message, param=param, code=code)


_HTTP_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(APIError)
    def _api_error(error: APIError):
        return error.response()

    @app.errorhandler(StoreError)
    def _store_error(error: StoreError):
        # Feedback and the fault API read and write the state store directly: while it is
        # down they cannot answer (charges are safe: they wait in the journals).
        logging.getLogger(EVENT_LOGGER).warning("state store unavailable: %s", error,
                                                extra={"event": "state_store_unavailable", "error": str(error)})
        return APIError(503, "The router's state store is unavailable; retry shortly.", type="server_error",
                        code="state_store_unavailable", headers={"Retry-After": "5"}).response()

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        status = error.code or 500
        code = (error.name or "error").lower().replace(" ", "_")
        message = error.description or error.name
        if status == 413:
            code = "request_too_large"
        api_error = APIError(
            status, message, type=_HTTP_TYPES.get(status, "invalid_request_error" if status < 500 else "server_error"), code=code
        )
        response = api_error.response()
        if status == 405 and getattr(error, "valid_methods", None):
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        # Logged with its traceback for operators; the client gets no internals.
        logging.getLogger(EVENT_LOGGER).exception("unhandled error", extra={"event": "unhandled_error"})
        trace.get_current_span().record_exception(error)
        return APIError(500, "The router failed to handle the request.", type="server_error", code="internal_error").response()
