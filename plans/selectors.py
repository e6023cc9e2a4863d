"""Reads for the API and the portal: customers, subscriptions, balances."""

from __future__ import annotations

from datetime import datetime

from django.db.models import QuerySet
from django.utils import timezone

from ledger.models import CreditGrant
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


def credit_grants_for(*, customer: Customer) -> QuerySet[CreditGrant]:
    return CreditGrant.objects.filter(account_id=customer.account_id).order_by("-created_at", "-pk")
