"""The units of the product and how they are rounded and written, defined once.

Credits are exact decimals with six places (the ledger's numeric(20,6)); money is rounded
to the currency's minor unit (two places for every supported currency) on invoice lines
only, half up; timestamps leave the system as RFC 3339 in UTC. Numbers shown to people
never show storage precision. Every app uses these rather than typing the rules again.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal

CREDIT_DIGITS = 20
CREDIT_PLACES = 6
CREDIT_QUANTUM = Decimal("0.000001")
CENT = Decimal("0.01")
ZERO = Decimal("0")


def to_credits(value: Decimal) -> Decimal:
    """An exact credit amount: six places, half to even (what rating does with a price)."""
    return value.quantize(CREDIT_QUANTUM, rounding=ROUND_HALF_EVEN)


def to_cents(amount: Decimal) -> Decimal:
    """Money on an invoice line or a proration: two places, half up."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def rfc3339(moment: datetime) -> str:
    """2026-11-20T10:00:00Z: UTC, with "Z"; microseconds kept when there are any."""
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def credits_text(value: Decimal) -> str:
    """For people: 2400 -> "2,400"; 12.5 -> "12.50"; never more than two decimals."""
    rounded = to_cents(value)
    if rounded == rounded.to_integral_value():
        return f"{rounded:,.0f}"
    return f"{rounded:,.2f}"


def credits_exact(value: Decimal) -> str:
    """For staff: 1E+4 -> "10,000"; unrounded, so a limit is never overstated."""
    return f"{value.normalize():,f}"
