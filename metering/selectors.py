"""Reads over metering's tables: rating's backlog, the balance as customers and the API
see it, usage over time, and a customer's events with what rating made of them."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from typing import Any

from django.db import connection
from django.db.models import Case, CharField, F, Q, QuerySet, Sum, Value, When
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Trunc
from django.utils import timezone

from ledger.models import CreditGrant
from ledger.selectors import Balance, account_balance
from ledger.units import rfc3339
from metering.models import (
    EventCancellation,
    EventKey,
    EventRating,
    MeterEvent,
    PeriodUsage,
    RatingQueue,
    RatingStatus,
    UsageRollup,
)
from plans import selectors as plan_selectors
from plans.models import (
    Aggregation,
    Customer,
    Meter,
    OveragePolicy,
    Subscription,
    SubscriptionPeriod,
)

GRANULARITY = {"hour": "hour", "day": "day", "month": "month"}


@dataclass(frozen=True)
class RatingBacklog:
    """How far rating is behind: what a monitor graphs and /healthz judges."""

    lag_seconds: float  # age of the oldest event waiting for its first rating; 0 when none
    oldest_enqueued_at: datetime | None
    failing: int  # failed at least once, to be tried again
    parked: int  # failed every attempt: waiting for staff


def rating_backlog(*, now: datetime | None = None) -> RatingBacklog:
    now = now or timezone.now()
    with connection.cursor() as cursor:
        # Event ids grow with time, so the lowest queued id is (near enough) the oldest
        # and the primary-key index finds it without scanning a long queue.
        cursor.execute(
            """
            SELECT
                (SELECT enqueued_at FROM metering_ratingqueue
                 WHERE attempts = 0 AND parked_at IS NULL ORDER BY event_id LIMIT 1),
                (SELECT COUNT(*) FROM metering_ratingqueue
                 WHERE attempts > 0 AND parked_at IS NULL),
                (SELECT COUNT(*) FROM metering_ratingqueue
                 WHERE attempts > 0 AND parked_at IS NOT NULL)
            """
        )
        oldest, failing, parked = cursor.fetchone()
    lag = max((now - oldest).total_seconds(), 0.0) if oldest else 0.0
    return RatingBacklog(lag, oldest, failing, parked)


# --- the balance ------------------------------------------------------------------------


def _fmt(value: Decimal) -> str:
    return f"{value:.6f}"


@dataclass(frozen=True)
class BalanceReading:
    """One reading of a customer's balance and what it is judged against: a page that
    shows several of these figures reads them once."""

    balance: Balance
    period: SubscriptionPeriod | None  # the period in force at the balance's moment
    subscription: Subscription | None  # the active one
    payload: dict[str, Any]  # as the API shows it (balance_payload)


def balance_read(customer: Customer) -> BalanceReading:
    """The balance as the API shows it, with the rows it was read from."""
    # The period's usage comes from PeriodUsage (one row), not from summing its entries.
    balance = account_balance(account=customer.account)
    period = plan_selectors.period_in_force(customer=customer, at=balance.as_of)
    usage = PeriodUsage.objects.filter(period=period).first() if period else None
    used = usage.credits if usage else Decimal(0)
    subscription = plan_selectors.subscription_active(customer=customer)
    policy = subscription.plan_version.overage_policy if subscription else None
    limit = customer.spend_limit_credits
    payload = {
        "customer": customer.external_id,
        # What usage with no workspace may draw: pooled credits (as an authorization
        # without a workspace sees it). Each workspace adds its own: see "workspaces".
        "available": _fmt(_pooled(balance.grants) - balance.held),
        "posted": _fmt(balance.posted),
        "held": _fmt(balance.held),
        "workspaces": _workspaces(balance.grants, balance.held),
        "grants": [_grant(g) for g in balance.grants],
        "period": _period(period, usage) if period else None,
        "limits": {
            "overage_policy": policy,
            "hard_stop": policy == OveragePolicy.HARD_STOP,
            "spend_limit": _fmt(limit) if limit is not None else None,
            "spend_limit_reached": limit is not None and used + balance.held >= limit,
        },
        "as_of": rfc3339(balance.as_of),
    }
    return BalanceReading(balance, period, subscription, payload)


def balance_payload(customer: Customer) -> dict[str, Any]:
    """The balance as the API shows it: the one reading the API, the portal and alerts
    share, so the numbers they show agree. Decimals as strings with six places."""
    return balance_read(customer).payload


def _pooled(grants: list[CreditGrant]) -> Decimal:
    return sum((g.remaining for g in grants if g.workspace is None), Decimal(0))


def _workspaces(grants: list[CreditGrant], held: Decimal) -> list[dict[str, str]]:
    """Per workspace with credits of its own: what usage in it may draw (its credits and
    the pooled ones), the figure an authorization in that workspace sees."""
    pooled = _pooled(grants)
    names = sorted({g.workspace for g in grants if g.workspace is not None})
    return [
        {
            "workspace": name,
            "available": _fmt(
                pooled
                + sum((g.remaining for g in grants if g.workspace == name), Decimal(0))
                - held
            ),
        }
        for name in names
    ]


def _own(grants: list[CreditGrant], workspace: str) -> Decimal:
    return sum((g.remaining for g in grants if g.workspace == workspace), Decimal(0))


def _period(period: SubscriptionPeriod, usage: PeriodUsage | None) -> dict[str, str]:
    used_included = plan_selectors.included_credits_used(period_ids=[period.pk]).get(
        period.pk, Decimal(0)
    )
    return {
        "start": rfc3339(period.start),
        "end": rfc3339(period.end),
        "included": _fmt(period.included_credits),
        # Credits charged in the period from any grant, and as overage.
        "used": _fmt(usage.credits if usage else Decimal(0)),
        "overage": _fmt(usage.overage if usage else Decimal(0)),
        # Of the included credits: drawn and left (the figures usage alerts use).
        "included_used": _fmt(used_included),
        "included_left": _fmt(period.included_credits - used_included),
    }


def _grant(grant: CreditGrant) -> dict[str, Any]:
    return {
        "id": str(grant.pk),
        "category": grant.category,
        "remaining": _fmt(grant.remaining),
        "priority": grant.priority,
        "expires_at": rfc3339(grant.expires_at) if grant.expires_at else None,
        "applies_to": list(grant.applies_to),
        "workspace": grant.workspace,
    }


# --- usage --------------------------------------------------------------------------------


def usage_rows(
    *,
    customer: Customer,
    start: datetime,
    end: datetime,
    group_by: list[str],
    granularity: str,
    meter: str | None = None,
) -> list[dict[str, Any]]:
    """Usage from the hourly rollups: cost follows the range asked for, not history."""
    rollups = UsageRollup.objects.filter(customer=customer, hour__gte=_hour(start), hour__lt=end)
    if meter:
        rollups = rollups.filter(meter__code=meter)
    # "workspace" is the events' workspace (a column of its own), any other key a dimension.
    dims: dict[str, Any] = {
        f"dim_{key}": F("workspace") if key == "workspace" else KeyTextTransform(key, "dimensions")
        for key in group_by
    }
    rows = (
        rollups.annotate(bucket=Trunc("hour", GRANULARITY[granularity], tzinfo=UTC), **dims)
        .values("bucket", "meter__code", *dims)
        .annotate(value=Sum("value"), credits=Sum("credits"), events=Sum("events"))
        .order_by("bucket", "meter__code", *dims)
    )
    return [
        {
            "period_start": rfc3339(row["bucket"]),
            "meter": row["meter__code"],
            "dimensions": {key: row[f"dim_{key}"] for key in group_by},
            "value": format(row["value"].normalize(), "f"),
            "credits": _fmt(row["credits"]),
            "events": row["events"],
        }
        for row in rows
    ]


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def meter_dimension_keys() -> list[str]:
    """Every dimension some meter has: what usage may be grouped by."""
    keys = Meter.objects.values_list("dimensions", flat=True)
    return sorted({key for dimensions in keys for key in dimensions})


# --- entitlements -------------------------------------------------------------------------


# A meter's units between two moments, counted by event time; events cancelled (or not
# yet rated) do not count. Whole hours come from the hourly rollups (which cancellation
# subtracts from), so the cost follows the hours of a period, not its events; the partial
# hours at either end, shared with the neighbouring period, are summed from the events.
# A max meter's rollup keeps its maximum when an event is cancelled, so it is read from
# its events alone.
_METER_UNITS_SQL = """
    SELECT {agg}(units) FROM (
        SELECT r.value AS units FROM metering_usagerollup r
        WHERE r.customer_id = %(customer)s AND r.meter_id = %(meter)s
          AND r.hour >= %(whole_from)s AND r.hour < %(whole_to)s AND NOT %(is_max)s
        UNION ALL
        SELECT g.units FROM metering_meterevent e
        JOIN metering_eventrating g ON g.event_id = e.id
        WHERE e.customer_id = %(customer)s AND e.meter_id = %(meter)s AND g.status = 'rated'
          AND e.timestamp >= %(start)s AND e.timestamp < %(end)s
          AND (%(is_max)s OR e.timestamp < %(whole_from)s OR e.timestamp >= %(whole_to)s)
          AND NOT EXISTS (SELECT 1 FROM metering_eventcancellation c WHERE c.event_id = e.id)
    ) AS parts
