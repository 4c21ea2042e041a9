"""Any OpenAI-compatible upstream (OpenAI, vLLM, Ollama, llama.cpp server, another router).

One urllib3 connection pool per model and process, sized to the model's concurrency limit
so a call never finds the pool full: keep-alive connections are reused by every call,
streams included (a stream is read to the end of its HTTP body after `[DONE]`, so its
connection goes back to the pool instead of being dropped). urllib3 rather than requests:
the same pool underneath without the session, hook and cookie machinery, which cost more
CPU per call than the rest of the router's work (docs/performance.md). Under the gevent
worker its sockets are cooperative: a call in flight is a greenlet waiting on a socket.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from urllib.parse import urlsplit

import orjson
import urllib3
from urllib3.exceptions import HTTPError, NewConnectionError, TimeoutError as Urllib3Timeout

from ..config import ModelConfig
from .base import BackendError, ChatRequest, Chunk, Completion, estimate_tokens, message_text

# Seconds to open a TCP (and TLS) connection; the model's timeout_seconds bounds each read.
CONNECT_TIMEOUT = 10.0
READ_SIZE = 65536


def _error_for_status(status: int, model: str) -> BackendError:
    if status == 429:
        return BackendError("rate_limited", f"{model}: upstream rate limited", status)
    if status >= 500:
        return BackendError("server_error", f"{model}: upstream answered {status}", status)
    return BackendError("client_error", f"{model}: upstream rejected the request ({status})", status)


def _finish_reason(value: object, default: str | None = "stop") -> str | None:
    """The upstream's finish_reason when it is a non-empty string, else ``default``."""
    return value if isinstance(value, str) and value else default


def _transport_error(model: str, error: Exception) -> BackendError:
    # NewConnectionError (refused, unreachable) is a ConnectTimeoutError in urllib3 2.x.
    if isinstance(error, (Urllib3Timeout, TimeoutError)) and not isinstance(error, NewConnectionError):
        return BackendError("timeout", f"{model}: no answer in time")
    return BackendError("connection_error", f"{model}: {type(error).__name__}")


class OpenAICompatibleBackend:
    def __init__(self, model: ModelConfig, pool_size: int | None = None) -> None:
        self.model = model
        base = urlsplit(model.base_url.rstrip("/"))
        self.path = base.path + "/chat/completions"
        self.models_path = base.path + "/models"
        self.pool = urllib3.connection_from_url(
            model.base_url,
            maxsize=pool_size or model.max_concurrency,
            block=False,
            retries=False,  # the router retries and falls back itself
            timeout=urllib3.Timeout(connect=min(CONNECT_TIMEOUT, model.timeout_seconds), read=model.timeout_seconds),
        )
        self.api_key = os.environ.get(model.api_key_env, "") if model.api_key_env else ""
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.api_key:
            self._headers["Authorization"] = f"Bearer {self.api_key}"

    @property
    def available(self) -> tuple[bool, str | None]:
        if self.model.api_key_env and not self.api_key:
            return False, f"{self.model.id}: ${self.model.api_key_env} is not set"
        return True, None

    def probe(self, timeout: float) -> None:
        """GET <base_url>/models: cheap on every OpenAI-compatible server, and it checks the key."""
        try:
            response = self.pool.urlopen("GET", self.models_path, headers=self._headers,
                                         timeout=urllib3.Timeout(total=timeout))
        except (HTTPError, OSError) as error:
            kind = _transport_error(self.model.id, error)
            raise BackendError(kind.kind, f"{self.model.id}: probe failed ({kind})") from None
        if not 200 <= response.status < 300:
            raise _error_for_status(response.status, self.model.id)

    def _post(self, request: ChatRequest, stream: bool):
        body: dict = {"model": self.model.upstream_model or self.model.id, "messages": request.messages, "stream": stream}
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if stream:
            body["stream_options"] = {"include_usage": True}
        headers = {**self._headers, **request.headers} if request.headers else self._headers
        try:
            response = self.pool.urlopen(
                "POST", self.path, body=orjson.dumps(body), headers=headers, preload_content=not stream,
            )
        except (HTTPError, OSError) as error:
            raise _transport_error(self.model.id, error) from None
        if response.status != 200:
            if stream:
                response.drain_conn()
                response.release_conn()
            raise _error_for_status(response.status, self.model.id)
        return response

    def complete(self, request: ChatRequest) -> Completion:
        response = self._post(request, stream=False)
        try:
            data = orjson.loads(response.data)
            choice = data["choices"][0]
            text = choice["message"].get("content") or ""
            usage = data.get("usage") or {}
            return Completion(
                text=text,
                input_tokens=int(usage.get("prompt_tokens") or estimate_tokens(message_text(request.messages))),
                output_tokens=int(usage.get("completion_tokens") or estimate_tokens(text)),
                # Passed through as the upstream said it (the metric label folds unknown ones).
                finish_reason=_finish_reason(choice.get("finish_reason")),
                response_model=str(data.get("model") or self.model.id),
            )
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            raise BackendError("bad_response", f"{self.model.id}: malformed completion") from None

    def stream(self, request: ChatRequest) -> Iterator[Chunk]:
        response = self._post(request, stream=True)
        return self._chunks(request, response)

    def _events(self, response) -> Iterator[bytes]:
        """The payloads of the SSE `data:` lines, as they arrive (any chunking)."""
        pending = b""
        while True:
            data = response.read1(READ_SIZE)
            if not data:
                if pending.strip():
                    yield from _data_lines(pending)
                return
            pending += data
            if b"\n" not in data:
                continue
            complete, _, pending = pending.rpartition(b"\n")
            yield from _data_lines(complete)

    def _chunks(self, request: ChatRequest, response) -> Iterator[Chunk]:
        produced = 0
        text_seen: list[str] = []
        finish_reason = None
        usage: dict = {}
        done = False
        reusable = False
        try:
            for payload in self._events(response):
                if done:
                    continue  # read on to the end of the body: the connection stays reusable
                if payload == b"[DONE]":
                    done = True
                    continue
                try:
                    event = orjson.loads(payload)
                except ValueError:
                    raise BackendError("bad_response", f"{self.model.id}: malformed stream event") from None
                usage = event.get("usage") or usage
                for choice in event.get("choices") or ():
                    piece = (choice.get("delta") or {}).get("content") or ""
                    finish_reason = _finish_reason(choice.get("finish_reason"), finish_reason)
                    if piece:
                        produced += 1
                        text_seen.append(piece)
                        yield Chunk(piece)
            reusable = True
        except (HTTPError, OSError) as error:
            if not done:
                raise _transport_error(self.model.id, error) from None
        finally:
            # A stream read to its end returns its connection to the pool; one cut short (an
            # error, or the client went away: GeneratorExit) closes it, which is how the
            # upstream learns that the call was cancelled.
            if not reusable:
                response.close()
            response.release_conn()
        text = "".join(text_seen)
        yield Chunk(
            "",
            finish_reason or "stop",
            int(usage.get("prompt_tokens") or estimate_tokens(message_text(request.messages))),
            int(usage.get("completion_tokens") or (estimate_tokens(text) if text else 0)),
        )


def _data_lines(block: bytes) -> Iterator[bytes]:
    for line in block.split(b"\n"):
        if line.startswith(b"data:"):
            yield line[5:].strip()
