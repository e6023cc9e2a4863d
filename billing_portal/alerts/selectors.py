"""Reads for alerts: the rules in force, hourly burn, recipients, what the portal shows."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db.models import Min, Q, QuerySet, Sum

from billing_portal.alerts.models import Alert
from billing_portal.portal.models import AlertSettings, PortalMembership, Role
from ledger.models import ZERO
from metering.api import balance_payload
from metering.models import UsageRollup
from plans.models import Customer

DEFAULT_USAGE_THRESHOLDS = (50, 80, 100)
BURN_WINDOW = timedelta(days=7)
# Less history than this and an average says nothing about what is normal.
BURN_MIN_HISTORY = timedelta(hours=24)


@dataclass(frozen=True)
class AlertRules:
    usage_thresholds: tuple[int, ...]
    low_balance_credits: Decimal | None
    recipients: tuple[str, ...]


def alert_rules_for(*, customer: Customer, plan_code: str | None) -> AlertRules:
    """The customer's own settings, or the defaults for their plan when they set none."""
    own = AlertSettings.objects.filter(customer=customer).first()
    if own is not None:
        return AlertRules(
            usage_thresholds=tuple(own.usage_thresholds),
            low_balance_credits=own.low_balance_credits,
            recipients=tuple(own.recipients),
        )
    defaults = _plan_defaults(plan_code)
    low = defaults.get("low_balance_credits")
    return AlertRules(
        usage_thresholds=tuple(
            int(t) for t in defaults.get("usage_thresholds", DEFAULT_USAGE_THRESHOLDS)
        ),
        low_balance_credits=Decimal(str(low)) if low is not None else None,
        recipients=(),
    )


def _plan_defaults(plan_code: str | None) -> dict[str, Any]:
    """``settings.ALERT_DEFAULTS``: by plan code, with "*" for every other plan."""
    table: dict[str, dict[str, Any]] = getattr(settings, "ALERT_DEFAULTS", {})
    return table.get(plan_code or "", table.get("*", {}))


@dataclass(frozen=True)
class Burn:
    this_hour: Decimal
    hourly_average: Decimal | None  # None: not enough history to call anything anomalous


def burn_for(*, customer: Customer, hour: datetime) -> Burn:
    """Credits rated into ``hour`` against the trailing 7-day hourly average (one query on
    the rollups' (customer, hour) index)."""
    totals = UsageRollup.objects.filter(
        customer=customer, hour__gte=hour - BURN_WINDOW, hour__lte=hour
    ).aggregate(
        this_hour=Sum("credits", filter=Q(hour=hour)),
        before=Sum("credits", filter=Q(hour__lt=hour)),
        first=Min("hour", filter=Q(hour__lt=hour)),
    )
    this_hour = totals["this_hour"] or ZERO
    first: datetime | None = totals["first"]
    if first is None or hour - first < BURN_MIN_HISTORY:
        return Burn(this_hour, None)
    hours = Decimal(int((hour - first).total_seconds()) // 3600)
    return Burn(this_hour, (totals["before"] or ZERO) / hours)


def alert_recipients(*, customer: Customer) -> list[str]:
    """The customer's alert recipients; else their portal owners and admins; else the
    billing e-mail."""
    own = AlertSettings.objects.filter(customer=customer).values_list("recipients", flat=True)
    listed = next(iter(own), None)
    if listed:
        return list(listed)
    managers = (
        PortalMembership.objects.filter(customer=customer, role__in=[Role.OWNER, Role.ADMIN])
        .exclude(user__email="")
        .order_by("pk")
        .values_list("user__email", flat=True)
    )
    return list(dict.fromkeys(managers)) or ([customer.email] if customer.email else [])


def alerts_for(*, customer: Customer) -> QuerySet[Alert]:
    return Alert.objects.filter(customer=customer).order_by("-created_at", "-pk")


def alert_unread_latest(*, customer: Customer) -> Alert | None:
    return alerts_for(customer=customer).filter(read_at__isnull=True).first()


@dataclass(frozen=True)
class SpendControls:
    spend_limit_reached: bool
    hard_stop_reached: bool


def spend_controls_for(*, customer: Customer) -> SpendControls:
    """What refuses this customer's requests right now, from the balance API's numbers."""
    payload = balance_payload(customer)
    limits = payload["limits"]
    return SpendControls(
        spend_limit_reached=bool(limits["spend_limit_reached"]),
        hard_stop_reached=bool(limits["hard_stop"]) and Decimal(payload["available"]) <= 0,
    )