"""


def meter_units_between(
    *, customer_id: int, meter: Meter, start: datetime, end: datetime
) -> Decimal:
    """Units of ``meter`` in ``[start, end)``: summed, or the largest for a max meter."""
    is_max = meter.aggregation == Aggregation.MAX
    whole_from = _hour(start) if start == _hour(start) else _hour(start) + timedelta(hours=1)
    whole_to = max(_hour(end), whole_from)
    with connection.cursor() as cursor:
        cursor.execute(
            _METER_UNITS_SQL.format(agg="MAX" if is_max else "SUM"),
            {
                "customer": customer_id,
                "meter": meter.pk,
                "start": start,
                "end": end,
                "whole_from": whole_from,
                "whole_to": whole_to,
                "is_max": is_max,
            },
        )
        (units,) = cursor.fetchone()
    return units if units is not None else Decimal(0)


@dataclass(frozen=True)
class Entitlement:
    """A feature of the plan in force; limit, used and remaining only for a metered one."""

    code: str
    enabled: bool
    limit: Decimal | None = None
    used: Decimal | None = None
    unit: str = ""  # the meter's unit, for people

    @property
    def remaining(self) -> Decimal | None:
        if self.limit is None or self.used is None:
            return None
        return max(self.limit - self.used, Decimal(0))


def entitlements_for(*, customer: Customer, at: datetime | None = None) -> list[Entitlement]:
    """The features of the plan of the period in force (none without one), with each
    metered feature's units used in that period."""
    period = plan_selectors.period_in_force(customer=customer, at=at)
    return entitlements_of(customer=customer, period=period) if period else []


