from __future__ import annotations

from decimal import Decimal

from django import template

from ledger.units import credits_text

register = template.Library()


@register.filter
def credits(value: Decimal | None) -> str:
    return "—" if value is None else credits_text(value)
