"""The router's parts on their own: strategies, breaker, limiter, cache, budgets, config."""

from __future__ import annotations

import threading

import pytest

from conftest import config_dict, quiet_models
from llm_router.cache import ResponseCache, cache_key
from llm_router.config import ConfigError, TenantConfig, load_config, parse_config
from llm_router.resilience import CLOSED, HALF_OPEN, OPEN, CircuitBreaker, ConcurrencyLimiter, backoff_delay
from llm_router.routing import LatencyTracker, candidates, rank
from llm_router.ledger import Ledger
from llm_router.state import SQLiteStore
from llm_router.telemetry.signals import Signals
from llm_router.tenants import ANONYMOUS, Budgets, TenantDirectory
from llm_router.errors import APIError


@pytest.fixture
def config():
    return parse_config(quiet_models(config_dict()))


# --- routing -------------------------------------------------------------------------------


def test_cost_and_quality_strategies_order_by_price_and_score(config):
    latency = LatencyTracker(config.models, 0.2)
    by_cost = rank("cost", config.models, latency)
    assert [m.blended_price_per_1k for m in by_cost] == sorted(m.blended_price_per_1k for m in config.models)
    by_quality = rank("quality", config.models, latency)
    assert [m.quality for m in by_quality] == sorted((m.quality for m in config.models), reverse=True)


def test_latency_strategy_follows_observed_latency(config):
    latency = LatencyTracker(config.models, alpha=1.0)
    for model in config.models:
        latency.observe(model.id, 5.0)
    latency.observe("sim-frontier", 0.01)
    assert rank("latency", config.models, latency)[0].id == "sim-frontier"


def test_explicit_model_comes_first_then_its_fallbacks(config):
    plan = candidates("sim-frontier", "balanced", config.models, LatencyTracker(config.models, 0.2))
    assert [(c.model.id, c.reason) for c in plan] == [
        ("sim-frontier", "requested"), ("sim-balanced", "fallback"), ("sim-fast", "fallback"),
    ]


def test_auto_uses_every_model_with_the_strategy_reason(config):
    plan = candidates("auto", "quality", config.models, LatencyTracker(config.models, 0.2))
    assert plan[0].reason == "highest_quality"
    assert {c.model.id for c in plan} == {m.id for m in config.models}


# --- circuit breaker -----------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_breaker_opens_half_opens_and_closes():
    clock, changes = Clock(), []
    breaker = CircuitBreaker("m", 3, 10, lambda name, old, new: changes.append((old, new)), clock)
    for _ in range(3):
        assert breaker.allow()
        breaker.record_failure()
    assert breaker.state == OPEN and not breaker.allow()
    clock.now = 10
    assert breaker.state == HALF_OPEN
    assert breaker.allow()  # the one probe
    assert not breaker.allow()  # no second probe while the first is out
    breaker.record_success()
    assert breaker.state == CLOSED
    assert changes == [(CLOSED, OPEN), (OPEN, HALF_OPEN), (HALF_OPEN, CLOSED)]


def test_failed_probe_reopens_the_breaker():
    clock = Clock()
    breaker = CircuitBreaker("m", 1, 5, None, clock)
    breaker.allow()
    breaker.record_failure()
    clock.now = 5
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.state == OPEN
    clock.now = 9
    assert not breaker.allow()


def test_success_resets_the_consecutive_failure_count():
    breaker = CircuitBreaker("m", 2, 5)
    breaker.record_failure()
    breaker.record_success()
    breaker.record_failure()
    assert breaker.state == CLOSED


# --- concurrency limiter -------------------------------------------------------------------


def test_limiter_rejects_when_full_and_reports_queueing():
    limiter = ConcurrencyLimiter(1, queue_timeout=0.01)
    assert limiter.acquire()
    queue_changes = []
    assert not limiter.acquire(queue_changes.append)
    assert queue_changes == [1, -1]
    limiter.release()
    assert limiter.acquire()
    limiter.release()


def test_limiter_hands_a_released_slot_to_a_waiter():
    limiter = ConcurrencyLimiter(1, queue_timeout=5)
    limiter.acquire()
    got = []
    waiter = threading.Thread(target=lambda: got.append(limiter.acquire()))
    waiter.start()
    limiter.release()
    waiter.join(5)
    assert got == [True] and limiter.in_flight == 1


