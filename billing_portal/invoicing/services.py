"""Invoices built from ledger entries: the lines of a period's invoice, and invoice numbers.

The flow that closes a period and calls these is ``billing_portal.invoicing.period_close``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import NamedTuple

from django.db import connection
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
from billing_portal.invoicing.signals import invoices_numbered
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
    return invoice_numbers_next(1, prefix)[0]


def invoice_numbers_next(count: int, prefix: str = "INV-") -> list[str]:
    """``count`` consecutive numbers with one lock of the sequence (a batch of invoices)."""
    sequence, _ = InvoiceNumberSequence.objects.select_for_update().get_or_create(prefix=prefix)
    first = sequence.next_number
    sequence.next_number = first + count
    sequence.save(update_fields=["next_number"])
    return [f"{prefix}{number:06d}" for number in range(first, first + count)]


# Money is rounded to the minor unit on invoice lines only (ledger.units).
cents = to_cents


class UsageEntry(NamedTuple):
    """What an invoice reads of one consume or overage entry of an event (a LedgerEntry's
    fields by the same names): a period has one or two per event, so they are read as
    tuples, not built into models (10,000 entries: about 30 ms against 300)."""

    pk: int
    kind: str
    credits: Decimal
    cause_id: str


# The entries a line is built from and linked to: usage entries, or true-up entries.
Entry = UsageEntry | LedgerEntry


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
    entries: Sequence[Entry] = field(default_factory=list)


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
    entries: Sequence[Entry]


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
    (draft,) = period_invoice_drafts(periods=[period])
    return draft


def period_invoice_drafts(*, periods: Sequence[SubscriptionPeriod]) -> list[InvoiceDraft]:
    """The invoices of many periods, in their order, from a few queries whatever their
    number (period close drafts a whole batch at once). Reads only."""
    facts = _facts_read(periods)
    return [_draft(period, facts[period.pk]) for period in periods]


def period_invoice_total(*, period: SubscriptionPeriod) -> Money:
    """What :func:`period_invoice_draft`'s invoice of a period would total, from the
    period's usage counters instead of its events' entries while it is not invoiced: an
    estimate (the portal's) that reads the same few rows however many events it has."""
    if period.status not in (PeriodStatus.OPEN, PeriodStatus.CLOSED):
        return period_invoice_draft(period=period).total  # its counters hold its true-up
    facts = _facts_read([period], with_usage=False)
    facts[period.pk].usage = _usage_from_counters(period)
    return _draft(period, facts[period.pk]).total


def _draft(period: SubscriptionPeriod, facts: _Facts) -> InvoiceDraft:
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
        for spec in _period_lines(period, facts)
    ]
    return InvoiceDraft(
        customer=period.subscription.customer, period=period, currency=currency, lines=lines
    )


def period_invoice_create(*, period: SubscriptionPeriod) -> Invoice:
    """The period's invoice, built from the ledger entries of its events."""
    (invoice,) = period_invoices_create(drafts=[period_invoice_draft(period=period)])
    return invoice


def period_invoices_create(*, drafts: Sequence[InvoiceDraft]) -> list[Invoice]:
    """Store the drafted invoices of many periods, numbered in their order.

    The caller holds the periods' row locks (see period_close); the unique constraint on
    an invoice's period refuses a second one anyway. Invoices, lines and line links are
    each one statement for the whole batch; the numbers are taken last, in one lock of
    the sequence, which stays locked until the commit: concurrent closes queue only for
    that.
    """
    if not drafts:
        return []
    issued_at = timezone.now()
    invoices = Invoice.objects.bulk_create(
        Invoice(
            customer=draft.customer,
            kind=InvoiceKind.PERIOD,
            period=draft.period,
            number=f"{UNNUMBERED_PREFIX}{draft.period.pk}",
            status=InvoiceStatus.OPEN,
            currency=draft.currency,
            total=draft.total.amount,
            total_currency=draft.currency,
            period_start=draft.period_start,
            period_end=draft.period_end,
            issued_at=issued_at,
        )
        for draft in drafts
    )
    _store_lines(list(zip(invoices, drafts, strict=True)))
    _number(invoices)
    return invoices


