"""GET /api/v1/customers/{external_id}/invoices in pages, and what each invoice answers
of its credit notes: amount_due and the notes themselves."""

from __future__ import annotations

import pytest

from tests.billing_portal.api.http_support import Api, error_of
from tests.billing_portal.api.invoice_factories import credit_note, invoice
from tests.plans.factories import customer

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_pages_the_customers_invoices_newest_first(api: Api) -> None:
    acme = customer("acme")
    made = [invoice(acme, "10.00") for _ in range(3)]
    invoice(customer("globex"), "99.00")
    pages = api.pages("/customers/acme/invoices", limit=2)
    assert [[i["id"] for i in page] for page in pages] == [
        [str(made[2].pk), str(made[1].pk)],
        [str(made[0].pk)],
    ]
    error = error_of(api.get("/customers/acme/invoices", limit="500"), 400, "invalid_request")
    assert (error["param"], "at most 100" in error["message"]) == ("limit", True)


def test_amount_due_is_the_total_less_the_issued_credit_notes(api: Api) -> None:
    acme = customer("acme")
    open_one = invoice(acme, "35.00")
    first = credit_note(open_one, "10.50", reason="order_change")
    credit_note(open_one, "4.50", status="void")
    body = api.ok(f"/invoices/{open_one.pk}")
    assert (body["total"], body["amount_due"]) == ("35.00", "24.50")
    assert body["credit_notes"][0] == {
        "id": str(first.pk),
        "number": first.number,
        "status": "issued",
        "total": "10.50",
        "reason": "order_change",
    }
    assert [n["status"] for n in body["credit_notes"]] == ["issued", "void"]


def test_amount_due_is_zero_once_paid_or_fully_credited(api: Api) -> None:
    acme = customer("acme")
    paid = invoice(acme, "35.00", status="paid")
    credit_note(paid, "5.00")
    credited = invoice(acme, "20.00")
    credit_note(credited, "20.00")
    plain = invoice(acme, "1.00")
    listed = {i["id"]: i for i in api.ok("/customers/acme/invoices")["data"]}
    assert listed[str(paid.pk)]["amount_due"] == "0.00"
    assert listed[str(credited.pk)]["amount_due"] == "0.00"
    assert (listed[str(plain.pk)]["amount_due"], listed[str(plain.pk)]["credit_notes"]) == (
        "1.00",
        [],
    )
