"""Router configuration: loaded once from YAML, validated, then read-only.

Every field is declared here with its type and bounds, so a bad file fails at start with
an error that names the key (``models.2.price.input_per_1k: ...``) instead of failing
later on a request.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

STRATEGIES = ("balanced", "cost", "latency", "quality")
# In a checkout (or an editable install) the default is service/config/router.yaml;
# the container image sets $LLM_ROUTER_CONFIG instead.
DEFAULT_CONFIG_PATH = Path(__file__).resolve().parents[2] / "config" / "router.yaml"
CONFIG_ENV = "LLM_ROUTER_CONFIG"


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or invalid."""


class _Strict(BaseModel):
    # Unknown keys are typos until proven otherwise.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Price(_Strict):
    input_per_1k: float = Field(ge=0)
    output_per_1k: float = Field(ge=0)


class LatencyDistribution(_Strict):
    """A log-normal distribution given by its median and 95th percentile."""

    median_ms: float = Field(ge=0)
    p95_ms: float = Field(ge=0)

    @model_validator(mode="after")
    def _p95_not_below_median(self) -> "LatencyDistribution":
        if self.p95_ms < self.median_ms:
            raise ValueError("p95_ms must be >= median_ms")
        return self


class Simulation(_Strict):
    time_to_first_token: LatencyDistribution = LatencyDistribution(median_ms=300, p95_ms=900)
    tokens_per_second: float = Field(default=50, gt=0)
    output_tokens_min: int = Field(default=16, ge=1)
    output_tokens_max: int = Field(default=256, ge=1)
    error_rate: float = Field(default=0.0, ge=0, le=1)
    # Share of answers the simulated model cuts short with finish_reason "content_filter".
    content_filter_rate: float = Field(default=0.0, ge=0, le=1)
    # Relative weights of the error kinds drawn when an error happens.
    error_kinds: dict[Literal["server_error", "timeout", "rate_limited"], float] = {
        "server_error": 1.0
    }

    @model_validator(mode="after")
    def _bounds(self) -> "Simulation":
        if self.output_tokens_max < self.output_tokens_min:
            raise ValueError("output_tokens_max must be >= output_tokens_min")
        if not self.error_kinds or sum(self.error_kinds.values()) <= 0:
            raise ValueError("error_kinds needs at least one positive weight")
        return self


class ModelConfig(_Strict):
    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,63}$")
    provider: Literal["simulated", "openai"]
    # The name reported as gen_ai.provider.name (e.g. "openai", "ollama", "vllm").
    provider_name: str | None = None
    base_url: str | None = None
    api_key_env: str | None = None
    # The model name sent upstream, when it differs from the router's id.
    upstream_model: str | None = None
    price: Price
    quality: float = Field(ge=0, le=1)
    timeout_seconds: float = Field(default=60, gt=0)
    # Calls in flight to this model from the whole container (all workers together; the
    # 33rd waits up to routing.queue_timeout_seconds, then the next candidate or 429).
    max_concurrency: int = Field(default=32, ge=1, le=32767)
    # Models tried next, in order, when this one fails and it was asked for by name.
    fallbacks: tuple[str, ...] = ()
    simulation: Simulation = Simulation()

    @model_validator(mode="after")
    def _provider_fields(self) -> "ModelConfig":
        if self.provider == "openai" and not self.base_url:
            raise ValueError("base_url is required for provider 'openai'")
        return self

    @property
    def gen_ai_provider(self) -> str:
        return self.provider_name or ("simulated" if self.provider == "simulated" else "openai")

    @property
    def blended_price_per_1k(self) -> float:
        return (self.price.input_per_1k + self.price.output_per_1k) / 2


class TenantConfig(_Strict):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")
    monthly_budget_usd: float | None = Field(default=None, gt=0)
    # Demo keys may sit in the file; real ones come from an environment variable
    # holding a comma-separated list.
    api_keys: tuple[str, ...] = ()
    api_keys_env: str | None = None

    def keys(self) -> list[str]:
        keys = list(self.api_keys)
        if self.api_keys_env:
            keys += [k.strip() for k in os.environ.get(self.api_keys_env, "").split(",") if k.strip()]
        return keys


class CircuitBreakerConfig(_Strict):
    failure_threshold: int = Field(default=5, ge=1)
    reset_timeout_seconds: float = Field(default=30, gt=0)


class RoutingConfig(_Strict):
    default_strategy: Literal["balanced", "cost", "latency", "quality"] = "balanced"
    # How many different backends one request may try (the first choice included).
    max_backends: int = Field(default=3, ge=1)
    # Retries on the same backend before falling back to the next one.
    retries: int = Field(default=1, ge=0)
    retry_backoff_seconds: float = Field(default=0.05, ge=0)
    # How long a request waits for a free backend slot before the next candidate.
    queue_timeout_seconds: float = Field(default=0.25, ge=0)
    # Weight of the newest observation in the latency moving average.
    latency_ewma_alpha: float = Field(default=0.2, gt=0, le=1)
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()


class CacheConfig(_Strict):
    enabled: bool = True
    max_entries: int = Field(default=2048, ge=1)
    ttl_seconds: float = Field(default=300, gt=0)


