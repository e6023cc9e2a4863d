"""Reads for the API and the portal: customers, subscriptions, balances."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone

from ledger.models import ZERO, CreditGrant, EntryKind, GrantCategory, LedgerEntry
from ledger.sql import Statement, pipelined
from plans.models import (
    PERIOD_SOURCE,
    Customer,
    Subscription,
    SubscriptionPeriod,
    SubscriptionStatus,
)


def subscription_active(*, customer: Customer) -> Subscription | None:
    return (
        Subscription.objects.filter(customer=customer, status=SubscriptionStatus.ACTIVE)
        .select_related(
            "plan_version__plan", "plan_version__rate_card", "pending_plan_version__plan"
        )
        .first()
    )


# The period in force at a moment, the one rule every reader uses: the period of the
# customer's active subscription that contains the moment (start <= at < end). A
# cancelled subscription has none, an ended one not yet renewed has none. The hot path's
# SQL (metering.services) embeds PERIOD_IN_FORCE_SQL rather than restating it.
PERIOD_IN_FORCE_SQL = """
    SELECT p.id, p.included_credits, p.plan_version_id, p.start, p."end"
    FROM plans_subscriptionperiod p
    JOIN plans_subscription s ON s.id = p.subscription_id
    WHERE s.customer_id = {customer} AND s.status = 'active'
      AND p.start <= {at} AND p."end" > {at}
    ORDER BY p.start DESC
    LIMIT 1
"""


def period_in_force(*, customer: Customer, at: datetime | None = None) -> SubscriptionPeriod | None:
    at = at or timezone.now()
    return (
        SubscriptionPeriod.objects.filter(
            subscription__customer=customer,
            subscription__status=SubscriptionStatus.ACTIVE,
            start__lte=at,
            end__gt=at,
        )
        .select_related("plan_version__plan", "subscription__customer")
        .order_by("-start")
        .first()
    )


def period_in_force_among(
    periods: Iterable[SubscriptionPeriod], at: datetime
) -> SubscriptionPeriod | None:
    """The same rule over periods already read (with their subscriptions)."""
    for period in sorted(periods, key=lambda p: p.start, reverse=True):
        active = period.subscription.status == SubscriptionStatus.ACTIVE
        if active and period.start <= at < period.end:
            return period
    return None


def credit_grants_for(*, customer: Customer) -> QuerySet[CreditGrant]:
    return CreditGrant.objects.filter(account_id=customer.account_id).order_by("-created_at", "-pk")


def included_credits_used(*, period_ids: Iterable[int]) -> dict[int, Decimal]:
    """Credits drawn from each period's own included grants (what "share of included
    credits used" means everywhere: the balance, the dashboard, usage alerts). Usage paid
    by a promotional grant or a pack does not count; credits written off do not either."""
    return included_credits_used_from(pipelined([included_credits_used_statement(period_ids)])[0])


# A subquery for what was written off: joined to the grants, the entries would multiply
# their amounts. It reads the entries' expire-or-void index, not every debit of the grant.
_INCLUDED_USED_SQL = f"""
SELECT g.source_id, g.amount, g.remaining,
       coalesce((
           SELECT sum(e.credits) FROM {LedgerEntry._meta.db_table} e
           WHERE e.grant_id = g.id AND e.kind IN (%(expire)s, %(void)s)
       ), 0)
FROM {CreditGrant._meta.db_table} g
WHERE g.source_type = %(source)s AND g.source_id = ANY(%(ids)s) AND g.category = %(included)s
"""


def included_credits_used_statement(period_ids: Iterable[int]) -> Statement:
    """``included_credits_used`` as a statement, to read in one round trip with others."""
    return _INCLUDED_USED_SQL, {
        "expire": EntryKind.EXPIRE.value,
        "void": EntryKind.VOID.value,
        "source": PERIOD_SOURCE,
        "ids": [str(pk) for pk in period_ids],
        "included": GrantCategory.INCLUDED.value,
    }


def included_credits_used_from(rows: Iterable[tuple[Any, ...]]) -> dict[int, Decimal]:
    used: dict[int, Decimal] = {}
    for source_id, amount, remaining, gone in rows:
        period = int(source_id)
        used[period] = used.get(period, ZERO) + amount - remaining + gone
    return used
