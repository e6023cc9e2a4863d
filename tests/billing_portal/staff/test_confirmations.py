"""Confirmation pages say who is affected, what is left after, and warn at zero."""

from __future__ import annotations

from collections.abc import Callable

from django.test import Client
from django.urls import reverse

from billing_portal.invoicing.models import Invoice
from ledger import services as ledger
from ledger.models import CreditGrant
from metering.models import MeterEvent
from plans.models import Customer


def test_the_void_confirmation_shows_the_customer_and_the_balance_after(
    acme: Customer, promo_grant: CreditGrant, client_as: Callable[[str], Client]
) -> None:
    url = reverse("admin:ledger_creditgrant_void", args=[promo_grant.pk])
    review = client_as("Billing admin").post(url, {"reason": "fraud"})
    summary = dict(review.context["summary"])
    assert "Acme (acme)" in str(summary["Customer"])
    assert summary["Customer's available balance now"] == "20,500 credits"
    assert summary["Available balance after (void)"] == "20,000 credits"
    assert review.context["warnings"] == []
    assert summary["The customer reads"] == "Credits removed: Fraud"


def test_it_warns_when_the_customer_ends_with_no_credits(
    acme: Customer, client_as: Callable[[str], Client]
) -> None:
    for grant in CreditGrant.objects.filter(account=acme.account):
        ledger.credit_grant_void(grant=grant, actor="t", reason="test")
    last = ledger.credit_grant_create(
        account=acme.account, amount="40", category="promotional", actor="t"
    )
    url = reverse("admin:ledger_creditgrant_expire", args=[last.pk])
    review = client_as("Billing admin").post(url, {"reason": "goodwill"})
    assert dict(review.context["summary"])["Available balance after (expire)"] == "0 credits"
    (warning,) = review.context["warnings"]
    assert warning.startswith("acme ends with no credits available.")
    assert "staff-warning" in review.content.decode()


def test_a_grant_may_not_expire_in_the_past(
    acme: Customer, client_as: Callable[[str], Client]
) -> None:
    data = {"amount": "10", "category": "promotional", "priority": "50", "reason": "goodwill"}
    response = client_as("Billing admin").post(
        reverse("admin:plans_customer_grant", args=[acme.pk]),
        {**data, "expires_at": "2020-01-01 00:00"},
    )
    assert response.context["stage"] == "form"
    assert "the expiry must be in the future" in response.content.decode()


def test_a_cancelled_event_offers_no_cancel_or_correct(
    event: MeterEvent, client_as: Callable[[str], Client]
) -> None:
    client = client_as("Billing admin")
    cancel = reverse("admin:metering_meterevent_cancel", args=[event.pk])
    client.post(cancel, {"reason": "wrong_usage", "confirm": "1"})
    page = client.get(reverse("admin:metering_meterevent_change", args=[event.pk]))
    body = page.content.decode()
    assert "nothing left to cancel or correct" in body
    assert cancel not in body


def test_the_credit_note_form_has_no_default_method_and_explains_the_outcome(
    paid_invoice: Invoice, client_as: Callable[[str], Client]
) -> None:
    url = reverse("admin:invoicing_invoice_credit_note", args=[paid_invoice.pk])
    client = client_as("Finance")
    form = client.get(url).content.decode()
    assert '<option value="" selected>Choose a method</option>' in form
    review = client.post(url, {"reason": "order_change", "method": "refund", "amount": "35"})
    rows = review.context["summary"]
    labels = [label for label, _ in rows]
    assert labels.count("Reason") == 1
    summary = dict(rows)
    assert summary["Reason"] == "Order change" and summary["Method"] == "Refund"
    assert summary["Credit note total"] == "$35.00"
    assert "Stripe refunds $35.00" in summary["Money"]
    assert "still unused are voided" in summary["Credits"]
    assert summary["The customer reads"] == f"Credit for {paid_invoice.number}"


def test_the_month_picker_shows_a_month(client_as: Callable[[str], Client], db: None) -> None:
    body = client_as("Finance").get(
        reverse("admin:staff_auditlog_report_revenue") + "?month=2026-02"
    )
    assert 'type="month"' in body.content.decode()
    assert 'value="2026-02"' in body.content.decode()


def test_the_admin_has_its_own_title(client_as: Callable[[str], Client], db: None) -> None:
    body = client_as("Support").get(reverse("admin:index")).content.decode()
    assert "Django administration" not in body and "Billing staff" in body