def test_backoff_grows_exponentially_within_jitter_bounds():
    assert backoff_delay(0, 0.1, 0.0) == pytest.approx(0.05)
    assert backoff_delay(2, 0.1, 0.999) == pytest.approx(0.5996)


# --- cache ---------------------------------------------------------------------------------


def test_cache_expires_and_evicts_least_recently_used():
    clock = Clock()
    cache = ResponseCache(max_entries=2, ttl_seconds=10, clock=clock)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recent
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1
    clock.now = 10
    assert cache.get("a") is None


def test_cache_keys_differ_per_tenant_and_parameters():
    body = {"messages": [{"role": "user", "content": "x"}], "max_tokens": 5}
    assert cache_key("a", "auto", "cost", body) != cache_key("b", "auto", "cost", body)
    assert cache_key("a", "auto", "cost", body) != cache_key("a", "auto", "cost", {**body, "max_tokens": 6})
    assert cache_key("a", "auto", "cost", body) == cache_key("a", "auto", "cost", dict(reversed(body.items())))


# --- tenants and budgets -------------------------------------------------------------------


def _status(tenants: TenantDirectory, authorization, header) -> tuple[int, str]:
    with pytest.raises(APIError) as error:
        tenants.resolve(authorization, header)
    return error.value.status, error.value.code


def test_tenant_resolution(config):
    keyless = config.model_copy(update={"tenants": (*config.tenants, TenantConfig(id="lab"))})
    tenants = TenantDirectory(keyless)
    assert tenants.resolve("Bearer sk-demo-search", None) == "search"
    assert tenants.resolve("Bearer sk-demo-search", "search") == "search"
    assert tenants.resolve(None, "lab") == "lab", "a tenant without keys is named by its header"
    assert tenants.resolve(None, None) == ANONYMOUS
    # A tenant with keys cannot be borrowed: no key, a wrong key or another tenant's key.
    assert _status(tenants, None, "support") == (401, "missing_api_key")
    assert _status(tenants, "Bearer sk-unknown", "support") == (401, "invalid_api_key")
    assert _status(tenants, "Bearer sk-unknown", None) == (401, "invalid_api_key")
    assert _status(tenants, "Bearer sk-unknown", "lab") == (401, "invalid_api_key")
    assert _status(tenants, "Basic abc", None) == (401, "invalid_api_key")
    assert _status(tenants, "Bearer sk-demo-search", "support") == (403, "tenant_mismatch")
    assert _status(tenants, None, "nobody") == (403, "unknown_tenant")


def test_trusted_tenant_header_is_opt_in(config):
    trusting = config.model_copy(update={"auth": config.auth.model_copy(update={"trust_tenant_header": True})})
    tenants = TenantDirectory(trusting)
    assert tenants.resolve(None, "support") == "support", "behind a gateway that authenticated the caller"
    assert _status(tenants, "Bearer sk-unknown", "support") == (401, "invalid_api_key"), "a wrong key is still wrong"


def test_required_api_key(config):
    strict = config.model_copy(update={"auth": config.auth.model_copy(update={"require_api_key": True})})
    tenants = TenantDirectory(strict)
    with pytest.raises(APIError) as missing:
        tenants.resolve(None, "search")
    assert missing.value.status == 401
    assert tenants.resolve("Bearer sk-demo-search", "search") == "search"


def charge(ledger: Ledger, tenant: str, usd: float, request_id: str = "r") -> None:
    """A finished request costing ``usd`` (1,000 input tokens at ``usd`` per 1k)."""
    entry = ledger.reserve()
    ledger.finish(entry, tenant, "m", request_id, 200, 1000, 0, usd, 0.0)


def worker(config, directory, signals=None) -> tuple[Ledger, Budgets]:
    """One worker's ledger and budgets on the shared state directory; its sync loop is not
    started, so the test decides when it stores and reads."""
    ledger = Ledger(SQLiteStore(directory), directory)
    ledger.start = lambda: None
    budgets = Budgets(config, ledger, signals or Signals.off())
    ledger.on_crossing = budgets.crossed
    return ledger, budgets


