"""Routing strategies: order the candidate models for one request.

balanced  the best mix of quality, price and observed latency (the default)
cost      the cheapest first (blended input and output price)
latency   the fastest first, by an exponentially weighted moving average of observed calls
quality   the highest configured quality score first

A request that names a model gets that model first, then its configured fallbacks.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .config import STRATEGIES, ModelConfig

REASONS = ("requested", "fallback", "best_score", "lowest_cost", "lowest_latency", "highest_quality")
_STRATEGY_REASON = {
    "balanced": "best_score",
    "cost": "lowest_cost",
    "latency": "lowest_latency",
    "quality": "highest_quality",
}
# Weights of the balanced strategy's score.
_BALANCE = {"quality": 0.4, "cost": 0.3, "latency": 0.3}


@dataclass(frozen=True)
class Candidate:
    model: ModelConfig
    reason: str


class LatencyTracker:
    """Per-model EWMA of call duration, seeded from the config until calls are observed."""

    def __init__(self, models: tuple[ModelConfig, ...], alpha: float) -> None:
        self.alpha = alpha
        self._lock = threading.Lock()
        self._ewma = {m.id: self._prior(m) for m in models}

    @staticmethod
    def _prior(model: ModelConfig) -> float:
        if model.provider == "simulated":
            sim = model.simulation
            mean_tokens = (sim.output_tokens_min + sim.output_tokens_max) / 2
            return sim.time_to_first_token.median_ms / 1000 + mean_tokens / sim.tokens_per_second
        return model.timeout_seconds / 10

    def observe(self, model_id: str, seconds: float) -> None:
        with self._lock:
            old = self._ewma.get(model_id, seconds)
            self._ewma[model_id] = old + self.alpha * (seconds - old)

    def get(self, model_id: str) -> float:
        return self._ewma[model_id]


def rank(strategy: str, models: tuple[ModelConfig, ...], latency: LatencyTracker) -> list[ModelConfig]:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}")
    if strategy == "cost":
        return sorted(models, key=lambda m: (m.blended_price_per_1k, -m.quality, m.id))
    if strategy == "quality":
        return sorted(models, key=lambda m: (-m.quality, m.blended_price_per_1k, m.id))
    if strategy == "latency":
        return sorted(models, key=lambda m: (latency.get(m.id), m.id))
    max_price = max(m.blended_price_per_1k for m in models) or 1.0
    max_latency = max(latency.get(m.id) for m in models) or 1.0

    def score(m: ModelConfig) -> float:
        return (
            _BALANCE["quality"] * m.quality
            + _BALANCE["cost"] * (1 - m.blended_price_per_1k / max_price)
            + _BALANCE["latency"] * (1 - latency.get(m.id) / max_latency)
        )

    return sorted(models, key=lambda m: (-score(m), m.id))


def candidates(
    requested: str, strategy: str, models: tuple[ModelConfig, ...], latency: LatencyTracker
) -> list[Candidate]:
    """The ordered list of models to try; ``requested`` is a model id or "auto"."""
    if requested == "auto":
        ordered = rank(strategy, models, latency)
        reason = _STRATEGY_REASON[strategy]
        return [Candidate(ordered[0], reason)] + [Candidate(m, "fallback") for m in ordered[1:]]
    by_id = {m.id: m for m in models}
    first = by_id[requested]
    return [Candidate(first, "requested")] + [Candidate(by_id[f], "fallback") for f in first.fallbacks]
