"""GET /api/v1/credit_notes (pages; invoice and customer filters) and
GET /api/v1/credit_notes/{id}: read only, issuing stays with staff."""

from __future__ import annotations

import pytest

from tests.billing_portal.api.http_support import Api, error_of
from tests.billing_portal.api.invoice_factories import credit_note, invoice
from tests.plans.factories import customer

pytestmark = pytest.mark.django_db(transaction=True)

NOTE_KEYS = {
    "id",
    "number",
    "invoice",
    "invoice_number",
    "customer",
    "status",
    "reason",
    "method",
    "memo",
    "total",
    "currency",
    "lines",
    "created_at",
    "voided_at",
}


def test_it_reads_one_credit_note_with_its_lines(api: Api) -> None:
    acme_invoice = invoice(customer("acme"), "35.00")
    note = credit_note(acme_invoice, "12.00")
    body = api.ok(f"/credit_notes/{note.pk}")
    assert set(body) == NOTE_KEYS
    assert (body["number"], body["invoice"], body["invoice_number"]) == (
        note.number,
        str(acme_invoice.pk),
        acme_invoice.number,
    )
    assert (body["customer"], body["status"], body["total"], body["currency"]) == (
        "acme",
        "issued",
        "12.00",
        "USD",
    )
    assert (body["reason"], body["method"], body["voided_at"]) == ("duplicate", "out_of_band", None)
    (line,) = body["lines"]
    assert (line["invoice_line"], line["amount"]) == (str(acme_invoice.lines.get().pk), "12.00")
    for missing in ("999999", "cn_1"):
        error_of(api.get(f"/credit_notes/{missing}"), 404, "resource_missing")


def test_it_lists_credit_notes_newest_first_and_filters_them(api: Api) -> None:
    acme_invoice = invoice(customer("acme"), "35.00")
    globex_invoice = invoice(customer("globex"), "50.00")
    first = credit_note(acme_invoice, "1.00")
    second = credit_note(globex_invoice, "2.00")
    third = credit_note(acme_invoice, "3.00", status="void")
    pages = api.pages("/credit_notes", limit=2)
    assert [[n["id"] for n in page] for page in pages] == [
        [str(third.pk), str(second.pk)],
        [str(first.pk)],
    ]
    by_customer = api.ok("/credit_notes", customer="acme")["data"]
    assert [n["id"] for n in by_customer] == [str(third.pk), str(first.pk)]
    by_invoice = api.ok("/credit_notes", invoice=str(globex_invoice.pk))["data"]
    assert [n["id"] for n in by_invoice] == [str(second.pk)]


def test_unknown_filters_are_400_naming_them(api: Api) -> None:
    assert error_of(api.get("/credit_notes", customer="x"), 400, "unknown_customer")["param"] == (
        "customer"
    )
    for value in ("999999", "in_1"):
        error = error_of(api.get("/credit_notes", invoice=value), 400, "unknown_invoice")
        assert error["param"] == "invoice"


def test_credit_notes_are_read_only_behind_the_read_scope(api: Api) -> None:
    note = credit_note(invoice(customer("acme"), "35.00"), "1.00")
    assert api.get("/credit_notes", key=api.read).status_code == 200
    assert api.get(f"/credit_notes/{note.pk}", key=api.read).status_code == 200
    error_of(api.get("/credit_notes", key=api.ingest), 403, "insufficient_scope")
    error = error_of(api.post("/credit_notes", {"invoice": "1"}), 405, "method_not_allowed")
    assert "GET" in error["message"]
