"""Gross margin for a month by meter, model and customer: units, credits, recognized
revenue, provider cost, margin and margin %.

Revenue is ``revenue_report``'s for the same month, entry by entry, so the totals tie to
it exactly:

* paid credits an event consumed are that event's revenue (at their cost basis); those a
  tiered rate's true-up took or gave back at period close go to the rate's meter and model;
* an overage line (postpaid overage, late usage) is shared among the events billed on it
  by their overage credits; the last share takes the rounding remainder, so the shares
  add up to the line;
* what no event earned has a row of its own, without units or cost: base fees and
  prorations, expired credits (breakage), credit notes, credits used by something other
  than an event, and the revenue of cancelled events (their consumption and its reversal
  cancel out within a month; across two months each month shows its part).

Units, credits and provider cost are those of the events stamped in the month (UTC), as
the provider bills them; cancelled events are left out. Revenue keeps its recognition
date: prepaid usage the day it is rated, overage the last day of its period. With periods
on calendar months the two agree; otherwise an event's revenue may be reported a month
after its cost (an event rated after midnight, overage of a period ending next month).

Sums stay exact (8 places at most); only what people read is rounded.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from itertools import groupby

from django.db import connection
from django.db.models import (
    Case,
    CharField,
    Count,
    Exists,
    F,
    OuterRef,
    Q,
    Sum,
    TextField,
    Value,
    When,
)
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Cast
from djmoney.money import Money

from billing_portal.invoicing.models import InvoiceLineEntry, RevenueEntry, RevenueKind
from billing_portal.invoicing.revenue import EIGHT
from ledger.models import LedgerEntry
from ledger.units import ZERO, to_cents
from metering.models import EventCancellation, EventRating, MeterEvent, RatingStatus
from plans.models import Customer, Meter, Rate

DASH = "—"
NO_DIMENSIONS = DASH

# Rows for revenue no event earned, by revenue kind.
OTHER_LABELS = {
    RevenueKind.BASE_FEE: "Base fees",
    RevenueKind.BREAKAGE: "Expired credits",
    RevenueKind.CREDIT_NOTE: "Credit notes",
    RevenueKind.RECOGNIZED_USAGE: "Credits used outside events",
    RevenueKind.OVERAGE: "Overage outside events",
    RevenueKind.DEFERRED: "Deferred",
}
CANCELLED = "Cancelled usage"


@dataclass(frozen=True)
class MarginRow:
    meter: str  # the meter's name; for revenue no event earned, what it is ("Base fees")
    model: str
    customer: str
    usage: bool
    units: Decimal | None = ZERO  # None on totals over several meters: units differ
    credits: Decimal = ZERO
    revenue: Decimal = ZERO
    cost: Decimal = ZERO
    uncosted_events: int = 0  # events whose rate has no cost: the cost is understated

    @property
    def margin(self) -> Decimal:
        return self.revenue - self.cost

    @property
    def margin_percent(self) -> Decimal | None:
        return None if self.revenue == 0 else self.margin * 100 / self.revenue


def _total(rows: list[MarginRow], meter: str, model: str = "") -> MarginRow:
    usage = [r for r in rows if r.usage]
    one_meter = len({r.meter for r in usage}) == 1
    return MarginRow(
        meter=meter,
        model=model,
        customer="",
        usage=bool(usage),
        units=sum((r.units or ZERO for r in usage), ZERO) if one_meter else None,
        credits=sum((r.credits for r in rows), ZERO),
        revenue=sum((r.revenue for r in rows), ZERO),
        cost=sum((r.cost for r in rows), ZERO),
        uncosted_events=sum(r.uncosted_events for r in rows),
    )


@dataclass(frozen=True)
class ModelGroup:
    model: str
    rows: list[MarginRow]
    total: MarginRow


@dataclass(frozen=True)
class MeterGroup:
    meter: str
    models: list[ModelGroup]
    total: MarginRow

    @property
    def row_count(self) -> int:
        return sum(len(m.rows) for m in self.models)


@dataclass(frozen=True)
class CurrencyMargin:
    currency: str
    usage: list[MarginRow]  # by meter, model, customer
    other: list[MarginRow]  # revenue no event earned, by label and customer
    total: MarginRow

    @property
    def rows(self) -> list[MarginRow]:
        return self.usage + self.other

    @property
    def meters(self) -> list[MeterGroup]:
        groups = []
        for meter, of_meter in groupby(self.usage, key=lambda r: r.meter):
            meter_rows = list(of_meter)
            models = [
                ModelGroup(model, rows, _total(rows, meter, model))
                for model, rows in ((m, list(g)) for m, g in groupby(meter_rows, lambda r: r.model))
            ]
            groups.append(MeterGroup(meter, models, _total(meter_rows, meter)))
        return groups


@dataclass(frozen=True)
class MarginReport:
    month: date
    currencies: list[CurrencyMargin]


def margin_report(*, month: date) -> MarginReport:
    start = month.replace(day=1)
    end = (start + timedelta(days=32)).replace(day=1)
    sums = _Sums()
    _add_usage(sums, start, end)
    _add_revenue(sums, start, end)
    return MarginReport(month=start, currencies=sums.by_currency())


# --- collecting ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Key:
    currency: str
    customer_id: int
    meter_id: int | None  # None: revenue no event earned
    label: str  # the model, or what the revenue is


@dataclass
class _Values:
    units: Decimal = ZERO
    credits: Decimal = ZERO
    revenue: Decimal = ZERO
    cost: Decimal = ZERO
    uncosted_events: int = 0


@dataclass
class _Sums:
    values: defaultdict[_Key, _Values] = field(default_factory=lambda: defaultdict(_Values))

    def revenue(self, key: _Key, amount: Decimal) -> None:
        if amount:
            self.values[key].revenue += amount

    def by_currency(self) -> list[CurrencyMargin]:
        meters = {m.pk: m.label for m in Meter.objects.filter(pk__in=self._ids("meter_id"))}
        customers = dict(
            Customer.objects.filter(pk__in=self._ids("customer_id")).values_list(
                "pk", "external_id"
            )
        )
        rows: dict[str, list[MarginRow]] = defaultdict(list)
        for key, v in self.values.items():
            rows[key.currency].append(
                MarginRow(
                    meter=key.label if key.meter_id is None else meters[key.meter_id],
                    model="" if key.meter_id is None else key.label,
                    customer=customers[key.customer_id],
                    usage=key.meter_id is not None,
                    units=v.units,
                    credits=v.credits,
                    revenue=v.revenue,
                    cost=v.cost,
                    uncosted_events=v.uncosted_events,
                )
            )
        return [_section(currency, rows[currency]) for currency in sorted(rows)]

    def _ids(self, name: str) -> set[int]:
        return {i for i in (getattr(k, name) for k in self.values) if i is not None}


def _section(currency: str, rows: list[MarginRow]) -> CurrencyMargin:
    ordered = sorted(rows, key=lambda r: (r.meter, r.model, r.customer))
    return CurrencyMargin(
        currency=currency,
        usage=[r for r in ordered if r.usage],
        other=[r for r in ordered if not r.usage],
        total=_total(ordered, "Total"),
    )


def model_label(model: str | None, dimensions: str | None) -> str:
    """The event's ``model`` dimension; without one, its dimensions (``region=eu``)."""
    if model is not None:
        return model
    found = json.loads(dimensions) if dimensions else {}
    return ", ".join(f"{k}={v}" for k, v in sorted(found.items())) or NO_DIMENSIONS