def entitlements_of(*, customer: Customer, period: SubscriptionPeriod) -> list[Entitlement]:
    """The features of ``period``'s plan, with each metered feature's units used in it."""
    features = period.plan_version.feature_list()
    meters = Meter.objects.in_bulk([f.meter for f in features if f.meter], field_name="code")
    out = []
    for feature in features:
        if feature.meter is None or feature.meter not in meters:
            out.append(Entitlement(feature.code, feature.enabled))
            continue
        used = meter_units_between(
            customer_id=customer.pk, meter=meters[feature.meter], start=period.start, end=period.end
        )
        out.append(Entitlement(feature.code, True, feature.limit, used, meters[feature.meter].unit))
    return out


# --- events -------------------------------------------------------------------------------


class EventStatus(StrEnum):
    ACCEPTED = "accepted"  # stored, not rated yet: still in the rating queue
    RATED = "rated"
    UNRATABLE = "unratable"  # rated to nothing: no rate or no subscription matched
    CANCELLED = "cancelled"  # its debit reversed (or it never rated) by a cancellation


# The status rule, stated once as SQL so lists filter on it: a cancellation wins over
# everything, a queued event is accepted whatever it failed before, then what rating made
# of it. A rating row always replaces the queue row in one transaction.
EVENT_STATUS = Case(
    When(cancellation__isnull=False, then=Value(EventStatus.CANCELLED.value)),
    When(ratingqueue__isnull=False, then=Value(EventStatus.ACCEPTED.value)),
    When(rating__status=RatingStatus.RATED, then=Value(EventStatus.RATED.value)),
    When(rating__status=RatingStatus.UNRATABLE, then=Value(EventStatus.UNRATABLE.value)),
    default=Value(EventStatus.ACCEPTED.value),
    output_field=CharField(),
)


