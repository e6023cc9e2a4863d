"""Signed Stripe events with absurd fields: never a 500. An event that cannot be applied is
stored as failed, with the reason, and answered 200 so Stripe stops delivering it; the
rest of our rows are untouched. Bodies are signed by the stripe library's own code."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from django.db import OperationalError
from django.test import Client

from billing_portal.invoicing.models import (
    CreditPackPurchase,
    Invoice,
    InvoiceStatus,
    PurchaseStatus,
    StripeEvent,
    StripeEventStatus,
)
from billing_portal.invoicing.purchases import purchase_create
from billing_portal.stripe import sync
from plans.models import CreditPack, Customer
from tests.billing_portal.stripe.factories import period_invoice
from tests.billing_portal.stripe.fake_stripe import FakeStripe, deliver, event

pytestmark = [
    pytest.mark.urls("tests.billing_portal.stripe.fake_stripe"),
    pytest.mark.usefixtures("webhook_secret"),
]


@pytest.fixture
def synced(acme: Customer, fake: FakeStripe) -> Invoice:
    return sync.invoice_sync(invoice=period_invoice(acme))


def _paid(fake: FakeStripe, invoice: Invoice, **transitions: Any) -> dict[str, Any]:
    obj = fake.invoice_mark_paid(invoice.stripe_invoice_id)
    obj["status_transitions"] = {**obj["status_transitions"], **transitions}
    return event("invoice.paid", obj)


def _failed(response: Any, caplog: pytest.LogCaptureFixture) -> StripeEvent:
    assert response.status_code == 200, response.content
    assert response.json() == {"received": True, "duplicate": False}
    stored = StripeEvent.objects.get()
    assert stored.status == StripeEventStatus.FAILED
    assert stored.processed_at is not None
    assert any("stored as failed" in r.getMessage() for r in caplog.records)
    return stored


@pytest.mark.parametrize(
    "paid_at",
    [3_093_527_980_800, -(10**20), 10**30, "yesterday", 1.5, True],
    ids=["year-99999", "negative-huge", "huge", "text", "float", "bool"],
)
def test_a_paid_at_no_calendar_holds_is_stored_as_failed(
    client: Client,
    fake: FakeStripe,
    synced: Invoice,
    caplog: pytest.LogCaptureFixture,
    paid_at: Any,
) -> None:
    response = deliver(client, _paid(fake, synced, paid_at=paid_at))

    stored = _failed(response, caplog)
    assert "paid_at" in stored.error
    assert "Unix seconds" in stored.error
    assert Invoice.objects.get(pk=synced.pk).status == InvoiceStatus.OPEN


def test_status_transitions_that_are_not_an_object_are_stored_as_failed(
    client: Client, fake: FakeStripe, synced: Invoice, caplog: pytest.LogCaptureFixture
) -> None:
    paid = _paid(fake, synced)
    paid["data"]["object"]["status_transitions"] = ["paid"]

    stored = _failed(deliver(client, paid), caplog)
    assert "status_transitions" in stored.error
    assert Invoice.objects.get(pk=synced.pk).status == InvoiceStatus.OPEN


def test_an_absurd_created_on_the_event_itself_changes_nothing_else(
    client: Client, fake: FakeStripe, synced: Invoice
) -> None:
    # Nothing reads the event's own timestamp: it is kept in the payload and applied.
    paid = _paid(fake, synced)
    paid["created"] = 10**30

    response = deliver(client, paid)

    assert response.status_code == 200
    stored = StripeEvent.objects.get()
    assert (stored.status, stored.payload["created"]) == (StripeEventStatus.PROCESSED, 10**30)
    assert Invoice.objects.get(pk=synced.pk).status == InvoiceStatus.PAID


@pytest.mark.parametrize(
    "event_id",
    ["evt_" + "x" * 200, 123, {"id": "evt_1"}, None, "evt\x00nul", "evt with spaces"],
    ids=["too-long", "number", "object", "null", "nul", "spaces"],
)
def test_an_event_id_we_cannot_store_is_kept_under_a_digest_as_failed(
    client: Client,
    fake: FakeStripe,
    synced: Invoice,
    caplog: pytest.LogCaptureFixture,
    event_id: Any,
) -> None:
    paid = _paid(fake, synced)
    paid["id"] = event_id
    body = json.dumps(paid)

    stored = _failed(deliver(client, body), caplog)

    assert stored.event_id.startswith("sha256:") and len(stored.event_id) == 71
    assert "is not a Stripe event id" in stored.error
    assert stored.type == "invoice.paid"
    assert Invoice.objects.get(pk=synced.pk).status == InvoiceStatus.OPEN
    # Stripe delivering the same event again meets the stored one.
    again = deliver(client, body)
    assert again.status_code == 200
    assert again.json() == {"received": True, "duplicate": True}
    assert StripeEvent.objects.count() == 1


def test_an_event_type_longer_than_its_column_is_stored_as_failed(
    client: Client, db: None, caplog: pytest.LogCaptureFixture
) -> None:
    news = event("invoice." + "x" * 300, {"id": "in_1", "object": "invoice"})

    stored = _failed(deliver(client, news), caplog)

    assert stored.event_id == news["id"]
    assert len(stored.type) == 128
    assert "is not a Stripe event type" in stored.error


def test_an_invoice_id_that_is_not_a_string_is_stored_as_failed(
    client: Client, fake: FakeStripe, synced: Invoice, caplog: pytest.LogCaptureFixture
) -> None:
    paid = _paid(fake, synced)
    paid["data"]["object"]["id"] = {"nested": synced.stripe_invoice_id}

    stored = _failed(deliver(client, paid), caplog)

    assert "invoice.id" in stored.error
    invoice = Invoice.objects.get(pk=synced.pk)
    assert (invoice.status, invoice.stripe_invoice_id) == (
        InvoiceStatus.OPEN,
        synced.stripe_invoice_id,
    )


def test_an_invoice_id_longer_than_its_column_is_stored_as_failed(
    client: Client, acme: Customer, caplog: pytest.LogCaptureFixture
) -> None:
    invoice = period_invoice(acme)
    obj = {
        "id": "in_" + "9" * 100,
        "object": "invoice",
        "metadata": {"invoice_id": str(invoice.pk)},
    }

    stored = _failed(deliver(client, event("invoice.paid", obj)), caplog)

    assert stored.error.startswith("DataError")
    invoice.refresh_from_db()
    assert (invoice.status, invoice.stripe_invoice_id) == (InvoiceStatus.OPEN, "")


@pytest.mark.parametrize("invoice_id", ["²", "9" * 5000, "-1", "1e3"])
def test_metadata_ids_that_are_not_our_row_ids_are_ignored(
    client: Client, synced: Invoice, invoice_id: str
) -> None:
    obj = {"id": "in_elsewhere", "object": "invoice", "metadata": {"invoice_id": invoice_id}}

    response = deliver(client, event("invoice.paid", obj))

    assert response.status_code == 200
    assert StripeEvent.objects.get().status == StripeEventStatus.PROCESSED
    assert Invoice.objects.get(pk=synced.pk).status == InvoiceStatus.OPEN


def test_text_with_nul_and_lone_surrogates_is_kept_with_them_replaced(
    client: Client, synced: Invoice
) -> None:
    obj = {
        "id": "in_elsewhere",
        "object": "invoice",
        "metadata": {"note": "a\x00b", "odd": "\ud800", "path": "c:\\u0000"},
        "amount": float("nan"),
    }
    body = json.dumps(event("invoice.paid", obj))  # NaN is written as Python writes it

    response = deliver(client, body)

    assert response.status_code == 200, response.content
    stored = StripeEvent.objects.get()
    assert stored.status == StripeEventStatus.PROCESSED
    metadata = stored.payload["data"]["object"]["metadata"]
    assert metadata == {"note": "a\ufffdb", "odd": "?", "path": "c:\\u0000"}
    assert stored.payload["data"]["object"]["amount"] == "NaN"


def test_a_payment_intent_id_longer_than_its_column_is_stored_as_failed(
    client: Client, acme: Customer, caplog: pytest.LogCaptureFixture
) -> None:
    purchase = purchase_create(
        customer=acme, pack=CreditPack.objects.get(code="pack_10k"), actor="customer:acme"
    )
    intent = {
        "id": "pi_" + "x" * 200,
        "object": "payment_intent",
        "metadata": {"purchase_id": str(purchase.pk)},
        "last_payment_error": {"message": "declined"},
    }

    stored = _failed(deliver(client, event("payment_intent.payment_failed", intent)), caplog)

    assert stored.error.startswith("DataError")
    assert CreditPackPurchase.objects.get(pk=purchase.pk).status == PurchaseStatus.PENDING


def test_a_signed_body_nested_too_deeply_is_stored_as_failed(
    client: Client, db: None, caplog: pytest.LogCaptureFixture
) -> None:
    deep = '{"a":' * 10_000 + "1" + "}" * 10_000
    body = json.dumps(event("invoice.paid", {"id": "in_1"})).replace('"in_1"', deep)

    stored = _failed(deliver(client, body), caplog)

    assert stored.event_id.startswith("sha256:")
    assert "nesting deeper than" in stored.error
    assert deliver(client, body).json()["duplicate"] is True


def test_an_unsigned_body_is_still_refused_before_anything_else(client: Client, db: None) -> None:
    deep = "[" * 100_000
    response = deliver(client, deep, signature="t=1,v1=deadbeef")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    assert not StripeEvent.objects.exists()


def test_while_the_database_is_down_the_event_is_answered_503_for_a_later_delivery(
    client: Client, db: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(**fields: Any) -> StripeEvent:
        raise OperationalError("connection refused")

    monkeypatch.setattr(StripeEvent.objects, "create", unreachable)
    response = deliver(client, event("customer.updated", {"id": "cus_1"}))

    assert response.status_code == 503
    assert response.headers["Retry-After"] == "5"
    assert response.json()["error"]["code"] == "service_unavailable"
    monkeypatch.undo()
    assert not StripeEvent.objects.exists()


@pytest.fixture(autouse=True)
def _errors_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="billing_portal.stripe.webhooks")
