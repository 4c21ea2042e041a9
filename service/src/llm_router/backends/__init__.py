"""Model backends: the simulated default and any OpenAI-compatible upstream."""

from __future__ import annotations

from collections.abc import Callable

from ..config import ModelConfig, RouterConfig
from ..faults import Fault
from .base import Backend, BackendError, ChatRequest, Chunk, Completion
from .openai_compat import OpenAICompatibleBackend
from .simulated import SimulatedBackend

__all__ = ["Backend", "BackendError", "ChatRequest", "Chunk", "Completion", "build_backend"]


def build_backend(model: ModelConfig, config: RouterConfig, fault_for: Callable[[str], Fault | None]) -> Backend:
    if model.provider == "simulated":
        return SimulatedBackend(model, config.simulation_time_scale, fault_for)
    return OpenAICompatibleBackend(model)