def _number(invoices: list[Invoice]) -> None:
    for invoice, number in zip(invoices, invoice_numbers_next(len(invoices)), strict=True):
        invoice.number = number
    Invoice.objects.bulk_update(invoices, ["number"])
    # Receivers of numbered invoices see them now, all at once (the outgoing
    # invoice.finalized events, billing_portal.outbound.receivers).
    invoices_numbered.send(sender=Invoice, invoices=invoices)


def _store_lines(invoices: list[tuple[Invoice, InvoiceDraft]]) -> None:
    # Two statements for a batch of invoices, not two per invoice, nor per line.
    drafts = [(invoice, line) for invoice, draft in invoices for line in draft.lines]
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
        for invoice, draft in drafts
    )
    InvoiceLineEntry.objects.bulk_create(
        InvoiceLineEntry(line=line, entry_id=entry.pk)
        for line, (_, draft) in zip(stored, drafts, strict=True)
        for entry in draft.entries
    )


@dataclass
class _Facts:
    """What a period's invoice is computed from, read for a batch of periods at once."""

    changes: list[SubscriptionChange] = field(default_factory=list)
    # (entry, late): late entries belong to events of an earlier, already invoiced period
    # that were charged in this one.
    usage: list[tuple[UsageEntry, bool]] = field(default_factory=list)
    rate_usage: list[RateUsage] = field(default_factory=list)
    true_up_entries: list[LedgerEntry] = field(default_factory=list)


def _facts_read(
    periods: Sequence[SubscriptionPeriod], *, with_usage: bool = True
) -> dict[int, _Facts]:
    facts = {period.pk: _Facts() for period in periods}
    if not facts:
        return facts
    changes = SubscriptionChange.objects.filter(
        period__in=list(facts),
        kind__in=[ChangeKind.START, ChangeKind.RENEWAL, ChangeKind.PLAN_CHANGE, ChangeKind.CANCEL],
    ).select_related("from_version", "to_version")
    for change in changes.order_by("pk"):
        assert change.period_id is not None
        facts[change.period_id].changes.append(change)
    for period_id, entry, late in _usage_entries(periods) if with_usage else []:
        facts[period_id].usage.append((entry, late))
    for row in RateUsage.objects.filter(period__in=list(facts)).select_related("rate__meter"):
        facts[row.period_id].rate_usage.append(row)
    _true_up_entries_read(periods, facts)
    return facts


# Consume and overage entries of the periods' events, net of cancelled events, as tuples
# in one query: the ratings name each event's period, the entries name the event.
# {late_only}: only the entries of events charged late, whose ratings an index of their
# own finds (metering_rating_late), however many events the period has.
_USAGE_ENTRIES_SQL = f"""
SELECT p.period_id, r.prior_period_adjustment, e.id, e.kind, e.credits, e.cause_id
FROM unnest(%s::bigint[], %s::bigint[]) AS p(period_id, account_id)
JOIN {EventRating._meta.db_table} r ON r.period_id = p.period_id {{late_only}}
JOIN {LedgerEntry._meta.db_table} e
  ON e.account_id = p.account_id AND e.cause_type = %s AND e.cause_id = r.event_id::text
WHERE e.kind IN (%s, %s)
  AND NOT EXISTS (
    SELECT 1 FROM {EventCancellation._meta.db_table} c WHERE c.event_id = r.event_id
  )
ORDER BY e.id
"""


def _usage_entries(
    periods: Sequence[SubscriptionPeriod], *, late_only: bool = False
) -> list[tuple[int, UsageEntry, bool]]:
    """(period id, entry, late) for the consume and overage entries of the periods'
    events, net of cancelled events; each entry holds what the invoice reads of it."""
    accounts = {period.pk: period.subscription.customer.account_id for period in periods}
    sql = _USAGE_ENTRIES_SQL.format(late_only="AND r.prior_period_adjustment" if late_only else "")
    with connection.cursor() as cursor:
        cursor.execute(
            sql,
            [
                list(accounts),
                list(accounts.values()),
                CauseType.EVENT,
                EntryKind.CONSUME,
                EntryKind.OVERAGE,
            ],
        )
        rows = cursor.fetchall()
    return [
        (period_id, UsageEntry(pk, kind, credits, cause_id), late)
        for period_id, late, pk, kind, credits, cause_id in rows
    ]


