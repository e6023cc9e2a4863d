"""Portal users, customers with a plan, and usage rated into their ledger."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from django.contrib.auth.models import User
from django.utils import timezone

from billing_portal.portal.models import PortalMembership, Role
from metering.ingest import events_ingest
from metering.rating import events_rate_pending
from plans.models import Customer
from plans.services import subscription_start
from tests.plans.factories import customer, plan

PASSWORD = "correct-horse-battery-9"
LARGE_OUT = {"model": "large", "token_type": "output"}


def subscribed_customer(external_id: str, plan_code: str = "pro", days_ago: int = 5) -> Customer:
    created = customer(external_id)
    subscription_start(
        customer=created,
        plan=plan(plan_code),
        actor="test",
        start_at=timezone.now() - timedelta(days=days_ago),
    )
    return created


def member(customer: Customer, role: str = Role.OWNER, email: str | None = None) -> User:
    email = email or f"{role}@{customer.external_id}.test"
    user = User.objects.create_user(username=email, email=email, password=PASSWORD)
    PortalMembership.objects.create(user=user, customer=customer, role=role)
    return user


def earlier_today() -> datetime:
    """An hour ago, or half the time since midnight (UTC) when that is less: still today."""
    now = timezone.now()
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    return now - min(timedelta(hours=1), (now - midnight) / 2)


def usage(
    customer: Customer,
    identifier: str,
    *,
    at: datetime | None = None,
    value: str = "160000",
    dimensions: dict[str, str] | None = None,
    event_name: str = "llm.tokens",
) -> None:
    """Ingest and rate one event (160,000 large output tokens = 2,400 credits), earlier today."""
    event: dict[str, Any] = {
        "identifier": identifier,
        "event_name": event_name,
        "customer": customer.external_id,
        "timestamp": (at or earlier_today()).isoformat(),
        "value": value,
    }
    if event_name == "llm.tokens":
        event["dimensions"] = dimensions or LARGE_OUT
    outcome = events_ingest(events=[event])
    assert outcome.count("accepted") == 1, outcome.as_dict()
    events_rate_pending()
