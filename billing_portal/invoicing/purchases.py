"""Credit packs: a purchase, its invoice, its payment and, once paid, exactly one grant.

The payment is taken by the payment provider's integration (Checkout in the portal, a
charge of a saved card for auto-recharge), which reports the outcome here: its webhooks
call :func:`purchase_complete`, :func:`purchase_fail` or :func:`purchase_cancel`. In demo
mode the portal's checkout page pays with :func:`purchase_demo_pay`, which goes through
the same :func:`purchase_complete`. Completion locks the purchase row and the grant has
an idempotency key derived from it, so every repeat of the news (both webhooks, each
delivered twice, the demo page reloaded) finds the purchase paid and does nothing.

A purchase's invoice is announced like any other (``invoicing.signals``): issued when
the purchase is created, voided when it is canceled.

Lock order: purchase, then its invoice, then (inside the ledger) the customer's account.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from decimal import ROUND_HALF_UP, Decimal

from django.db import IntegrityError, transaction
from django.utils import timezone
from djmoney.money import Money

from billing_portal.invoicing.models import (
    CreditPackPurchase,
    Invoice,
    InvoiceKind,
    InvoiceLine,
    InvoiceStatus,
    LineKind,
    PurchaseStatus,
)
from billing_portal.invoicing.services import invoice_number_next
from billing_portal.invoicing.signals import invoice_voided, invoices_issued
from ledger.errors import IdempotencyConflict, InvalidRequest
from ledger.models import GrantCategory
from ledger.services import credit_grant_create
from plans.models import CreditPack, Customer
from plans.money import as_money

logger = logging.getLogger(__name__)

COST_BASIS_QUANTUM = Decimal("0.00000001")  # the grant's cost_basis column has 8 places


def purchase_create(
    *,
    customer: Customer,
    pack: CreditPack,
    actor: str,
    source: str = "portal",
    idempotency_key: str | None = None,
) -> CreditPackPurchase:
    """A pending purchase and its open invoice; the same key again returns the same purchase."""
    if not pack.active:
        raise InvalidRequest(f"credit pack {pack.code} is no longer sold", param="pack")
    if idempotency_key is not None:
        existing = _purchase_for_key(customer, pack, idempotency_key)
        if existing is not None:
            return existing
    try:
        purchase = _purchase_insert(customer, pack, source, idempotency_key)
    except IntegrityError:
        # A concurrent request with the same key won the unique constraint.
        existing = _purchase_for_key(customer, pack, idempotency_key) if idempotency_key else None
        if existing is None:
            raise
        return existing
    logger.info("purchase %s of %s for %s created by %s", purchase.pk, pack.code, customer, actor)
    return purchase


def _purchase_for_key(customer: Customer, pack: CreditPack, key: str) -> CreditPackPurchase | None:
    existing = CreditPackPurchase.objects.filter(customer=customer, idempotency_key=key).first()
    if existing is not None and existing.pack_id != pack.pk:
        raise IdempotencyConflict(
            f"idempotency key {key!r} was already used to buy another pack; "
            "use a new key for a new purchase",
            param="idempotency_key",
        )
    return existing


def _purchase_insert(
    customer: Customer, pack: CreditPack, source: str, idempotency_key: str | None
) -> CreditPackPurchase:
    price = as_money(pack.price)
    currency = str(price.currency)
    now = timezone.now()
    expires_at = now + timedelta(days=pack.expires_after_days) if pack.expires_after_days else now
    with transaction.atomic():
        invoice = Invoice.objects.create(
            customer=customer,
            kind=InvoiceKind.CREDIT_PACK,
            number=invoice_number_next(),
            status=InvoiceStatus.OPEN,
            currency=currency,
            total=price.amount,
            total_currency=currency,
            issued_at=now,
        )
        InvoiceLine.objects.create(
            invoice=invoice,
            kind=LineKind.CREDIT_PACK,
            description=pack.name,
            quantity=Decimal(1),
            unit_amount=price.amount,
            unit_amount_currency=currency,
            amount=price.amount,
            amount_currency=currency,
            credits=pack.credits,
            # The credits are usable from payment until they expire.
            service_period_start=now,
            service_period_end=expires_at,
        )
        purchase = CreditPackPurchase.objects.create(
            customer=customer,
            pack=pack,
            credits=pack.credits,
            price=price.amount,
            price_currency=currency,
            expires_after_days=pack.expires_after_days,
            invoice=invoice,
            source=source,
            idempotency_key=idempotency_key,
        )
        invoices_issued.send(sender=Invoice, invoices=[invoice])
    return purchase


def purchase_demo_pay(*, purchase: CreditPackPurchase, actor: str) -> CreditPackPurchase:
    """Demo mode's stand-in for a payment, through the path the webhook uses.

    Whether demo payments are allowed is the payment side's to decide (no provider
    configured, and the operator allows them): callers check before calling this.
    """
    return purchase_complete(
        purchase=purchase, payment_intent_id=f"demo_{purchase.pk}", actor=actor
    )


def purchase_complete(
    *, purchase: CreditPackPurchase, payment_intent_id: str, actor: str
) -> CreditPackPurchase:
    """The payment succeeded: grant the pack's credits once and mark purchase and invoice paid.

    Money that arrives after a failure (a retried card, a late async payment) still
    completes the purchase: the customer paid, so the customer gets the credits.
    """
    with transaction.atomic():
        locked = CreditPackPurchase.objects.select_for_update().get(pk=purchase.pk)
        if locked.status == PurchaseStatus.PAID:
            _warn_if_paid_twice(locked, payment_intent_id)
            return locked
        invoice = Invoice.objects.select_for_update().get(pk=locked.invoice_id)
        now = timezone.now()
        grant = credit_grant_create(
            account=locked.customer.account,
            amount=locked.credits,
            category=GrantCategory.PAID,
            actor=actor,
            effective_at=now,
            expires_at=(
                now + timedelta(days=locked.expires_after_days)
                if locked.expires_after_days
                else None
            ),
            cost_basis=purchase_cost_basis(locked),
            reason="credit_pack",
            memo=f"{locked.pack.name}, invoice {invoice.number}",
            source_type="credit_pack_purchase",
            source_id=str(locked.pk),
            idempotency_key=f"purchase-{locked.pk}",
        )
        locked.status = PurchaseStatus.PAID
        locked.grant = grant
        locked.paid_at = now
        locked.failure_message = ""
        locked.stripe_payment_intent_id = locked.stripe_payment_intent_id or payment_intent_id
        locked.save(
            update_fields=[
                "status",
                "grant",
                "paid_at",
                "failure_message",
                "stripe_payment_intent_id",
            ]
        )
        if invoice.status != InvoiceStatus.PAID:
            invoice.status = InvoiceStatus.PAID
            invoice.paid_at = now
            invoice.voided_at = None  # paid after its checkout was given up
            invoice.save(update_fields=["status", "paid_at", "voided_at"])
    logger.info("purchase %s paid (%s); grant %s created", locked.pk, payment_intent_id, grant.pk)
    return locked


def purchase_cost_basis(purchase: CreditPackPurchase) -> Money:
    """Money paid per credit, to 8 places: what consuming or expiring one is worth."""
    price = as_money(purchase.price)
    per_credit = (price.amount / purchase.credits).quantize(COST_BASIS_QUANTUM, ROUND_HALF_UP)
    return Money(per_credit, price.currency)


def _warn_if_paid_twice(purchase: CreditPackPurchase, payment_intent_id: str) -> None:
    first = purchase.stripe_payment_intent_id
    if first and payment_intent_id and payment_intent_id != first:
        logger.error(
            "purchase %s was paid twice (%s and %s): refund one of them",
            purchase.pk,
            first,
            payment_intent_id,
        )


def purchase_cancel(*, purchase: CreditPackPurchase, reason: str, actor: str) -> CreditPackPurchase:
    """Nothing will be paid (e.g. the checkout expired): void the invoice. A paid purchase
    stays paid; money arriving later still completes it (see purchase_complete)."""
    with transaction.atomic():
        locked = CreditPackPurchase.objects.select_for_update().get(pk=purchase.pk)
        if locked.status in (PurchaseStatus.PAID, PurchaseStatus.CANCELED):
            return locked
        invoice = Invoice.objects.select_for_update().get(pk=locked.invoice_id)
        locked.status = PurchaseStatus.CANCELED
        locked.failure_message = reason
        locked.save(update_fields=["status", "failure_message"])
        invoice.status = InvoiceStatus.VOID
        invoice.voided_at = timezone.now()
        invoice.save(update_fields=["status", "voided_at"])
        invoice_voided.send(sender=Invoice, invoice=invoice)
    logger.info("purchase %s canceled (%s): %s", locked.pk, actor, reason)
    return locked


def purchase_fail(
    *, purchase: CreditPackPurchase, message: str, actor: str, payment_intent_id: str = ""
) -> CreditPackPurchase:
    """The payment failed. A purchase already paid (or given up) stays so: news arrives late.

    Its invoice stays open: at checkout the customer may try another card and pay.
    """
    with transaction.atomic():
        locked = CreditPackPurchase.objects.select_for_update().get(pk=purchase.pk)
        if locked.status in (PurchaseStatus.PAID, PurchaseStatus.CANCELED):
            return locked
        locked.status = PurchaseStatus.FAILED
        locked.failure_message = message
        locked.stripe_payment_intent_id = locked.stripe_payment_intent_id or payment_intent_id
        locked.save(update_fields=["status", "failure_message", "stripe_payment_intent_id"])
    logger.info("purchase %s failed (%s): %s", locked.pk, actor, message)
    return locked
