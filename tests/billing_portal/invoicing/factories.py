"""Builders and checks the invoicing tests share."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

from djmoney.money import Money

from billing_portal.invoicing.models import CreditPackPurchase, InvoiceStatus, PurchaseStatus
from ledger.models import CreditGrant, EntryKind, LedgerEntry
from ledger.selectors import account_balance


def only_grant(purchase: CreditPackPurchase) -> CreditGrant:
    (grant,) = CreditGrant.objects.filter(account=purchase.customer.account)
    return grant


def assert_paid_once(purchase: CreditPackPurchase) -> CreditGrant:
    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.PAID
    assert purchase.paid_at is not None
    grant = only_grant(purchase)
    assert purchase.grant_id == grant.pk
    assert (grant.category, grant.amount, grant.remaining) == (
        "paid",
        Decimal(10000),
        Decimal(10000),
    )
    assert grant.cost_basis == Money("0.0035", "USD")  # 35.00 / 10,000 credits
    assert grant.expires_at == grant.effective_at + timedelta(days=365)
    assert grant.idempotency_key == f"purchase-{purchase.pk}"
    assert LedgerEntry.objects.filter(grant=grant, kind=EntryKind.GRANT).count() == 1
    assert purchase.invoice.status == InvoiceStatus.PAID
    assert account_balance(account=purchase.customer.account).posted == Decimal(10000)
    return grant
