"""Reads for invoices and the lineage of a charged amount."""

from __future__ import annotations

from dataclasses import dataclass

from django.db.models import QuerySet

from billing_portal.invoicing.models import Invoice, InvoiceLine, RevenueEntry
from ledger.models import LedgerEntry
from metering.models import MeterEvent
from plans.models import Customer


def invoices_for(*, customer: Customer) -> QuerySet[Invoice]:
    return Invoice.objects.filter(customer=customer).order_by("-created_at", "-pk")


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
