"""A simulated model: realistic latency, token rates and failures, no network, no key.

Delays follow the model's configured distributions and are multiplied by the config's
``simulation_time_scale`` (0 in tests). Injected faults (see faults.py) add errors and
latency on top, unscaled, so a demo or a test can make a model fail or slow down on demand.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator

from ..config import LatencyDistribution, ModelConfig
from ..faults import Fault
from .base import BackendError, ChatRequest, Chunk, Completion, estimate_tokens, message_text

_WORDS = (
    "the router picks a model for each request and records what it cost how long it took "
    "and whether it worked so that operators can see every tenant and every backend at once "
    "latency tokens budget cache fallback circuit trace metric log alert dashboard"
).split()

# A fixed stream of words; an answer is a slice of it at a random offset (drawing every
# word separately cost more than the rest of a request).
_CORPUS = random.Random(0).choices(_WORDS, k=8192)

# z-score of the 95th percentile of a standard normal distribution.
_Z95 = 1.6448536269514722


def _lognormal(rng: random.Random, dist: LatencyDistribution) -> float:
    """Draw seconds from a log-normal with the given median and p95."""
    if dist.median_ms <= 0:
        return 0.0
    mu = math.log(dist.median_ms)
    sigma = (math.log(dist.p95_ms) - mu) / _Z95 if dist.p95_ms > dist.median_ms else 0.0
    return rng.lognormvariate(mu, sigma) / 1000.0


class SimulatedBackend:
    # No upstream to join the trace: the router skips building a traceparent header.
    sends_trace_context = False

    def __init__(
        self,
        model: ModelConfig,
        time_scale: float,
        fault_for: Callable[[str], Fault | None],
        *,
        seed: int | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.model = model
        self.sim = model.simulation
        self.time_scale = time_scale
        self.fault_for = fault_for
        self.rng = random.Random(seed)
        # Probes draw from their own generator: a probe thread must not shift the draws of
        # requests (seeded tests replay those).
        self.probe_rng = random.Random(seed)
        self.sleep = sleep
        kinds = sorted(self.sim.error_kinds.items())
        self._error_kinds = [k for k, _ in kinds]
        self._error_weights = [w for _, w in kinds]

    def _wait(self, seconds: float) -> None:
        if seconds > 0:
            self.sleep(seconds)

    def _plan(self, request: ChatRequest) -> tuple[float, int, int, str]:
        """Decide the call's fate up front: raise its error, or return its timings."""
        fault = self.fault_for(self.model.id)
        extra = fault.latency_ms / 1000.0 if fault else 0.0
        ttft = _lognormal(self.rng, self.sim.time_to_first_token) * self.time_scale + extra
        if ttft >= self.model.timeout_seconds:
            self._wait(self.model.timeout_seconds)
            raise BackendError("timeout", f"{self.model.id} did not answer within {self.model.timeout_seconds}s")
        if fault and fault.error_rate and self.rng.random() < fault.error_rate:
            self._wait(ttft)
            self._raise(fault.error_kind)
        if self.sim.error_rate and self.rng.random() < self.sim.error_rate:
            kind = self.rng.choices(self._error_kinds, self._error_weights)[0]
            self._wait(ttft if kind != "timeout" else min(self.model.timeout_seconds, 1.0) * self.time_scale)
            self._raise(kind)
        limit = request.max_tokens or self.sim.output_tokens_max
        output_tokens = min(limit, self.rng.randint(self.sim.output_tokens_min, self.sim.output_tokens_max))
        input_tokens = estimate_tokens(message_text(request.messages))
        if self.sim.content_filter_rate and self.rng.random() < self.sim.content_filter_rate:
            # The filter stops the answer part-way, as a provider's content filter does.
            return ttft, input_tokens, self.rng.randint(1, output_tokens), "content_filter"
        return ttft, input_tokens, output_tokens, self._finish_reason(request, output_tokens)

    def _raise(self, kind: str) -> None:
        status = {"server_error": 500, "rate_limited": 429, "timeout": None}.get(kind)
        raise BackendError(kind, f"simulated {kind.replace('_', ' ')} from {self.model.id}", status)

    def _finish_reason(self, request: ChatRequest, output_tokens: int) -> str:
        return "length" if request.max_tokens is not None and output_tokens >= request.max_tokens else "stop"

    def _words(self, count: int) -> list[str]:
        start = self.rng.randrange(len(_CORPUS) - min(count, len(_CORPUS)) + 1)
        words = _CORPUS[start:start + count]
        while len(words) < count:
            words += _CORPUS[: count - len(words)]
        return words

    def complete(self, request: ChatRequest) -> Completion:
        ttft, input_tokens, output_tokens, finish_reason = self._plan(request)
        self._wait(ttft + output_tokens / self.sim.tokens_per_second * self.time_scale)
        text = " ".join(self._words(output_tokens))
        return Completion(text, input_tokens, output_tokens, finish_reason, self.model.id)

    def stream(self, request: ChatRequest) -> Iterator[Chunk]:
        # Plan eagerly so a failure surfaces on the first next(), before anything is sent.
        ttft, input_tokens, output_tokens, finish_reason = self._plan(request)
        return self._chunks(ttft, input_tokens, output_tokens, finish_reason)

    def probe(self, timeout: float) -> None:
        """A tenth of a first-token wait (scaled like every simulated delay), plus an injected
        fault's latency (unscaled); an injected error rate fails that share of probes."""
        fault = self.fault_for(self.model.id)
        delay = _lognormal(self.probe_rng, self.sim.time_to_first_token) * 0.1 * self.time_scale
        delay += fault.latency_ms / 1000.0 if fault else 0.0
        if delay >= timeout:
            self._wait(timeout)
            raise BackendError("timeout", f"{self.model.id}: probe not answered within {timeout}s")
        self._wait(delay)
        if fault and fault.error_rate and self.probe_rng.random() < fault.error_rate:
            self._raise(fault.error_kind)

    def _chunks(self, ttft: float, input_tokens: int, output_tokens: int, finish_reason: str) -> Iterator[Chunk]:
        self._wait(ttft)
        per_token = self.time_scale / self.sim.tokens_per_second
        for index, word in enumerate(self._words(output_tokens)):
            if index:
                self._wait(per_token)
            # The first chunk says what the prompt cost: a stream cut short is charged for it.
            yield Chunk(" " + word) if index else Chunk(word, input_tokens=input_tokens)
        yield Chunk("", finish_reason, input_tokens, output_tokens)
