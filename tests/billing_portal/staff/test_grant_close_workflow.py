from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse

from billing_portal.staff.models import AuditLog
from ledger import services as ledger
from ledger.models import CreditGrant, LedgerEntry
from ledger.services import Cause

pytestmark = pytest.mark.django_db

REASON = {"reason": "fraud", "memo": "card testing"}


def _consume(grant: CreditGrant, amount: str) -> None:
    ledger.credits_consume(
        account=grant.account, amount=amount, cause=Cause("system", "t"), actor="t"
    )


def test_the_confirmation_shows_the_credits_that_will_be_voided(
    promo_grant: CreditGrant, client_as: Callable[[str], Client]
) -> None:
    url = reverse("admin:ledger_creditgrant_void", args=[promo_grant.pk])
    client = client_as("Support")
    assert client.get(url).status_code == 200
    response = client.post(url, REASON)
    summary = dict(response.context["summary"])
    assert summary["Credits that will be voided"] == "500 credits"
    assert LedgerEntry.objects.filter(grant=promo_grant, kind="void").count() == 0


def test_voiding_writes_the_void_entry_and_an_audit_row(
    promo_grant: CreditGrant, client_as: Callable[[str], Client]
) -> None:
    url = reverse("admin:ledger_creditgrant_void", args=[promo_grant.pk])
    response = client_as("Support").post(url, {**REASON, "confirm": "1"})
    assert response.status_code == 302
    promo_grant.refresh_from_db()
    assert (promo_grant.status, promo_grant.remaining) == ("voided", Decimal(0))
    [entry] = LedgerEntry.objects.filter(grant=promo_grant, kind="void")
    assert entry.credits == Decimal("-500")
    assert entry.operation.actor == "staff:support"
    [audit] = AuditLog.objects.all()
    assert (audit.action, audit.reason_code, audit.memo) == ("grant_void", "fraud", "card testing")
    assert audit.details["credits_written_off"] == "500.000000"


def test_a_void_requires_a_reason(
    promo_grant: CreditGrant, client_as: Callable[[str], Client]
) -> None:
    url = reverse("admin:ledger_creditgrant_void", args=[promo_grant.pk])
    response = client_as("Support").post(url, {"reason": "", "confirm": "1"})
    assert "reason" in response.context["form"].errors
    promo_grant.refresh_from_db()
    assert promo_grant.status == "active"
    assert AuditLog.objects.count() == 0


def test_expiring_now_keeps_consumed_credits_and_writes_off_the_rest(
    promo_grant: CreditGrant, client_as: Callable[[str], Client]
) -> None:
    promo_grant.account.grants.exclude(pk=promo_grant.pk).update(priority=100)
    _consume(promo_grant, "120")
    url = reverse("admin:ledger_creditgrant_expire", args=[promo_grant.pk])
    client = client_as("Billing admin")
    review = client.post(url, REASON)
    assert dict(review.context["summary"])["Credits that will be expired"] == "380 credits"
    client.post(url, {**REASON, "confirm": "1"})
    promo_grant.refresh_from_db()
    assert promo_grant.status == "expired"
    [entry] = LedgerEntry.objects.filter(grant=promo_grant, kind="expire")
    assert entry.credits == Decimal("-380")
    assert AuditLog.objects.get().action == "grant_expire"


def test_a_closed_grant_cannot_be_voided_again(
    promo_grant: CreditGrant, client_as: Callable[[str], Client]
) -> None:
    ledger.credit_grant_expire(grant=promo_grant, actor="t")
    url = reverse("admin:ledger_creditgrant_void", args=[promo_grant.pk])
    response = client_as("Billing admin").post(url, {**REASON, "confirm": "1"})
    assert "already expired" in str(response.context["form"].non_field_errors())
    assert AuditLog.objects.count() == 0
