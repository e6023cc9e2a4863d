"""POST /webhooks/stripe: signed by Stripe, processed once, in any order."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from billing_portal.invoicing.models import Invoice, InvoiceStatus, StripeEvent, SyncState
from billing_portal.stripe import sync
from billing_portal.stripe.adapter import StripeGateway
from billing_portal.stripe.webhooks import stripe_event_process
from plans.models import Customer
from tests.billing_portal.stripe import fake_stripe
from tests.billing_portal.stripe.factories import period_invoice
from tests.billing_portal.stripe.fake_stripe import WEBHOOK_SECRET, FakeStripe, deliver, event

pytestmark = [
    pytest.mark.urls("tests.billing_portal.stripe.fake_stripe"),
    pytest.mark.usefixtures("webhook_secret"),
]


@pytest.fixture
def synced(acme: Customer, fake: FakeStripe) -> Invoice:
    """An invoice pushed to Stripe (the fake), not paid yet."""
    return sync.invoice_sync(invoice=period_invoice(acme))


def _paid_event(fake: FakeStripe, invoice: Invoice, **kwargs: Any) -> dict[str, Any]:
    return event("invoice.paid", fake.invoice_mark_paid(invoice.stripe_invoice_id), **kwargs)


# --- signatures -------------------------------------------------------------------------


def test_it_refuses_a_bad_signature_and_changes_nothing(
    client: Client, fake: FakeStripe, synced: Invoice
) -> None:
    paid = _paid_event(fake, synced)
    body = json.dumps(paid)
    refusals = [
        deliver(client, paid, secret="whsec_someone_else"),
        deliver(client, paid, signature=""),  # no header at all
        deliver(client, paid, signature="t=1,v1=deadbeef"),
        deliver(client, paid, timestamp=int(time.time()) - 3600),  # replayed an hour later
        deliver(
            client,
            body.replace('"paid"', '"void"'),
            signature=fake_stripe.sign(body, WEBHOOK_SECRET),
        ),
    ]

    for response in refusals:
        assert response.status_code == 400
        assert response.json()["error"]["code"] == "invalid_signature"
    assert not StripeEvent.objects.exists()
    assert Invoice.objects.get(pk=synced.pk).status == InvoiceStatus.OPEN


def test_without_a_configured_secret_nothing_is_accepted(
    client: Client, settings: Any, db: None
) -> None:
    settings.STRIPE_WEBHOOK_SECRET = ""
    response = deliver(client, event("customer.created", {"id": "cus_1"}), secret="whsec_x")
    assert response.status_code == 400
    assert "STRIPE_WEBHOOK_SECRET" in response.json()["error"]["message"]
    assert not StripeEvent.objects.exists()


def test_a_signed_body_that_is_not_an_event_is_refused(client: Client, db: None) -> None:
    response = deliver(client, {"hello": "world"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_event"


def test_only_post_is_allowed(client: Client) -> None:
    assert client.get("/webhooks/stripe").status_code == 405


# --- once only --------------------------------------------------------------------------


def test_it_marks_the_invoice_paid(client: Client, fake: FakeStripe, synced: Invoice) -> None:
    paid = _paid_event(fake, synced)
    response = deliver(client, paid)

    assert response.status_code == 200
    assert response.json() == {"received": True, "duplicate": False}
    invoice = Invoice.objects.get(pk=synced.pk)
    assert invoice.status == InvoiceStatus.PAID
    paid_at = paid["data"]["object"]["status_transitions"]["paid_at"]
    assert invoice.paid_at == datetime.fromtimestamp(paid_at, tz=UTC)
    stored = StripeEvent.objects.get()
    assert (stored.event_id, stored.type) == (paid["id"], "invoice.paid")
    assert stored.processed_at is not None


def test_a_delivered_again_event_is_acknowledged_and_changes_nothing(
    client: Client, fake: FakeStripe, synced: Invoice
) -> None:
    paid = _paid_event(fake, synced)
    assert deliver(client, paid).json()["duplicate"] is False
    # Were the event applied again, this would be undone.
    Invoice.objects.filter(pk=synced.pk).update(status=InvoiceStatus.OPEN, paid_at=None)

    again = deliver(client, paid)

    assert again.status_code == 200
    assert again.json() == {"received": True, "duplicate": True}
    assert Invoice.objects.get(pk=synced.pk).status == InvoiceStatus.OPEN
    assert StripeEvent.objects.count() == 1


def test_a_failing_handler_rolls_the_event_back_so_stripe_retries_it(
    client: Client, fake: FakeStripe, synced: Invoice, monkeypatch: pytest.MonkeyPatch
) -> None:
    paid = _paid_event(fake, synced)
    real = sync.invoice_stripe_paid

    def broken(**kwargs: Any) -> Invoice:
        raise RuntimeError("database hiccup")

    monkeypatch.setattr(sync, "invoice_stripe_paid", broken)
    with pytest.raises(RuntimeError):
        deliver(client, paid)  # Django answers 500
    assert not StripeEvent.objects.exists()

    monkeypatch.setattr(sync, "invoice_stripe_paid", real)
    assert deliver(client, paid).json()["duplicate"] is False
    assert Invoice.objects.get(pk=synced.pk).status == InvoiceStatus.PAID


@pytest.mark.django_db(transaction=True)
def test_two_deliveries_racing_are_processed_once() -> None:
    news = event("customer.updated", {"id": "cus_1", "object": "customer"})
    barrier = threading.Barrier(4)
    outcomes: list[bool] = []
    errors: list[BaseException] = []

    def process() -> None:
        try:
            barrier.wait()
            outcomes.append(stripe_event_process(event=news))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=process) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert sorted(outcomes) == [False, False, False, True]
    assert StripeEvent.objects.filter(event_id=news["id"]).count() == 1


# --- out of order -----------------------------------------------------------------------


def test_invoice_paid_before_our_sync_recorded_the_stripe_id(
    client: Client, fake: FakeStripe, acme: Customer
) -> None:
    invoice = period_invoice(acme)
    # A worker pushed the invoice and died before recording anything.
    pushed = StripeGateway(fake_stripe.client(fake)).invoice_push(invoice=invoice)
    assert Invoice.objects.get(pk=invoice.pk).stripe_invoice_id == ""
    paid = fake.invoice_mark_paid(pushed.stripe_invoice_id)

    assert deliver(client, event("invoice.paid", paid)).status_code == 200

    invoice.refresh_from_db()
    assert (invoice.status, invoice.stripe_invoice_id) == (InvoiceStatus.PAID, paid["id"])
    # The sync's retry finds it, records the rest and leaves the status alone.
    synced = sync.invoice_sync(invoice=invoice)
    assert (synced.status, synced.sync_state) == (InvoiceStatus.PAID, SyncState.SYNCED)
    assert synced.hosted_invoice_url == paid["hosted_invoice_url"]
    assert len(fake.invoices) == 1


def test_metadata_naming_an_invoice_already_tied_to_another_stripe_invoice_is_ignored(
    client: Client, synced: Invoice
) -> None:
    obj = {"id": "in_fake_other", "object": "invoice", "metadata": {"invoice_id": str(synced.pk)}}
    assert deliver(client, event("invoice.paid", obj)).status_code == 200
    assert Invoice.objects.get(pk=synced.pk).status == InvoiceStatus.OPEN


def test_invoices_that_are_not_ours_are_ignored(client: Client, db: None) -> None:
    obj = {"id": "in_elsewhere", "object": "invoice", "metadata": {}}
    assert deliver(client, event("invoice.paid", obj)).status_code == 200
    assert StripeEvent.objects.count() == 1


def test_a_failed_payment_leaves_the_invoice_open_and_a_late_one_never_unpays(
    client: Client, fake: FakeStripe, synced: Invoice
) -> None:
    open_invoice = fake.invoices[synced.stripe_invoice_id]
    deliver(client, event("invoice.payment_failed", dict(open_invoice, attempt_count=1)))
    assert Invoice.objects.get(pk=synced.pk).status == InvoiceStatus.OPEN

    paid = _paid_event(fake, synced)
    deliver(client, paid)
    deliver(client, event("invoice.payment_failed", dict(open_invoice, status="open")))
    deliver(client, event("invoice.voided", dict(open_invoice, status="void")))
    assert Invoice.objects.get(pk=synced.pk).status == InvoiceStatus.PAID


def test_a_void_in_stripe_voids_our_invoice(
    client: Client, fake: FakeStripe, synced: Invoice
) -> None:
    voided = fake_stripe.client(fake).v1.invoices.void_invoice(synced.stripe_invoice_id)
    deliver(client, event("invoice.voided", voided.to_dict()))

    invoice = Invoice.objects.get(pk=synced.pk)
    assert invoice.status == InvoiceStatus.VOID
    assert invoice.voided_at is not None


def test_an_uncollectible_invoice_is_marked_so(
    client: Client, fake: FakeStripe, synced: Invoice
) -> None:
    obj = dict(fake.invoices[synced.stripe_invoice_id], status="uncollectible")
    deliver(client, event("invoice.marked_uncollectible", obj))
    assert Invoice.objects.get(pk=synced.pk).status == InvoiceStatus.UNCOLLECTIBLE


def test_unknown_event_types_are_acknowledged_and_ignored(client: Client, db: None) -> None:
    response = deliver(client, event("customer.subscription.updated", {"id": "sub_1"}))
    assert response.status_code == 200
    assert StripeEvent.objects.get().type == "customer.subscription.updated"
