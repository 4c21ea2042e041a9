"""Validation of the chat completion request body (the subset of OpenAI's API we serve)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr, ValidationError

from .config import LimitsConfig
from .errors import APIError


class _Open(BaseModel):
    # Clients send fields we do not use (top_p, seed, tools...): accept and ignore them.
    model_config = ConfigDict(extra="allow")


class ContentPart(_Open):
    type: StrictStr
    text: StrictStr | None = None


class Message(_Open):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: StrictStr | list[ContentPart] | None = None
    name: StrictStr | None = Field(default=None, max_length=256)


class StreamOptions(_Open):
    include_usage: StrictBool = False


class ChatCompletionRequest(_Open):
    model: StrictStr = Field(min_length=1, max_length=256)
    messages: list[Message] = Field(min_length=1)
    max_tokens: StrictInt | None = None
    max_completion_tokens: StrictInt | None = None
    temperature: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=2)
    top_p: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=1)
    n: StrictInt | None = None
    stream: StrictBool | None = False
    stream_options: StreamOptions | None = None
    user: StrictStr | None = Field(default=None, max_length=256)

    @property
    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


# Pydantic names the member of a union it tried in the error location ("str",
# "list[ContentPart]"): not a parameter name, so it is left out of `param`.
_UNION_TAGS = frozenset({"str", "int", "float", "bool", "none"})


def _path(loc: tuple) -> tuple:
    return tuple(part for part in loc if not (isinstance(part, str) and (part in _UNION_TAGS or "[" in part)))


def _describe(error: ValidationError) -> APIError:
    errors = error.errors()
    path = _path(errors[0]["loc"])
    # Of the union members that failed for this parameter, report the one that got furthest
    # (a list of content parts with a bad part, rather than "should be a valid string").
    same = [e for e in errors if _path(e["loc"])[: len(path)] == path]
    first = max(same, key=lambda e: len(_path(e["loc"])))
    param = ".".join(str(part) for part in _path(first["loc"])) or None
    kind = first["type"]
    if kind == "extra_forbidden":
        # Only strict bodies (feedback) forbid extra fields. The name is the client's: cut short.
        param = param[:100] if param else param
        return APIError(400, f"Unrecognized request argument supplied: '{param}'.", param=param, code="unknown_parameter")
    if kind == "missing":
        return APIError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    # Pydantic says "a valid dictionary or instance of Message": JSON clients know objects.
    message = "Input should be an object" if kind in ("model_type", "dict_type") else first["msg"]
    return APIError(400, f"Invalid value for '{param}': {message}.", param=param, code="invalid_value")


def validate_chat(body: object, limits: LimitsConfig) -> ChatCompletionRequest:
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_body")
    try:
        request = ChatCompletionRequest.model_validate(body)
    except ValidationError as error:
        raise _describe(error) from None
    for name in ("max_tokens", "max_completion_tokens"):
        value = getattr(request, name)
        if value is not None and not 1 <= value <= limits.max_tokens:
            raise APIError(
                400, f"Invalid value for '{name}': must be between 1 and {limits.max_tokens}.", param=name,
                code="invalid_value",
            )
    if len(request.messages) > limits.max_messages:
        raise APIError(400, f"Too many messages: at most {limits.max_messages}.", param="messages", code="invalid_value")
    if request.n not in (None, 1):
        raise APIError(400, "Only n=1 is supported.", param="n", code="invalid_value")
    return request


# --- feedback (POST /v1/feedback) ------------------------------------------------------------

# Why an answer was rated: a fixed set, so it can be counted and grouped without bounds.
FEEDBACK_REASONS = ("inaccurate", "unhelpful", "harmful", "off_topic", "too_slow", "formatting", "other")
# A request id as the router accepts it in X-Request-ID (app.py), and the response id built from it.
_ID = r"[A-Za-z0-9._-]{1,64}"


class FeedbackRequest(BaseModel):
    # Unlike chat requests, nothing else is expected here: an unknown field is a client bug.
    # Python's regex semantics, as the OpenAPI document's patterns are read by its tooling
    # (`$` also matches before a final newline; such an id is then simply not found).
    model_config = ConfigDict(extra="forbid", regex_engine="python-re")

    response_id: StrictStr | None = Field(default=None, pattern=rf"^chatcmpl-{_ID}$")
    request_id: StrictStr | None = Field(default=None, pattern=rf"^{_ID}$")
    score: StrictFloat | StrictInt | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)
    thumbs: Literal["up", "down"] | None = None
    reason: Literal[FEEDBACK_REASONS] | None = None  # type: ignore[valid-type]
    # Free text: logged only with LLM_ROUTER_LOG_CONTENT on, never a label.
    comment: StrictStr | None = Field(default=None, max_length=2000)

    @property
    def rated_request_id(self) -> str:
        return self.request_id if self.request_id is not None else self.response_id.removeprefix("chatcmpl-")

    @property
    def value(self) -> float:
        return float(self.score) if self.score is not None else (1.0 if self.thumbs == "up" else 0.0)


def _exactly_one(request: FeedbackRequest, first: str, second: str) -> None:
    given = [name for name in (first, second) if getattr(request, name) is not None]
    if not given:
        raise APIError(
            400, f"Missing required parameter: '{first}' or '{second}'.", param=first, code="missing_required_parameter"
        )
    if len(given) > 1:
        raise APIError(400, f"Give either '{first}' or '{second}', not both.", param=second, code="invalid_value")


def validate_feedback(body: object) -> FeedbackRequest:
    if not isinstance(body, dict):
        raise APIError(400, "The request body must be a JSON object.", code="invalid_body")
    try:
        request = FeedbackRequest.model_validate(body)
    except ValidationError as error:
        raise _describe(error) from None
    _exactly_one(request, "response_id", "request_id")
    _exactly_one(request, "score", "thumbs")
    return request
