"""Invoices built from ledger entries: the lines of a period's invoice, and invoice numbers.

The flow that closes a period and calls these is ``billing_portal.invoicing.period_close``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.db.models import Exists, OuterRef
from django.utils import timezone
from djmoney.money import Money

from billing_portal.invoicing.models import (
    UNNUMBERED_PREFIX,
    Invoice,
    InvoiceKind,
    InvoiceLine,
    InvoiceLineEntry,
    InvoiceNumberSequence,
    InvoiceStatus,
    LineKind,
)
from ledger.models import ZERO, CauseType, EntryKind, LedgerEntry
from ledger.units import to_cents
from metering.models import EventCancellation, EventRating, PeriodUsage, RateUsage
from metering.true_up import period_true_ups
from plans.models import (
    ChangeKind,
    Customer,
    OveragePolicy,
    PeriodStatus,
    PlanVersion,
    Rate,
    SubscriptionChange,
    SubscriptionPeriod,
)
from plans.money import as_money
from plans.periods import period_containing
from plans.tiers import TierQuantity, breakdown


def invoice_number_next(prefix: str = "INV-") -> str:
    """Gap-free sequential numbers: the sequence row is locked until the caller commits."""
    sequence, _ = InvoiceNumberSequence.objects.select_for_update().get_or_create(prefix=prefix)
    number = sequence.next_number
    sequence.next_number = number + 1
    sequence.save(update_fields=["next_number"])
    return f"{prefix}{number:06d}"


# Money is rounded to the minor unit on invoice lines only (ledger.units).
cents = to_cents


@dataclass
class _Line:
    kind: str
    description: str
    quantity: Decimal
    unit_amount: Decimal
    amount: Decimal
    start: datetime
    end: datetime
    credits: Decimal = ZERO
    entries: list[LedgerEntry] = field(default_factory=list)


@dataclass(frozen=True)
class LineDraft:
    """One invoice line as it will be stored (money rounded to cents), with its entries."""

    kind: str
    description: str
    quantity: Decimal
    unit_amount: Money
    amount: Money
    credits: Decimal
    service_period_start: datetime
    service_period_end: datetime
    entries: list[LedgerEntry]


@dataclass(frozen=True)
class InvoiceDraft:
    """A period's invoice as closing the period now would store it. Both the real close
    (:func:`period_invoice_create`) and the upcoming invoice read it: one calculation."""

    customer: Customer
    period: SubscriptionPeriod
    currency: str
    lines: list[LineDraft]

    @property
    def total(self) -> Money:
        return Money(sum((line.amount.amount for line in self.lines), ZERO), self.currency)

    @property
    def period_start(self) -> datetime:
        return self.period.start

    @property
    def period_end(self) -> datetime:
        return self.period.end


def period_invoice_draft(*, period: SubscriptionPeriod) -> InvoiceDraft:
    """The invoice of the period's ledger entries so far. Reads only: no row, no number."""
    currency = str(as_money(period.plan_version.base_fee).currency)
    lines = [
        LineDraft(
            kind=spec.kind,
            description=spec.description,
            quantity=spec.quantity,
            unit_amount=Money(spec.unit_amount, currency),
            amount=Money(cents(spec.amount), currency),
            credits=spec.credits,
            service_period_start=spec.start,
            service_period_end=spec.end,
            entries=spec.entries,
        )
        for spec in _period_lines(period)
    ]
    return InvoiceDraft(
        customer=period.subscription.customer, period=period, currency=currency, lines=lines
    )


def period_invoice_create(*, period: SubscriptionPeriod) -> Invoice:
    """The period's invoice, built from the ledger entries of its events. The caller
    holds the period's row lock (see period_close); the unique constraint on the
    invoice's period refuses a second one anyway."""
    draft = period_invoice_draft(period=period)
    invoice = Invoice.objects.create(
        customer=draft.customer,
        kind=InvoiceKind.PERIOD,
        period=period,
        # Numbered last: the sequence row stays locked from numbering to commit, so it is
        # taken when everything else is written (concurrent closes queue only for that).
        number=f"{UNNUMBERED_PREFIX}{period.pk}",
        status=InvoiceStatus.OPEN,
        currency=draft.currency,
        total=draft.total.amount,
        total_currency=draft.currency,
        period_start=draft.period_start,
        period_end=draft.period_end,
        issued_at=timezone.now(),
    )
    _store_lines(invoice, draft.lines)
    invoice.number = invoice_number_next()
    invoice.save(update_fields=["number"])  # receivers of a numbered invoice see it now
    return invoice


