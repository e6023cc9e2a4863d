"""Usage -> credits: the rate card version in effect at the event's timestamp.

Rounding rule: ``credits = units * rate.credits / rate.per``, computed exactly in
Decimal, then rounded once to 6 places (the credit precision) with ROUND_HALF_EVEN, so
rounding errors over many events cancel out instead of drifting one way. A ``count``
meter counts each event as 1 unit whatever its value.
"""

from __future__ import annotations

import bisect
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_HALF_EVEN, Decimal

from ledger.errors import DomainError
from ledger.models import CREDIT_QUANTUM
from ledger.sql import Statement
from plans.models import Aggregation, Meter, Rate, RateCardVersion
from plans.money import as_money

CACHE_SECONDS = 5.0
# Rate tables by rate card ids, with when they were read; replaced whole, never mutated,
# so threads share it without a lock.
_cache: dict[frozenset[int], tuple[float, RateTable]] = {}
# The same for charges, with the catalog generation each was read at (RateTable.current).
_current: dict[frozenset[int], tuple[int, RateTable]] = {}

# Moved on by every change to meters, rate card versions or rates, when it commits
# (plans migration 0013).
CATALOG_GENERATION_STATEMENT: Statement = ("SELECT generation FROM plans_catalog_generation", ())


class RatingError(DomainError):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message, code=code)


def credits_for(*, units: Decimal, credits: Decimal, per: int) -> Decimal:
    return (units * credits / per).quantize(CREDIT_QUANTUM, rounding=ROUND_HALF_EVEN)


# Provider cost is money kept exact to 8 places (as the rate's own cost column).
COST_QUANTUM = Decimal("0.00000001")


def cost_for(*, units: Decimal, rate: Rate) -> Decimal | None:
    """What the provider charges for ``units`` at the rate's ``cost`` (None: no cost)."""
    if rate.cost is None:
        return None
    amount = as_money(rate.cost).amount
    return (units * amount / rate.per).quantize(COST_QUANTUM, rounding=ROUND_HALF_EVEN)


@dataclass(frozen=True)
class Rated:
    credits: Decimal
    units: Decimal
    meter: Meter
    rate: Rate
    version: RateCardVersion
    cost: Decimal | None = None


class RateTable:
    """Every version and rate of some rate cards, loaded once, looked up in memory.

    Rating a batch of events costs two queries, not two per event.
    """

    def __init__(self, versions: Iterable[RateCardVersion], meters: Iterable[Meter]) -> None:
        self._meters_by_id = {m.pk: m for m in meters}
        self._meters: dict[str, list[Meter]] = defaultdict(list)
        for meter in sorted(self._meters_by_id.values(), key=lambda m: m.code):
            self._meters[meter.event_name].append(meter)
        self._versions: dict[int, list[RateCardVersion]] = defaultdict(list)
        self._rates: dict[tuple[int, int], list[Rate]] = defaultdict(list)
        for version in sorted(versions, key=lambda v: v.effective_from):
            self._versions[version.rate_card_id].append(version)
            for rate in version.rates.all():
                self._rates[(version.pk, rate.meter_id)].append(rate)
        for rates in self._rates.values():
            rates.sort(key=lambda r: -len(r.match))  # most specific first
        self._starts = {
            card: [v.effective_from for v in versions] for card, versions in self._versions.items()
        }

    @classmethod
    def cached(cls, rate_card_ids: Iterable[int]) -> RateTable:
        """A table at most ``CACHE_SECONDS`` old, for estimates (authorizations): a
        catalog change reaches them within that time. Charges are rated with a fresh
        table (``load``)."""
        key = frozenset(rate_card_ids)
        now = time.monotonic()
        found = _cache.get(key)
        if found is not None and now - found[0] < CACHE_SECONDS:
            return found[1]
        table = cls.load(key)
        _cache[key] = (now, table)
        return table

    @classmethod
    def current(cls, rate_card_ids: Iterable[int], generation: int | None) -> RateTable:
        """The table for charges: as fresh as ``load``, but kept in this process while the
        catalog's ``generation`` (``CATALOG_GENERATION_STATEMENT``, read by the caller in its
        transaction before this call) stays the same."""
        key = frozenset(rate_card_ids)
        found = _current.get(key)
        if found is not None and generation is not None and found[0] == generation:
            return found[1]
        table = cls.load(key)
        if generation is not None:
            for stale in [k for k, (g, _) in list(_current.items()) if g != generation]:
                _current.pop(stale, None)
            _current[key] = (generation, table)
        return table

    @classmethod
    def load(cls, rate_card_ids: Iterable[int]) -> RateTable:
        versions = RateCardVersion.objects.filter(
            rate_card_id__in=set(rate_card_ids)
        ).prefetch_related("rates")
        return cls(versions, Meter.objects.all())

    def meter(self, event_name: str) -> Meter | None:
        """The meter events of this name feed; an error when several share the name."""
        meters = self._meters.get(event_name, [])
        if len(meters) > 1:
            raise RatingError(
                "event_name_feeds_several_meters",
                f"events named {event_name!r} feed several meters "
                f"({', '.join(m.code for m in meters)}); price one meter's part at a time",
            )
        return meters[0] if meters else None

    def version_at(self, rate_card_id: int, at: datetime) -> RateCardVersion | None:
        index = bisect.bisect_right(self._starts.get(rate_card_id, []), at)
        return self._versions[rate_card_id][index - 1] if index else None

    def rate(
        self,
        *,
        rate_card_id: int,
        value: Decimal,
        dimensions: Mapping[str, str],
        at: datetime,
        event_name: str | None = None,
        meter_id: int | None = None,
    ) -> Rated:
        """Price one event of the meter ``meter_id`` (stored events know theirs), or of
        the one meter events named ``event_name`` feed (estimates)."""
        if meter_id is not None:
            meter = self._meters_by_id.get(meter_id)
        else:
            assert event_name is not None
            meter = self.meter(event_name)
        if meter is None:
            raise RatingError(
                "unknown_event_name",
                f"no meter is fed by events named {event_name!r}"
                if meter_id is None
                else f"meter {meter_id} no longer exists",
            )
        version = self.version_at(rate_card_id, at)
        if version is None:
            raise RatingError(
                "no_rate_card_version",
                f"the rate card has no version in effect at {at.isoformat()}",
            )
        rate = self._match(version, meter, dimensions)
        units = Decimal(1) if meter.aggregation == Aggregation.COUNT else value
        return Rated(
            credits=credits_for(units=units, credits=rate.credits, per=rate.per),
            units=units,
            meter=meter,
            rate=rate,
            version=version,
            cost=cost_for(units=units, rate=rate),
        )

    def _match(self, version: RateCardVersion, meter: Meter, dimensions: Mapping[str, str]) -> Rate:
        for rate in self._rates.get((version.pk, meter.pk), []):
            if all(dimensions.get(key) == wanted for key, wanted in rate.match.items()):
                return rate
        raise RatingError(
            "no_matching_rate",
            f"no rate of rate card version {version.version} matches meter {meter.code!r} "
            f"with dimensions {dict(dimensions)}",
        )


def event_credits(
    *,
    rate_card_id: int,
    event_name: str,
    value: Decimal,
    dimensions: Mapping[str, str],
    at: datetime,
) -> Rated:
    """Rate one event (for batches, build a RateTable once and call its rate())."""
    return RateTable.load([rate_card_id]).rate(
        rate_card_id=rate_card_id, event_name=event_name, value=value, dimensions=dimensions, at=at
    )
