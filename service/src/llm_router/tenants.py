"""Who is calling (tenant resolution) and what they may still spend (budgets).

The tenant label only ever takes a configured id, "anonymous" (no tenant given, when
allowed) or "other" (anything unrecognised, which is rejected).
"""

from __future__ import annotations

import hmac
import logging

from .config import RouterConfig
from .errors import APIError
from .telemetry import logs

ANONYMOUS = "anonymous"
OTHER = "other"


class TenantDirectory:
    """Who is calling. A tenant that has API keys is reachable only with one of them: a
    wrong or unknown key is 401 whatever X-Tenant-ID says, and X-Tenant-ID alone names only
    a tenant without keys - unless ``auth.trust_tenant_header`` says a trusted gateway in
    front has authenticated the caller already."""

    def __init__(self, config: RouterConfig) -> None:
        self.ids = frozenset(t.id for t in config.tenants)
        self._keys = [(key.encode(), t.id) for t in config.tenants for key in t.keys()]
        self._keyed = frozenset(tenant for _, tenant in self._keys)
        self.auth = config.auth

    def _tenant_for_key(self, key: str) -> str | None:
        # Constant-time comparison against every key: no timing hint about near misses.
        given = key.encode()
        found = None
        for known, tenant in self._keys:
            if hmac.compare_digest(known, given):
                found = tenant
        return found

    def resolve(self, authorization: str | None, tenant_header: str | None) -> str:
        """Return the tenant id, or raise APIError (the label is then "other")."""
        key_tenant = None
        if authorization is not None:
            scheme, _, value = authorization.partition(" ")
            key = value.strip() if scheme.lower() == "bearer" else ""
            key_tenant = self._tenant_for_key(key) if key else None
            if key_tenant is None:
                raise APIError(401, "Invalid API key.", type="authentication_error", code="invalid_api_key")
        if tenant_header is not None:
            tenant = tenant_header.strip()
            if tenant not in self.ids:
                raise APIError(
                    403, "Unknown tenant in X-Tenant-ID.", type="permission_error", code="unknown_tenant",
                    param="X-Tenant-ID",
                )
            if key_tenant is not None:
                if key_tenant != tenant:
                    raise APIError(
                        403, "The API key belongs to another tenant.", type="permission_error", code="tenant_mismatch",
                        param="X-Tenant-ID",
                    )
                return tenant
            if self.auth.require_api_key or (tenant in self._keyed and not self.auth.trust_tenant_header):
                raise APIError(401, "This tenant requires its API key (Authorization: Bearer ...).",
                               type="authentication_error", code="missing_api_key")
            return tenant
        if key_tenant is not None:
            return key_tenant
        if self.auth.require_api_key:
            raise APIError(401, "A valid API key is required.", type="authentication_error", code="missing_api_key")
        if self.auth.allow_anonymous:
            return ANONYMOUS
        raise APIError(401, "Name a tenant (X-Tenant-ID) or use an API key.", type="authentication_error", code="missing_tenant")


class Budgets:
    """Monthly budgets: checked before a request against the ledger's view of the month's
    spend (every process's stored charges, refreshed twice a second, plus this process's
    charges not stored yet); threshold crossings come from the store, where each batch of
    charges is added in one transaction, so each is logged exactly once across processes."""

    def __init__(self, config: RouterConfig, ledger, signals) -> None:
        self.limits = {t.id: t.monthly_budget_usd for t in config.tenants if t.monthly_budget_usd}
        self.action = config.budgets.on_exhausted
        self.thresholds = sorted(config.budgets.alert_thresholds)
        self.ledger = ledger
        self.signals = signals

    def publish_spend(self) -> None:
        """Every budgeted tenant's spend gauge from the ledger (at start, once it has read
        the stored totals: a restarted router shows the month's spend before any request)."""
        for tenant in self.limits:
            self.signals.tenant_spend(tenant, self.ledger.spend(tenant))

    def check(self, tenant: str) -> bool:
        """True when the tenant is over budget and the request may still go ahead
        (action "flag"); raises APIError when it must be rejected."""
        limit = self.limits.get(tenant)
        if limit is None:
            return False
        spend = self.ledger.spend(tenant)
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

    def crossed(self, crossing) -> None:
        """A stored batch moved a tenant's total from ``before`` to ``after``."""
        limit = self.limits.get(crossing.tenant)
        if limit is None:
            return
        self.signals.tenant_spend(crossing.tenant, self.ledger.spend(crossing.tenant))
        for threshold in self.thresholds:
            if crossing.before < threshold * limit <= crossing.after:
                logs.event(
                    "budget_threshold_crossed",
                    f"tenant {crossing.tenant} crossed {threshold:.0%} of its monthly budget",
                    logging.WARNING,
                    tenant=crossing.tenant, threshold=threshold, spend_usd=round(crossing.after, 6), budget_usd=limit,
                    month=crossing.month,
                )
