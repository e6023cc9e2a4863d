"""Figures of the staff reports as people read them: thousands separators, money in cents
with its currency, percentages with one decimal, times to the minute, labels for codes."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

from django import template

from billing_portal.invoicing.margin import money_text, percent_text
from billing_portal.staff import display
from ledger.units import credits_exact, credits_text

register = template.Library()


@register.filter
def money(value: Decimal, currency: str) -> str:
    return money_text(value, currency)


@register.filter
def percent(value: Decimal | None) -> str:
    return percent_text(value)


@register.filter
def units(value: Decimal) -> str:
    return credits_exact(value)


@register.filter
def credits(value: Decimal) -> str:
    return credits_text(value)


@register.filter
def label(value: str | None) -> str:
    return display.label(value)


@register.filter
def when(value: datetime | None) -> str:
    return display.when(value)
