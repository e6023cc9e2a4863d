from __future__ import annotations

from decimal import Decimal

from djmoney.money import Money

from ledger.units import to_cents


def as_money(value: object) -> Money:
    """A MoneyField's value as Money (it is one at run time; the type stubs say Decimal)."""
    if not isinstance(value, Money):
        raise TypeError(f"expected Money, got {type(value).__name__}")
    return value


def overage_estimate(
    *, credits: Decimal, available: Decimal, price_per_credit: Decimal | None, currency: str
) -> Money:
    """What ``credits`` would be billed if used now: those beyond ``available`` (before
    any hold of them) at the plan's overage price per credit, in cents. Zero while
    credits cover them, and on a plan without an overage price (hard stop, or a soft
    limit without a price)."""
    beyond = min(credits, max(credits - available, Decimal(0)))
    if price_per_credit is None or beyond == 0:
        return Money(to_cents(Decimal(0)), currency)
    return Money(to_cents(beyond * price_per_credit), currency)
