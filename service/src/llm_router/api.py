"""The OpenAI-compatible API, health endpoints, /metrics and the OpenAPI document."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator
from importlib import resources

import yaml
from flask import Blueprint, Response, current_app, g, jsonify, request, stream_with_context
from opentelemetry import trace
from prometheus_client.exposition import choose_encoder

from .app import Services, finish_request, services
from .backends import BackendError, ChatRequest, Chunk, Completion
from .cache import cache_key
from .config import STRATEGIES, ModelConfig
from .errors import APIError
from .router import RequestRecord
from .schema import ChatCompletionRequest, validate_chat
from .telemetry import metrics as m

api = Blueprint("api", __name__)


@functools.cache
def _openapi_document() -> dict:
    """The packaged document, parsed once per process (it cannot change while running)."""
    text = resources.files("llm_router").joinpath("openapi.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


@api.get("/healthz")
def healthz():
    return jsonify(status="ok")


@api.get("/readyz")
def readyz():
    problems = services().router.readiness()
    if problems:
        return jsonify(status="unavailable", reasons=problems), 503
    return jsonify(status="ready")


@api.get("/metrics")
def metrics():
    if not services().telemetry.metrics:
        raise APIError(404, "Metrics are switched off (LLM_ROUTER_METRICS=off).", type="not_found_error", code="metrics_disabled")
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return Response(encoder(m.exposition_registry()), content_type=content_type)


@api.get("/openapi.json")
def openapi():
    return jsonify(_openapi_document())


@api.get("/v1/models")
def list_models():
    config = services().config
    data = [
        {"id": model.id, "object": "model", "created": 0, "owned_by": model.gen_ai_provider} for model in config.models
    ]
    data.append({"id": "auto", "object": "model", "created": 0, "owned_by": "llm-router"})
    return jsonify(object="list", data=data)


# --- chat completions --------------------------------------------------------------------


def parse_json_body() -> object:
    if not request.mimetype == "application/json":
        raise APIError(
            415, "Content-Type must be application/json.", code="unsupported_media_type", type="invalid_request_error"
        )
    raw = request.get_data(cache=False)
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    if request.content_length is None and len(raw) >= limit and request.environ["wsgi.input"].read(1):
        # A chunked body has no Content-Length: werkzeug stops reading at the limit
        # instead of refusing, so look past it ourselves.
        raise APIError(413, f"The request body is larger than {limit} bytes.", code="request_too_large")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise APIError(400, "The request body is not valid JSON.", code="invalid_json") from None


def _strategy(state: Services) -> str:
    header = request.headers.get("X-Route-Strategy")
    if header is None:
        return state.config.routing.default_strategy
    value = header.strip().lower()
    if value not in STRATEGIES:
        raise APIError(
            400, f"Unknown routing strategy; use one of {', '.join(STRATEGIES)}.", param="X-Route-Strategy",
            code="invalid_strategy",
        )
    return value


def _cost(model: ModelConfig, input_tokens: int, output_tokens: int) -> float:
    return input_tokens / 1000 * model.price.input_per_1k + output_tokens / 1000 * model.price.output_per_1k


def _bypass_cache() -> bool:
    directives = request.headers.get("Cache-Control", "").lower()
    return "no-cache" in directives or "no-store" in directives


@api.post("/v1/chat/completions")
def chat_completions():
    state = services()
    record: RequestRecord = g.record
    record.chat = True
    record.strategy = state.config.routing.default_strategy
    record.tenant = state.tenants.resolve(request.headers.get("Authorization"), request.headers.get("X-Tenant-ID"))
    body = parse_json_body()
    chat = validate_chat(body, state.config.limits)
    requested = chat.model
    if requested != "auto" and state.config.model(requested) is None:
        raise APIError(404, f"The model '{requested[:100]}' does not exist.", param="model", code="model_not_found")
    record.model = requested
    record.strategy = _strategy(state)
    record.stream = bool(chat.stream)
    record.over_budget = state.budgets.check(record.tenant)
    backend_request = ChatRequest(
        messages=[message.model_dump(exclude_none=True) for message in chat.messages],
        max_tokens=chat.token_limit,
        temperature=chat.temperature,
    )
    if state.telemetry.log_content:
        record.extra["prompt"] = backend_request.messages

    if record.stream:
        return _stream(state, record, chat, backend_request)

    key = None
    if state.router.cache is not None:
        if _bypass_cache():
            record.cache = "bypass"
        else:
            key = cache_key(record.tenant, requested, record.strategy, body)
            cached = state.router.cache.get(key)
            record.cache = "hit" if cached is not None else "miss"
            # An attribute of the server span, not a span: a lookup takes microseconds.
            trace.get_current_span().set_attribute("llm_router.cache.result", record.cache)
            if cached is not None:
                return _cached_response(state, record, cached)
        if state.telemetry.metrics:
            m.child(m.CACHE_REQUESTS, record.tenant, record.cache).inc()

    plan = state.router.plan(requested, record.strategy)
    model, completion = state.router.execute(plan, backend_request, False, record)
    _account(record, model, completion.input_tokens, completion.output_tokens, completion.finish_reason)
    payload = _completion_body(record, completion)
    if key is not None:
        state.router.cache.put(key, (payload, record.cost_usd))
        if state.telemetry.metrics:
            m.CACHE_ENTRIES.set(len(state.router.cache))
    if state.telemetry.log_content:
        record.extra["completion"] = completion.text
    return _with_router_headers(jsonify(payload), record)


def _account(record: RequestRecord, model: ModelConfig, input_tokens: int, output_tokens: int, finish: str) -> None:
    record.model = model.id
    record.input_tokens = input_tokens
    record.output_tokens = output_tokens
    record.cost_usd = _cost(model, input_tokens, output_tokens)
    record.finish_reason = finish


def _completion_body(record: RequestRecord, completion: Completion) -> dict:
    return {
        "id": f"chatcmpl-{record.request_id}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": record.model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": completion.text},
                "finish_reason": completion.finish_reason,
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": completion.input_tokens,
            "completion_tokens": completion.output_tokens,
            "total_tokens": completion.input_tokens + completion.output_tokens,
        },
    }


def _cached_response(state: Services, record: RequestRecord, cached: tuple[dict, float]) -> Response:
    payload, saved_usd = cached
    record.model = payload["model"]
    record.finish_reason = payload["choices"][0]["finish_reason"]
    if state.telemetry.metrics:
        m.child(m.CACHE_REQUESTS, record.tenant, "hit").inc()
        if saved_usd:
            m.child(m.CACHE_SAVED, record.tenant).inc(saved_usd)
    record.extra["cache_saved_usd"] = round(saved_usd, 8)
    fresh = {**payload, "id": f"chatcmpl-{record.request_id}", "created": int(time.time())}
    return _with_router_headers(jsonify(fresh), record)


def _with_router_headers(response: Response, record: RequestRecord) -> Response:
    response.headers["X-Router-Model"] = record.model
    response.headers["X-Router-Strategy"] = record.strategy
    response.headers["X-Router-Cache"] = record.cache
    if record.over_budget:
        response.headers["X-Router-Over-Budget"] = "true"
    return response


# --- streaming ---------------------------------------------------------------------------


def _event(data: dict) -> str:
    return f"data: {json.dumps(data, separators=(',', ':'))}\n\n"


def _stream(state: Services, record: RequestRecord, chat: ChatCompletionRequest, backend_request: ChatRequest):
    if state.telemetry.metrics and state.router.cache is not None:
        m.child(m.CACHE_REQUESTS, record.tenant, "bypass").inc()
    plan = state.router.plan(chat.model, record.strategy)
    model, first, rest = state.router.execute(plan, backend_request, True, record)
    first_token_at = time.perf_counter()
    if state.telemetry.metrics:
        m.child(m.TTFT, model.id).observe(first_token_at - record.started)
    include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
    g.streaming = True
    response = Response(
        stream_with_context(_sse(state, record, model, first, rest, include_usage)), mimetype="text/event-stream"
    )
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return _with_router_headers(response, record)


def _sse(
    state: Services, record: RequestRecord, model: ModelConfig, first: Chunk, rest: Iterator[Chunk], include_usage: bool
) -> Iterator[str]:
    base = {"id": f"chatcmpl-{record.request_id}", "object": "chat.completion.chunk", "created": int(time.time()),
            "model": model.id}
    record.model = model.id
    pieces: list[str] = []
    last = first
    try:
        yield _event({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": first.text},
                                            "finish_reason": None}]})
        pieces.append(first.text)
        for chunk in rest:
            last = chunk
            if chunk.text:
                pieces.append(chunk.text)
                yield _event({**base, "choices": [{"index": 0, "delta": {"content": chunk.text}, "finish_reason": None}]})
        input_tokens, output_tokens = last.input_tokens or 0, last.output_tokens or 0
        _account(record, model, input_tokens, output_tokens, last.finish_reason or "stop")
        yield _event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": record.finish_reason}]})
        if include_usage:
            yield _event({**base, "choices": [], "usage": {
                "prompt_tokens": input_tokens, "completion_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens}})
        yield "data: [DONE]\n\n"
    except BackendError as error:
        # Headers are gone already: report the failure in the stream, count it as a 502.
        record.code = 502
        record.error_type = error.kind
        yield _event({"error": {"message": "The model backend failed mid-stream.", "type": "server_error",
                                "param": None, "code": "backend_error"}})
        yield "data: [DONE]\n\n"
    except GeneratorExit:
        record.code = 499  # the client closed the connection (nginx's convention)
        raise
    finally:
        if state.telemetry.log_content:
            record.extra["completion"] = "".join(pieces)
        finish_request(record, 200)
