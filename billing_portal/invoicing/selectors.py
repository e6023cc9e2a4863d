"""Reads for invoices and the lineage of a charged amount."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db.models import QuerySet

from billing_portal.invoicing.models import Invoice, InvoiceLine, RevenueEntry
from billing_portal.invoicing.services import InvoiceDraft, period_invoice_draft
from ledger.errors import NotFound
from ledger.models import LedgerEntry
from metering.models import MeterEvent
from plans.models import Customer
from plans.selectors import period_in_force


def invoices_for(*, customer: Customer) -> QuerySet[Invoice]:
    return Invoice.objects.filter(customer=customer).order_by("-created_at", "-pk")


def upcoming_invoice(*, customer: Customer, at: datetime | None = None) -> InvoiceDraft:
    """What closing the customer's period in force would invoice now, by the close's own
    calculation (``period_invoice_draft``); nothing is written."""
    period = period_in_force(customer=customer, at=at)
    if period is None:
        raise NotFound(
            f"customer {customer.external_id!r} has no open billing period: no active "
            "subscription, so no upcoming invoice",
            param="external_id",
        )
    return period_invoice_draft(period=period)


@dataclass(frozen=True)
class Lineage:
    """One invoice line, walked back to raw events and forward to revenue."""

    line: InvoiceLine
    entries: list[LedgerEntry]
    events: list[MeterEvent]
    revenue: list[RevenueEntry]


def invoice_line_lineage(*, line: InvoiceLine) -> Lineage:
    entries = list(
        LedgerEntry.objects.filter(invoice_link__line=line)
        .select_related("grant", "operation")
        .order_by("pk")
    )
    event_ids = [
        int(e.cause_id) for e in entries if e.cause_type == "event" and e.cause_id.isdigit()
    ]
    events = list(
        MeterEvent.objects.filter(pk__in=event_ids)
        .select_related("meter")
        .order_by("timestamp", "pk")
    )
    # Revenue follows the line itself, and the paid credits its entries consumed.
    revenue = list(
        RevenueEntry.objects.filter(invoice_line=line).order_by("recognized_on", "pk")
    ) + list(RevenueEntry.objects.filter(ledger_entry__in=entries).order_by("recognized_on", "pk"))
    return Lineage(line=line, entries=entries, events=events, revenue=revenue)
