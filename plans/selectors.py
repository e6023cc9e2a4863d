"""Reads for the API and the portal: customers, subscriptions, balances."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from ledger.models import ZERO, CreditGrant, EntryKind, LedgerEntry
from ledger.selectors import Balance, account_balance
from plans.models import Customer, Subscription, SubscriptionPeriod, SubscriptionStatus


def subscription_active(*, customer: Customer) -> Subscription | None:
    return (
        Subscription.objects.filter(customer=customer, status=SubscriptionStatus.ACTIVE)
        .select_related(
            "plan_version__plan", "plan_version__rate_card", "pending_plan_version__plan"
        )
        .first()
    )


def period_current(*, customer: Customer, at: datetime | None = None) -> SubscriptionPeriod | None:
    at = at or timezone.now()
    return (
        SubscriptionPeriod.objects.filter(
            subscription__customer=customer, start__lte=at, end__gt=at
        )
        .select_related("plan_version")
        .order_by("-start")
        .first()
    )


@dataclass(frozen=True)
class PeriodUsage:
    period: SubscriptionPeriod
    used: Decimal
    overage: Decimal


def period_usage(*, customer: Customer, period: SubscriptionPeriod) -> PeriodUsage:
    """Credits used in the period (from grants and beyond them), net of reversals."""
    totals = LedgerEntry.objects.filter(
        account_id=customer.account_id,
        created_at__gte=period.start,
        created_at__lt=period.end,
        kind__in=[EntryKind.CONSUME, EntryKind.OVERAGE, EntryKind.REVERSAL],
    ).aggregate(
        used=Sum("credits"),
        overage=Sum(
            "credits",
            filter=Q(kind=EntryKind.OVERAGE) | Q(kind=EntryKind.REVERSAL, grant__isnull=True),
        ),
    )
    used: Decimal = totals["used"] or ZERO
    overage: Decimal = totals["overage"] or ZERO
    return PeriodUsage(period=period, used=-used, overage=-overage)


@dataclass(frozen=True)
class CustomerBalance:
    customer: Customer
    balance: Balance
    usage: PeriodUsage | None


def customer_balance(*, customer: Customer) -> CustomerBalance:
    now = timezone.now()
    period = period_current(customer=customer, at=now)
    return CustomerBalance(
        customer=customer,
        balance=account_balance(account=customer.account, at=now),
        usage=period_usage(customer=customer, period=period) if period else None,
    )


def credit_grants_for(*, customer: Customer) -> QuerySet[CreditGrant]:
    return CreditGrant.objects.filter(account_id=customer.account_id).order_by("-created_at", "-pk")
