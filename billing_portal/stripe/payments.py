"""Paying for a credit pack: Stripe Checkout (portal), a saved card (auto-recharge), or,
in demo mode, the local stand-in.

The purchase itself (its invoice, completion with exactly one grant, failure,
cancellation) is invoicing's (``billing_portal.invoicing.purchases``); this module starts
the payment and hands the outcome back to it. Stripe's webhooks report the rest
(``billing_portal.stripe.webhooks``). Demo mode means no Stripe key and
``BILLING_DEMO_PAYMENTS`` on (as in local mode): the portal's checkout page then calls
:func:`purchase_demo_pay`, which completes the purchase the way a webhook would.

Every function here that calls Stripe runs outside any transaction.
"""

from __future__ import annotations

from django.db import transaction

from billing_portal.invoicing import purchases
from billing_portal.invoicing.models import CreditPackPurchase, PurchaseStatus
from billing_portal.stripe import adapter
from billing_portal.stripe.adapter import StripeAdapterError
from billing_portal.stripe.sync import outside_transaction_required, stripe_customer_ensure
from ledger.errors import InvalidRequest

DEMO_CHECKOUT_PATH = "/portal/billing/checkout/{pk}/"


class PaymentsNotConfigured(InvalidRequest):
    code = "payments_not_configured"


def _payments_not_configured() -> PaymentsNotConfigured:
    return PaymentsNotConfigured(
        "payments are not configured: set STRIPE_API_KEY to take payments through Stripe "
        "(BILLING_DEMO_PAYMENTS=true completes purchases without payment, for demos only)",
        param="purchase",
    )


def purchase_checkout_start(
    *, purchase: CreditPackPurchase, success_url: str, cancel_url: str
) -> str:
    """Where to send the customer to pay: a Stripe Checkout URL, or the demo page.

    Calls Stripe, so never inside a transaction. Starting again returns the same session.
    """
    purchase = CreditPackPurchase.objects.select_related("customer", "pack", "invoice").get(
        pk=purchase.pk
    )
    if purchase.status in (PurchaseStatus.PAID, PurchaseStatus.CANCELED):
        raise InvalidRequest(
            f"purchase {purchase.pk} is {purchase.status}; start a new purchase to buy again",
            param="purchase",
        )
    gateway = adapter.gateway_from_settings()
    if gateway is None:
        if not adapter.demo_payments_enabled():
            raise _payments_not_configured()
        return DEMO_CHECKOUT_PATH.format(pk=purchase.pk)
    if purchase.stripe_checkout_session_id and purchase.checkout_url:
        return purchase.checkout_url
    outside_transaction_required()
    stripe_customer_ensure(gateway=gateway, customer=purchase.customer)
    session = gateway.checkout_session_create(
        purchase=purchase, success_url=success_url, cancel_url=cancel_url
    )
    with transaction.atomic(durable=True):
        CreditPackPurchase.objects.filter(pk=purchase.pk).update(
            stripe_checkout_session_id=session.id, checkout_url=session.url
        )
    return session.url


def purchase_charge_off_session(
    *, purchase: CreditPackPurchase, actor: str, payment_method: str | None = None
) -> CreditPackPurchase:
    """Charge the customer's saved card now (auto-recharge); never inside a transaction.

    A decline marks the purchase failed; a temporary Stripe failure is raised for the
    caller's task to retry (the idempotency key makes the retry charge once). Success is
    recorded here and again by the webhook, which then finds nothing to do.
    """
    purchase = CreditPackPurchase.objects.select_related("customer", "pack", "invoice").get(
        pk=purchase.pk
    )
    if purchase.status != PurchaseStatus.PENDING:
        return purchase  # paid, or its one charge was declined: a new try is a new purchase
    gateway = adapter.gateway_from_settings()
    if gateway is None and not adapter.demo_payments_enabled():
        return purchases.purchase_fail(
            purchase=purchase, message=_payments_not_configured().message, actor=actor
        )
    if gateway is None:
        return purchase_demo_pay(purchase=purchase, actor=actor)
    outside_transaction_required()
    stripe_customer_ensure(gateway=gateway, customer=purchase.customer)
    try:
        intent = gateway.payment_intent_create(purchase=purchase, payment_method=payment_method)
    except StripeAdapterError as exc:
        if exc.retryable:
            raise
        return purchases.purchase_fail(purchase=purchase, message=str(exc), actor=actor)
    if intent.status == "succeeded":
        return purchases.purchase_complete(
            purchase=purchase, payment_intent_id=intent.id, actor=actor
        )
    with transaction.atomic(durable=True):
        CreditPackPurchase.objects.filter(pk=purchase.pk).update(stripe_payment_intent_id=intent.id)
    purchase.refresh_from_db()
    return purchase  # processing: the webhook completes or fails it


def purchase_demo_pay(*, purchase: CreditPackPurchase, actor: str) -> CreditPackPurchase:
    """Demo mode's stand-in for a Stripe payment, refused unless demo payments are allowed."""
    if adapter.stripe_enabled():
        raise InvalidRequest(
            "demo payments are only possible when no Stripe key is configured", param="purchase"
        )
    if not adapter.demo_payments_enabled():
        raise _payments_not_configured()
    return purchases.purchase_demo_pay(purchase=purchase, actor=actor)
