"""Reads for alerts: the rules in force, hourly burn, recipients, what the portal shows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from django.db.models import Min, Q, QuerySet, Sum

from billing_portal.alerts.models import Alert, AlertSettings
from ledger.models import ZERO
from metering.models import UsageRollup
from metering.selectors import balance_payload
from plans.models import Customer, PlanVersion, SubscriptionPeriod, default_alert_usage_thresholds
from plans.selectors import subscription_active

# Without a plan (no active subscription): the plans' own default.
DEFAULT_USAGE_THRESHOLDS = tuple(default_alert_usage_thresholds())
BURN_WINDOW = timedelta(days=7)
# Less history than this and an average says nothing about what is normal.
BURN_MIN_HISTORY = timedelta(hours=24)


@dataclass(frozen=True)
class AlertRules:
    usage_thresholds: tuple[int, ...]
    low_balance_credits: Decimal | None
    recipients: tuple[str, ...]
    # False: the plan's defaults, which a period takes from the plan version it is on.
    customer_set: bool = False

    def usage_thresholds_of(self, period: SubscriptionPeriod) -> tuple[int, ...]:
        if self.customer_set:
            return self.usage_thresholds
        return tuple(period.plan_version.alert_usage_thresholds)


def alert_rules_for(*, customer: Customer, period: SubscriptionPeriod | None) -> AlertRules:
    """The customer's own settings, or when they set none the defaults of the plan version
    of ``period`` (else of their active subscription)."""
    own = AlertSettings.objects.filter(customer=customer).first()
    if own is not None:
        return AlertRules(
            usage_thresholds=tuple(own.usage_thresholds),
            low_balance_credits=own.low_balance_credits,
            recipients=tuple(own.recipients),
            customer_set=True,
        )
    if period is not None:
        return plan_alert_rules(plan_version=period.plan_version)
    return alert_defaults_for(customer=customer)


def alert_defaults_for(*, customer: Customer) -> AlertRules:
    """The defaults of the customer's active subscription's plan version."""
    subscription = subscription_active(customer=customer)
    return plan_alert_rules(plan_version=subscription.plan_version if subscription else None)


def alert_settings_for(*, customer: Customer) -> AlertSettings:
    """The customer's saved settings, else unsaved ones holding their plan's defaults: the
    portal shows these without saving, since a saved row overrides the plan from then on."""
    own = AlertSettings.objects.filter(customer=customer).first()
    if own is not None:
        return own
    defaults = alert_defaults_for(customer=customer)
    return AlertSettings(
        customer=customer,
        usage_thresholds=list(defaults.usage_thresholds),
        low_balance_credits=defaults.low_balance_credits,
    )


def plan_alert_rules(*, plan_version: PlanVersion | None) -> AlertRules:
    if plan_version is None:
        return AlertRules(DEFAULT_USAGE_THRESHOLDS, None, ())
    return AlertRules(
        usage_thresholds=tuple(plan_version.alert_usage_thresholds),
        low_balance_credits=plan_version.alert_low_balance_credits,
        recipients=(),
    )


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


# Who manages a customer's account, for alerts whose customer listed no recipients. The
# portal owns its members and registers the answer here when it starts
# (``PortalConfig.ready``): the portal shows alerts and so imports them, which leaves
# alerts unable to import the portal without a cycle.
class ManagersOf(Protocol):
    def __call__(self, *, customer: Customer) -> list[str]: ...


_managers_of: ManagersOf | None = None


def alert_managers_register(*, managers_of: ManagersOf) -> None:
    """Name the function that lists a customer's managers' e-mails."""
    global _managers_of
    _managers_of = managers_of


def alert_recipients(*, customer: Customer) -> list[str]:
    """The customer's alert recipients; else their portal owners and admins; else the
    billing e-mail."""
    own = AlertSettings.objects.filter(customer=customer).values_list("recipients", flat=True)
    listed = next(iter(own), None)
    if listed:
        return list(listed)
    managers = _managers_of(customer=customer) if _managers_of is not None else []
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
    return spend_controls_from(balance_payload(customer))


def spend_controls_from(payload: Mapping[str, Any]) -> SpendControls:
    """The same from a balance already read (``balance_payload``)."""
    limits = payload["limits"]
    return SpendControls(
        spend_limit_reached=bool(limits["spend_limit_reached"]),
        hard_stop_reached=bool(limits["hard_stop"]) and Decimal(payload["available"]) <= 0,
    )