def _usage_from_counters(period: SubscriptionPeriod) -> list[tuple[UsageEntry, bool]]:
    """What :func:`_usage_entries` gives an open period, from its ``PeriodUsage`` and its
    late events' entries: the on-time consumption and overage as one entry each (pk 0, no
    cause), which rating and cancellation keep current."""
    usage = PeriodUsage.objects.filter(period=period).first()
    late = [(entry, True) for _, entry, _ in _usage_entries([period], late_only=True)]
    late_overage = sum((e.credits for e, _ in late if e.kind == EntryKind.OVERAGE), ZERO)
    late_credits = sum((e.credits for e, _ in late), ZERO)
    credits = usage.credits if usage else ZERO
    overage = usage.overage if usage else ZERO
    on_time_overage = -overage - late_overage
    on_time_consume = -(credits - overage) - (late_credits - late_overage)
    on_time = [
        (UsageEntry(0, kind, amount, ""), False)
        for kind, amount in (
            (EntryKind.CONSUME, on_time_consume),
            (EntryKind.OVERAGE, on_time_overage),
        )
        if amount
    ]
    return on_time + late


def _true_up_entries_read(periods: Sequence[SubscriptionPeriod], facts: dict[int, _Facts]) -> None:
    """Credits posted to bring tiered and package rates to their formula, under the cause
    ``"<period id>:<rate id>"``: only periods with such rates can have any."""
    causes = {
        f"{row.period_id}:{row.rate_id}": row.period_id
        for period_facts in facts.values()
        for row in period_facts.rate_usage
    }
    if not causes:
        return
    entries = LedgerEntry.objects.filter(
        account_id__in={period.subscription.customer.account_id for period in periods},
        cause_type=CauseType.TIER_TRUE_UP,
        cause_id__in=list(causes),
    )
    for entry in entries.order_by("pk"):
        facts[causes[entry.cause_id]].true_up_entries.append(entry)


def _period_lines(period: SubscriptionPeriod, facts: _Facts) -> list[_Line]:
    lines = [_base_fee(period, facts), *_prorations(period, facts)]
    entries = facts.usage
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
    lines.extend(_tier_lines(period, facts))
    true_up = _true_up_line(period, version, facts)
    if true_up is not None:
        lines.append(true_up)
    if version.overage_policy == OveragePolicy.POSTPAID:
        lines.extend(_prior_period_adjustments(period, version, [e for e, late in entries if late]))
    return lines


def _tier_lines(period: SubscriptionPeriod, facts: _Facts) -> list[_Line]:
    """What each tiered or package rate's period total is made of, tier by tier: units
    and credits, no money (the credits are billed on the usage lines)."""
    rows = sorted(
        (row for row in facts.rate_usage if row.units > 0),
        key=lambda row: (row.rate.meter.code, row.rate_id),
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


def _true_up_line(period: SubscriptionPeriod, version: PlanVersion, facts: _Facts) -> _Line | None:
    """Credits that brought tiered and package rates to their formula on the period's
    total (volume tiers, cancelled events). Before the close, what it would post now."""
    entries = facts.true_up_entries
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


def _base_fee(period: SubscriptionPeriod, facts: _Facts) -> _Line:
    first = next(
        (c for c in facts.changes if c.kind in (ChangeKind.START, ChangeKind.RENEWAL)), None
    )
    version = first.to_version if first and first.to_version else period.plan_version
    fee = as_money(version.base_fee).amount
    return _Line(
        LineKind.BASE_FEE, f"{version.name} plan", Decimal(1), fee, fee, period.start, period.end
    )


def _prorations(period: SubscriptionPeriod, facts: _Facts) -> list[_Line]:
    """Upgrades charge the fee difference for the time left; cancelling now gives back the
    base fee of the time left (over the period as it ended, like the base fee itself)."""
    changes = [c for c in facts.changes if c.kind in (ChangeKind.PLAN_CHANGE, ChangeKind.CANCEL)]
    lines = []
    for change in sorted(changes, key=lambda change: change.effective_at):
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


def _included_usage(period: SubscriptionPeriod, entries: list[UsageEntry]) -> _Line:
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
    entries: list[UsageEntry],
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
    period: SubscriptionPeriod, version: PlanVersion, entries: list[UsageEntry]
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
    groups: dict[tuple[datetime, datetime], list[UsageEntry]] = defaultdict(list)
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
