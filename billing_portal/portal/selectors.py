"""Reads for the portal pages. Numbers come from the same selectors as the API."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from django.db.models import Sum
from django.utils import timezone
from djmoney.money import Money

from billing_portal.alerts.selectors import SpendControls, spend_controls_from
from billing_portal.csv_safe import Cell
from billing_portal.invoicing.models import CreditPackPurchase, PurchaseStatus
from billing_portal.invoicing.services import period_invoice_total
from billing_portal.portal.models import PortalMembership, Role
from billing_portal.portal.templatetags.portal import price_text
from ledger.models import (
    CREDIT_QUANTUM,
    ZERO,
    CauseType,
    CreditGrant,
    EntryKind,
    GrantCategory,
    LedgerEntry,
    LedgerOperation,
)
from ledger.units import credits_exact, credits_text, rfc3339, to_cents
from metering.models import EventRating, MeterEvent
from metering.selectors import balance_read, entitlements_of, usage_rows
from plans.models import (
    Customer,
    Meter,
    OveragePolicy,
    PlanVersion,
    SubscriptionPeriod,
    Workspace,
)
from plans.money import as_money

RANGES = {"1": 1, "7": 7, "30": 30, "90": 90}
# A range of at most this many days is drawn hour by hour.
HOURLY_UP_TO_DAYS = 2
CUSTOM_RANGE_MAX_DAYS = 366
GROUPS = {"model": "model", "feature": "feature", "workspace": "workspace"}
NO_WORKSPACE = "No workspace"
PALETTE = ["#2563eb", "#f59e0b", "#10b981", "#ef4444", "#8b5cf6", "#0ea5e9", "#64748b"]


@dataclass(frozen=True)
class Dashboard:
    available: Decimal
    held: Decimal
    included: Decimal | None
    included_left: Decimal | None
    used: Decimal | None
    overage: Decimal | None
    days_left: int | None
    period_end: datetime | None
    run_out_on: date | None
    daily_burn: Decimal | None
    plan_name: str | None
    when_out: str
    spend_limit: Decimal | None
    spend_limit_reached: bool
    # What a credit costs on the plan (its overage price), and the limit's money worth at
    # that price; None when the plan sells no credits by the unit.
    price_per_credit: Money | None = None
    spend_limit_value: Money | None = None
    overage_value: Money | None = None
    daily_burn_value: Money | None = None
    # Read with the figures above, so the page reads the balance once.
    period: SubscriptionPeriod | None = None
    parts: list[BalancePart] = field(default_factory=list)
    controls: SpendControls | None = None


EXPIRING_SOON_DAYS = 14


@dataclass(frozen=True)
class BalancePart:
    """One grant behind the available balance, as the customer reads it."""

    source: str
    remaining: Decimal
    expires_at: datetime | None
    expiring_in_days: int | None  # set when it expires within EXPIRING_SOON_DAYS
    workspace: str | None


def balance_parts(*, grants: Sequence[CreditGrant], now: datetime) -> list[BalancePart]:
    """What the balance is made of: each usable grant with credits left, soonest to
    expire first (those without an expiry last)."""
    parts = [_balance_part(g, now) for g in grants if g.remaining > 0]
    return sorted(parts, key=lambda p: (p.expires_at is None, p.expires_at or now))


def _balance_part(grant: CreditGrant, now: datetime) -> BalancePart:
    days = (grant.expires_at - now).days if grant.expires_at else None
    words = _grant_words(grant)
    return BalancePart(
        source=words[:1].upper() + words[1:],
        remaining=grant.remaining,
        expires_at=grant.expires_at,
        expiring_in_days=days if days is not None and days < EXPIRING_SOON_DAYS else None,
        workspace=grant.workspace,
    )


def dashboard_for(*, customer: Customer, now: datetime | None = None) -> Dashboard:
    now = now or timezone.now()
    reading = balance_read(customer)
    payload = reading.payload
    period = payload["period"]
    subscription = reading.subscription
    version = subscription.plan_version if subscription else None
    available = Decimal(payload["available"])
    included_left = Decimal(period["included_left"]) if period else ZERO
    used = Decimal(period["used"]) if period else None
    start = datetime.fromisoformat(period["start"]) if period else None
    end = datetime.fromisoformat(period["end"]) if period else None
    burn = _daily_burn(used, start, now)
    limit = customer.spend_limit_credits
    price = price_per_credit(version)
    return Dashboard(
        available=available,
        held=Decimal(payload["held"]),
        included=Decimal(period["included"]) if period else None,
        included_left=included_left if period else None,
        used=used,
        overage=Decimal(period["overage"]) if period else None,
        days_left=max((end - now).days, 0) if end else None,
        period_end=end,
        run_out_on=_run_out(available, burn, now),
        daily_burn=burn,
        plan_name=version.name if version else None,
        when_out=when_credits_run_out(version, limit),
        spend_limit=limit,
        spend_limit_reached=payload["limits"]["spend_limit_reached"],
        price_per_credit=price,
        spend_limit_value=credits_value(limit, price),
        overage_value=credits_value(Decimal(period["overage"]) if period else None, price),
        daily_burn_value=credits_value(burn, price),
        period=reading.period,
        parts=balance_parts(grants=reading.balance.grants, now=reading.balance.as_of),
        controls=spend_controls_from(payload),
    )


def price_per_credit(version: PlanVersion | None) -> Money | None:
    """The plan's price of one credit (its overage price), the rate at which the portal
    shows credits as money; None when the plan has none."""
    raw = version.overage_price_per_credit if version else None
    return as_money(raw) if raw is not None else None


def credits_value(amount: Decimal | None, price: Money | None) -> Money | None:
    """What ``amount`` credits are worth at ``price``, to the cent (a figure shown to people,
    not an invoice line)."""
    if amount is None or price is None:
        return None
    return Money(to_cents(amount * price.amount), price.currency)


def estimated_bill(*, period: SubscriptionPeriod | None) -> Money | None:
    """The total of the upcoming invoice of the period in force (the API's
    ``upcoming_invoice``, period close's own calculation); None without one."""
    return period_invoice_total(period=period) if period is not None else None


def recharge_card_purchase(*, customer: Customer) -> CreditPackPurchase | None:
    """The last pack paid at checkout: Stripe saved its card for off-session charges, so
    auto-recharge charges that card unless the customer set another default in Stripe."""
    return (
        CreditPackPurchase.objects.filter(
            customer=customer, status=PurchaseStatus.PAID, source="portal"
        )
        .exclude(stripe_payment_intent_id="")
        .select_related("pack")
        .order_by("-paid_at", "-pk")
        .first()
    )


@dataclass(frozen=True)
class FeatureLine:
    """A feature of the customer's plan as the dashboard shows it."""

    name: str
    included: bool
    usage: str | None  # for a limited feature: "3 of 500 summaries used this period, 497 left"


def plan_features_for(
    *, customer: Customer, period: SubscriptionPeriod | None
) -> list[FeatureLine]:
    """The entitlements the API answers for the period in force, worded for people (the
    catalog gives a feature a code only: its words are read from it)."""
    lines = []
    features = entitlements_of(customer=customer, period=period) if period is not None else []
    for feature in features:
        usage = None
        if feature.limit is not None and feature.used is not None:
            left = feature.remaining if feature.remaining is not None else ZERO
            usage = (
                f"{credits_exact(feature.used)} of {credits_exact(feature.limit)} "
                f"{feature.unit} used this period, {credits_exact(left)} left"
            )
        name = feature.code.replace("_", " ").replace("-", " ")
        lines.append(FeatureLine(name[:1].upper() + name[1:], feature.enabled, usage))
    return lines


def _daily_burn(used: Decimal | None, start: datetime | None, now: datetime) -> Decimal | None:
    if used is None or start is None or used <= 0:
        return None
    elapsed = Decimal((now - start).total_seconds()) / Decimal(86400)
    # Less than a day of history would make an hour's spike look like the daily rate.
    return used / max(elapsed, Decimal(1))


def _run_out(available: Decimal, burn: Decimal | None, now: datetime) -> date | None:
    if burn is None or burn <= 0:
        return None
    if available <= 0:
        return now.date()
    days = int((available / burn).to_integral_value(rounding="ROUND_FLOOR"))
    return (now + timedelta(days=min(days, 3650))).date()


def when_credits_run_out(version: PlanVersion | None, limit: Decimal | None) -> str:
    """The plan's overage policy, in the words a customer would use."""
    if version is None:
        text = "You have no active plan: usage is refused once your credits are used up."
    elif version.overage_policy == OveragePolicy.HARD_STOP:
        text = (
            f"On the {version.name} plan, requests are refused as soon as your credits run "
            "out. Buy a credit pack or turn on auto-recharge to keep going."
        )
    elif version.overage_policy == OveragePolicy.SOFT_LIMIT:
        percent = (version.soft_limit_percent or ZERO).normalize()
        text = (
            f"On the {version.name} plan, usage may go up to {percent:f}% "
            "beyond your credits; after that, requests are refused."
        )
    else:
        price = price_per_credit(version)
        # Money's display rounds to cents; an overage price is often a fraction of one.
        each = price_text(price) if price else "the plan's price"
        text = (
            f"On the {version.name} plan, usage continues when credits run out and is "
            f"billed as overage at {each} per credit on your next invoice."
        )
    if limit is not None:
        text += f" Your monthly spend limit stops all usage at {credits_text(limit)} credits."
    return text


# --- usage chart and table ------------------------------------------------------------


@dataclass
class Segment:
    label: str
    color: str
    credits: Decimal
    y: Decimal = Decimal(0)
    height: Decimal = Decimal(0)


@dataclass
class Bar:
    day: date
    x: Decimal
    segments: list[Segment] = field(default_factory=list)
    show_label: bool = False
    # Every other date label, hidden where the chart is too narrow for all of them.
    label_alt: bool = False
    hour: datetime | None = None  # an hourly chart's bar: the hour it starts (UTC)

    @property
    def label(self) -> str:
        return f"{self.hour:%H:00}" if self.hour else f"{self.day:%-d %b}"

    @property
    def total(self) -> Decimal:
        return sum((s.credits for s in self.segments), ZERO)

    @property
    def description(self) -> str:
        """The bar in words, for keyboards, touch and screen readers."""
        parts = "; ".join(f"{s.label} {credits_text(s.credits)}" for s in self.segments)
        when = f"{self.day:%-d %b} {self.hour:%H:00} UTC" if self.hour else f"{self.day:%-d %b}"
        text = f"{when}: {credits_text(self.total)} credits"
        return f"{text} ({parts})" if len(self.segments) > 1 else text


@dataclass(frozen=True)
class Tick:
    """A gridline of the y-axis: its value in credits and where it is drawn."""

    credits: Decimal
    y: Decimal


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    legend: list[tuple[str, str]]
    max_credits: Decimal
    width: int
    height: int
    bar_width: Decimal
    plot_top: int
    plot_bottom: int
    ticks: list[Tick] = field(default_factory=list)

    @property
    def total(self) -> Decimal:
        return sum((bar.total for bar in self.bars), ZERO)


def nice_ceiling(value: Decimal) -> Decimal:
    """The smallest of 1, 2, 2.5, 5 x 10^k at or above ``value``: a round top for the
    axis, so its gridlines fall on round numbers."""
    if value <= 0:
        return Decimal(1)
    power = Decimal(10) ** (value.adjusted())
    for step in (1, 2, Decimal("2.5"), 5, 10):
        if power * step >= value:
            return (power * step).normalize()
    return power * 10


def _ticks(top: Decimal, plot_top: int, plot_bottom: int) -> list[Tick]:
    """Gridlines at 0, 1/4, 1/2, 3/4 and all of the axis's top."""
    height = Decimal(plot_bottom - plot_top)
    return [
        Tick((top * i / 4).normalize(), _px(Decimal(plot_bottom) - height * i / 4))
        for i in range(5)
    ]


@dataclass(frozen=True)
class UsageLine:
    feature: str
    model: str
    token_type: str
    value: Decimal
    credits: Decimal
    money: Money | None = None  # the credits' worth at the plan's price per credit


def _label(row: dict[str, object], group: str, names: dict[str, str]) -> str:
    dimensions = row["dimensions"]
    assert isinstance(dimensions, dict)
    if group == "workspace":
        key = dimensions.get("workspace") or ""
        return names.get(f"workspace:{key}", key) if key else NO_WORKSPACE
    if group == "model" and dimensions.get("model"):
        return str(dimensions["model"])
    return names.get(str(row["meter"]), str(row["meter"]))


def _meter_names() -> dict[str, str]:
    """What people read for each meter: its display name (an LLM call's "Input tokens",
    "Output tokens"), else its code."""
    return {code: name or code for code, name in Meter.objects.values_list("code", "display_name")}


@dataclass(frozen=True)
class UsageRange:
    """The dashboard's usage window: the last N days, or days the customer chose."""

    start: datetime
    end: datetime
    key: str  # "7", "30", ... or "custom"
    hourly: bool

    @property
    def days(self) -> int:
        return max(1, (self.end - self.start + timedelta(seconds=1)).days)

    @property
    def words(self) -> str:
        if self.key == "custom":
            last = (self.end - timedelta(microseconds=1)).date()
            return f"{self.start:%-d %b %Y} to {last:%-d %b %Y}"
        return "the last 24 hours" if self.key == "1" else f"the last {self.key} days"


def usage_range(
    *, key: str, start: date | None = None, end: date | None = None, now: datetime | None = None
) -> UsageRange:
    """``start``/``end`` (days, inclusive, checked by the caller) win over ``key``."""
    now = now or timezone.now()
    if start is not None and end is not None:
        begin = datetime.combine(start, time(), tzinfo=UTC)
        finish = min(datetime.combine(end + timedelta(days=1), time(), tzinfo=UTC), now)
        return UsageRange(begin, finish, "custom", (end - start).days + 1 <= HOURLY_UP_TO_DAYS)
    days = RANGES.get(key, 30)
    if days <= HOURLY_UP_TO_DAYS:
        hour = now.replace(minute=0, second=0, microsecond=0)
        return UsageRange(hour - timedelta(hours=24 * days - 1), now, key, True)
    first = now.date() - timedelta(days=days - 1)
    return UsageRange(datetime.combine(first, time(), tzinfo=UTC), now, key, False)


def usage_chart(
    *,
    customer: Customer,
    days: int | None = None,
    group: str,
    window: UsageRange | None = None,
    now: datetime | None = None,
) -> Chart:
    window = window or usage_range(key=str(days or 30), now=now)
    rows = usage_rows(
        customer=customer,
        start=window.start,
        end=window.end,
        group_by=["workspace"] if group == "workspace" else ["model"],
        granularity="hour" if window.hourly else "day",
    )
    per_bucket: dict[datetime, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    names = _meter_names()
    if group == "workspace":
        # A workspace's name where the operator gave one (POST /workspaces), else its key.
        names.update(
            (f"workspace:{key}", name or key)
            for key, name in Workspace.objects.filter(customer=customer).values_list("key", "name")
        )
    for row in rows:
        bucket = datetime.fromisoformat(str(row["period_start"]))
        per_bucket[bucket][_label(row, group, names)] += Decimal(str(row["credits"]))
    labels = sorted({label for totals in per_bucket.values() for label in totals})
    colors = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}
    return _layout(_buckets(window), window.hourly, per_bucket, colors)


def _buckets(window: UsageRange) -> list[datetime]:
    step = timedelta(hours=1) if window.hourly else timedelta(days=1)
    moment = (
        window.start.replace(minute=0, second=0, microsecond=0)
        if window.hourly
        else datetime.combine(window.start.date(), time(), tzinfo=UTC)
    )
    out = []
    while moment < window.end:
        out.append(moment)
        moment += step
    return out or [moment]


def _layout(
    buckets: list[datetime],
    hourly: bool,
    per_bucket: dict[datetime, dict[str, Decimal]],
    colors: dict[str, str],
) -> Chart:
    width, height, left, top, bottom = 720, 250, 56, 24, 220
    count = len(buckets)
    slot = Decimal(width - left - 8) / count
    peak = max((sum(t.values(), ZERO) for t in per_bucket.values()), default=ZERO)
    axis_top = nice_ceiling(peak)
    scale = Decimal(bottom - top) / axis_top
    every = max(count // 7, 1)
    bars = []
    for i, moment in enumerate(buckets):
        bar = Bar(
            day=moment.date(),
            x=_px(left + slot * i + slot / 10),
            show_label=i % every == 0,
            label_alt=(i // every) % 2 == 1,
            hour=moment if hourly else None,
        )
        y = Decimal(bottom)
        for label in colors:
            amount = per_bucket.get(moment, {}).get(label, ZERO)
            if amount > 0:
                h = amount * scale
                y -= h
                bar.segments.append(Segment(label, colors[label], amount, _px(y), _px(h)))
        bars.append(bar)
    return Chart(
        bars=bars,
        legend=list(colors.items()),
        max_credits=peak,
        width=width,
        height=height,
        bar_width=_px(slot * Decimal("0.8")),
        plot_top=top,
        plot_bottom=bottom,
        ticks=_ticks(axis_top, top, bottom) if peak > 0 else [],
    )


def _px(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.1"), rounding=ROUND_HALF_UP)


def usage_table(
    *,
    customer: Customer,
    days: int | None = None,
    price: Money | None = None,
    window: UsageRange | None = None,
    now: datetime | None = None,
) -> list[UsageLine]:
    window = window or usage_range(key=str(days or 30), now=now)
    rows = usage_rows(
        customer=customer,
        start=window.start,
        end=window.end,
        group_by=["model", "token_type"],
        granularity="month",
    )
    totals: dict[tuple[str, str, str], list[Decimal]] = defaultdict(lambda: [ZERO, ZERO])
    names = _meter_names()
    for row in rows:
        dims = row["dimensions"]
        meter = str(row["meter"])
        key = (names.get(meter, meter), dims.get("model") or "", dims.get("token_type") or "")
        totals[key][0] += Decimal(str(row["value"]))
        totals[key][1] += Decimal(str(row["credits"]))
    lines = [
        UsageLine(*key, value=v, credits=c, money=credits_value(c, price))
        for key, (v, c) in totals.items()
    ]
    return sorted(lines, key=lambda line: -line.credits)


def usage_total(lines: list[UsageLine]) -> Decimal:
    """The table's total credits (units of different meters do not add up; the money a
    period costs is the estimated bill, which depends on which credits paid)."""
    return sum((line.credits for line in lines), ZERO)


# --- activity -------------------------------------------------------------------------


@dataclass(frozen=True)
class Activity:
    at: datetime
    text: str
    credits: Decimal
    kind: str = ""
    # The account's posted credits after this row's operation, on the operation's first
    # row (None on the others: one operation may write several rows).
    balance_after: Decimal | None = None


# The activity filter: what people look for, and the ledger entry kinds it means.
ACTIVITY_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "usage": ("Usage", (EntryKind.CONSUME, EntryKind.OVERAGE)),
    "added": ("Credits added", (EntryKind.GRANT,)),
    "removed": ("Expired or removed", (EntryKind.EXPIRE, EntryKind.VOID)),
    "returned": ("Returned or adjusted", (EntryKind.REVERSAL, EntryKind.ADJUSTMENT)),
}


SOURCE_WORDS = {"credit_pack_purchase": "pack purchase", "staff": "added by our team"}
CATEGORY_WORDS: dict[str, str] = {
    GrantCategory.INCLUDED: "credits included in your plan",
    GrantCategory.PAID: "pack purchase",
    GrantCategory.PROMOTIONAL: "promotional credits",
    GrantCategory.ROLLOVER: "unused credits rolled over",
}
Group = Mapping[str, Any]
KIND_WORDS: dict[str, str] = {
    EntryKind.EXPIRE: "expired",
    EntryKind.VOID: "withdrawn",
    EntryKind.ADJUSTMENT: "adjusted",
    EntryKind.REVERSAL: "returned: usage cancelled",
}


def activity_for(
    *, customer: Customer, limit: int = 50, offset: int = 0, kind: str | None = None
) -> list[Activity]:
    """Ledger movements, one line per operation and kind, newest first; ``kind`` one of
    ``ACTIVITY_KINDS`` to show only those."""
    entries = LedgerEntry.objects.filter(account_id=customer.account_id).exclude(
        kind__in=[EntryKind.HOLD, EntryKind.CAPTURE, EntryKind.RELEASE]
    )
    if kind in ACTIVITY_KINDS:
        entries = entries.filter(kind__in=ACTIVITY_KINDS[kind][1])
    groups = list(
        entries.values("operation_id", "kind", "cause_type", "cause_id", "meter")
        .annotate(credits=Sum("credits"), grant=Sum("grant_id"))
        .order_by("-operation_id", "kind")[offset : offset + limit]
    )
    op_times = dict(
        LedgerEntry.objects.filter(operation_id__in=[g["operation_id"] for g in groups])
        .values_list("operation_id", "created_at")
        .order_by()
        .distinct()
    )
    events = _events_by_id(groups)
    grants = _grants_by_id(groups)
    # What staff (or the operator's API calls) wrote for the customer; never the memo.
    described = dict(
        LedgerOperation.objects.filter(pk__in=op_times)
        .exclude(description="")
        .values_list("pk", "description")
    )
    # A rating batch is one operation for many events: newest event first within it.
    groups.sort(key=lambda g: (g["operation_id"], _event_time(g, events)), reverse=True)
    balances = _balances_after(customer, [g["operation_id"] for g in groups])
    out = []
    seen: set[int] = set()
    for g in groups:
        first = g["operation_id"] not in seen
        seen.add(g["operation_id"])
        out.append(
            Activity(
                at=op_times[g["operation_id"]],
                text=_described(g, described.get(g["operation_id"]))
                or _describe(g, events, grants),
                credits=g["credits"] or ZERO,
                kind=str(g["kind"]),
                balance_after=balances.get(g["operation_id"]) if first else None,
            )
        )
    return out


def _balances_after(customer: Customer, operation_ids: list[int]) -> dict[int, Decimal]:
    """The posted credits (what grants hold) after each operation: today's, less what the
    later operations moved. Overage entries move no grant and change nothing."""
    if not operation_ids:
        return {}
    oldest = min(operation_ids)
    moved = dict(
        LedgerEntry.objects.filter(
            account_id=customer.account_id, operation_id__gt=oldest, grant__isnull=False
        )
        .values("operation_id")
        .annotate(total=Sum("credits"))
        .values_list("operation_id", "total")
    )
    now = (
        CreditGrant.objects.filter(account_id=customer.account_id).aggregate(
            total=Sum("remaining")
        )["total"]
        or ZERO
    )
    later = ZERO
    balances: dict[int, Decimal] = {}
    for operation in sorted(set(operation_ids) | set(moved), reverse=True):
        if operation in operation_ids:
            balances[operation] = now - later
        later += moved.get(operation, ZERO)
    return balances


@dataclass(frozen=True)
class ActivityDay:
    day: date
    items: list[Activity]


def activity_by_day(items: list[Activity], zone: ZoneInfo) -> list[ActivityDay]:
    """Rows grouped by their day in the customer's time zone, newest first."""
    days: list[ActivityDay] = []
    for item in items:
        day = item.at.astimezone(zone).date()
        if not days or days[-1].day != day:
            days.append(ActivityDay(day, []))
        days[-1].items.append(item)
    return days


def customer_zone(customer: Customer) -> ZoneInfo:
    try:
        return ZoneInfo(customer.timezone or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


def _event_time(group: Group, events: dict[str, MeterEvent]) -> datetime:
    event = events.get(str(group["cause_id"]))
    return event.timestamp if event else datetime.min.replace(tzinfo=UTC)


def _events_by_id(groups: Sequence[Group]) -> dict[str, MeterEvent]:
    ids = [
        str(g["cause_id"])
        for g in groups
        if g["cause_type"] == CauseType.EVENT and str(g["cause_id"]).isdigit()
    ]
    return {str(e.pk): e for e in MeterEvent.objects.filter(pk__in=ids).select_related("meter")}


def _grants_by_id(groups: Sequence[Group]) -> dict[int, CreditGrant]:
    ids = [int(g["grant"]) for g in groups if g["kind"] == EntryKind.GRANT and g["grant"]]
    return {g.pk: g for g in CreditGrant.objects.filter(pk__in=ids)}


def _described(group: Group, description: str | None) -> str:
    """The operation's own sentence with its size: "Credits removed: Service outage
    (1,500 credits)"."""
    if not description:
        return ""
    return f"{description} ({_size(group)})"


def _size(group: Group) -> str:
    amount = abs(group["credits"] or ZERO)
    return f"{credits_text(amount)} credit{'' if amount == 1 else 's'}"


def _describe(group: Group, events: dict[str, MeterEvent], grants: dict[int, CreditGrant]) -> str:
    amount = group["credits"] or ZERO
    assert isinstance(amount, Decimal)
    size = f"{credits_text(abs(amount))} credit{'' if abs(amount) == 1 else 's'}"
    kind = group["kind"]
    if kind == EntryKind.GRANT:
        grant = grants.get(int(group["grant"] or 0))
        return f"{size} added: {_grant_words(grant)}"
    if kind in (EntryKind.CONSUME, EntryKind.OVERAGE):
        event = events.get(str(group["cause_id"]))
        what = _event_words(event) if event else str(group["meter"] or "usage")
        extra = " beyond your credits (overage)" if kind == EntryKind.OVERAGE else ""
        when = f" on {event.timestamp:%-d %b}" if event else ""
        return f"{size} used by {what}{when}{extra}"
    return f"{size} {KIND_WORDS.get(str(kind), str(kind))}"


def _grant_words(grant: CreditGrant | None) -> str:
    if grant is None:
        return "credit grant"
    if grant.source_type in SOURCE_WORDS:
        return SOURCE_WORDS[grant.source_type]
    # Never the reason code: it is staff's word, not the customer's.
    return CATEGORY_WORDS.get(grant.category, "credit grant")


def _event_words(event: MeterEvent) -> str:
    dims = [v for k, v in sorted(event.dimensions.items(), key=_dim_order)]
    if event.parent_identifier or event.meter.display_name:
        # One part of a call ("Output tokens (large)"): the dimensions alone would read the
        # same for every part.
        return f"{event.meter.label} ({' / '.join(dims)})" if dims else event.meter.label
    return " / ".join(dims) if dims else event.meter.code


def _dim_order(item: tuple[str, str]) -> tuple[int, str]:
    order = {"model": 0, "token_type": 1}
    return (order.get(item[0], 2), item[0])


# --- export ---------------------------------------------------------------------------

EXPORT_HEADER = [
    "identifier",
    "timestamp",
    "event_name",
    "meter",
    "dimensions",
    "workspace",
    "value",
    "credits",
    "status",
    "note",
]


def usage_export_rows(*, customer: Customer, start: date, end: date) -> Iterator[Sequence[Cell]]:
    """One row per event with timestamp in [start, end], read in chunks: any size streams.

    A cancelled event shows ``cancelled`` with no net credits, and its cancellation follows
    as a row of its own (what was charged and reversed, why). Numbers stay Decimals so the
    CSV writer can tell them from text (see csv_safe).
    """
    events = (
        MeterEvent.objects.filter(
            customer=customer,
            timestamp__gte=datetime.combine(start, time(), tzinfo=UTC),
            timestamp__lt=datetime.combine(end + timedelta(days=1), time(), tzinfo=UTC),
        )
        .select_related("meter", "rating", "cancellation")
        .order_by("timestamp", "pk")
    )
    yield EXPORT_HEADER
    for event in events.iterator(chunk_size=2000):
        yield from _export_rows(event)


def _export_rows(event: MeterEvent) -> Iterator[Sequence[Cell]]:
    rating = getattr(event, "rating", None)
    cancellation = getattr(event, "cancellation", None)
    charged = rating.credits.quantize(CREDIT_QUANTUM) if rating else None
    described = [
        # The identifier it was sent with: an event that fed several meters is one row per
        # meter under one identifier.
        event.parent_identifier or event.identifier,
        rfc3339(event.timestamp),
        event.event_name,
        event.meter.code,
        json.dumps(event.dimensions, sort_keys=True),
        event.workspace or "",
    ]
    if cancellation is None:
        yield [*described, event.value.normalize(), charged, _status(rating), ""]
        return
    yield [*described, event.value.normalize(), ZERO.quantize(CREDIT_QUANTUM), "cancelled", ""]
    yield [
        *described[:1],
        rfc3339(cancellation.created_at),
        *described[2:],
        None,
        None,
        "cancellation",
        f"{cancellation.reason}: {charged or 0} credits charged, reversed",
    ]


def _status(rating: EventRating | None) -> str:
    return rating.status if rating else "pending"


def manager_emails_for(*, customer: Customer) -> list[str]:
    """The e-mails of the customer's portal owners and admins, oldest member first."""
    emails = (
        PortalMembership.objects.filter(customer=customer, role__in=[Role.OWNER, Role.ADMIN])
        .exclude(user__email="")
        .order_by("pk")
        .values_list("user__email", flat=True)
    )
    return list(emails)
