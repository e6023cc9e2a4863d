"""The invoice / credit note sync, its tasks and the Stripe customer, against the fake."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.db import transaction
from django.utils import timezone

from billing_portal.invoicing.models import (
    CreditNote,
    CreditNoteLine,
    Invoice,
    InvoiceStatus,
    SyncState,
)
from billing_portal.stripe import adapter as stripe_adapter
from billing_portal.stripe import sync
from billing_portal.stripe.adapter import StripeGateway, StripeTemporaryError
from billing_portal.stripe.tasks import credit_note_sync_task, invoice_sync_task
from plans.models import Customer
from tests.billing_portal.stripe import fake_stripe
from tests.billing_portal.stripe.factories import period_invoice
from tests.billing_portal.stripe.fake_stripe import FakeStripe


def credit_note_for(
    invoice: Invoice, *, method: str = "refund", amount: str = "16.00"
) -> CreditNote:
    line = invoice.lines.get(kind="overage")
    note = CreditNote.objects.create(
        invoice=invoice,
        number=f"CN-{invoice.pk}",
        reason="product_unsatisfactory",
        method=method,
        memo="Double counted by the EU ingest bug, ticket 4411",
        description="Usage was double counted",
        total=Decimal(amount),
        total_currency="USD",
        actor="staff:ana",
    )
    CreditNoteLine.objects.create(
        credit_note=note,
        invoice_line=line,
        amount=Decimal(amount),
        amount_currency="USD",
        description=line.description,
    )
    return note


# --- customers --------------------------------------------------------------------------


def test_it_creates_the_stripe_customer_once_with_a_key_from_our_row(
    acme: Customer, fake: FakeStripe
) -> None:
    gateway = StripeGateway(fake_stripe.client(fake))
    stripe_id = sync.stripe_customer_ensure(gateway=gateway, customer=acme)

    (call,) = fake.calls("POST", "/v1/customers")
    assert call.idempotency_key == f"customer-{acme.pk}"
    assert call.params == {
        "name": "Acme",
        "email": "billing@acme.test",
        "metadata": {"customer_id": str(acme.pk), "external_id": "acme"},
    }
    assert stripe_id.startswith("cus_") and stripe_id in fake.customers
    acme.refresh_from_db()
    assert acme.stripe_customer_id == stripe_id
    assert sync.stripe_customer_ensure(gateway=gateway, customer=acme) == stripe_id
    assert len(fake.requests) == 1


# --- invoices ---------------------------------------------------------------------------


def test_it_pushes_an_invoice_as_items_on_a_draft_then_finalizes(
    acme: Customer, fake: FakeStripe
) -> None:
    invoice = period_invoice(acme)
    sync.invoice_sync(invoice=invoice)

    paths = [(r.method, r.path) for r in fake.requests]
    stripe_id = next(iter(fake.invoices))
    assert paths == [
        ("POST", "/v1/customers"),
        ("POST", "/v1/invoices"),
        ("POST", "/v1/invoiceitems"),
        ("POST", "/v1/invoiceitems"),
        ("POST", f"/v1/invoices/{stripe_id}/finalize"),
    ]
    create, base_fee, overage, finalize = fake.requests[1:]
    customer_id = acme.__class__.objects.get(pk=acme.pk).stripe_customer_id
    assert create.idempotency_key == f"invoice-{invoice.pk}"
    assert create.params == {
        "customer": customer_id,
        "currency": "usd",
        "collection_method": "send_invoice",
        "days_until_due": "30",
        "auto_advance": "false",
        "pending_invoice_items_behavior": "exclude",
        "number": invoice.number,
        "metadata": {
            "invoice_id": str(invoice.pk),
            "invoice_number": invoice.number,
            "customer_id": str(acme.pk),
        },
    }
    lines = {line.kind: line for line in invoice.lines.all()}
    assert base_fee.idempotency_key == f"invoice-line-{lines['base_fee'].pk}"
    assert base_fee.params == {
        "customer": customer_id,
        "invoice": stripe_id,
        "amount": "4900",
        "currency": "usd",
        "description": "Pro plan",
        "period": {
            "start": str(int(invoice.period_start.timestamp())),  # type: ignore[union-attr]
            "end": str(int(invoice.period_end.timestamp())),  # type: ignore[union-attr]
        },
        "metadata": {
            "invoice_id": str(invoice.pk),
            "invoice_line_id": str(lines["base_fee"].pk),
            "line_kind": "base_fee",
        },
    }
    assert overage.idempotency_key == f"invoice-line-{lines['overage'].pk}"
    assert overage.form["amount"] == "1600"
    assert finalize.idempotency_key == f"invoice-{invoice.pk}-finalize"
    assert finalize.params == {"auto_advance": "true"}

    in_stripe = fake.invoices[stripe_id]
    assert (in_stripe["status"], in_stripe["total"], in_stripe["number"]) == (
        "open",
        6500,
        invoice.number,
    )


def test_it_records_the_sync_on_our_rows(acme: Customer, fake: FakeStripe) -> None:
    invoice = sync.invoice_sync(invoice=period_invoice(acme))

    stripe_id = next(iter(fake.invoices))
    assert invoice.sync_state == SyncState.SYNCED
    assert invoice.sync_error == ""
    assert invoice.sync_attempts == 1
    assert invoice.stripe_invoice_id == stripe_id
    assert invoice.hosted_invoice_url == fake.invoices[stripe_id]["hosted_invoice_url"]
    assert invoice.status == InvoiceStatus.OPEN  # collected only when Stripe says it is paid
    items = dict(invoice.lines.values_list("kind", "stripe_invoice_item_id"))
    assert items["included_usage"] == ""  # zero lines are not sent
    assert {items["base_fee"], items["overage"]} == set(fake.invoice_items)

    before = len(fake.requests)
    sync.invoice_sync(invoice=invoice)
    assert len(fake.requests) == before  # a re-run after success sends nothing


def test_only_this_invoices_lines_end_up_on_it(acme: Customer, fake: FakeStripe) -> None:
    gateway = StripeGateway(fake_stripe.client(fake))
    customer_id = sync.stripe_customer_ensure(gateway=gateway, customer=acme)
    # Something else left a pending item on the same Stripe customer.
    fake_stripe.client(fake).v1.invoice_items.create(
        {"customer": customer_id, "amount": 999, "currency": "usd"}
    )
    sync.invoice_sync(invoice=period_invoice(acme))

    (stripe_invoice,) = fake.invoices.values()
    assert stripe_invoice["total"] == 6500
    stray = [item for item in fake.invoice_items.values() if item["amount"] == 999]
    assert stray[0]["invoice"] is None


def test_a_lost_response_retried_creates_no_duplicate(acme: Customer, fake: FakeStripe) -> None:
    invoice = period_invoice(acme)
    fake.fail("lost_response", path="/v1/invoiceitems", nth=2)  # the overage item
    with pytest.raises(StripeTemporaryError):
        sync.invoice_sync(invoice=invoice)
    invoice.refresh_from_db()
    assert invoice.sync_state == SyncState.FAILED
    assert "a later attempt may succeed" in invoice.sync_error
    assert len(fake.invoice_items) == 2  # Stripe made it; we never heard

    invoice = sync.invoice_sync(invoice=invoice)

    assert invoice.sync_state == SyncState.SYNCED
    assert invoice.sync_attempts == 2
    assert len(fake.invoices) == 1
    assert len(fake.invoice_items) == 2
    replayed = [r for r in fake.requests if r.replayed]
    assert [r.path for r in replayed] == ["/v1/invoiceitems"]
    (stripe_invoice,) = fake.invoices.values()
    assert stripe_invoice["total"] == 6500


def test_a_retry_after_stripe_forgot_the_keys_reuses_the_ids_we_stored(
    acme: Customer, fake: FakeStripe
) -> None:
    invoice = period_invoice(acme)
    fake.fail("server_error", path=r"/v1/invoices/\w+/finalize")
    with pytest.raises(StripeTemporaryError):
        sync.invoice_sync(invoice=invoice)
    fake._saved.clear()  # more than 24 hours later

    invoice = sync.invoice_sync(invoice=invoice)

    assert invoice.sync_state == SyncState.SYNCED
    assert (len(fake.invoices), len(fake.invoice_items)) == (1, 2)
    (stripe_invoice,) = fake.invoices.values()
    assert stripe_invoice["status"] == "open"


def test_the_task_retries_temporary_failures_until_stripe_answers(
    acme: Customer, fake: FakeStripe
) -> None:
    invoice = period_invoice(acme)
    fake.fail("server_error", path="/v1/invoices")
    fake.fail("connection", path="/v1/invoiceitems", nth=2)

    result = invoice_sync_task.apply(args=[invoice.pk])

    assert result.successful(), result.traceback
    invoice.refresh_from_db()
    assert (invoice.sync_state, invoice.sync_error) == (SyncState.SYNCED, "")
    assert invoice.sync_attempts == 3
    assert (len(fake.invoices), len(fake.invoice_items)) == (1, 2)


def test_the_task_gives_up_after_its_last_retry_and_leaves_it_failed(
    acme: Customer, fake: FakeStripe
) -> None:
    invoice = period_invoice(acme)
    fake.fail("server_error", path="/v1/customers", times=100)

    result = invoice_sync_task.apply(args=[invoice.pk])

    assert result.failed()
    invoice.refresh_from_db()
    assert invoice.sync_state == SyncState.FAILED
    assert "Stripe failed on its side (500)" in invoice.sync_error
    assert len(fake.calls("POST", "/v1/customers")) == 1 + invoice_sync_task.max_retries


def test_a_refusal_is_not_retried_and_says_why(acme: Customer, fake: FakeStripe) -> None:
    Customer.objects.filter(pk=acme.pk).update(stripe_customer_id="cus_deleted")
    invoice = period_invoice(acme)

    result = invoice_sync_task.apply(args=[invoice.pk])

    assert result.failed()
    invoice.refresh_from_db()
    assert invoice.sync_state == SyncState.FAILED
    assert invoice.sync_error.startswith(f"Creating invoice {invoice.number} in Stripe: ")
    assert "No such customer: 'cus_deleted'" in invoice.sync_error
    assert len(fake.calls("POST", "/v1/invoices")) == 1


def test_staff_retry_queues_a_failed_sync_again(
    acme: Customer, fake: FakeStripe, django_capture_on_commit_callbacks: Any
) -> None:
    invoice = period_invoice(acme)
    fake.fail("server_error", path="/v1/invoices")
    with pytest.raises(StripeTemporaryError):
        sync.invoice_sync(invoice=invoice)

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        retried = sync.sync_retry(invoice=invoice, actor="staff:ana")
    assert (retried.sync_state, retried.sync_error) == (SyncState.PENDING, "")
    assert len(callbacks) == 1

    invoice_sync_task.apply(args=[invoice.pk])
    invoice.refresh_from_db()
    assert invoice.sync_state == SyncState.SYNCED


def test_enqueue_waits_for_commit_and_skips_what_stripe_need_not_see(
    acme: Customer, fake: FakeStripe, django_capture_on_commit_callbacks: Any
) -> None:
    free = period_invoice(acme, (("base_fee", "Starter plan", "0.00"),))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        sync.invoice_sync_enqueue(invoice=free)
    assert callbacks == []
    assert Invoice.objects.get(pk=free.pk).sync_state == SyncState.NOT_SYNCED

    invoice = period_invoice(acme)
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        sync.invoice_sync_enqueue(invoice=invoice)
    assert len(callbacks) == 1
    assert Invoice.objects.get(pk=invoice.pk).sync_state == SyncState.PENDING
    assert fake.requests == []  # Stripe is called by the task, after commit


def test_zero_invoices_and_demo_mode_send_nothing(
    acme: Customer, fake: FakeStripe, settings: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    free = sync.invoice_sync(invoice=period_invoice(acme, (("base_fee", "Starter", "0.00"),)))
    assert free.sync_state == SyncState.NOT_SYNCED
    monkeypatch.setattr(stripe_adapter, "gateway_from_settings", lambda: None)
    settings.STRIPE_API_KEY = ""
    demo = sync.invoice_sync(invoice=period_invoice(acme))
    assert demo.sync_state == SyncState.NOT_SYNCED
    assert fake.requests == []


def test_it_refuses_to_call_stripe_inside_a_transaction(acme: Customer, fake: FakeStripe) -> None:
    invoice = period_invoice(acme)
    with pytest.raises(RuntimeError, match="durable"), transaction.atomic():
        sync.invoice_sync(invoice=invoice)
    assert fake.requests == []


def test_a_voided_invoice_is_voided_in_stripe(acme: Customer, fake: FakeStripe) -> None:
    invoice = sync.invoice_sync(invoice=period_invoice(acme))
    Invoice.objects.filter(pk=invoice.pk).update(status=InvoiceStatus.VOID)
    sync.invoice_sync_enqueue(invoice=Invoice.objects.get(pk=invoice.pk))

    sync.invoice_sync(invoice=invoice)

    void = fake.requests[-1]
    assert (void.method, void.path) == ("POST", f"/v1/invoices/{invoice.stripe_invoice_id}/void")
    assert void.idempotency_key == f"invoice-{invoice.pk}-void"
    assert fake.invoices[invoice.stripe_invoice_id]["status"] == "void"
    assert Invoice.objects.get(pk=invoice.pk).sync_state == SyncState.SYNCED


# --- credit notes -----------------------------------------------------------------------


def test_a_credit_note_on_an_open_invoice_credits_its_stripe_lines(
    acme: Customer, fake: FakeStripe
) -> None:
    invoice = sync.invoice_sync(invoice=period_invoice(acme))
    note = sync.credit_note_sync(credit_note=credit_note_for(invoice))

    create = fake.calls("POST", "/v1/credit_notes")[0]
    overage = invoice.lines.get(kind="overage")
    stripe_line = next(
        line["id"]
        for line in fake.invoices[invoice.stripe_invoice_id]["lines"]["data"]
        if line["parent"]["invoice_item_details"]["invoice_item"] == overage.stripe_invoice_item_id
    )
    assert create.idempotency_key == f"credit-note-{note.pk}"
    assert create.params == {
        "invoice": invoice.stripe_invoice_id,
        "reason": "product_unsatisfactory",
        # The customer-facing description, never staff's internal memo.
        "memo": "Usage was double counted",
        "metadata": {"credit_note_id": str(note.pk), "number": note.number},
        "lines": [
            {"type": "invoice_line_item", "invoice_line_item": stripe_line, "amount": "1600"}
        ],
    }
    assert note.sync_state == SyncState.SYNCED
    assert fake.credit_notes[note.stripe_credit_note_id]["amount"] == 1600


@pytest.mark.parametrize(
    ("method", "field"),
    [
        ("refund", "refund_amount"),
        ("customer_credit", "credit_amount"),
        ("out_of_band", "out_of_band_amount"),
    ],
)
def test_a_credit_note_on_a_paid_invoice_says_where_the_money_goes(
    acme: Customer, fake: FakeStripe, method: str, field: str
) -> None:
    invoice = sync.invoice_sync(invoice=period_invoice(acme))
    fake.invoice_mark_paid(invoice.stripe_invoice_id)

    note = sync.credit_note_sync(credit_note=credit_note_for(invoice, method=method))

    assert fake.calls("POST", "/v1/credit_notes")[0].form[field] == "1600"
    assert fake.credit_notes[note.stripe_credit_note_id][field] == 1600


def test_a_credit_note_waits_for_its_invoice_to_reach_stripe(
    acme: Customer, fake: FakeStripe
) -> None:
    invoice = period_invoice(acme)
    Invoice.objects.filter(pk=invoice.pk).update(sync_state=SyncState.PENDING)
    note = credit_note_for(invoice)

    with pytest.raises(StripeTemporaryError, match="waits for invoice"):
        sync.credit_note_sync(credit_note=note)
    note.refresh_from_db()
    assert note.sync_state == SyncState.PENDING
    assert fake.requests == []

    sync.invoice_sync(invoice=invoice)
    result = credit_note_sync_task.apply(args=[note.pk])
    assert result.successful()
    note.refresh_from_db()
    assert note.sync_state == SyncState.SYNCED


def test_a_voided_credit_note_is_voided_in_stripe(acme: Customer, fake: FakeStripe) -> None:
    invoice = sync.invoice_sync(invoice=period_invoice(acme))
    note = sync.credit_note_sync(credit_note=credit_note_for(invoice))
    CreditNote.objects.filter(pk=note.pk).update(status="void", voided_at=timezone.now())
    sync.credit_note_sync_enqueue(credit_note=note)

    note = sync.credit_note_sync(credit_note=note)

    void = fake.requests[-1]
    assert void.path == f"/v1/credit_notes/{note.stripe_credit_note_id}/void"
    assert void.idempotency_key == f"credit-note-{note.pk}-void"
    assert fake.credit_notes[note.stripe_credit_note_id]["status"] == "void"
    assert note.sync_state == SyncState.SYNCED
