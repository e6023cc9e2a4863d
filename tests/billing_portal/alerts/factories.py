"""Customers on a plan, their events, and rating them batch by batch."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.utils import timezone
from djmoney.money import Money

from billing_portal.alerts.models import Alert, AlertSettings, AutoRecharge
from metering.ingest import events_ingest
from metering.rating import events_rate_for_customer
from plans.models import CreditPack, Customer

# Half past noon: the current hour has room for events a minute old.
NOW = datetime(2026, 10, 10, 12, 30, tzinfo=UTC)
LARGE_OUT = {"model": "large", "token_type": "output"}
_ids = itertools.count(1)


def events_add(customer: Customer, count: int, *, tokens: str = "100000") -> None:
    """``count`` events of large output tokens (100,000 tokens = 1,500 credits)."""
    # Stamped now: usage draws on the grants usable when it happened, so a pack bought
    # (or auto-recharged) at this instant pays for it, one bought a minute later would not.
    at = timezone.now().isoformat()
    events = [
        {
            "identifier": f"evt-{next(_ids)}",
            "event_name": "llm.tokens",
            "customer": customer.external_id,
            "timestamp": at,
            "value": tokens,
            "dimensions": LARGE_OUT,
        }
        for _ in range(count)
    ]
    assert events_ingest(events=events).count("accepted") == count


def rate(customer: Customer, *, batch: int = 1000) -> int:
    """Rate the customer's queue, ``batch`` events per rating transaction."""
    rated = 0
    while done := events_rate_for_customer(customer_id=customer.pk, limit=batch):
        rated += done
    return rated


def use(customer: Customer, count: int = 1, *, tokens: str = "100000") -> None:
    events_add(customer, count, tokens=tokens)
    rate(customer)


def alert_settings(customer: Customer, **fields: object) -> AlertSettings:
    settings, _ = AlertSettings.objects.update_or_create(customer=customer, defaults=fields)
    return settings


def auto_recharge(
    customer: Customer,
    *,
    threshold: str = "5000",
    pack: str = "pack_10k",
    cap: int = 3,
    amount_cap: Money | None = None,
) -> AutoRecharge:
    values: dict[str, Any] = {
        "enabled": True,
        "threshold_credits": Decimal(threshold),
        "pack": CreditPack.objects.get(code=pack),
        "max_recharges_per_month": cap,
        "max_amount_per_month": amount_cap,
        # An update saves only the fields named here; the currency is a column of its own.
        "max_amount_per_month_currency": amount_cap.currency.code if amount_cap else "USD",
    }
    rule, _ = AutoRecharge.objects.update_or_create(customer=customer, defaults=values)
    return rule


def fired(customer: Customer, kind: str | None = None) -> list[tuple[str, str]]:
    alerts = Alert.objects.filter(customer=customer)
    if kind is not None:
        alerts = alerts.filter(kind=kind)
    return sorted(alerts.values_list("kind", "threshold"))
