"""Reads over metering's tables: rating's backlog, the balance as customers and the API
see it, usage over time."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import Sum
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Trunc
from django.utils import timezone

from ledger.models import CreditGrant
from ledger.selectors import account_balance
from ledger.units import rfc3339
from metering.models import PeriodUsage, UsageRollup
from plans import selectors as plan_selectors
from plans.models import Customer, OveragePolicy

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


def balance_payload(customer: Customer) -> dict[str, Any]:
    """The balance as the API shows it: the one reading the API, the portal and alerts
    share, so the numbers they show agree. Decimals as strings with six places."""
    # The period's usage comes from PeriodUsage (one row), not from summing its entries.
    balance = account_balance(account=customer.account)
    period = plan_selectors.period_in_force(customer=customer, at=balance.as_of)
    usage = PeriodUsage.objects.filter(period=period).first() if period else None
    used = usage.credits if usage else Decimal(0)
    subscription = plan_selectors.subscription_active(customer=customer)
    policy = subscription.plan_version.overage_policy if subscription else None
    limit = customer.spend_limit_credits
    return {
        "customer": customer.external_id,
        "available": _fmt(balance.available),
        "posted": _fmt(balance.posted),
        "held": _fmt(balance.held),
        "grants": [_grant(g) for g in balance.grants],
        "period": {
            "start": rfc3339(period.start),
            "end": rfc3339(period.end),
            "included": _fmt(period.included_credits),
            "used": _fmt(used),
            "overage": _fmt(usage.overage if usage else Decimal(0)),
        }
        if period
        else None,
        "limits": {
            "overage_policy": policy,
            "hard_stop": policy == OveragePolicy.HARD_STOP,
            "spend_limit": _fmt(limit) if limit is not None else None,
            "spend_limit_reached": limit is not None and used + balance.held >= limit,
        },
        "as_of": rfc3339(balance.as_of),
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
    dims = {f"dim_{key}": KeyTextTransform(key, "dimensions") for key in group_by}
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
