"""Who is calling (tenant resolution) and what they may still spend (budgets).

The tenant label only ever takes a configured id, "anonymous" (no tenant given, when
allowed) or "other" (anything unrecognised, which is rejected).
"""

from __future__ import annotations

import hmac
import logging
import threading
import time

from .config import RouterConfig
from .errors import APIError
from .state import PeriodicWriter, StateStore
from .telemetry import logs

ANONYMOUS = "anonymous"
OTHER = "other"


class TenantDirectory:
    def __init__(self, config: RouterConfig) -> None:
        self.ids = frozenset(t.id for t in config.tenants)
        self._keys = [(key, t.id) for t in config.tenants for key in t.keys()]
        self.auth = config.auth

    def _tenant_for_key(self, key: str) -> str | None:
        # Constant-time comparison against every key: no timing hint about near misses.
        found = None
        for known, tenant in self._keys:
            if hmac.compare_digest(known.encode(), key.encode()):
                found = tenant
        return found

    def resolve(self, authorization: str | None, tenant_header: str | None) -> str:
        """Return the tenant id, or raise APIError (the label is then "other")."""
        key = None
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                key = value.strip()
        key_tenant = self._tenant_for_key(key) if key else None
        if self.auth.require_api_key and key_tenant is None:
            raise APIError(401, "A valid API key is required.", type="authentication_error", code="invalid_api_key")
        if tenant_header is not None:
            tenant = tenant_header.strip()
            if tenant not in self.ids:
                raise APIError(
                    403, "Unknown tenant in X-Tenant-ID.", type="permission_error", code="unknown_tenant",
                    param="X-Tenant-ID",
                )
            if key_tenant is not None and key_tenant != tenant:
                raise APIError(
                    403, "The API key belongs to another tenant.", type="permission_error", code="tenant_mismatch",
                    param="X-Tenant-ID",
                )
            return tenant
        if key_tenant is not None:
            return key_tenant
        if self.auth.allow_anonymous:
            return ANONYMOUS
        raise APIError(401, "Name a tenant (X-Tenant-ID) or use an API key.", type="authentication_error", code="missing_tenant")


class Budgets:
    """Monthly budgets, checked before a request and charged after it, shared by workers.

    Charges are buffered per process and written to the shared store by a writer thread
    every ``FLUSH_SECONDS`` (one UPSERT per tenant with spending since the last write): a
    write per request, with every worker contending for the same SQLite file, cost more
    than the rest of a simulated request. This process's own view includes its unwritten
    charges at once; other workers see them within FLUSH_SECONDS + REFRESH_SECONDS.
    Threshold crossings are decided on the shared total at each write, so each one is
    still logged exactly once across workers.
    """

    # How stale this worker's view of another worker's spending may be. Checks read the
    # shared store at most this often per tenant.
    REFRESH_SECONDS = 1.0
    FLUSH_SECONDS = 0.05

    def __init__(self, config: RouterConfig, store: StateStore, signals) -> None:
        self.limits = {t.id: t.monthly_budget_usd for t in config.tenants if t.monthly_budget_usd}
        self.action = config.budgets.on_exhausted
        self.thresholds = sorted(config.budgets.alert_thresholds)
        self.store = store
        self.signals = signals
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._known: dict[str, tuple[float, float]] = {}  # tenant -> (stored spend, read at)
        self._pending: dict[str, float] = {}  # tenant -> charged here, not stored yet
        self._writer = PeriodicWriter("budget-writer", self.flush, lambda: self.FLUSH_SECONDS, "tenant spend")
        for tenant in self.limits:
            signals.tenant_spend(tenant, store.spend(tenant))

    def check(self, tenant: str) -> bool:
        """True when the tenant is over budget and the request may still go ahead
        (action "flag"); raises APIError when it must be rejected."""
        limit = self.limits.get(tenant)
        if limit is None:
            return False
        spend = self._spend(tenant)
        # Kept current on every request, so a new month shows at once (not at the next charge).
        self.signals.tenant_spend(tenant, spend)
        if spend < limit:
            return False
        action = "rejected" if self.action == "reject" else "flagged"
        self.signals.budget_exceeded(tenant, action)
        if self.action == "reject":
            raise APIError(
                402, f"Tenant {tenant!r} has used its monthly budget of ${limit:.2f}.",
                type="insufficient_quota", code="budget_exceeded",
            )
        return True

    def _spend(self, tenant: str) -> float:
        now = time.monotonic()
        known = self._known.get(tenant)
        if known is None or now - known[1] >= self.REFRESH_SECONDS:
            stored = self.store.spend(tenant)
            with self._lock:
                self._known[tenant] = known = (stored, now)
        return known[0] + self._pending.get(tenant, 0.0)

    def charge(self, tenant: str, usd: float) -> None:
        limit = self.limits.get(tenant)
        if limit is None or usd <= 0:
            return
        with self._lock:
            self._pending[tenant] = self._pending.get(tenant, 0.0) + usd
        self._writer.start()

    def flush(self) -> None:
        """Write this process's buffered charges to the shared store now."""
        with self._flush_lock:
            with self._lock:
                pending, self._pending = self._pending, {}
            for tenant, usd in pending.items():
                try:
                    before, after = self.store.add_spend(tenant, usd)
                except Exception:
                    with self._lock:  # kept for the next write
                        self._pending[tenant] = self._pending.get(tenant, 0.0) + usd
                    raise
                with self._lock:
                    self._known[tenant] = (after, time.monotonic())
                self.signals.tenant_spend(tenant, after + self._pending.get(tenant, 0.0))
                self._crossings(tenant, before, after)

    def _crossings(self, tenant: str, before: float, after: float) -> None:
        limit = self.limits[tenant]
        for threshold in self.thresholds:
            if before < threshold * limit <= after:
                logs.event(
                    "budget_threshold_crossed",
                    f"tenant {tenant} crossed {threshold:.0%} of its monthly budget",
                    logging.WARNING,
                    tenant=tenant, threshold=threshold, spend_usd=round(after, 6), budget_usd=limit,
                )

    def close(self) -> None:
        """Stop the writer and store what is left (a stopping worker's last write)."""
        self._writer.close()
