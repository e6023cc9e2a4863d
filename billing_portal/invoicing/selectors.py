"""Reads for invoices and the lineage of a charged amount."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import QuerySet
from djmoney.money import Money

from billing_portal.invoicing.models import Invoice, InvoiceLine, RevenueEntry
from billing_portal.invoicing.services import InvoiceDraft, period_invoice_draft
from ledger.errors import NotFound
from ledger.models import LedgerEntry
from ledger.units import to_cents
from metering.models import Authorization, MeterEvent, RawEventsRemoval
from plans.models import Customer
from plans.money import as_money, overage_estimate
from plans.selectors import period_in_force


def invoices_for(*, customer: Customer) -> QuerySet[Invoice]:
    return Invoice.objects.filter(customer=customer).order_by("-created_at", "-pk")


def authorization_estimate_money(*, authorization: Authorization) -> Money:
    """What the customer would be billed for an authorization's credits if used now
    (:func:`plans.money.overage_estimate` at the plan in force). An authorization just
    decided carries it from the decision, which read the plan in force already."""
    if authorization.estimate_money is not None:
        return authorization.estimate_money
    period = period_in_force(customer=authorization.customer)
    if period is None:
        return Money(to_cents(Decimal(0)), authorization.customer.currency)
    version = period.plan_version
    price = version.overage_price_per_credit
    return overage_estimate(
        credits=authorization.credits,
        available=authorization.available_before,
        price_per_credit=None if price is None else as_money(price).amount,
        currency=as_money(version.base_fee).currency.code,
    )


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
    # Events the entries name that retention removed: lineage stops at the entries and
    # the hourly rollups for those, and says so with the latest removal.
    events_removed: int = 0
    removal: RawEventsRemoval | None = None


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
    removed = len(set(event_ids)) - len(events)
    removal = RawEventsRemoval.objects.order_by("-before").first() if removed else None
    return Lineage(
        line=line,
        entries=entries,
        events=events,
        revenue=revenue,
        events_removed=removed,
        removal=removal,
    )