def _store_lines(invoice: Invoice, lines: list[LineDraft]) -> None:
    # Two statements per invoice, not two per line: period close writes thousands at once.
    stored = InvoiceLine.objects.bulk_create(
        InvoiceLine(
            invoice=invoice,
            kind=draft.kind,
            description=draft.description,
            quantity=draft.quantity,
            unit_amount=draft.unit_amount.amount,
            unit_amount_currency=invoice.currency,
            amount=draft.amount.amount,
            amount_currency=invoice.currency,
            credits=draft.credits,
            service_period_start=draft.service_period_start,
            service_period_end=draft.service_period_end,
        )
        for draft in lines
    )
    InvoiceLineEntry.objects.bulk_create(
        InvoiceLineEntry(line=line, entry=e)
        for line, draft in zip(stored, lines, strict=True)
        for e in draft.entries
    )


def _period_lines(period: SubscriptionPeriod) -> list[_Line]:
    lines = [_base_fee(period), *_prorations(period)]
    entries = _usage_entries(period)
    lines.append(
        _included_usage(
            period, [e for e, late in entries if e.kind == EntryKind.CONSUME and not late]
        )
    )
    version = period.plan_version
    if version.overage_policy == OveragePolicy.POSTPAID:
        on_time = [e for e, late in entries if e.kind == EntryKind.OVERAGE and not late]
        if on_time:
            lines.append(
                _overage(period, version, on_time, LineKind.OVERAGE, period.start, period.end)
            )
    lines.extend(_tier_lines(period))
    true_up = _true_up_line(period, version)
    if true_up is not None:
        lines.append(true_up)
    if version.overage_policy == OveragePolicy.POSTPAID:
        lines.extend(_prior_period_adjustments(period, version, [e for e, late in entries if late]))
    return lines


def _tier_lines(period: SubscriptionPeriod) -> list[_Line]:
    """What each tiered or package rate's period total is made of, tier by tier: units
    and credits, no money (the credits are billed on the usage lines)."""
    rows = (
        RateUsage.objects.filter(period=period, units__gt=0)
        .select_related("rate__meter")
        .order_by("rate__meter__code", "rate_id")
    )
    return [
        _Line(
            LineKind.USAGE_TIER,
            tier_description(row.rate, part)[:255],
            part.units,
            ZERO,
            ZERO,
            period.start,
            period.end,
            credits=part.credits,
        )
        for row in rows
        for part in breakdown(row.rate, row.units)
    ]


def _count(value: Decimal) -> str:
    text = f"{value.normalize():,f}"
    return text


def tier_description(rate: Rate, part: TierQuantity) -> str:
    meter = rate.meter
    what = meter.label + (
        " (" + ", ".join(f"{k}={v}" for k, v in sorted(rate.match.items())) + ")"
        if rate.match
        else ""
    )
    unit = meter.unit
    price = f"{_count(part.tier.credits)} credits per {_count(Decimal(rate.per))} {unit}"
    if part.packages is not None:
        return (
            f"{what}: {_count(part.units)} {unit} in {_count(part.packages)} started packages "
            f"of {_count(Decimal(rate.per))}, {_count(part.tier.credits)} credits each"
        )
    bounds = (
        f"{_count(part.tier.start)}-{_count(part.tier.up_to)}"
        if part.tier.up_to is not None
        else f"above {_count(part.tier.start)}"
    )
    if rate.tiers_mode == "volume":
        return f"{what}: all {_count(part.units)} {unit} at the {bounds} tier, {price}"
    return f"{what}: {_count(part.units)} {unit} in tier {bounds}, {price}"


def _true_up_line(period: SubscriptionPeriod, version: PlanVersion) -> _Line | None:
    """Credits that brought tiered and package rates to their formula on the period's
    total (volume tiers, cancelled events). Before the close, what it would post now."""
    entries = list(
        LedgerEntry.objects.filter(
            account_id=period.subscription.customer.account_id,
            cause_type=CauseType.TIER_TRUE_UP,
            cause_id__startswith=f"{period.pk}:",
        ).order_by("pk")
    )
    if entries:
        credits = -sum((e.credits for e in entries), ZERO)
        billed = -sum(
            (
                e.credits
                for e in entries
                if e.kind == EntryKind.OVERAGE or (e.kind == EntryKind.REVERSAL and not e.grant_id)
            ),
            ZERO,
        )
    elif period.status in (PeriodStatus.OPEN, PeriodStatus.CLOSED):
        pending = period_true_ups(period)
        if not pending:
            return None
        credits = sum((t.credits for t in pending), ZERO)
        billed = _projected_overage(period, credits)
    else:
        return None
    postpaid = version.overage_policy == OveragePolicy.POSTPAID
    price = (
        as_money(version.overage_price_per_credit).amount
        if postpaid and version.overage_price_per_credit
        else ZERO
    )
    quantity = billed if postpaid else credits
    return _Line(
        LineKind.TIER_TRUE_UP,
        "Tiered pricing: credits brought to the price of the period's total",
        quantity,
        price,
        quantity * price,
        period.start,
        period.end,
        credits=credits,
        entries=entries,
    )


