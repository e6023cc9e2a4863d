"""Tiered and package prices: credits for a period's cumulative units of one rate.

A tiered or package rate prices the period's units together, not each event alone:

- ``graduated``: each unit is priced by the tier it falls in. Tier bounds are inclusive
  (``up_to: 1000`` holds units 0-1,000; the next tier starts above 1,000).
- ``volume``: every unit of the period is priced at the tier the period's total reaches.
- package (``round_up``): ``per`` units are a package and a started one costs a whole
  package: ``ceil(units / per) * credits``.

Rating charges an event what the period's formula grows by when the event's units join
the units before it (``graduated`` and packages: ``f(before + units) - f(before)``, each
rounded once to the credit precision, so the charges of a period sum to ``f(total)``
whatever order its events arrive in). ``volume`` charges the event's units at the
running tier (the tier ``before + units`` reaches); period close trues the period up to
``f(total)``, as it does after a cancelled event, so the invoice always equals the
formula on the period's total.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_HALF_EVEN, Decimal
from typing import Any, Protocol

from ledger.models import CREDIT_QUANTUM

ZERO = Decimal(0)


class PricedRate(Protocol):
    """What the formulas read of a rate (``plans.models.Rate`` has these)."""

    credits: Decimal
    per: int
    tiers_mode: str
    tiers: Any
    round_up: bool


@dataclass(frozen=True)
class Tier:
    start: Decimal  # units above this one are in the tier
    up_to: Decimal | None  # its last unit; None: open
    credits: Decimal  # per ``per`` units


@dataclass(frozen=True)
class TierQuantity:
    """The units of a period's total that one tier (or package count) prices."""

    tier: Tier
    units: Decimal
    credits: Decimal
    packages: Decimal | None = None  # package pricing: how many packages were started


def tiers_of(rate: PricedRate) -> list[Tier]:
    out: list[Tier] = []
    start = ZERO
    for row in rate.tiers or []:
        up_to = Decimal(str(row["up_to"])) if row.get("up_to") is not None else None
        out.append(Tier(start, up_to, Decimal(str(row["credits"]))))
        if up_to is not None:
            start = up_to
    return out


def counts_period(rate: PricedRate) -> bool:
    return bool(rate.tiers_mode) or rate.round_up


def _round(value: Decimal) -> Decimal:
    return value.quantize(CREDIT_QUANTUM, rounding=ROUND_HALF_EVEN)


def _tier_reached(tiers: list[Tier], units: Decimal) -> Tier:
    for tier in tiers:
        if tier.up_to is None or units <= tier.up_to:
            return tier
    return tiers[-1]


def _graduated(tiers: list[Tier], units: Decimal, per: int) -> Decimal:
    """Unrounded: the sum over tiers of the units in each at its price."""
    total = ZERO
    for tier in tiers:
        if units <= tier.start:
            break
        inside = (min(units, tier.up_to) if tier.up_to is not None else units) - tier.start
        total += inside * tier.credits / per
    return total


def _packages(units: Decimal, per: int) -> Decimal:
    return (units / per).to_integral_value(rounding=ROUND_CEILING)


def period_credits(rate: PricedRate, units: Decimal) -> Decimal:
    """The formula: what a period with ``units`` of this rate costs, in credits."""
    if units <= 0:
        return ZERO
    if rate.round_up:
        return _round(_packages(units, rate.per) * rate.credits)
    tiers = tiers_of(rate)
    if rate.tiers_mode == "volume":
        return _round(units * _tier_reached(tiers, units).credits / rate.per)
    if rate.tiers_mode == "graduated":
        return _round(_graduated(tiers, units, rate.per))
    return _round(units * rate.credits / rate.per)


def event_charge(rate: PricedRate, before: Decimal, units: Decimal) -> Decimal:
    """What an event of ``units`` is charged when the period already has ``before``."""
    if rate.tiers_mode == "volume":
        tier = _tier_reached(tiers_of(rate), before + units)
        return _round(units * tier.credits / rate.per)
    return period_credits(rate, before + units) - period_credits(rate, before)


def breakdown(rate: PricedRate, units: Decimal) -> list[TierQuantity]:
    """How the formula prices a period's total, tier by tier (invoice lines)."""
    if units <= 0:
        return []
    if rate.round_up:
        packages = _packages(units, rate.per)
        tier = Tier(ZERO, None, rate.credits)
        return [TierQuantity(tier, units, _round(packages * rate.credits), packages)]
    tiers = tiers_of(rate)
    if rate.tiers_mode == "volume":
        tier = _tier_reached(tiers, units)
        return [TierQuantity(tier, units, period_credits(rate, units))]
    out = []
    for tier in tiers:
        if units <= tier.start:
            break
        inside = (min(units, tier.up_to) if tier.up_to is not None else units) - tier.start
        out.append(TierQuantity(tier, inside, _round(inside * tier.credits / rate.per)))
    return out
