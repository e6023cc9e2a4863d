"""Ledger grants and new invoices become webhook events in the writing transaction."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine

from billing_portal.invoicing.models import Invoice
from billing_portal.invoicing.period_close import periods_close_due
from billing_portal.invoicing.purchases import purchase_create
from billing_portal.outbound.models import EventType, OutboundEvent, WebhookDelivery
from billing_portal.outbound.services import event_body
from ledger import services as ledger
from plans.models import CreditPack, Customer, SubscriptionPeriod
from plans.services import subscription_start, subscriptions_renew_due
from tests.billing_portal.outbound.conftest import Receiver
from tests.plans.factories import customer, load_demo_catalog, plan

pytestmark = pytest.mark.django_db

START = datetime(2026, 10, 1, tzinfo=UTC)


@pytest.fixture
def acme() -> Customer:
    load_demo_catalog()
    return customer()


def _events(type: str) -> list[OutboundEvent]:
    return list(OutboundEvent.objects.filter(type=type).order_by("pk"))


def test_it_publishes_a_created_grant_once_per_idempotency_key(
    acme: Customer, receiver: Receiver
) -> None:
    endpoint = receiver.endpoint(event_types=[EventType.CREDIT_GRANT_CREATED])
    expires = datetime(2099, 1, 1, tzinfo=UTC)
    before = len(_events(EventType.CREDIT_GRANT_CREATED))

    for _ in range(2):
        grant = ledger.credit_grant_create(
            account=acme.account,
            amount=Decimal("500"),
            category="promotional",
            actor="t",
            expires_at=expires,
            source_type="support_ticket",
            source_id="T-1",
            idempotency_key="goodwill-1",
        )

    [event] = _events(EventType.CREDIT_GRANT_CREATED)[before:]
    assert event.customer == acme
    assert event.data == {
        "id": grant.pk,
        "amount": "500.000000",
        "remaining": "500.000000",
        "category": "promotional",
        "status": "active",
        "expires_at": "2099-01-01T00:00:00Z",
        "source": {"type": "support_ticket", "id": "T-1"},
    }
    assert WebhookDelivery.objects.filter(endpoint=endpoint).count() == 1
    assert b'"customer":"acme"' in event_body(event)


def test_it_publishes_an_open_credit_pack_invoice(acme: Customer) -> None:
    purchase = purchase_create(
        customer=acme, pack=CreditPack.objects.get(code="pack_10k"), actor="t"
    )

    [event] = _events(EventType.INVOICE_FINALIZED)
    invoice = purchase.invoice
    assert event.customer == acme
    assert event.data == {
        "id": invoice.pk,
        "number": invoice.number,
        "kind": "credit_pack",
        "customer": "acme",
        "total": "35.00",
        "currency": "USD",
        "period": None,
        "issued_at": event.data["issued_at"],
    }


def test_it_publishes_a_period_invoice(acme: Customer, clock: time_machine.Traveller) -> None:
    subscription_start(customer=acme, plan=plan("pro"), actor="t")
    first = SubscriptionPeriod.objects.order_by("start").get(subscription__customer=acme)
    clock.move_to(first.end)
    subscriptions_renew_due()
    clock.shift(timedelta(hours=1))
    periods_close_due()

    invoice = Invoice.objects.get(period=first)
    Invoice.objects.get(period=first)  # a second run finds the invoice: no second event

    [event] = _events(EventType.INVOICE_FINALIZED)
    assert event.data["number"] == invoice.number
    assert event.data["total"] == "49.00"
    assert event.data["period"] == {"start": "2026-10-01T00:00:00Z", "end": "2026-11-01T00:00:00Z"}


def test_a_period_invoice_is_published_once_with_its_number(
    acme: Customer, clock: time_machine.Traveller
) -> None:
    """A period invoice is numbered last in its close; it is announced once, numbered."""
    subscription_start(customer=acme, plan=plan("pro"), actor="t")
    first = SubscriptionPeriod.objects.order_by("start").get(subscription__customer=acme)
    clock.move_to(first.end)
    subscriptions_renew_due()
    clock.shift(timedelta(hours=1))
    periods_close_due()
    numbers = [e.data["number"] for e in _events(EventType.INVOICE_FINALIZED)]
    assert numbers == [Invoice.objects.get(period=first).number]
    assert not numbers[0].startswith("~")
