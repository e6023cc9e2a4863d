"""Collection: what Stripe reports about paying our invoices, and what it does to access.

Stripe collects and runs the dunning (its retries and reminders); we record each failed
attempt on our invoice. A customer with an unpaid invoice whose payment failed is past
due: ``Subscription.past_due_since`` holds the earliest such failure (the stored status
stays ``active``; the API and the portal say ``past_due``), and the plan version's
``past_due_deny_after_days`` makes authorizations deny ``payment_overdue`` that many days
later (``metering.services``). Paying or voiding the last failed invoice clears it, so the
next authorization is allowed.

Each recorder locks the invoice row and moves it forward only: an attempt already
recorded, or news about a paid or void invoice, changes nothing. So a webhook delivered
again or late neither counts an attempt twice nor announces it twice. A change is
announced with invoicing's signals in the same transaction (alerts and outgoing webhooks
listen; they send after commit).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db import transaction
from django.db.models import Min
from django.utils import timezone
from djmoney.money import Money

from billing_portal.invoicing import signals
from billing_portal.invoicing.models import CreditNoteStatus, Invoice, InvoiceStatus
from ledger.units import ZERO
from metering.services import access_paused_at
from plans.models import Customer, Subscription, SubscriptionStatus
from plans.money import as_money
from plans.selectors import period_in_force

# Still owed: Stripe may retry an open invoice; an uncollectible one stays owed until paid
# or voided.
UNPAID = (InvoiceStatus.OPEN, InvoiceStatus.UNCOLLECTIBLE)
DEFAULT_PAYMENT_ERROR = "The payment could not be made."
PAYMENT_ERROR_MAX_LENGTH = 2000


@dataclass(frozen=True)
class PaymentFailure:
    """One failed attempt to collect an invoice, as Stripe reports it."""

    failed_at: datetime
    attempts: int | None = None  # attempts so far (Stripe's attempt_count); None: one more
    error: str = ""
    next_attempt_at: datetime | None = None  # None: Stripe will not try again by itself
    hosted_invoice_url: str = ""


def invoice_payment_failure_record(*, invoice: Invoice, failure: PaymentFailure) -> Invoice:
    """Record a failed attempt and make the customer past due; announced once per attempt."""
    with transaction.atomic():
        locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
        attempts = failure.attempts
        if attempts is None:
            attempts = locked.payment_attempts + 1
        if locked.status not in UNPAID or attempts <= locked.payment_attempts:
            return locked
        locked.payment_attempts = attempts
        # The first failure starts the plan's grace; later ones do not move it.
        locked.payment_failed_at = locked.payment_failed_at or failure.failed_at
        locked.payment_error = (failure.error or DEFAULT_PAYMENT_ERROR)[:PAYMENT_ERROR_MAX_LENGTH]
        locked.next_payment_attempt_at = failure.next_attempt_at
        locked.hosted_invoice_url = failure.hosted_invoice_url or locked.hosted_invoice_url
        locked.save(
            update_fields=[
                "payment_attempts",
                "payment_failed_at",
                "payment_error",
                "next_payment_attempt_at",
                "hosted_invoice_url",
            ]
        )
        customer_past_due_refresh(customer_id=locked.customer_id)
        signals.invoice_payment_failed.send(sender=Invoice, invoice=locked)
    return locked


def invoice_paid_record(*, invoice: Invoice, paid_at: datetime | None = None) -> Invoice:
    """Stripe collected the invoice: paid, and the customer's access follows at once.
    Late or repeated news changes nothing."""
    with transaction.atomic():
        locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if locked.status in (InvoiceStatus.PAID, InvoiceStatus.VOID):
            return locked
        locked.status = InvoiceStatus.PAID
        locked.paid_at = paid_at or timezone.now()
        locked.next_payment_attempt_at = None
        locked.save(update_fields=["status", "paid_at", "next_payment_attempt_at"])
        customer_past_due_refresh(customer_id=locked.customer_id)
        signals.invoice_paid.send(sender=Invoice, invoice=locked)
    return locked


def invoice_voided_record(*, invoice: Invoice, voided_at: datetime | None = None) -> Invoice:
    """Voided in Stripe (e.g. from its dashboard): nothing is owed on it any more. A paid
    invoice stays paid."""
    with transaction.atomic():
        locked = Invoice.objects.select_for_update().get(pk=invoice.pk)
        if locked.status in (InvoiceStatus.PAID, InvoiceStatus.VOID):
            return locked
        locked.status = InvoiceStatus.VOID
        locked.voided_at = voided_at or timezone.now()
        locked.next_payment_attempt_at = None
        locked.save(update_fields=["status", "voided_at", "next_payment_attempt_at"])
        customer_past_due_refresh(customer_id=locked.customer_id)
    return locked


def customer_past_due_refresh(*, customer_id: int) -> None:
    """Past due since the earliest failed payment of an invoice still unpaid; not past due
    once every such invoice is paid or void.

    The subscription row is locked before the invoices are read: two invoices of one
    customer changing at once queue here, and the later one reads what the first
    committed, so the last write is computed from every invoice.
    """
    subscriptions = list(
        Subscription.objects.select_for_update()
        .filter(customer_id=customer_id, status=SubscriptionStatus.ACTIVE)
        .order_by("pk")
    )
    if not subscriptions:
        return
    since = Invoice.objects.filter(
        customer_id=customer_id, status__in=UNPAID, payment_failed_at__isnull=False
    ).aggregate(since=Min("payment_failed_at"))["since"]
    for subscription in subscriptions:
        if subscription.past_due_since != since:
            subscription.past_due_since = since
            subscription.save(update_fields=["past_due_since"])


# --- reads --------------------------------------------------------------------------


def invoice_amount_due(invoice: Invoice) -> Decimal:
    """What the customer still owes: the total less the credit notes issued on it (a voided
    one no longer counts), never below zero; nothing once the invoice is paid or void.
    Reads ``invoice.credit_notes.all()``, which lists prefetch."""
    if invoice.status in (InvoiceStatus.PAID, InvoiceStatus.VOID):
        return ZERO
    credited = sum(
        (
            as_money(note.total).amount
            for note in invoice.credit_notes.all()
            if note.status == CreditNoteStatus.ISSUED
        ),
        ZERO,
    )
    return max(as_money(invoice.total).amount - credited, ZERO)


def subscription_status(subscription: Subscription) -> str:
    """The status shown to people and integrators: ``past_due`` for an active subscription
    with an unpaid failed payment (stored as ``active``), else the stored status."""
    if subscription.status == SubscriptionStatus.ACTIVE and subscription.past_due_since:
        return "past_due"
    return subscription.status


@dataclass(frozen=True)
class PastDue:
    since: datetime
    invoice: Invoice  # the unpaid invoice whose payment failed first
    amount_due: Money
    unpaid_invoices: int  # unpaid invoices with a failed payment, this one included
    # When authorizations start to deny payment_overdue; None: the plan allows usage.
    access_paused_at: datetime | None


def past_due_for(*, customer: Customer) -> PastDue | None:
    """What the customer owes after a failed payment, and what it does to access; None
    when nothing is past due."""
    subscription = (
        Subscription.objects.filter(
            customer=customer, status=SubscriptionStatus.ACTIVE, past_due_since__isnull=False
        )
        .only("past_due_since")
        .first()
    )
    if subscription is None or subscription.past_due_since is None:
        return None
    failed = Invoice.objects.filter(
        customer=customer, status__in=UNPAID, payment_failed_at__isnull=False
    ).order_by("payment_failed_at", "pk")
    invoice = failed.prefetch_related("credit_notes").first()
    if invoice is None:
        return None
    period = period_in_force(customer=customer)
    return PastDue(
        since=subscription.past_due_since,
        invoice=invoice,
        amount_due=Money(invoice_amount_due(invoice), invoice.currency),
        unpaid_invoices=failed.count(),
        access_paused_at=access_paused_at(
            past_due_since=subscription.past_due_since,
            deny_after_days=period.plan_version.past_due_deny_after_days if period else None,
        ),
    )
