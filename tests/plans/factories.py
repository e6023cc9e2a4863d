from __future__ import annotations

from datetime import timedelta
from pathlib import Path

from django.conf import settings
from django.utils import timezone

from plans import catalog
from plans.models import Customer, Plan, Subscription
from plans.services import customer_create, subscription_start

DEMO_CATALOG = Path(settings.BASE_DIR) / "docs" / "examples" / "catalog.yaml"


def load_demo_catalog() -> None:
    catalog.load(DEMO_CATALOG.read_text())


def plan(code: str) -> Plan:
    return Plan.objects.get(code=code)


def customer(external_id: str = "acme") -> Customer:
    return customer_create(
        external_id=external_id, name=external_id.title(), email=f"billing@{external_id}.test"
    )


def subscription_recent(
    external_id: str = "acme", plan_code: str = "pro", *, subscription_id: str | None = None
) -> Subscription:
    """A new customer on ``plan_code`` whose current period began 20 days ago, so events
    stamped now fall in it."""
    return subscription_start(
        customer=customer(external_id),
        plan=plan(plan_code),
        actor="test",
        start_at=timezone.now() - timedelta(days=20),
        external_id=subscription_id,
    )


def subscribed(external_id: str = "acme", plan_code: str = "pro") -> Customer:
    """The customer of ``subscription_recent``."""
    return subscription_recent(external_id, plan_code).customer


# A small postpaid plan for period arithmetic: $10.00 a month, 1,000 included credits,
# $0.01 per credit of overage.
BASIC = """  - code: basic
    name: Basic
    interval: month
    base_fee: "10.00"
    included_credits: "1000"
    rate_card: standard
    overage: {policy: postpaid, price_per_credit: "0.01"}
"""


def load_catalog_with_basic() -> None:
    """The demo catalog plus the plan \"basic\"."""
    catalog.load(DEMO_CATALOG.read_text().replace("plans:\n", "plans:\n" + BASIC, 1))
