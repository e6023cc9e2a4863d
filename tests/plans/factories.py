from __future__ import annotations

from pathlib import Path

from django.conf import settings

from plans import catalog
from plans.models import Customer, Plan
from plans.services import customer_create

DEMO_CATALOG = Path(settings.BASE_DIR) / "docs" / "examples" / "catalog.yaml"


def load_demo_catalog() -> None:
    catalog.load(DEMO_CATALOG.read_text())


def plan(code: str) -> Plan:
    return Plan.objects.get(code=code)


def customer(external_id: str = "acme") -> Customer:
    return customer_create(
        external_id=external_id, name=external_id.title(), email=f"billing@{external_id}.test"
    )


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