def _projected_overage(period: SubscriptionPeriod, credits: Decimal) -> Decimal:
    """An estimate of the overage a true-up not yet posted would move: once a period is
    in overage, more usage is overage and a refund comes off the overage first."""
    usage = PeriodUsage.objects.filter(period=period).first()
    overage = usage.overage if usage is not None else ZERO
    if credits > 0:
        return credits if overage > 0 else ZERO
    return -min(-credits, overage)


def _base_fee(period: SubscriptionPeriod) -> _Line:
    first = (
        SubscriptionChange.objects.filter(
            period=period, kind__in=[ChangeKind.START, ChangeKind.RENEWAL]
        )
        .select_related("to_version__plan")
        .first()
    )
    version = first.to_version if first and first.to_version else period.plan_version
    fee = as_money(version.base_fee).amount
    return _Line(
        LineKind.BASE_FEE, f"{version.name} plan", Decimal(1), fee, fee, period.start, period.end
    )


def _prorations(period: SubscriptionPeriod) -> list[_Line]:
    """Upgrades charge the fee difference for the time left; cancelling now gives back the
    base fee of the time left (over the period as it ended, like the base fee itself)."""
    changes = SubscriptionChange.objects.filter(
        period=period, kind__in=[ChangeKind.PLAN_CHANGE, ChangeKind.CANCEL]
    ).select_related("from_version", "to_version")
    lines = []
    for change in changes.order_by("effective_at"):
        if change.proration is None or change.from_version is None:
            continue
        amount = as_money(change.proration).amount
        if change.kind == ChangeKind.CANCEL:
            label = f"Cancelled on {change.effective_at:%Y-%m-%d}: base fee of the unused time"
            start = period.start
        elif change.to_version is not None:
            label = (
                f"Change from {change.from_version.name} to {change.to_version.name} "
                f"({change.effective_at:%Y-%m-%d}), prorated"
            )
            start = change.effective_at
        else:
            continue
        lines.append(
            _Line(
                LineKind.PRORATION,
                label,
                Decimal(1),
                amount,
                amount,
                start,
                period.end,
                credits=change.extra_included_credits,
            )
        )
    return lines


def _usage_entries(period: SubscriptionPeriod) -> list[tuple[LedgerEntry, bool]]:
    """Consume and overage entries of the period's events, net of cancelled events.

    Returns (entry, late) pairs; late entries belong to events of an earlier, already
    invoiced period that were charged in this one.
    """
    ratings = EventRating.objects.filter(period=period).exclude(
        Exists(EventCancellation.objects.filter(event_id=OuterRef("event_id")))
    )
    late = dict(ratings.values_list("event_id", "prior_period_adjustment"))
    entries = LedgerEntry.objects.filter(
        account_id=period.subscription.customer.account_id,
        cause_type="event",
        cause_id__in=[str(pk) for pk in late],
        kind__in=[EntryKind.CONSUME, EntryKind.OVERAGE],
    ).order_by("pk")
    return [(e, late[int(e.cause_id)]) for e in entries]


def _included_usage(period: SubscriptionPeriod, entries: list[LedgerEntry]) -> _Line:
    used = -sum((e.credits for e in entries), ZERO)
    return _Line(
        LineKind.INCLUDED_USAGE,
        "Credits used from grants (prepaid or included)",
        used,
        ZERO,
        ZERO,
        period.start,
        period.end,
        credits=used,
        entries=entries,
    )


def _overage(
    period: SubscriptionPeriod,
    version: PlanVersion,
    entries: list[LedgerEntry],
    kind: str,
    start: datetime,
    end: datetime,
) -> _Line:
    credits = -sum((e.credits for e in entries), ZERO)
    price = (
        as_money(version.overage_price_per_credit).amount
        if version.overage_price_per_credit
        else ZERO
    )
    label = (
        "Usage beyond credits"
        if kind == LineKind.OVERAGE
        else f"Usage from {start:%Y-%m-%d} to {end:%Y-%m-%d} reported late"
    )
    return _Line(
        kind, label, credits, price, credits * price, start, end, credits=credits, entries=entries
    )


def _prior_period_adjustments(
    period: SubscriptionPeriod, version: PlanVersion, entries: list[LedgerEntry]
) -> list[_Line]:
    """Late overage keeps the service period of the period its events belong to."""
    overage = [e for e in entries if e.kind == EntryKind.OVERAGE]
    if not overage:
        return []
    timestamps = dict(
        EventRating.objects.filter(event_id__in=[int(e.cause_id) for e in overage]).values_list(
            "event_id", "event__timestamp"
        )
    )
    subscription = period.subscription
    groups: dict[tuple[datetime, datetime], list[LedgerEntry]] = defaultdict(list)
    for entry in overage:
        moment = timestamps[int(entry.cause_id)]
        _, start, end = period_containing(
            subscription.anchor, version.interval, max(moment, subscription.anchor)
        )
        groups[(start, end)].append(entry)
    return [
        _overage(period, version, group, LineKind.PRIOR_PERIOD_ADJUSTMENT, start, end)
        for (start, end), group in sorted(groups.items())
    ]