def events_for(
    *,
    customer: Customer,
    start: datetime | None = None,
    end: datetime | None = None,
    event_name: str | None = None,
    status: EventStatus | None = None,
) -> QuerySet[MeterEvent]:
    """A customer's events with their ``status`` (EVENT_STATUS), rating, queue row and
    cancellation; ``start`` and ``end`` bound the event's own timestamp, end excluded."""
    events = (
        MeterEvent.objects.filter(customer=customer)
        .annotate(status=EVENT_STATUS)
        .select_related("meter", "rating", "ratingqueue", "cancellation")
    )
    if start is not None:
        events = events.filter(timestamp__gte=start)
    if end is not None:
        events = events.filter(timestamp__lt=end)
    if event_name is not None:
        events = events.filter(event_name=event_name)
    if status is not None:
        events = events.filter(status=status)
    return events


def event_for(*, customer: Customer, identifier: str) -> MeterEvent | None:
    key = EventKey.objects.filter(customer_id=customer.pk, identifier=identifier).first()
    return None if key is None else events_for(customer=customer).filter(pk=key.event_id).first()


def events_identified(pairs: Collection[tuple[int, str]]) -> QuerySet[MeterEvent]:
    """The events stored under any of ``pairs`` of (customer pk, identifier), whole or as
    the parts of one that fed several meters; a few more when the pairs cross (the
    caller matches its pairs). The event table is partitioned by month, so an identifier
    is found through its key (``EventKey``) and the parts through their parent."""
    customers = {customer for customer, _ in pairs}
    identifiers = {identifier for _, identifier in pairs}
    ids = EventKey.objects.filter(
        customer_id__in=customers, identifier__in=identifiers
    ).values_list("event_id", flat=True)
    return MeterEvent.objects.filter(
        Q(pk__in=list(ids)) | Q(customer_id__in=customers, parent_identifier__in=identifiers)
    )


def event_parts_for(*, customer: Customer, identifier: str) -> list[MeterEvent]:
    """The parts of an event sent as ``identifier`` that fed several meters."""
    return list(events_for(customer=customer).filter(parent_identifier=identifier).order_by("pk"))


class RatingState(StrEnum):
    PENDING = "pending"  # queued, not tried yet
    FAILING = "failing"  # queued, failed, to be tried again after a back-off
    PARKED = "parked"  # failed every attempt: waiting for staff
    RATED = RatingStatus.RATED.value
    UNRATABLE = RatingStatus.UNRATABLE.value
    CANCELED = RatingStatus.CANCELED.value  # cancelled before it was rated


@dataclass(frozen=True)
class EventRatingReading:
    """What rating made of an event so far, from its rating row or its queue row."""

    state: RatingState
    credits: Decimal | None = None
    units: Decimal | None = None
    rated_at: datetime | None = None
    error_code: str = ""
    error_message: str = ""
    attempts: int = 0
    next_attempt_at: datetime | None = None
    parked_at: datetime | None = None


# The code of a queued event's last failure: the queue row keeps only its message.
RATING_FAILED = "rating_failed"


def event_rating_reading(event: MeterEvent) -> EventRatingReading:
    """For an event read by :func:`events_for` (its rating and queue rows at hand)."""
    queued: RatingQueue | None = getattr(event, "ratingqueue", None)
    if queued is not None:
        return _queued_reading(queued)
    rating: EventRating | None = getattr(event, "rating", None)
    if rating is None:  # no row of either: not in one read, rating swaps them atomically
        return EventRatingReading(state=RatingState.PENDING)
    return EventRatingReading(
        state=RatingState(rating.status),
        credits=rating.credits,
        units=rating.units,
        rated_at=rating.rated_at,
        error_code=rating.error_code,
        error_message=rating.error_message,
    )


def _queued_reading(queued: RatingQueue) -> EventRatingReading:
    if queued.parked_at is not None:
        state = RatingState.PARKED
    else:
        state = RatingState.FAILING if queued.attempts else RatingState.PENDING
    return EventRatingReading(
        state=state,
        error_code=RATING_FAILED if queued.attempts else "",
        error_message=queued.last_error,
        attempts=queued.attempts,
        next_attempt_at=queued.next_attempt_at,
        parked_at=queued.parked_at,
    )


def event_cancellation(event: MeterEvent) -> EventCancellation | None:
    found: EventCancellation | None = getattr(event, "cancellation", None)
    return found
