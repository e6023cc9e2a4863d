"""Ledger and invoicing events that become outgoing webhook events.

The signals arrive inside the writing transaction; the event and its deliveries are
stored in it too, and nothing is sent unless it commits. Invoicing sends a payment's
failure once per attempt and a payment once, so each is published once.
"""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_save
from django.dispatch import receiver
from djmoney.money import Money

from billing_portal.invoicing import collection
from billing_portal.invoicing.models import UNNUMBERED_PREFIX, Invoice, InvoiceStatus
from billing_portal.invoicing.signals import (
    invoice_paid,
    invoice_payment_failed,
    invoices_numbered,
)
from billing_portal.outbound.models import EventType
from billing_portal.outbound.services import EventDraft, event_publish, events_publish
from ledger.models import CreditGrant
from ledger.signals import credit_grants_created
from plans.models import Customer


@receiver(credit_grants_created, dispatch_uid="outbound_credit_grants_created")
def publish_credit_grants_created(sender: Any, grants: list[CreditGrant], **kwargs: Any) -> None:
    customers = {
        customer.account_id: customer
        for customer in Customer.objects.filter(account__in={grant.account_id for grant in grants})
    }
    events_publish(
        [
            EventDraft(
                type=EventType.CREDIT_GRANT_CREATED,
                customer=customers.get(grant.account_id),
                data={
                    "id": grant.pk,
                    "amount": grant.amount,
                    "remaining": grant.remaining,
                    "category": grant.category,
                    "status": grant.status,
                    "expires_at": grant.expires_at,
                    "source": {"type": grant.source_type, "id": grant.source_id}
                    if grant.source_type
                    else None,
                },
            )
            for grant in grants
        ]
    )


# Invoices are created open (period close and credit pack purchases); no invoice moves
# from draft to open later, so a new open row with a number is an invoice being
# finalized. Period invoices are created unnumbered and numbered in a batch, last
# (invoices_numbered).
@receiver(post_save, sender=Invoice, dispatch_uid="outbound_invoice_finalized")
def publish_invoice_finalized(
    sender: Any, instance: Invoice, created: bool, raw: bool = False, **kwargs: Any
) -> None:
    if raw or not created or instance.status != InvoiceStatus.OPEN:
        return
    if instance.number.startswith(UNNUMBERED_PREFIX):
        return
    events_publish([_invoice_finalized(instance)])


@receiver(invoices_numbered, dispatch_uid="outbound_invoices_finalized")
def publish_invoices_finalized(sender: Any, invoices: list[Invoice], **kwargs: Any) -> None:
    events_publish([_invoice_finalized(invoice) for invoice in invoices])


def _invoice_finalized(invoice: Invoice) -> EventDraft:
    total = invoice.total
    amount = total.amount if isinstance(total, Money) else total
    period = None
    if invoice.period_start is not None and invoice.period_end is not None:
        period = {"start": invoice.period_start, "end": invoice.period_end}
    return EventDraft(
        type=EventType.INVOICE_FINALIZED,
        customer=invoice.customer,
        data={
            "id": invoice.pk,
            "number": invoice.number,
            "kind": invoice.kind,
            "customer": invoice.customer.external_id,
            "total": amount,
            "currency": invoice.currency,
            "period": period,
            "issued_at": invoice.issued_at,
        },
    )


@receiver(invoice_payment_failed, dispatch_uid="outbound_invoice_payment_failed")
def publish_invoice_payment_failed(sender: Any, invoice: Invoice, **kwargs: Any) -> None:
    past_due = collection.past_due_for(customer=invoice.customer)
    event_publish(
        type=EventType.INVOICE_PAYMENT_FAILED,
        customer=invoice.customer,
        data={
            "id": invoice.pk,
            "number": invoice.number,
            "customer": invoice.customer.external_id,
            "amount_due": collection.invoice_amount_due(invoice),
            "currency": invoice.currency,
            "attempts": invoice.payment_attempts,
            "payment_failed_at": invoice.payment_failed_at,
            "payment_error": invoice.payment_error,
            "next_payment_attempt_at": invoice.next_payment_attempt_at,
            "hosted_invoice_url": invoice.hosted_invoice_url,
            "past_due_since": past_due.since if past_due else None,
            "access_paused_at": past_due.access_paused_at if past_due else None,
        },
    )


@receiver(invoice_paid, dispatch_uid="outbound_invoice_paid")
def publish_invoice_paid(sender: Any, invoice: Invoice, **kwargs: Any) -> None:
    total = invoice.total
    event_publish(
        type=EventType.INVOICE_PAID,
        customer=invoice.customer,
        data={
            "id": invoice.pk,
            "number": invoice.number,
            "customer": invoice.customer.external_id,
            "total": total.amount if isinstance(total, Money) else total,
            "currency": invoice.currency,
            "paid_at": invoice.paid_at,
            "payment_attempts": invoice.payment_attempts,
        },
    )
