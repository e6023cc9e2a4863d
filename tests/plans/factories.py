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
