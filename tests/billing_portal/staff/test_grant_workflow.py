from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from django.test import Client, override_settings
from django.urls import reverse

from billing_portal.staff.models import AuditLog
from ledger.models import CreditGrant, LedgerEntry
from plans.models import Customer

pytestmark = pytest.mark.django_db

FORM = {
    "amount": "250.5",
    "category": "promotional",
    "priority": "10",
    "expires_at": "",
    "applies_to": "llm_tokens",
    "workspace": "",
    "reason": "goodwill",
    "memo": "sorry about the outage",
}


def _url(acme: Customer) -> str:
    return reverse("admin:plans_customer_grant", args=[acme.pk])


def _staff_grants(acme: Customer) -> list[CreditGrant]:
    return list(CreditGrant.objects.filter(account=acme.account, source_type="staff"))


def test_it_shows_the_form(acme: Customer, client_as: Callable[[str], Client]) -> None:
    response = client_as("Billing admin").get(_url(acme))
    assert response.status_code == 200
    assert b'name="amount"' in response.content


def test_it_reports_validation_errors_and_writes_nothing(
    acme: Customer, client_as: Callable[[str], Client]
) -> None:
    bad = {**FORM, "amount": "-1", "priority": "101", "reason": "other", "memo": ""}
    response = client_as("Billing admin").post(_url(acme), {**bad, "confirm": "1"})
    assert response.status_code == 200
    errors = response.context["form"].errors
    assert set(errors) == {"amount", "priority", "memo"}
    assert _staff_grants(acme) == []
    assert AuditLog.objects.count() == 0


def test_it_refuses_more_than_six_decimal_places(
    acme: Customer, client_as: Callable[[str], Client]
) -> None:
    response = client_as("Billing admin").post(_url(acme), {**FORM, "amount": "1.0000001"})
    assert "amount" in response.context["form"].errors


def test_review_shows_a_confirmation_and_writes_nothing(
    acme: Customer, client_as: Callable[[str], Client]
) -> None:
    response = client_as("Billing admin").post(_url(acme), FORM)
    assert response.context["stage"] == "confirm"
    assert ("Credits", "250.5 credits") in response.context["summary"]
    assert b'name="confirm"' in response.content
    assert _staff_grants(acme) == []


def test_confirming_writes_the_grant_its_ledger_entry_and_an_audit_row(
    acme: Customer, client_as: Callable[[str], Client]
) -> None:
    response = client_as("Billing admin").post(_url(acme), {**FORM, "confirm": "1"})
    assert response.status_code == 302
    [grant] = _staff_grants(acme)
    assert (grant.amount, grant.category, grant.priority, grant.applies_to) == (
        Decimal("250.5"),
        "promotional",
        10,
        ["llm_tokens"],
    )
    assert (grant.actor, grant.reason, grant.memo) == (
        "staff:billing_admin",
        "goodwill",
        "sorry about the outage",
    )
    [entry] = LedgerEntry.objects.filter(grant=grant)
    assert (entry.kind, entry.credits, entry.cause_type) == (
        "grant",
        Decimal("250.5"),
        "staff_action",
    )
    [audit] = AuditLog.objects.all()
    assert (audit.operator_name, audit.action, audit.reason_code, audit.memo) == (
        "billing_admin",
        "grant_create",
        "goodwill",
        "sorry about the outage",
    )
    assert (audit.target_type, audit.target_id) == ("ledger.creditgrant", str(grant.pk))
    assert audit.created_at is not None


def test_support_may_grant_promotional_credits_up_to_the_limit(
    acme: Customer, client_as: Callable[[str], Client]
) -> None:
    client = client_as("Support")
    response = client.post(_url(acme), {**FORM, "amount": "1000", "confirm": "1"})
    assert response.status_code == 302
    assert [g.amount for g in _staff_grants(acme)] == [Decimal("1000")]


@override_settings(STAFF_SUPPORT_GRANT_LIMIT=Decimal("100"))
def test_support_is_refused_above_the_configured_limit_and_nothing_changes(
    acme: Customer, client_as: Callable[[str], Client]
) -> None:
    response = client_as("Support").post(_url(acme), {**FORM, "amount": "100.01", "confirm": "1"})
    assert response.status_code == 200
    assert "at most 100 credits" in str(response.context["form"].non_field_errors())
    assert _staff_grants(acme) == []
    assert AuditLog.objects.count() == 0


def test_support_may_not_grant_paid_credits(
    acme: Customer, client_as: Callable[[str], Client]
) -> None:
    response = client_as("Support").post(_url(acme), {**FORM, "category": "paid", "confirm": "1"})
    assert "promotional credits only" in str(response.context["form"].non_field_errors())
    assert _staff_grants(acme) == []


def test_a_billing_admin_has_no_limit(acme: Customer, client_as: Callable[[str], Client]) -> None:
    response = client_as("Billing admin").post(
        _url(acme), {**FORM, "amount": "50000", "category": "paid", "confirm": "1"}
    )
    assert response.status_code == 302
    assert [g.category for g in _staff_grants(acme)] == ["paid"]


def test_a_double_submitted_confirmation_grants_once(
    acme: Customer, client_as: Callable[[str], Client]
) -> None:
    client = client_as("Billing admin")
    token = client.get(_url(acme)).context["form"]["request_token"].value()
    data = {**FORM, "request_token": token, "confirm": "1"}
    assert client.post(_url(acme), data).status_code == 302
    again = client.post(_url(acme), data)
    assert "already submitted" in str(again.context["form"].non_field_errors())
    assert len(_staff_grants(acme)) == 1
    assert AuditLog.objects.get().request_token == token
