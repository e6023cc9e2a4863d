"""Invoices and credit notes written straight to their tables, for the read endpoints'
tests: what these tests check is how the API reads them, not how they are made."""

from __future__ import annotations

from decimal import Decimal
from itertools import count

from django.utils import timezone

from billing_portal.invoicing.models import (
    CreditNote,
    CreditNoteLine,
    Invoice,
    InvoiceLine,
)
from plans.models import Customer

_numbers = count(1)


def invoice(customer: Customer, total: str, status: str = "open") -> Invoice:
    now = timezone.now()
    made = Invoice.objects.create(
        customer=customer,
        kind="credit_pack",
        number=f"T-{next(_numbers):05d}",
        status=status,
        currency="USD",
        total=Decimal(total),
        total_currency="USD",
        issued_at=now,
        paid_at=now if status == "paid" else None,
    )
    InvoiceLine.objects.create(
        invoice=made,
        kind="credit_pack",
        description="Credits",
        quantity=Decimal(1),
        unit_amount=Decimal(total),
        unit_amount_currency="USD",
        amount=Decimal(total),
        amount_currency="USD",
        service_period_start=now,
        service_period_end=now,
    )
    return made


def credit_note(
    of: Invoice, amount: str, status: str = "issued", reason: str = "duplicate"
) -> CreditNote:
    note = CreditNote.objects.create(
        invoice=of,
        number=f"CN-T-{next(_numbers):05d}",
        status=status,
        reason=reason,
        method="out_of_band",
        total=Decimal(amount),
        total_currency="USD",
        actor="staff:ops",
        voided_at=timezone.now() if status == "void" else None,
    )
    CreditNoteLine.objects.create(
        credit_note=note,
        invoice_line=of.lines.get(),
        amount=Decimal(amount),
        amount_currency="USD",
        description="Credits",
    )
    return note