def _midnight(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _add_usage(sums: _Sums, start: date, end: date) -> None:
    """Units, credits and cost of the month's rated events that were not cancelled."""
    groups = (
        EventRating.objects.filter(
            status=RatingStatus.RATED,
            event__timestamp__gte=_midnight(start),
            event__timestamp__lt=_midnight(end),
        )
        .exclude(Exists(EventCancellation.objects.filter(event_id=OuterRef("event_id"))))
        .annotate(
            model=KeyTextTransform("model", "event__dimensions"),
            # The whole dimensions only where there is no model: grouping stays by model.
            others=Case(
                When(model__isnull=True, then=Cast("event__dimensions", TextField())),
                default=Value(""),
                output_field=TextField(),
            ),
            # Cost is in the catalog's currency; an event without one counts in its
            # customer's.
            currency=Case(
                When(cost__isnull=False, then=F("rate__cost_currency")),
                default=F("event__customer__currency"),
                output_field=CharField(),
            ),
        )
        .values("currency", "event__customer_id", "event__meter_id", "model", "others")
        .annotate(
            units_sum=Sum("units"),
            credits_sum=Sum("credits"),
            cost_sum=Sum("cost"),
            uncosted=Count("pk", filter=Q(cost__isnull=True)),
        )
        .order_by()
    )
    for g in groups:
        key = _Key(
            g["currency"],
            g["event__customer_id"],
            g["event__meter_id"],
            model_label(g["model"], g["others"]),
        )
        values = sums.values[key]
        values.units += g["units_sum"]
        values.credits += g["credits_sum"]
        values.cost += g["cost_sum"] or ZERO
        values.uncosted_events += g["uncosted"]


# A ledger entry names its cause as text: an event, or for a tiered rate's true-up
# "<period id>:<rate id>". The usage it is for is the event's meter and dimensions, or the
# rate's meter and match. CASEs, so a cast never meets another cause's id.
_USAGE_OF_ENTRY = f"""
LEFT JOIN {MeterEvent._meta.db_table} e ON e.id =
    CASE WHEN l.cause_type = 'event' AND l.cause_id ~ '^[0-9]+$' THEN l.cause_id::bigint END
LEFT JOIN {Rate._meta.db_table} t ON t.id =
    CASE WHEN l.cause_type = 'tier_true_up' AND l.cause_id ~ '^[0-9]+:[0-9]+$'
         THEN split_part(l.cause_id, ':', 2)::bigint END
"""
_METER = "COALESCE(e.meter_id, t.meter_id)"
_DIMENSIONS = "COALESCE(e.dimensions, t.match)"
_MODEL = f"{_DIMENSIONS} ->> 'model'"
_OTHERS = f"CASE WHEN {_MODEL} IS NULL THEN {_DIMENSIONS}::text END"

# The month's revenue entries, summed by what earned them. Every entry falls in exactly
# one group, so the report adds up to revenue_report's total.
_REVENUE_SQL = f"""
SELECT r.amount_currency, r.customer_id, r.kind,
       CASE WHEN r.kind = %s THEN r.invoice_line_id END,
       {_METER}, {_MODEL}, {_OTHERS}, c.event_id IS NOT NULL, SUM(r.amount)
FROM {RevenueEntry._meta.db_table} r
LEFT JOIN {LedgerEntry._meta.db_table} l ON l.id = r.ledger_entry_id
{_USAGE_OF_ENTRY}
LEFT JOIN {EventCancellation._meta.db_table} c ON c.event_id = e.id
WHERE r.recognized_on >= %s AND r.recognized_on < %s
GROUP BY 1, 2, 3, 4, 5, 6, 7, 8
"""

# The credits each line bills (entries without a grant: overage, and overage given back),
# by the meter and model of the usage they are for.
_LINE_SHARES_SQL = f"""
SELECT x.line_id, {_METER}, {_MODEL}, {_OTHERS}, -SUM(l.credits)
FROM {InvoiceLineEntry._meta.db_table} x
JOIN {LedgerEntry._meta.db_table} l ON l.id = x.entry_id
{_USAGE_OF_ENTRY}
WHERE x.line_id = ANY(%s) AND l.grant_id IS NULL
GROUP BY 1, 2, 3, 4
ORDER BY 1, 2 NULLS LAST, 3 NULLS LAST, 4 NULLS LAST
"""


def _add_revenue(sums: _Sums, start: date, end: date) -> None:
    with connection.cursor() as cursor:
        cursor.execute(_REVENUE_SQL, [RevenueKind.OVERAGE.value, start, end])
        groups = cursor.fetchall()
    lines: dict[int, tuple[str, int, Decimal]] = {}
    for currency, customer_id, kind, line_id, meter_id, model, others, cancelled, amount in groups:
        if line_id is not None:
            before = lines.get(line_id, (currency, customer_id, ZERO))[2]
            lines[line_id] = (currency, customer_id, before + amount)
        elif kind == RevenueKind.RECOGNIZED_USAGE and meter_id is not None:
            label = CANCELLED if cancelled else model_label(model, others)
            sums.revenue(
                _Key(currency, customer_id, None if cancelled else meter_id, label), amount
            )
        else:
            sums.revenue(_Key(currency, customer_id, None, OTHER_LABELS[kind]), amount)
    _share_lines(sums, lines)


def _share_lines(sums: _Sums, lines: dict[int, tuple[str, int, Decimal]]) -> None:
    """Each overage line's revenue, shared among its events by their overage credits."""
    if not lines:
        return
    with connection.cursor() as cursor:
        cursor.execute(_LINE_SHARES_SQL, [list(lines)])
        shares = cursor.fetchall()
    by_line: dict[int, list[tuple[int | None, str, Decimal]]] = defaultdict(list)
    for line_id, meter_id, model, others, credits in shares:
        by_line[line_id].append((meter_id, model_label(model, others), credits))
    for line_id, (currency, customer_id, amount) in lines.items():
        parts = by_line.get(line_id, [])
        if sum((credits for _, _, credits in parts), ZERO) == 0:
            parts = [(None, "", Decimal(1))]  # no event to share it with
        shares = split(amount, [credits for _, _, credits in parts])
        for (meter_id, label, _), share in zip(parts, shares, strict=True):
            if meter_id is None:
                label = OTHER_LABELS[RevenueKind.OVERAGE]
            sums.revenue(_Key(currency, customer_id, meter_id, label), share)


def split(amount: Decimal, weights: list[Decimal]) -> list[Decimal]:
    """``amount`` in proportion to ``weights``, to 8 places; the last share takes the
    remainder, so the shares add up to ``amount`` exactly."""
    whole = sum(weights, ZERO)
    shares = [(amount * weight / whole).quantize(EIGHT) for weight in weights[:-1]]
    return [*shares, amount - sum(shares, ZERO)]


# --- for people ----------------------------------------------------------------------------

TENTH = Decimal("0.1")


def money_text(amount: Decimal, currency: str | None = None) -> str:
    """Rounded to cents: "$1,234.50" with a currency, "1,234.50" without."""
    cents = to_cents(amount)
    return str(Money(cents, currency)) if currency else f"{cents:,.2f}"


def percent_text(value: Decimal | None) -> str:
    """One decimal: "82.9%"; "—" when there is no revenue to compare with."""
    if value is None:
        return DASH
    return f"{value.quantize(TENTH, rounding=ROUND_HALF_UP):,.1f}%"
