from __future__ import annotations

from djmoney.money import Money


def as_money(value: object) -> Money:
    """A MoneyField's value as Money (it is one at run time; the type stubs say Decimal)."""
    if not isinstance(value, Money):
        raise TypeError(f"expected Money, got {type(value).__name__}")
    return value
