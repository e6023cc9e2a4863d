from __future__ import annotations

from decimal import Decimal
from io import StringIO

import pytest
from django.core.management import call_command
from djmoney.money import Money

from billing_portal.invoicing.credit_notes import (
    CreditNoteError,
    credit_note_issue,
    credit_note_void,
    invoice_creditable,
)
from billing_portal.invoicing.models import CreditNoteStatus, Invoice
from billing_portal.invoicing.purchases import purchase_create, purchase_demo_pay
from ledger import services as ledger
from ledger.models import GrantStatus, LedgerEntry
from ledger.reconcile import run_checks
from plans.models import CreditPack
from tests.plans.factories import customer, load_demo_catalog

pytestmark = pytest.mark.django_db


def _paid_pack() -> Invoice:
    load_demo_catalog()
    acme = customer()
    purchase = purchase_create(
        customer=acme, pack=CreditPack.objects.get(code="pack_10k"), actor="t"
    )
    purchase_demo_pay(purchase=purchase, actor="t")
    purchase.refresh_from_db()
    return purchase.invoice


def test_it_refuses_more_than_what_is_left_to_credit_and_stores_nothing() -> None:
    invoice = _paid_pack()
    credit_note_issue(
        invoice=invoice,
        amount=Decimal("30.00"),
        reason="duplicate",
        method="out_of_band",
        actor="t",
    )
    assert invoice_creditable(invoice) == Decimal("5.00")
    with pytest.raises(CreditNoteError, match=r"at most the 5\.00 left to credit"):
        credit_note_issue(
            invoice=invoice,
            amount=Decimal("5.01"),
            reason="duplicate",
            method="out_of_band",
            actor="t",
        )
    assert invoice.credit_notes.count() == 1


def test_a_voided_credit_note_frees_its_amount_again() -> None:
    invoice = _paid_pack()
    note = credit_note_issue(
        invoice=invoice, amount=Decimal("35"), reason="duplicate", method="out_of_band", actor="t"
    )
    assert invoice_creditable(invoice) == 0
    assert credit_note_void(credit_note=note, actor="t").status == CreditNoteStatus.VOID
    assert invoice_creditable(invoice) == Decimal("35.00")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"reason": "because"}, "reason must be one of"),
        ({"method": "cash"}, "method must be one of"),
        ({"amount": None}, "choose lines or an amount"),
        ({"amount": Decimal("-1")}, "must be positive"),
    ],
)
def test_it_explains_a_bad_request(values: dict[str, object], message: str) -> None:
    invoice = _paid_pack()
    request: dict[str, object] = {
        "amount": Decimal(1),
        "reason": "duplicate",
        "method": "refund",
        **values,
    }
    with pytest.raises(CreditNoteError, match=message):
        credit_note_issue(invoice=invoice, actor="t", **request)  # type: ignore[arg-type]


def test_refunding_a_pack_voids_its_unused_credits_only() -> None:
    invoice = _paid_pack()
    grant = invoice.purchase.grant
    assert grant is not None
    ledger.credits_consume(
        account=grant.account, amount="4000", cause=ledger.Cause("event", "1"), actor="t"
    )
    note = credit_note_issue(
        invoice=invoice,
        amount=Decimal("35"),
        reason="product_unsatisfactory",
        method="refund",
        actor="staff:ann",
    )
    grant.refresh_from_db()
    assert (grant.status, grant.remaining) == (GrantStatus.VOIDED, 0)
    void = LedgerEntry.objects.get(grant=grant, kind="void")
    assert void.credits == Decimal(-6000)
    assert (void.operation.reason, void.operation.memo) == ("credit_note_refund", note.number)
    assert note.total == Money("35.00", "USD")
    assert [f for f in run_checks() if f.problems] == []


def test_the_revenue_report_prints_revenue_by_kind_and_the_deferred_balance() -> None:
    invoice = _paid_pack()
    grant = invoice.purchase.grant
    assert grant is not None
    ledger.credits_consume(
        account=grant.account, amount="2000", cause=ledger.Cause("event", "1"), actor="t"
    )
    out = StringIO()
    month = invoice.created_at.strftime("%Y-%m")
    call_command("revenue_report", "--month", month, stdout=out)
    text = out.getvalue()
    assert "Recognized Usage             7.00" in text  # 2,000 credits at $0.0035
    assert "Deferred balance at month end: 28.00" in text
