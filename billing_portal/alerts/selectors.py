"""Reads for alerts: the rules in force, hourly burn, recipients, what the portal shows."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Protocol

from django.db.models import QuerySet

from billing_portal.alerts.models import Alert, AlertSettings, AutoRecharge
from ledger.models import ZERO
from ledger.selectors import BalanceTotals, balance_totals_from, balance_totals_statement
from ledger.sql import Statement, pipelined
from metering.models import PeriodUsage, UsageRollup
from metering.selectors import balance_payload
from plans.models import Customer, PlanVersion, SubscriptionPeriod, default_alert_usage_thresholds
from plans.selectors import (
    included_credits_used_from,
    included_credits_used_statement,
    subscription_active,
)

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
    return alert_rules_from(
        pipelined([_own_rules_statement(customer.pk)])[0], customer=customer, period=period
    )


_OWN_RULES_SQL = f"""
SELECT usage_thresholds, low_balance_credits, recipients
FROM {AlertSettings._meta.db_table} WHERE customer_id = %(customer)s
"""


def _own_rules_statement(customer_id: int) -> Statement:
    return _OWN_RULES_SQL, {"customer": customer_id}


def alert_rules_from(
    rows: list[tuple[Any, ...]], *, customer: Customer, period: SubscriptionPeriod | None
) -> AlertRules:
    if rows:
        ((thresholds, low_balance, recipients),) = rows
        return AlertRules(
            usage_thresholds=tuple(thresholds),
            low_balance_credits=low_balance,
            recipients=tuple(recipients),
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
    return _burn_from(pipelined([_burn_statement(customer.pk, hour)])[0], hour)


_BURN_SQL = f"""
SELECT sum(credits) FILTER (WHERE hour = %(hour)s),
       sum(credits) FILTER (WHERE hour < %(hour)s),
       min(hour) FILTER (WHERE hour < %(hour)s)
FROM {UsageRollup._meta.db_table}
WHERE customer_id = %(customer)s AND hour >= %(since)s AND hour <= %(hour)s
"""


def _burn_statement(customer_id: int, hour: datetime) -> Statement:
    return _BURN_SQL, {"customer": customer_id, "hour": hour, "since": hour - BURN_WINDOW}


def _burn_from(rows: list[tuple[Any, ...]], hour: datetime) -> Burn:
    ((this_hour, before, first),) = rows
    this_hour = this_hour or ZERO
    if first is None or hour - first < BURN_MIN_HISTORY:
        return Burn(this_hour, None)
    hours = Decimal(int((hour - first).total_seconds()) // 3600)
    return Burn(this_hour, (before or ZERO) / hours)


@dataclass(frozen=True)
class UsageFigures:
    """What evaluating a customer's alerts and auto-recharge reads, read together."""

    balance: BalanceTotals
    included_used: dict[int, Decimal]  # by period (plans.selectors.included_credits_used)
    spent: dict[int, Decimal]  # credits charged by period; empty unless asked for
    rules: AlertRules
    burn: Burn
    fired: set[tuple[int | None, str, str]]  # (period, kind, threshold) of the periods
    recharge_below: Decimal | None  # the enabled auto-recharge rule's threshold


_FIRED_SQL = f"""
SELECT period_id, kind, threshold FROM {Alert._meta.db_table}
WHERE customer_id = %(customer)s AND period_id = ANY(%(periods)s)
"""
_RECHARGE_BELOW_SQL = f"""
SELECT threshold_credits FROM {AutoRecharge._meta.db_table}
WHERE customer_id = %(customer)s AND enabled
  AND pack_id IS NOT NULL AND threshold_credits IS NOT NULL
"""
_SPENT_SQL = f"""
SELECT period_id, credits FROM {PeriodUsage._meta.db_table} WHERE period_id = ANY(%(periods)s)
"""


def usage_figures_read(
    *,
    customer: Customer,
    periods: list[int],
    current: SubscriptionPeriod | None,
    at: datetime,
    hour: datetime,
    spent: bool,
) -> UsageFigures:
    """Every number the evaluation compares, in one round trip: the balance, included
    credits used and (``spent``) credits charged in ``periods``, the rules in force in
    ``current``, the burn of ``hour``, the alerts already fired and the recharge rule."""
    ids = {"customer": customer.pk, "periods": periods}
    rows = pipelined(
        [
            balance_totals_statement(account_id=customer.account_id, at=at),
            included_credits_used_statement(periods),
            _own_rules_statement(customer.pk),
            _burn_statement(customer.pk, hour),
            (_FIRED_SQL, ids),
            (_RECHARGE_BELOW_SQL, ids),
            *([(_SPENT_SQL, ids)] if spent else []),
        ]
    )
    balance, used, rules, burn, fired, recharge, *charged = rows
    return UsageFigures(
        balance=balance_totals_from(balance),
        included_used=included_credits_used_from(used),
        spent=dict(charged[0]) if charged else {},
        rules=alert_rules_from(rules, customer=customer, period=current),
        burn=_burn_from(burn, hour),
        fired={(period, kind, threshold) for period, kind, threshold in fired},
        recharge_below=recharge[0][0] if recharge else None,
    )


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
