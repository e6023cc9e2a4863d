"""Ledger and invoicing events that become outgoing webhook events.

Both signals arrive inside the writing transaction; the event and its deliveries are
stored in it too, and nothing is sent unless it commits.
"""

from __future__ import annotations

from typing import Any

from django.db.models.signals import post_save
from django.dispatch import receiver
from djmoney.money import Money

from billing_portal.invoicing.models import Invoice, InvoiceStatus
from billing_portal.outbound.models import EventType
from billing_portal.outbound.services import event_publish
from ledger.models import Account, CreditGrant
from ledger.signals import credit_grant_created
from plans.models import Customer


@receiver(credit_grant_created, dispatch_uid="outbound_credit_grant_created")
def publish_credit_grant_created(
    sender: Any, grant: CreditGrant, account: Account, **kwargs: Any
) -> None:
    source = {"type": grant.source_type, "id": grant.source_id} if grant.source_type else None
    event_publish(
        type=EventType.CREDIT_GRANT_CREATED,
        customer=Customer.objects.filter(account=account).first(),
        data={
            "id": grant.pk,
            "amount": grant.amount,
            "remaining": grant.remaining,
            "category": grant.category,
            "status": grant.status,
            "expires_at": grant.expires_at,
            "source": source,
        },
    )


# Invoices are created open (period close and credit pack purchases); no invoice moves
# from draft to open later, so a new open row is exactly an invoice being finalized.
@receiver(post_save, sender=Invoice, dispatch_uid="outbound_invoice_finalized")
def publish_invoice_finalized(
    sender: Any, instance: Invoice, created: bool, raw: bool = False, **kwargs: Any
) -> None:
    if raw or not created or instance.status != InvoiceStatus.OPEN:
        return
    total = instance.total
    amount = total.amount if isinstance(total, Money) else total
    period = None
    if instance.period_start is not None and instance.period_end is not None:
        period = {"start": instance.period_start, "end": instance.period_end}
    event_publish(
        type=EventType.INVOICE_FINALIZED,
        customer=instance.customer,
        data={
            "id": instance.pk,
            "number": instance.number,
            "kind": instance.kind,
            "customer": instance.customer.external_id,
            "total": amount,
            "currency": instance.currency,
            "period": period,
            "issued_at": instance.issued_at,
        },
    )
