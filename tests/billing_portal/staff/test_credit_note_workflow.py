from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from django.test import Client
from django.urls import reverse

from billing_portal.invoicing.credit_notes import credit_note_issue
from billing_portal.invoicing.models import CreditNote, Invoice
from billing_portal.staff.models import AuditLog
from ledger.models import GrantStatus, LedgerEntry
from plans.money import as_money

pytestmark = pytest.mark.django_db


def _url(invoice: Invoice) -> str:
    return reverse("admin:invoicing_invoice_credit_note", args=[invoice.pk])


def test_it_shows_the_form_with_the_invoice_lines(
    paid_invoice: Invoice, client_as: Callable[[str], Client]
) -> None:
    response = client_as("Finance").get(_url(paid_invoice))
    assert response.status_code == 200
    line = paid_invoice.lines.get()
    assert f'name="line_{line.pk}"'.encode() in response.content


def test_it_needs_lines_or_an_amount_but_not_both(
    paid_invoice: Invoice, client_as: Callable[[str], Client]
) -> None:
    line = paid_invoice.lines.get()
    client = client_as("Finance")
    base = {"reason": "duplicate", "method": "out_of_band", "confirm": "1"}
    neither = client.post(_url(paid_invoice), base)
    both = client.post(_url(paid_invoice), {**base, "amount": "1", f"line_{line.pk}": "1"})
    for response in (neither, both):
        assert "not both" in str(response.context["form"].non_field_errors())
    assert not CreditNote.objects.exists()


def test_it_refuses_more_than_is_creditable(
    paid_invoice: Invoice, client_as: Callable[[str], Client]
) -> None:
    data = {"reason": "duplicate", "method": "out_of_band", "amount": "35.01"}
    response = client_as("Finance").post(_url(paid_invoice), data)
    assert "at most the 35.00 left" in str(response.context["form"].non_field_errors())
    assert not CreditNote.objects.exists()


def test_the_preview_shows_the_totals_before_confirming(
    paid_invoice: Invoice, client_as: Callable[[str], Client]
) -> None:
    line = paid_invoice.lines.get()
    data = {
        "reason": "product_unsatisfactory",
        "method": "customer_credit",
        f"line_{line.pk}": "10",
    }
    response = client_as("Finance").post(_url(paid_invoice), data)
    summary = dict(response.context["summary"])
    assert summary["Credit note total"] == "$10.00"
    assert summary[f"Credit on {line.description}"] == "$10.00"
    assert summary["Method"] == "Customer credit"
    assert not CreditNote.objects.exists()


def test_a_refund_issues_the_note_voids_the_pack_credits_and_audits(
    paid_invoice: Invoice, client_as: Callable[[str], Client]
) -> None:
    data = {"reason": "order_change", "method": "refund", "amount": "35", "memo": "changed mind"}
    response = client_as("Finance").post(_url(paid_invoice), {**data, "confirm": "1"})
    assert response.status_code == 302
    note = CreditNote.objects.get()
    assert (as_money(note.total).amount, note.reason, note.method, note.actor, note.memo) == (
        Decimal("35.00"),
        "order_change",
        "refund",
        "staff:finance",
        "changed mind",
    )
    grant = paid_invoice.purchase.grant
    assert grant is not None
    grant.refresh_from_db()
    assert grant.status == GrantStatus.VOIDED
    assert LedgerEntry.objects.filter(grant=grant, kind="void").count() == 1
    audit = AuditLog.objects.get()
    assert (audit.action, audit.reason_code, audit.target_id) == (
        "credit_note_issue",
        "order_change",
        str(note.pk),
    )


def test_voiding_a_credit_note(paid_invoice: Invoice, client_as: Callable[[str], Client]) -> None:
    note = credit_note_issue(
        invoice=paid_invoice, reason="duplicate", method="out_of_band", actor="t", amount=Decimal(5)
    )
    url = reverse("admin:invoicing_creditnote_void", args=[note.pk])
    client = client_as("Finance")
    review = client.post(url, {"reason": "billing_error"})
    assert review.context["stage"] == "confirm"
    client.post(url, {"reason": "billing_error", "confirm": "1"})
    note.refresh_from_db()
    assert note.status == "void"
    assert AuditLog.objects.get().action == "credit_note_void"