class BudgetConfig(_Strict):
    on_exhausted: Literal["reject", "flag"] = "reject"
    # Fractions of the budget at which a crossing is logged once per month.
    alert_thresholds: tuple[float, ...] = (0.5, 0.85, 1.0)


class AuthConfig(_Strict):
    # Without a tenant header or a key, requests count as tenant "anonymous".
    allow_anonymous: bool = True
    # When true, a request must carry a configured API key.
    require_api_key: bool = False
    # A tenant with API keys is reachable only with one of them. True trusts X-Tenant-ID
    # alone for every tenant: only behind a gateway that authenticates callers and sets or
    # strips that header itself - anyone who reaches the router directly can then spend
    # any tenant's budget, read its cached answers and rate its answers.
    trust_tenant_header: bool = False


class LimitsConfig(_Strict):
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    max_tokens: int = Field(default=32_768, ge=1)
    max_messages: int = Field(default=1_000, ge=1)


class StateConfig(_Strict):
    # Where spend, the ledger and faults live: unset for SQLite in $LLM_ROUTER_STATE_DIR
    # (one host), or postgresql://user@host:5432/db for several replicas (the password
    # from PGPASSWORD or ~/.pgpass, never in this file). $LLM_ROUTER_STATE_URL overrides.
    url: str | None = None
    # Slots of each process's charge journal (256 bytes each, on disk in the state
    # directory): charges wait there while the store is unreachable. When every slot is
    # taken, new requests get 503 rather than go unrecorded.
    journal_slots: int = Field(default=32768, ge=64, le=4_194_304)


class FeedbackConfig(_Strict):
    # How long an answered chat request can still be rated (POST /v1/feedback). Older rows
    # are pruned from the shared state store, so it stays bounded.
    retention_hours: float = Field(default=72, gt=0, le=24 * 90)


class HealthProbesConfig(_Strict):
    # A background thread per process probes every backend: at start, then every interval
    # (with +-10% jitter, so workers do not probe in lockstep).
    enabled: bool = True
    interval_seconds: float = Field(default=30, ge=0.05, le=3600)
    # Cap on one probe; a model's own timeout_seconds applies when it is shorter.
    timeout_seconds: float = Field(default=5, gt=0, le=300)


class RouterConfig(_Strict):
    service_name: str = "llm-router"
    models: tuple[ModelConfig, ...] = Field(min_length=1)
    tenants: tuple[TenantConfig, ...] = ()
    routing: RoutingConfig = RoutingConfig()
    cache: CacheConfig = CacheConfig()
    budgets: BudgetConfig = BudgetConfig()
    auth: AuthConfig = AuthConfig()
    limits: LimitsConfig = LimitsConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    state: StateConfig = StateConfig()
    health_probes: HealthProbesConfig = HealthProbesConfig()
    # Multiplies every simulated delay: 0 makes simulated models answer at once (tests).
    simulation_time_scale: float = Field(default=1.0, ge=0)

    @model_validator(mode="after")
    def _references(self) -> "RouterConfig":
        ids = [m.id for m in self.models]
        duplicated = sorted({i for i in ids if ids.count(i) > 1})
        if duplicated:
            raise ValueError(f"duplicate model ids: {duplicated}")
        if "auto" in ids or "unknown" in ids:
            raise ValueError("'auto' and 'unknown' are reserved model ids")
        for model in self.models:
            missing = [f for f in model.fallbacks if f not in ids]
            if missing:
                raise ValueError(f"model {model.id!r} falls back to unknown models {missing}")
        tenant_ids = [t.id for t in self.tenants]
        if len(set(tenant_ids)) != len(tenant_ids):
            raise ValueError("duplicate tenant ids")
        if {"other", "anonymous"} & set(tenant_ids):
            raise ValueError("'other' and 'anonymous' are reserved tenant ids")
        return self

    def model(self, model_id: str) -> ModelConfig | None:
        return next((m for m in self.models if m.id == model_id), None)


def _format_errors(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"  {where}: {item['msg']}")
    return "\n".join(lines)


def parse_config(data: object, source: str = "<config>") -> RouterConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping")
    try:
        return RouterConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{source} is invalid:\n{_format_errors(error)}") from None


def load_config(path: str | os.PathLike[str] | None = None) -> RouterConfig:
    """Load the config from ``path``, else $LLM_ROUTER_CONFIG, else the packaged default."""
    chosen = Path(path or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH)
    try:
        data = yaml.safe_load(chosen.read_text(encoding="utf-8"))
    except OSError as error:
        raise ConfigError(f"cannot read config {chosen}: {error.strerror}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{chosen} is not valid YAML: {error}") from None
    config = parse_config(data, str(chosen))
    time_scale = os.environ.get("LLM_ROUTER_SIM_TIME_SCALE")
    if time_scale is not None:
        try:
            scale = float(time_scale)
        except ValueError:
            raise ConfigError("LLM_ROUTER_SIM_TIME_SCALE must be a number") from None
        if scale < 0:
            raise ConfigError("LLM_ROUTER_SIM_TIME_SCALE must be >= 0")
        config = config.model_copy(update={"simulation_time_scale": scale})
    return config
