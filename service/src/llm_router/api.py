"""The OpenAI-compatible API, health endpoints, /metrics and the OpenAPI document."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from importlib import resources

import orjson
import yaml
from flask import Blueprint, Response, current_app, g, jsonify, request
from prometheus_client.exposition import choose_encoder

from .app import Services, finish_request, services
from .backends import BackendError, ChatRequest, Chunk, Completion
from .backends.base import estimate_tokens, message_text
from .cache import cache_key
from .concurrency import ClientGone, ClientWatch, ServerStopping, client_socket
from .config import STRATEGIES, ModelConfig
from .errors import APIError
from .ledger import JournalFull
from .schema import ChatCompletionRequest, validate_chat
from .telemetry import logs
from .telemetry import metrics as m
from .telemetry.signals import RequestRecord

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
        return orjson.loads(raw)
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
    # A slot in the ledger's journal before any backend works for this request: a request
    # that could not be charged is not served.
    try:
        record.entry = state.ledger.reserve()
    except JournalFull:
        state.signals.ledger_full()
        raise APIError(503, "The router cannot record charges right now (its state store is unavailable); retry.",
                       type="server_error", code="state_store_unavailable", headers={"Retry-After": "5"}) from None
    # From here on the request waits on a backend: if the client goes away meanwhile, the
    # call is cancelled (ClientGone where it waits) instead of running on for nobody.
    watch = g.client_watch = ClientWatch(client_socket(request.environ))
    watch.arm()
    try:
        if record.stream:
            return _stream(state, record, chat, backend_request, watch)
        return _complete(state, record, body, backend_request)
    except ClientGone:
        record.code = 499  # the client closed the connection (nginx's convention); nothing is sent
        record.error_type = "client_gone"
        return Response(status=499)
    except ServerStopping:
        record.error_type = "shutdown"
        raise APIError(503, "The router is restarting; retry.", type="server_error", code="server_shutting_down",
                       headers={"Retry-After": "1"}) from None


def _complete(state: Services, record: RequestRecord, body: dict, backend_request: ChatRequest) -> Response:
    requested = record.model
    key = None
    if state.router.cache is not None:
        if _bypass_cache():
            record.cache = "bypass"
        else:
            key = cache_key(record.tenant, requested, record.strategy, body)
            cached = state.router.cache.get(key)
            record.cache = "hit" if cached is not None else "miss"
            if cached is not None:
                return _cached_response(state, record, cached)
        state.signals.cache_looked_up(record.tenant, record.cache)

    plan = state.router.plan(requested, record.strategy)
    model, completion = state.router.execute(plan, backend_request, False, record)
    _price(record, model)
    _account(record, model, completion.input_tokens, completion.output_tokens, completion.finish_reason)
    payload = _completion_body(record, completion)
    if key is not None:
        state.router.cache.put(key, (payload, record.cost_usd))
        state.signals.cache_size(len(state.router.cache))
    if state.telemetry.log_content:
        record.extra["completion"] = completion.text
    return _with_router_headers(_json(payload), record)


def _json(payload: dict) -> Response:
    return Response(orjson.dumps(payload), mimetype="application/json")


def _price(record: RequestRecord, model: ModelConfig) -> None:
    record.model = model.id
    record.price_in_per_1k = model.price.input_per_1k
    record.price_out_per_1k = model.price.output_per_1k


def _account(record: RequestRecord, model: ModelConfig, input_tokens: int, output_tokens: int, finish: str) -> None:
    record.model = model.id
    record.input_tokens = input_tokens
    record.output_tokens = output_tokens
    record.cost_usd = record.cost()
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
    state.signals.cache_looked_up(record.tenant, "hit")
    state.signals.cache_saved(record.tenant, saved_usd)
    record.extra["cache_saved_usd"] = round(saved_usd, 8)
    fresh = {**payload, "id": f"chatcmpl-{record.request_id}", "created": int(time.time())}
    return _with_router_headers(_json(fresh), record)


def _with_router_headers(response: Response, record: RequestRecord) -> Response:
    response.headers["X-Router-Model"] = record.model
    response.headers["X-Router-Strategy"] = record.strategy
    response.headers["X-Router-Cache"] = record.cache
    if record.over_budget:
        response.headers["X-Router-Over-Budget"] = "true"
    return response


# --- streaming ---------------------------------------------------------------------------


def _event(data: dict) -> bytes:
    return b"data: " + orjson.dumps(data) + b"\n\n"


_DONE = b"data: [DONE]\n\n"


def _stream(state: Services, record: RequestRecord, chat: ChatCompletionRequest, backend_request: ChatRequest,
            watch: ClientWatch):
    if state.router.cache is not None:
        state.signals.cache_looked_up(record.tenant, "bypass")
    plan = state.router.plan(chat.model, record.strategy)
    model, first, rest = state.router.execute(plan, backend_request, True, record)
    state.signals.first_token(model.id, time.perf_counter() - record.started)
    _price(record, model)
    # The prompt's tokens as the backend reported them up front, else estimated from it (an
    # upstream reports usage at the end: a stream cut short is charged on the estimate).
    record.input_tokens = first.input_tokens or estimate_tokens(message_text(backend_request.messages))
    record.output_tokens = 1 if first.text else 0
    # From its first token on, the stream is charged in the journal, token by token.
    state.ledger.open(record.entry, record.tenant, model.id, record.request_id, record.input_tokens,
                      record.output_tokens, record.price_in_per_1k, record.price_out_per_1k)
    include_usage = bool(chat.stream_options and chat.stream_options.include_usage)
    g.streaming = True
    # No stream_with_context: the stream needs no request context (it is handed all it
    # uses), and copying the context per stream cost CPU for nothing.
    body = _EventStream(state, record, model, first, rest, include_usage, watch, g.pop("request_id_token", None))
    response = Response(body, mimetype="text/event-stream")
    response.headers["Cache-Control"] = "no-cache"
    response.headers["X-Accel-Buffering"] = "no"
    return _with_router_headers(response, record)


class _EventStream:
    """The server-sent events of one stream.

    Every content chunk is counted as it is produced, so a stream that ends early (client
    gone: 499; backend failure or timeout: 502/504; worker stopping: 503) is charged for the
    prompt and the tokens it produced. Whatever way it ends - even never iterated, when the
    server only closes it - the upstream call is closed, the slot freed and the request
    finished exactly once.
    """

    def __init__(self, state: Services, record: RequestRecord, model: ModelConfig, first: Chunk, rest: Iterator[Chunk],
                 include_usage: bool, watch: ClientWatch, log_token) -> None:
        self.state, self.record, self.model, self.first, self.rest = state, record, model, first, rest
        self.include_usage, self.watch, self.log_token = include_usage, watch, log_token
        self.events: Iterator[bytes] | None = None
        self.done = False

    def __iter__(self) -> Iterator[bytes]:
        if self.events is None:
            self.events = self._events()
        return self.events

    def close(self) -> None:
        if self.events is not None:
            self.events.close()  # its own finally ends the stream
        elif not self.done:
            _partial(self.record, 499, "client_gone")
            self._end()

    def _end(self) -> None:
        if self.done:
            return
        self.done = True
        self.watch.disarm()
        close = getattr(self.rest, "close", None)
        if close is not None:
            close()  # an early end cancels the upstream call and frees the slot
        finish_request(self.record, 200, self.state)
        if self.log_token is not None:
            logs.request_id_var.reset(self.log_token)

    def _events(self) -> Iterator[bytes]:
        record, first = self.record, self.first
        prefix = (b'data: {"id":' + orjson.dumps(f"chatcmpl-{record.request_id}")
                  + b',"object":"chat.completion.chunk","created":' + str(int(time.time())).encode()
                  + b',"model":' + orjson.dumps(self.model.id) + b',"choices":')
        pieces: list[str] | None = [] if self.state.telemetry.log_content else None
        last = first
        try:
            ledger, entry = self.state.ledger, record.entry
            try:
                yield prefix + orjson.dumps([{"index": 0, "delta": {"role": "assistant", "content": first.text},
                                              "finish_reason": None}]) + b"}\n\n"
                if pieces is not None:
                    pieces.append(first.text)
                for chunk in self.rest:
                    last = chunk
                    if chunk.text:
                        record.output_tokens += 1
                        ledger.produced(entry, record.output_tokens)  # charged before it is sent
                        if pieces is not None:
                            pieces.append(chunk.text)
                        yield prefix + orjson.dumps([{"index": 0, "delta": {"content": chunk.text},
                                                      "finish_reason": None}]) + b"}\n\n"
            finally:
                self.watch.disarm()  # the backend is done: nothing waits on it any more
                if pieces is not None:
                    record.extra["completion"] = "".join(pieces)
            input_tokens = last.input_tokens or record.input_tokens
            output_tokens = last.output_tokens if last.output_tokens is not None else record.output_tokens
            _account(record, self.model, input_tokens, output_tokens, last.finish_reason or "stop")
            yield prefix + orjson.dumps([{"index": 0, "delta": {}, "finish_reason": record.finish_reason}]) + b"}\n\n"
            if self.include_usage:
                yield prefix + b'[],"usage":' + orjson.dumps({
                    "prompt_tokens": input_tokens, "completion_tokens": output_tokens,
                    "total_tokens": input_tokens + output_tokens}) + b"}\n\n"
            yield _DONE
        except BackendError as error:
            # Headers are gone already: report the failure in the stream, count it as a 502
            # (504 for a backend that stopped answering).
            _partial(record, 504 if error.kind == "timeout" else 502, error.kind)
            yield _event({"error": {"message": "The model backend failed mid-stream.", "type": "server_error",
                                    "param": None, "code": "backend_error"}})
            yield _DONE
        except ServerStopping:
            _partial(record, 503, "shutdown")
            yield _event({"error": {"message": "The router is restarting; the answer was cut short.",
                                    "type": "server_error", "param": None, "code": "server_shutting_down"}})
            yield _DONE
        except ClientGone:
            _partial(record, 499, "client_gone")  # seen by the watch while the backend thought
        except GeneratorExit:
            _partial(record, 499, "client_gone")  # the server could not write to the client
            raise
        finally:
            self._end()


def _partial(record: RequestRecord, code: int, error_type: str) -> None:
    """A stream that ended before its backend finished: charged for what it produced."""
    record.code = code
    record.error_type = record.error_type or error_type
    record.finish_reason = None
    record.cost_usd = record.cost()
