"""Paying for a credit pack: Stripe Checkout (the fake), a saved card, or the demo."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from billing_portal.invoicing.models import (
    CreditNote,
    CreditNoteLine,
    CreditPackPurchase,
    InvoiceStatus,
    PurchaseStatus,
    SyncState,
)
from billing_portal.invoicing.purchases import purchase_create
from billing_portal.stripe import adapter as stripe_adapter
from billing_portal.stripe import sync
from billing_portal.stripe.adapter import StripeTemporaryError
from billing_portal.stripe.payments import (
    PaymentsNotConfigured,
    purchase_charge_off_session,
    purchase_checkout_start,
    purchase_demo_pay,
)
from ledger.errors import InvalidRequest
from ledger.models import CreditGrant
from plans.models import CreditPack, Customer
from tests.billing_portal.invoicing.factories import assert_paid_once
from tests.billing_portal.stripe.fake_stripe import FakeStripe, deliver, event
from tests.plans.factories import customer, load_demo_catalog

pytestmark = [
    pytest.mark.urls("tests.billing_portal.stripe.fake_stripe"),
    pytest.mark.usefixtures("webhook_secret"),
]

SUCCESS = "https://billing.example.com/portal/billing/?paid=1"
CANCEL = "https://billing.example.com/portal/billing/"


@pytest.fixture
def demo(settings: Any) -> None:
    settings.STRIPE_API_KEY = ""


@pytest.fixture
def acme(db: None) -> Customer:
    load_demo_catalog()
    return customer()


@pytest.fixture
def pack(acme: Customer) -> CreditPack:
    return CreditPack.objects.get(code="pack_10k")


@pytest.fixture
def purchase(acme: Customer, pack: CreditPack) -> CreditPackPurchase:
    return purchase_create(customer=acme, pack=pack, actor="customer:acme")


def _checkout_paid(fake: FakeStripe, purchase: CreditPackPurchase) -> tuple[dict[str, Any], ...]:
    purchase_checkout_start(purchase=purchase, success_url=SUCCESS, cancel_url=CANCEL)
    purchase.refresh_from_db()
    return fake.checkout_pay(purchase.stripe_checkout_session_id)


# --- checkout and webhooks --------------------------------------------------------------


def test_checkout_starts_a_stripe_session_once(
    fake: FakeStripe, purchase: CreditPackPurchase
) -> None:
    url = purchase_checkout_start(purchase=purchase, success_url=SUCCESS, cancel_url=CANCEL)
    again = purchase_checkout_start(purchase=purchase, success_url=SUCCESS, cancel_url=CANCEL)

    (session,) = fake.checkout_sessions.values()
    assert url == again == session["url"]
    (call,) = fake.calls("POST", "/v1/checkout/sessions")
    assert call.idempotency_key == f"purchase-{purchase.pk}-checkout"
    purchase.refresh_from_db()
    assert purchase.customer.stripe_customer_id in fake.customers
    metadata = {"purchase_id": str(purchase.pk), "invoice_number": purchase.invoice.number}
    assert call.params == {
        "mode": "payment",
        "customer": purchase.customer.stripe_customer_id,
        "client_reference_id": str(purchase.pk),
        "line_items": [
            {
                "quantity": "1",
                "price_data": {
                    "currency": "usd",
                    "unit_amount": "3500",
                    "product_data": {"name": "10,000 credits"},
                },
            }
        ],
        "metadata": metadata,
        "payment_intent_data": {"metadata": metadata, "setup_future_usage": "off_session"},
        "success_url": SUCCESS,
        "cancel_url": CANCEL,
    }
    purchase.refresh_from_db()
    assert (purchase.stripe_checkout_session_id, purchase.checkout_url) == (session["id"], url)


def test_paying_at_checkout_grants_once_whatever_the_webhooks_do(
    client: Client, fake: FakeStripe, purchase: CreditPackPurchase
) -> None:
    session, intent = _checkout_paid(fake, purchase)
    completed = event("checkout.session.completed", session)
    succeeded = event("payment_intent.succeeded", intent)

    for news in [completed, succeeded, completed, succeeded]:  # each delivered twice
        assert deliver(client, news).status_code == 200
    # The same news under new event ids gets past the event dedup: the purchase holds.
    deliver(client, event("checkout.session.completed", session))
    deliver(client, event("payment_intent.succeeded", intent))

    assert_paid_once(purchase)
    assert purchase.stripe_payment_intent_id == intent["id"]


def test_the_payment_intent_may_arrive_before_the_session(
    client: Client, fake: FakeStripe, purchase: CreditPackPurchase
) -> None:
    session, intent = _checkout_paid(fake, purchase)
    deliver(client, event("payment_intent.succeeded", intent))
    assert_paid_once(purchase)
    deliver(client, event("checkout.session.completed", session))
    assert_paid_once(purchase)


def test_a_failure_after_success_never_unpays(
    client: Client, fake: FakeStripe, purchase: CreditPackPurchase
) -> None:
    session, intent = _checkout_paid(fake, purchase)
    deliver(client, event("payment_intent.succeeded", intent))
    failed = dict(intent, status="requires_payment_method", last_payment_error={"message": "no"})
    deliver(client, event("payment_intent.payment_failed", failed))
    deliver(client, event("checkout.session.expired", dict(session, status="expired")))

    assert_paid_once(purchase)


def test_a_declined_try_then_a_success_at_checkout_is_paid(
    client: Client, fake: FakeStripe, purchase: CreditPackPurchase
) -> None:
    session, intent = _checkout_paid(fake, purchase)
    declined = dict(intent, status="requires_payment_method")
    declined["last_payment_error"] = {"message": "Your card was declined."}
    deliver(client, event("payment_intent.payment_failed", declined))
    purchase.refresh_from_db()
    assert (purchase.status, purchase.failure_message) == (
        PurchaseStatus.FAILED,
        "Your card was declined.",
    )
    assert not CreditGrant.objects.exists()

    deliver(client, event("checkout.session.completed", session))
    assert_paid_once(purchase)
    assert purchase.failure_message == ""


def test_a_delayed_payment_completes_when_stripe_says_it_succeeded(
    client: Client, fake: FakeStripe, purchase: CreditPackPurchase
) -> None:
    session, _ = _checkout_paid(fake, purchase)
    deliver(client, event("checkout.session.completed", dict(session, payment_status="unpaid")))
    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.PENDING

    deliver(client, event("checkout.session.async_payment_succeeded", session))
    assert_paid_once(purchase)


def test_an_expired_checkout_cancels_the_purchase_and_voids_its_invoice(
    client: Client, fake: FakeStripe, purchase: CreditPackPurchase
) -> None:
    purchase_checkout_start(purchase=purchase, success_url=SUCCESS, cancel_url=CANCEL)
    (session,) = fake.checkout_sessions.values()
    deliver(client, event("checkout.session.expired", dict(session, status="expired")))

    purchase.refresh_from_db()
    assert (purchase.status, purchase.failure_message) == (
        PurchaseStatus.CANCELED,
        "checkout expired before payment",
    )
    assert purchase.invoice.status == InvoiceStatus.VOID
    with pytest.raises(InvalidRequest, match="start a new purchase"):
        purchase_checkout_start(purchase=purchase, success_url=SUCCESS, cancel_url=CANCEL)


def test_a_payment_for_another_amount_grants_nothing(
    client: Client, fake: FakeStripe, purchase: CreditPackPurchase
) -> None:
    session, intent = _checkout_paid(fake, purchase)
    deliver(client, event("payment_intent.succeeded", dict(intent, amount_received=350)))
    deliver(client, event("checkout.session.completed", dict(session, currency="eur")))

    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.PENDING
    assert not CreditGrant.objects.exists()


# --- demo mode --------------------------------------------------------------------------


def test_demo_checkout_is_a_local_page_that_completes_the_same_way(
    demo: None, purchase: CreditPackPurchase
) -> None:
    url = purchase_checkout_start(purchase=purchase, success_url=SUCCESS, cancel_url=CANCEL)
    assert url == f"/portal/billing/checkout/{purchase.pk}/"

    purchase_demo_pay(purchase=purchase, actor="customer:acme")
    purchase_demo_pay(purchase=purchase, actor="customer:acme")  # the page reloaded

    grant = assert_paid_once(purchase)
    assert purchase.stripe_payment_intent_id == f"demo_{purchase.pk}"
    assert grant.source_type == "credit_pack_purchase"
    with pytest.raises(InvalidRequest, match="is paid; start a new purchase"):
        purchase_checkout_start(purchase=purchase, success_url=SUCCESS, cancel_url=CANCEL)


def test_demo_payment_is_refused_when_stripe_is_configured(
    fake: FakeStripe, purchase: CreditPackPurchase
) -> None:
    with pytest.raises(InvalidRequest, match="no Stripe key"):
        purchase_demo_pay(purchase=purchase, actor="customer:acme")
    assert not CreditGrant.objects.exists()


def test_an_off_session_charge_in_demo_mode_pays_at_once(
    demo: None, purchase: CreditPackPurchase
) -> None:
    purchase_charge_off_session(purchase=purchase, actor="auto_recharge")
    assert_paid_once(purchase)


def test_without_stripe_or_demo_payments_nothing_is_granted(
    settings: Any, purchase: CreditPackPurchase
) -> None:
    settings.STRIPE_API_KEY = ""
    settings.BILLING_DEMO_PAYMENTS = False
    with pytest.raises(PaymentsNotConfigured, match="set STRIPE_API_KEY"):
        purchase_checkout_start(purchase=purchase, success_url=SUCCESS, cancel_url=CANCEL)
    with pytest.raises(PaymentsNotConfigured):
        purchase_demo_pay(purchase=purchase, actor="customer:acme")

    charged = purchase_charge_off_session(purchase=purchase, actor="auto_recharge")
    assert charged.status == PurchaseStatus.FAILED
    assert "payments are not configured" in charged.failure_message
    assert not CreditGrant.objects.exists()


# --- off-session charges (auto-recharge) ------------------------------------------------


def _saved_card(fake: FakeStripe, purchase: CreditPackPurchase, method: str) -> None:
    gateway = stripe_adapter.gateway_from_settings()
    assert gateway is not None
    customer_id = sync.stripe_customer_ensure(gateway=gateway, customer=purchase.customer)
    fake.payment_method_save(customer_id, method, default=True)


def test_an_off_session_charge_pays_once_with_the_saved_card(
    client: Client, fake: FakeStripe, purchase: CreditPackPurchase
) -> None:
    _saved_card(fake, purchase, "pm_card_visa")

    purchase_charge_off_session(purchase=purchase, actor="auto_recharge")

    (call,) = fake.calls("POST", "/v1/payment_intents")
    assert call.idempotency_key == f"purchase-{purchase.pk}-intent"
    assert call.params == {
        "amount": "3500",
        "currency": "usd",
        "customer": purchase.customer.stripe_customer_id,
        "payment_method": "pm_card_visa",
        "confirm": "true",
        "off_session": "true",
        "description": f"10,000 credits ({purchase.invoice.number})",
        "metadata": {"purchase_id": str(purchase.pk), "invoice_number": purchase.invoice.number},
    }
    assert_paid_once(purchase)
    (intent,) = fake.payment_intents.values()
    deliver(client, event("payment_intent.succeeded", intent))
    assert_paid_once(purchase)


def test_a_declined_card_fails_the_purchase(fake: FakeStripe, purchase: CreditPackPurchase) -> None:
    _saved_card(fake, purchase, "pm_card_chargeDeclined")

    result = purchase_charge_off_session(purchase=purchase, actor="auto_recharge")

    assert result.status == PurchaseStatus.FAILED
    assert "declined (generic_decline)" in result.failure_message
    assert not CreditGrant.objects.exists()


def test_without_a_saved_card_the_purchase_fails_and_says_why(
    fake: FakeStripe, purchase: CreditPackPurchase
) -> None:
    result = purchase_charge_off_session(purchase=purchase, actor="auto_recharge")
    assert result.status == PurchaseStatus.FAILED
    assert "no saved payment method" in result.failure_message
    assert fake.calls("POST", "/v1/payment_intents") == []


def test_a_charge_whose_answer_was_lost_is_not_made_twice_on_retry(
    fake: FakeStripe, purchase: CreditPackPurchase
) -> None:
    _saved_card(fake, purchase, "pm_card_visa")
    fake.fail("lost_response", path="/v1/payment_intents")

    with pytest.raises(StripeTemporaryError):
        purchase_charge_off_session(purchase=purchase, actor="auto_recharge")
    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.PENDING
    purchase_charge_off_session(purchase=purchase, actor="auto_recharge")

    assert len(fake.payment_intents) == 1
    assert fake.calls("POST", "/v1/payment_intents")[-1].replayed
    assert_paid_once(purchase)


# --- refund of a pack -------------------------------------------------------------------


def test_a_refund_credit_note_on_a_pack_refunds_its_payment(
    client: Client, fake: FakeStripe, purchase: CreditPackPurchase
) -> None:
    _, intent = _checkout_paid(fake, purchase)
    deliver(client, event("payment_intent.succeeded", intent))
    purchase.refresh_from_db()
    note = CreditNote.objects.create(
        invoice=purchase.invoice,
        number="CN-000001",
        reason="product_unsatisfactory",
        method="refund",
        total=Decimal("35.00"),
        total_currency="USD",
        actor="staff:ana",
    )
    CreditNoteLine.objects.create(
        credit_note=note,
        invoice_line=purchase.invoice.lines.get(),
        amount=Decimal("35.00"),
        amount_currency="USD",
        description="10,000 credits",
    )

    note = sync.credit_note_sync(credit_note=note)

    (call,) = fake.calls("POST", "/v1/refunds")
    assert call.idempotency_key == f"credit-note-{note.pk}-refund"
    assert call.params == {
        "payment_intent": intent["id"],
        "amount": "3500",
        "metadata": {"credit_note_id": str(note.pk), "number": "CN-000001"},
    }
    assert note.sync_state == SyncState.SYNCED
    assert fake.refunds[note.stripe_credit_note_id]["amount"] == 3500
