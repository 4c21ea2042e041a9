"""Any OpenAI-compatible upstream (OpenAI, vLLM, Ollama, llama.cpp server, another router)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import requests

from ..config import ModelConfig
from .base import BackendError, ChatRequest, Chunk, Completion, estimate_tokens, message_text


def _error_for_status(status: int, model: str) -> BackendError:
    if status == 429:
        return BackendError("rate_limited", f"{model}: upstream rate limited", status)
    if status >= 500:
        return BackendError("server_error", f"{model}: upstream answered {status}", status)
    return BackendError("client_error", f"{model}: upstream rejected the request ({status})", status)


def _finish_reason(value: object, default: str | None = "stop") -> str | None:
    """The upstream's finish_reason when it is a non-empty string, else ``default``."""
    return value if isinstance(value, str) and value else default


class OpenAICompatibleBackend:
    def __init__(self, model: ModelConfig, session: requests.Session | None = None) -> None:
        self.model = model
        self.url = model.base_url.rstrip("/") + "/chat/completions"
        self.models_url = model.base_url.rstrip("/") + "/models"
        self.session = session or requests.Session()
        self.api_key = os.environ.get(model.api_key_env, "") if model.api_key_env else ""

    @property
    def available(self) -> tuple[bool, str | None]:
        if self.model.api_key_env and not self.api_key:
            return False, f"{self.model.id}: ${self.model.api_key_env} is not set"
        return True, None

    def probe(self, timeout: float) -> None:
        """GET <base_url>/models: cheap on every OpenAI-compatible server, and it checks the key."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        try:
            response = self.session.get(self.models_url, headers=headers, timeout=timeout)
        except requests.Timeout:
            raise BackendError("timeout", f"{self.model.id}: probe not answered within {timeout}s") from None
        except requests.RequestException as error:
            raise BackendError("connection_error", f"{self.model.id}: probe failed ({type(error).__name__})") from None
        response.close()
        if not 200 <= response.status_code < 300:
            raise _error_for_status(response.status_code, self.model.id)

    def _post(self, request: ChatRequest, stream: bool) -> requests.Response:
        body: dict = {"model": self.model.upstream_model or self.model.id, "messages": request.messages, "stream": stream}
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if stream:
            body["stream_options"] = {"include_usage": True}
        headers = {"Content-Type": "application/json", **request.headers}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        try:
            response = self.session.post(
                self.url, json=body, headers=headers, timeout=self.model.timeout_seconds, stream=stream
            )
        except requests.Timeout:
            raise BackendError("timeout", f"{self.model.id}: no answer within {self.model.timeout_seconds}s") from None
        except requests.RequestException as error:
            raise BackendError("connection_error", f"{self.model.id}: {type(error).__name__}") from None
        if response.status_code != 200:
            response.close()
            raise _error_for_status(response.status_code, self.model.id)
        return response

    def complete(self, request: ChatRequest) -> Completion:
        response = self._post(request, stream=False)
        try:
            data = response.json()
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

    def _chunks(self, request: ChatRequest, response: requests.Response) -> Iterator[Chunk]:
        text_seen: list[str] = []
        finish_reason = None
        usage: dict = {}
        try:
            for raw in response.iter_lines(decode_unicode=True):
                if not raw or not raw.startswith("data:"):
                    continue
                payload = raw[5:].strip()
                if payload == "[DONE]":
                    break
                try:
                    event = json.loads(payload)
                except ValueError:
                    raise BackendError("bad_response", f"{self.model.id}: malformed stream event") from None
                usage = event.get("usage") or usage
                for choice in event.get("choices") or []:
                    piece = (choice.get("delta") or {}).get("content") or ""
                    finish_reason = _finish_reason(choice.get("finish_reason"), finish_reason)
                    if piece:
                        text_seen.append(piece)
                        yield Chunk(piece)
        except requests.RequestException:
            raise BackendError("connection_error", f"{self.model.id}: stream interrupted") from None
        finally:
            response.close()
        text = "".join(text_seen)
        yield Chunk(
            "",
            finish_reason or "stop",
            int(usage.get("prompt_tokens") or estimate_tokens(message_text(request.messages))),
            int(usage.get("completion_tokens") or estimate_tokens(text) if text else 0),
        )
