"""Invoicing announces what it issued or voided; the Stripe integration queues the sync."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from unittest import mock

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext

from billing_portal.invoicing.credit_notes import credit_note_issue, credit_note_void
from billing_portal.invoicing.models import CreditNote, Invoice, SyncState
from billing_portal.invoicing.period_close import period_close, periods_close
from billing_portal.invoicing.purchases import purchase_cancel, purchase_create
from billing_portal.invoicing.signals import invoice_voided, invoices_issued
from billing_portal.stripe.tasks import credit_note_sync_task, invoice_sync_task
from plans.models import CreditPack, Customer, SubscriptionPeriod
from plans.money import as_money
from plans.services import subscription_start, subscriptions_renew_due
from tests.billing_portal.stripe.factories import period_invoice
from tests.billing_portal.stripe.fake_stripe import FakeStripe
from tests.plans.factories import customer, load_demo_catalog, plan

pytestmark = pytest.mark.django_db

START = datetime(2026, 10, 1, tzinfo=UTC)


@pytest.fixture
def queued() -> Iterator[tuple[mock.MagicMock, mock.MagicMock]]:
    """The sync tasks' after-commit sends, recorded instead of sent."""
    with (
        mock.patch.object(invoice_sync_task, "delay_on_commit") as invoices,
        mock.patch.object(credit_note_sync_task, "delay_on_commit") as credit_notes,
    ):
        yield invoices, credit_notes


def _close_first_period() -> Invoice | None:
    with time_machine.travel(START, tick=False) as clock:
        load_demo_catalog()
        subscription_start(customer=customer(), plan=plan("pro"), actor="t")
        first = SubscriptionPeriod.objects.get()
        clock.move_to(first.end)
        subscriptions_renew_due()
        clock.shift(timedelta(hours=1))  # past the grace window
        return period_close(period_id=first.pk)


def test_a_closed_period_queues_its_invoices_sync(
    fake: FakeStripe, queued: tuple[mock.MagicMock, mock.MagicMock]
) -> None:
    invoice = _close_first_period()

    assert invoice is not None
    assert invoice.sync_state == SyncState.PENDING
    assert Invoice.objects.get(pk=invoice.pk).sync_state == SyncState.PENDING
    queued[0].assert_called_once_with(invoice.pk)
    assert fake.requests == []  # Stripe is called by the task, after commit


def test_a_batch_of_closed_periods_marks_what_stripe_collects_pending_at_once(
    fake: FakeStripe, queued: tuple[mock.MagicMock, mock.MagicMock]
) -> None:
    with time_machine.travel(START, tick=False) as clock:
        load_demo_catalog()
        for n, code in enumerate(["pro", "starter", "pro", "team", "starter"]):
            subscription_start(customer=customer(f"c{n}"), plan=plan(code), actor="t")
        first = SubscriptionPeriod.objects.order_by("end").first()
        assert first is not None
        clock.move_to(first.end)
        subscriptions_renew_due()
        clock.shift(timedelta(hours=1))  # past the grace window
        ids = sorted(SubscriptionPeriod.objects.filter(end=first.end).values_list("pk", flat=True))
        with CaptureQueriesContext(connection) as captured:
            invoices = periods_close(period_ids=ids)

    # The starter plan's invoices total nothing: nothing for Stripe to collect.
    collected = [invoice for invoice in invoices if as_money(invoice.total).amount > 0]
    assert len(invoices) == 5 and len(collected) == 3
    states = dict(Invoice.objects.values_list("pk", "sync_state"))
    assert {pk for pk, state in states.items() if state == SyncState.PENDING} == {
        invoice.pk for invoice in collected
    }
    assert all(invoice.sync_state == SyncState.PENDING for invoice in collected)
    assert sorted(call.args[0] for call in queued[0].call_args_list) == sorted(
        invoice.pk for invoice in collected
    )
    marks = [
        q["sql"]
        for q in captured.captured_queries
        if q["sql"].startswith("UPDATE") and '"sync_state"' in q["sql"]
    ]
    assert len(marks) == 1  # one statement marks the batch, not one per invoice
    assert fake.requests == []


def test_in_demo_mode_a_closed_period_queues_nothing(
    settings: Any, queued: tuple[mock.MagicMock, mock.MagicMock]
) -> None:
    settings.STRIPE_API_KEY = ""
    invoice = _close_first_period()

    assert invoice is not None
    assert Invoice.objects.get(pk=invoice.pk).sync_state == SyncState.NOT_SYNCED
    queued[0].assert_not_called()


def test_issuing_and_voiding_a_credit_note_each_queue_its_sync(
    acme: Customer, fake: FakeStripe, queued: tuple[mock.MagicMock, mock.MagicMock]
) -> None:
    invoice = period_invoice(acme)
    note = credit_note_issue(
        invoice=invoice,
        amount=Decimal("16.00"),
        reason="product_unsatisfactory",
        method="out_of_band",
        actor="t",
    )
    assert note.sync_state == SyncState.PENDING
    CreditNote.objects.filter(pk=note.pk).update(sync_state=SyncState.SYNCED)

    voided = credit_note_void(credit_note=note, actor="t")

    assert voided.sync_state == SyncState.PENDING
    assert CreditNote.objects.get(pk=note.pk).sync_state == SyncState.PENDING
    assert [call.args for call in queued[1].call_args_list] == [(note.pk,), (note.pk,)]
    assert fake.requests == []


def test_a_credit_pack_invoice_is_announced_but_never_sent_to_stripe(
    acme: Customer, fake: FakeStripe, queued: tuple[mock.MagicMock, mock.MagicMock]
) -> None:
    announced: list[tuple[str, int]] = []

    def listen(sender: Any, signal: Any, **kwargs: Any) -> None:
        if signal is invoices_issued:
            announced.extend(("issued", invoice.pk) for invoice in kwargs["invoices"])
        else:
            announced.append(("voided", kwargs["invoice"].pk))

    invoices_issued.connect(listen)
    invoice_voided.connect(listen)
    try:
        purchase = purchase_create(
            customer=acme, pack=CreditPack.objects.get(code="pack_10k"), actor="t"
        )
        purchase_cancel(purchase=purchase, reason="checkout expired", actor="t")
    finally:
        invoices_issued.disconnect(listen)
        invoice_voided.disconnect(listen)

    assert announced == [("issued", purchase.invoice_id), ("voided", purchase.invoice_id)]
    # Paid through checkout or a charge: a Stripe invoice would collect it twice.
    assert Invoice.objects.get(pk=purchase.invoice_id).sync_state == SyncState.NOT_SYNCED
    queued[0].assert_not_called()