def test_budget_is_shared_through_the_store_and_crossings_fire_once(tmp_path, config, caplog):
    ledger, budgets = worker(config, tmp_path)
    other_ledger, other_worker = worker(config, tmp_path)
    store = ledger.store
    with caplog.at_level("INFO", logger="llm_router.events"):
        charge(ledger, "internal-tools", 12)
        charge(ledger, "internal-tools", 8)
        assert store.spend("internal-tools") == 0, "charges wait in the journal until the sync loop stores them"
        assert ledger.spend("internal-tools") == pytest.approx(20), "but this worker counts them at once"
        ledger.drain()  # 40% of 50
        charge(other_ledger, "internal-tools", 10)
        other_ledger.drain()  # 60%: crosses 50%
        charge(ledger, "internal-tools", 1)
        ledger.drain()
    crossings = [r for r in caplog.records if getattr(r, "event", "") == "budget_threshold_crossed"]
    assert [r.threshold for r in crossings] == [0.5]
    assert store.spend("internal-tools") == pytest.approx(31)
    assert not budgets.check("internal-tools")
    charge(other_ledger, "internal-tools", 19)
    assert other_ledger.close(), "a stopping worker stores what is left"
    # A worker sees another worker's spending when its loop reads the totals: not before...
    assert not budgets.check("internal-tools"), "read from this worker's recent view"
    ledger.refresh()
    with pytest.raises(APIError) as over:
        budgets.check("internal-tools")
    assert over.value.status == 402 and over.value.code == "budget_exceeded"
    ledger.close()


def test_budget_flag_action_serves_and_marks(tmp_path, config):
    flagging = config.model_copy(update={"budgets": config.budgets.model_copy(update={"on_exhausted": "flag"})})
    ledger, budgets = worker(flagging, tmp_path)
    charge(ledger, "internal-tools", 60)
    assert budgets.check("internal-tools") is True
    ledger.close()


# --- config --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mutate", "named"),
    [
        (lambda d: d["models"][1]["price"].update(input_per_1k=-1), "models.1.price.input_per_1k"),
        (lambda d: d["models"][0].update(colour="blue"), "models.0.colour"),
        (lambda d: d["routing"].update(default_strategy="fastest"), "routing.default_strategy"),
        (lambda d: d["models"][0].update(fallbacks=["ghost"]), "ghost"),
        (lambda d: d["tenants"].append({"id": "other"}), "reserved tenant"),
        (lambda d: d["models"].append({**d["models"][0]}), "duplicate model ids"),
        (lambda d: d["models"][0].update(provider="openai"), "base_url is required"),
    ],
)
def test_invalid_config_names_the_bad_key(mutate, named):
    data = config_dict()
    mutate(data)
    with pytest.raises(ConfigError) as error:
        parse_config(data)
    assert named in str(error.value)


def test_shipped_config_loads_and_env_overrides_time_scale(monkeypatch):
    monkeypatch.setenv("LLM_ROUTER_SIM_TIME_SCALE", "0.5")
    assert load_config().simulation_time_scale == 0.5
    monkeypatch.setenv("LLM_ROUTER_SIM_TIME_SCALE", "fast")
    with pytest.raises(ConfigError):
        load_config()


def test_missing_config_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "absent.yaml")


def _open_store_after(barrier, directory: str, results) -> None:
    try:
        barrier.wait(30)
        store = SQLiteStore(directory)
        ledger = Ledger(store, directory)
        charge(ledger, "t", 1.0)
        ledger.drain()
        results.put(store._thread.call(lambda: store._db.execute("PRAGMA journal_mode").fetchone()[0]))
        ledger.close()
    except Exception as error:  # noqa: BLE001 (reported to the test)
        results.put(repr(error))


def test_state_store_opens_safely_when_many_processes_start_at_once(tmp_path):
    """Workers boot together and open one new SQLite file at once: every one must come up,
    in WAL mode. (In a CI run, 'database is locked' from the WAL switch once stopped a
    worker from booting, and gunicorn with it; that race does not reproduce on demand, so
    this is a guard on the concurrent start, not a replay of it.) Forked processes
    released by one barrier open the file within microseconds of each other."""
    import multiprocessing

    context = multiprocessing.get_context("fork")
    for round_ in range(5):
        directory = str(tmp_path / f"state-{round_}")
        barrier, results = context.Barrier(8), context.Queue()
        processes = [context.Process(target=_open_store_after, args=(barrier, directory, results)) for _ in range(8)]
        for process in processes:
            process.start()
        outcomes = [results.get(timeout=60) for _ in processes]
        for process in processes:
            process.join(30)
        assert outcomes == ["wal"] * 8
        assert SQLiteStore(directory).spend("t") == 8.0
