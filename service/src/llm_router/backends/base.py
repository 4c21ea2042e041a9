"""What every backend takes and returns, whatever it talks to."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class ChatRequest:
    messages: list[dict]
    max_tokens: int | None
    temperature: float | None
    # Headers to send upstream (W3C trace context); filled per attempt.
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Completion:
    text: str
    input_tokens: int
    output_tokens: int
    finish_reason: str
    # The model name the backend reported (may differ from the requested one).
    response_model: str


@dataclass
class Chunk:
    """One piece of a streamed answer. The last chunk carries finish_reason and usage."""

    text: str
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None


class BackendError(Exception):
    """A failed backend call. ``kind`` is bounded: it becomes a label and error.type."""

    KINDS = ("server_error", "timeout", "rate_limited", "connection_error", "bad_response", "client_error")
    RETRYABLE = frozenset({"server_error", "timeout", "rate_limited", "connection_error"})

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        assert kind in self.KINDS, kind
        super().__init__(message)
        self.kind = kind
        self.status = status

    @property
    def retryable(self) -> bool:
        return self.kind in self.RETRYABLE


class Backend(Protocol):
    def complete(self, request: ChatRequest) -> Completion: ...

    def stream(self, request: ChatRequest) -> Iterator[Chunk]:
        """Yield chunks; failures before the first chunk raise BackendError on first next()."""
        ...

    def probe(self, timeout: float) -> None:
        """A cheap health check within ``timeout`` seconds: returns, or raises BackendError."""
        ...


def estimate_tokens(text: str) -> int:
    """About four characters a token, the usual rule of thumb for English text."""
    return max(1, (len(text) + 3) // 4)


def message_text(messages: list[dict]) -> str:
    parts = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict))
    return "\n".join(parts)
