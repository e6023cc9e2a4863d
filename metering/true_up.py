"""Period close for tiered and package rates: bring each rate's credits to its formula.

Rating charges tiered and package rates event by event from the units before each one
(``plans.tiers``). What it charged can differ from the formula on the period's total: a
volume rate is charged at the running tier, and a cancelled event gave back what it was
charged, not what the total now costs. When the period closes, each rate's difference is
posted once, under the cause ``tier_true_up`` ``"<period id>:<rate id>"``:

- more to charge: a debit drawn from the credits usable at the period's end (its own
  included credits first, as its events did), overage beyond them;
- too much charged: part of the rate's event charges is given back, overage first, then
  the newest consumption first.

The invoice shows the difference on its own line, linked to these entries.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from django.db.models import F

from ledger import services as ledger
from ledger.models import ZERO, CauseType, EntryKind, LedgerEntry
from metering.models import EventCancellation, EventRating, PeriodUsage, RateUsage
from plans.models import SubscriptionPeriod
from plans.tiers import period_credits

ACTOR = "system:period_close"


@dataclass(frozen=True)
class TrueUp:
    rate_usage: RateUsage
    formula: Decimal

    @property
    def credits(self) -> Decimal:
        """Positive: to charge; negative: to give back."""
        return self.formula - self.rate_usage.credits


def period_true_ups(period: SubscriptionPeriod) -> list[TrueUp]:
    """Each tiered or package rate of the period whose charges differ from its formula."""
    return periods_true_ups([period]).get(period.pk, [])


def periods_true_ups(periods: Sequence[SubscriptionPeriod]) -> dict[int, list[TrueUp]]:
    """The true-ups of many periods, by period id, read in one query (period close reads
    a whole batch's at once)."""
    rows = (
        RateUsage.objects.filter(period__in=[period.pk for period in periods])
        .select_related("rate__meter")
        .order_by("pk")
    )
    found: dict[int, list[TrueUp]] = defaultdict(list)
    for row in rows:
        true_up = TrueUp(row, period_credits(row.rate, row.units))
        if true_up.credits != 0:
            found[row.period_id].append(true_up)
    return found


def true_up_cause(period_id: int, rate_id: int) -> ledger.Cause:
    return ledger.Cause(CauseType.TIER_TRUE_UP, f"{period_id}:{rate_id}")


def period_rates_true_up(
    *, period: SubscriptionPeriod, true_ups: list[TrueUp]
) -> list[LedgerEntry]:
    """Post the period's true-ups (the caller closes the period and holds its lock).

    Rating counts units under the account lock: the caller takes it before reading the
    counts (``periods_true_ups``), so no event of the period is counted between the read
    and the true-up.
    """
    if not true_ups:
        return []
    account = period.subscription.customer.account
    entries: list[LedgerEntry] = []
    for true_up in true_ups:
        row = true_up.rate_usage
        cause = true_up_cause(period.pk, row.rate_id)
        key = f"tier-true-up:{period.pk}:{row.rate_id}"
        reason = f"{row.rate.meter.code}: {row.units} units cost {true_up.formula} credits"
        overage = ZERO
        if true_up.credits > 0:
            debit = ledger.credits_consume(
                account=account,
                amount=true_up.credits,
                cause=cause,
                actor=ACTOR,
                meter=row.rate.meter.code,
                # Drawn as the period's own usage: on the credits usable at its end.
                at=period.end - timedelta(microseconds=1),
                reason=reason,
                idempotency_key=key,
            )
            entries.extend(debit.entries)
            overage = debit.overage
        else:
            given_back = ledger.credits_return(
                account=account,
                amount=-true_up.credits,
                originals=_rate_charges(period, row.rate_id),
                cause=cause,
                actor=ACTOR,
                reason=reason,
                idempotency_key=key,
            )
            entries.extend(given_back)
            overage = -sum(
                (e.credits for e in given_back if e.kind == EntryKind.REVERSAL and not e.grant_id),
                ZERO,
            )
        RateUsage.objects.filter(pk=row.pk).update(credits=true_up.formula)
        PeriodUsage.objects.filter(period=period).update(
            credits=F("credits") + true_up.credits, overage=F("overage") + overage
        )
    return entries


def _rate_charges(period: SubscriptionPeriod, rate_id: int) -> list[LedgerEntry]:
    """The consume and overage entries of the period's own, uncancelled events of a rate."""
    events = (
        EventRating.objects.filter(period=period, rate_id=rate_id, prior_period_adjustment=False)
        .exclude(event_id__in=EventCancellation.objects.values("event_id"))
        .values_list("event_id", flat=True)
    )
    return list(
        LedgerEntry.objects.filter(
            account_id=period.subscription.customer.account_id,
            cause_type=CauseType.EVENT,
            cause_id__in=[str(pk) for pk in events],
            kind__in=[EntryKind.CONSUME, EntryKind.OVERAGE],
        ).order_by("pk")
    )
