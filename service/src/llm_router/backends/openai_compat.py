"""Any OpenAI-compatible upstream (OpenAI, vLLM, Ollama, llama.cpp server, another router).

The HTTP side is transport.py: a keep-alive pool per model and process (geventhttpclient
under the gevent worker, urllib3 elsewhere) that streams reuse too. Here: the OpenAI
request and response shapes, and what each failure means for routing (BackendError kinds).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import orjson

from ..config import ModelConfig
from .base import BackendError, ChatRequest, Chunk, Completion, estimate_tokens, message_text
from .transport import TransportError, transport_for


def _error_for_status(status: int, model: str) -> BackendError:
    if status == 429:
        return BackendError("rate_limited", f"{model}: upstream rate limited", status)
    if status >= 500:
        return BackendError("server_error", f"{model}: upstream answered {status}", status)
    return BackendError("client_error", f"{model}: upstream rejected the request ({status})", status)


def _finish_reason(value: object, default: str | None = "stop") -> str | None:
    """The upstream's finish_reason when it is a non-empty string, else ``default``."""
    return value if isinstance(value, str) and value else default


def _backend_error(model: str, error: TransportError) -> BackendError:
    return BackendError("timeout" if error.timeout else "connection_error", f"{model}: {error}")


class OpenAICompatibleBackend:
    def __init__(self, model: ModelConfig, pool_size: int | None = None) -> None:
        self.model = model
        self.transport = transport_for(model.base_url, pool_size or model.max_concurrency, model.timeout_seconds)
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
            response = self.transport.request("GET", "/models", None, self._headers, timeout=timeout)
            response.body()
            response.close(complete=True)
        except TransportError as error:
            kind = "timeout" if error.timeout else "connection_error"
            raise BackendError(kind, f"{self.model.id}: probe failed ({error})") from None
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
            response = self.transport.request("POST", "/chat/completions", orjson.dumps(body), headers)
        except TransportError as error:
            raise _backend_error(self.model.id, error) from None
        if response.status != 200:
            response.close(complete=False)
            raise _error_for_status(response.status, self.model.id)
        return response

    def complete(self, request: ChatRequest) -> Completion:
        response = self._post(request, stream=False)
        try:
            raw = response.body()
        except TransportError as error:
            response.close(complete=False)
            raise _backend_error(self.model.id, error) from None
        response.close(complete=True)
        try:
            data = orjson.loads(raw)
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

    def _chunks(self, request: ChatRequest, response) -> Iterator[Chunk]:
        text_seen: list[str] = []
        finish_reason = None
        usage: dict = {}
        done = False
        complete = False
        try:
            for line in response.lines():
                if done or not line.startswith(b"data:"):
                    continue  # after [DONE], read on to the end of the body: the connection stays reusable
                payload = line[5:].strip()
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
                        text_seen.append(piece)
                        yield Chunk(piece)
            complete = True
        except TransportError as error:
            if not done:
                raise _backend_error(self.model.id, error) from None
        finally:
            # A stream read to its end keeps its connection; one cut short (an error, or the
            # client went away: GeneratorExit or ClientGone here) closes it, which is how the
            # upstream learns that the call was cancelled.
            response.close(complete=complete)
        text = "".join(text_seen)
        yield Chunk(
            "",
            finish_reason or "stop",
            int(usage.get("prompt_tokens") or estimate_tokens(message_text(request.messages))),
            int(usage.get("completion_tokens") or (estimate_tokens(text) if text else 0)),
        )
