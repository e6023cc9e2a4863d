"""Builders the Stripe tests share."""

from __future__ import annotations

from decimal import Decimal

from django.db import transaction
from django.utils import timezone

from billing_portal.invoicing.models import Invoice, InvoiceKind, InvoiceLine, InvoiceStatus
from billing_portal.invoicing.services import invoice_number_next
from plans.models import Customer, SubscriptionPeriod

LINES = (
    ("base_fee", "Pro plan", "49.00"),
    ("included_usage", "Credits used from grants (prepaid or included)", "0.00"),
    ("overage", "Usage beyond credits", "16.00"),
)


def period_invoice(owner: Customer, lines: tuple[tuple[str, str, str], ...] = LINES) -> Invoice:
    """An open period invoice with these lines, as period close would have made it."""
    period = _uninvoiced_period(owner)
    total = sum((Decimal(amount) for _, _, amount in lines), Decimal(0))
    with transaction.atomic():
        invoice = Invoice.objects.create(
            customer=owner,
            kind=InvoiceKind.PERIOD,
            period=period,
            number=invoice_number_next(),
            status=InvoiceStatus.OPEN,
            currency="USD",
            total=Decimal(total),
            total_currency="USD",
            period_start=period.start,
            period_end=period.end,
            issued_at=timezone.now(),
        )
        for kind, description, amount in lines:
            InvoiceLine.objects.create(
                invoice=invoice,
                kind=kind,
                description=description,
                quantity=Decimal(1),
                unit_amount=Decimal(amount),
                unit_amount_currency="USD",
                amount=Decimal(amount),
                amount_currency="USD",
                service_period_start=period.start,
                service_period_end=period.end,
            )
    return invoice


def _uninvoiced_period(owner: Customer) -> SubscriptionPeriod:
    periods = SubscriptionPeriod.objects.filter(subscription__customer=owner).order_by("start")
    free = periods.filter(invoice__isnull=True).first()
    if free is not None:
        return free
    last = periods.last()
    assert last is not None
    return SubscriptionPeriod.objects.create(
        subscription=last.subscription,
        plan_version=last.plan_version,
        start=last.end,
        end=last.end + (last.end - last.start),
    )
