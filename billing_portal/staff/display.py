"""Values as staff read them on the admin's pages: thousands separators, no storage
precision, currency with every amount, minutes not microseconds, labels not codes."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django.utils import timezone

from billing_portal.invoicing.margin import money_text
from ledger.units import credits_exact
from plans.money import as_money

DASH = "—"


def credits(value: Decimal | None) -> str:
    """Exact (a balance is never rounded for staff), without trailing zeros: "17,675.67"."""
    return DASH if value is None else credits_exact(value)


def money(value: object) -> str:
    """A Money value in cents with its currency: "$1,234.50"."""
    if value is None:
        return DASH
    amount = as_money(value)
    return money_text(amount.amount, str(amount.currency))


def amount(value: Decimal | None, currency: str) -> str:
    return DASH if value is None else money_text(value, currency)


def when(value: datetime | None, empty: str = DASH) -> str:
    """To the minute, in the site's zone: "2026-03-01 14:05 UTC"."""
    if value is None:
        return empty
    return timezone.localtime(value).strftime("%Y-%m-%d %H:%M %Z")


def label(code: str | None) -> str:
    """A stored code in words: "service_outage" -> "Service outage"."""
    if not code:
        return DASH
    return code.replace("_", " ").capitalize()
