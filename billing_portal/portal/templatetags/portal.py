"""Numbers and form fields as people read them in the portal: credits without storage
precision, money with its currency, a price per credit to its last significant digit, and
form fields wired to their help text and errors for screen readers."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from babel.numbers import format_currency
from django import template
from django.forms import BoundField
from django.utils.safestring import SafeString
from djmoney.money import Money

from billing_portal.invoicing.margin import money_text
from ledger.units import credits_text

register = template.Library()

# A price per credit is often a fraction of a cent: keep its digits, at least two.
_PRICE_PATTERN = "¤#,##0.00########"

# Which top navigation entry a page belongs to, by URL name.
NAV_SECTIONS = {
    "dashboard": "dashboard",
    "controls": "controls",
    "notifications": "notifications",
    "billing": "billing",
    "invoice": "billing",
    "credit_note": "billing",
    "checkout": "billing",
    "activity": "activity",
    "team": "team",
}


@register.filter
def credits(value: Decimal | None) -> str:
    return "—" if value is None else credits_text(value)


@register.filter
def money(value: Money | None) -> str:
    """$1,234.50: rounded to cents, with its currency."""
    if value is None:
        return "—"
    return money_text(value.amount, str(value.currency))


def price_text(value: Money) -> str:
    """$0.004: a price per unit, unrounded (to_cents would show $0.00)."""
    return format_currency(
        value.amount.normalize(),
        str(value.currency),
        format=_PRICE_PATTERN,
        locale="en_US",
        currency_digits=False,
    )


@register.filter
def price(value: Money | None) -> str:
    return "—" if value is None else price_text(value)


@register.simple_tag(takes_context=True)
def nav_current(context: dict[str, Any], section: str) -> SafeString:
    """``aria-current="page"`` on the navigation entry of the page being shown."""
    match = getattr(context.get("request"), "resolver_match", None)
    name = match.url_name if match else None
    return SafeString(' aria-current="page"' if NAV_SECTIONS.get(name or "") == section else "")


def described_by(field: BoundField) -> str:
    """The ids _field.html gives the field's help text and errors, in reading order."""
    ids = []
    if field.help_text:
        ids.append(f"{field.auto_id}_helptext")
    if field.errors:
        ids.append(f"{field.auto_id}-error")
    return " ".join(ids)


@register.filter
def widget(field: BoundField) -> SafeString:
    """The field's input pointing at its help text and errors (only ids that exist), marked
    invalid when it is, and focused first when it is the form's first invalid field: on a
    page load that is ``autofocus``; after an htmx swap htmx honours the same attribute."""
    attrs: dict[str, str | bool] = {}
    ids = described_by(field)
    if ids:
        attrs["aria-describedby"] = ids
    if field.errors:
        attrs["aria-invalid"] = "true"
        first = next((name for name in field.form.fields if name in field.form.errors), None)
        if first == field.name:
            attrs["autofocus"] = True
    return field.as_widget(attrs=attrs)
