"""Period boundaries: a late event draws on the credits of the period it belongs to, and
each period's invoice says what the ledger did.

Plan "basic": $10.00 a month, 1,000 included credits, postpaid overage at $0.01 a
credit. Usage is small-model tokens at 0.5 credits per 1,000 (2,000 tokens a credit).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.conf import settings
from django.db import transaction
from django.utils import timezone
from djmoney.money import Money
from hypothesis import HealthCheck, example, given, note
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from billing_portal.invoicing.models import Invoice, InvoiceLine, LineKind
from billing_portal.invoicing.period_close import periods_close_due
from billing_portal.invoicing.services import period_invoice_total
from ledger import services as ledger
from ledger.models import CreditGrant, GrantCategory, LedgerEntry
from ledger.reconcile import run_checks
from metering.ingest import events_ingest
from metering.models import EventRating
from metering.rating import events_rate_pending
from plans.models import Customer, PeriodStatus, SubscriptionPeriod
from plans.money import as_money
from plans.services import subscription_start, subscriptions_renew_due
from tests.plans.factories import customer, load_catalog_with_basic, plan

pytestmark = pytest.mark.django_db

INCLUDED = Decimal(1000)
PRICE = Decimal("0.01")


def _event(identifier: str, at: datetime, credits: Decimal) -> dict[str, Any]:
    return {
        "identifier": identifier,
        "event_name": "llm.tokens",
        "customer": "acme",
        "timestamp": at.isoformat(),
        "value": str(credits * 2000),
        "dimensions": {"model": "small", "token_type": "input"},
    }


def _included_grant(period: SubscriptionPeriod) -> CreditGrant:
    return CreditGrant.objects.get(source_id=str(period.pk), category=GrantCategory.INCLUDED)


def _breakage(grant: CreditGrant) -> Decimal:
    return -sum(
        (e.credits for e in LedgerEntry.objects.filter(grant=grant, kind="expire")), Decimal(0)
    )


def _lines(invoice: Invoice) -> dict[str, InvoiceLine]:
    return {line.kind: line for line in invoice.lines.all()}


def _problems() -> dict[str, list[str]]:
    return {f.check: f.problems for f in run_checks() if f.problems}


# --- the operator's scenario --------------------------------------------------------------


def test_a_backdated_subscription_charges_each_period_on_its_own_credits() -> None:
    """Started 32 days ago; 1,225 credits of events stamped in the first period arrive now."""
    load_catalog_with_basic()
    acme = customer()
    now = timezone.now()
    subscription_start(
        customer=acme, plan=plan("basic"), actor="t", start_at=now - timedelta(days=32)
    )
    first, second = SubscriptionPeriod.objects.filter(subscription__customer=acme).order_by("start")
    stamps = [first.start + timedelta(days=d) for d in (1, 10, 20, 29)]
    credits = [Decimal(400), Decimal(400), Decimal(400), Decimal(25)]
    events = [_event(f"e{i}", at, c) for i, (at, c) in enumerate(zip(stamps, credits, strict=True))]
    assert events_ingest(events=events).count("accepted") == 4
    events_rate_pending()

    # The grace window runs from the close (just now), not from the long-past end.
    assert periods_close_due() == 0
    with time_machine.travel(now + timedelta(seconds=settings.BILLING_GRACE_PERIOD_SECONDS + 1)):
        assert periods_close_due() == 1
    invoice = Invoice.objects.get(period=first)

    lines = _lines(invoice)
    assert as_money(invoice.total).amount == Decimal("12.25")
    assert (
        as_money(lines["base_fee"].amount).amount,
        as_money(lines["overage"].amount).amount,
    ) == (
        Decimal("10.00"),
        Decimal("2.25"),
    )
    assert (lines["included_usage"].credits, lines["overage"].credits) == (INCLUDED, Decimal(225))
    assert _breakage(_included_grant(first)) == 0
    assert _included_grant(second).remaining == INCLUDED  # period 2's credits intact
    assert all(r.period_id == first.pk for r in EventRating.objects.all())
    assert _problems() == {}


def test_reconcile_names_a_period_whose_usage_drew_on_another_periods_credits() -> None:
    load_catalog_with_basic()
    acme = customer()
    now = timezone.now()
    subscription_start(
        customer=acme, plan=plan("basic"), actor="t", start_at=now - timedelta(days=32)
    )
    first, second = SubscriptionPeriod.objects.filter(subscription__customer=acme).order_by("start")
    events_ingest(events=[_event("e", first.start + timedelta(days=1), Decimal(10))])
    events_rate_pending()
    rating = EventRating.objects.get()
    # What rating did before: charge at "now", from the next period's included credits.
    ledger.credits_reverse(
        account=acme.account,
        cause=ledger.Cause("event", str(rating.event_id)),
        actor="t",
        reason="t",
    )
    ledger.credits_consume(
        account=acme.account,
        amount="10",
        cause=ledger.Cause("event", str(rating.event_id)),
        actor="t",
    )
    problems = _problems()
    (line,) = problems["period_usage_draws_on_its_own_credits"]
    assert f"which belongs to period {second.pk}" in line


def test_reconcile_names_an_invoice_that_disagrees_with_the_ledger() -> None:
    load_catalog_with_basic()
    acme = customer()
    now = timezone.now()
    subscription_start(
        customer=acme, plan=plan("basic"), actor="t", start_at=now - timedelta(days=32)
    )
    first = SubscriptionPeriod.objects.filter(subscription__customer=acme).earliest("start")
    events_ingest(events=[_event("e", first.start + timedelta(days=1), Decimal(1100))])
    events_rate_pending()
    with time_machine.travel(now + timedelta(seconds=settings.BILLING_GRACE_PERIOD_SECONDS + 1)):
        periods_close_due()
    invoice = Invoice.objects.get(period=first)
    assert _problems() == {}
    InvoiceLine.objects.filter(invoice=invoice, kind=LineKind.OVERAGE).update(quantity=50)
    (line,) = _problems()["period_invoice_equals_its_ledger_usage"]
    assert line.startswith(f"period {first.pk} (invoice {invoice.number}): invoiced 1000")
    assert "and 100.000000 as overage" in line


# --- any order around two period ends -----------------------------------------------------

T0 = datetime(2026, 10, 1, tzinfo=UTC)
T1 = datetime(2026, 11, 1, tzinfo=UTC)
T2 = datetime(2026, 12, 1, tzinfo=UTC)
GRACE = timedelta(hours=1)


@dataclass(frozen=True)
class Usage:
    stamped: datetime
    arrives: datetime
    credits: Decimal


usages = st.builds(
    lambda end, offset, delay, credits: Usage(
        end + timedelta(minutes=offset),
        end + timedelta(minutes=offset + delay),
        Decimal(credits),
    ),
    st.sampled_from([T1, T2]),
    st.integers(-50, -1) | st.integers(0, 50),
    st.sampled_from([0, 20, 40, 70, 90]),
    st.integers(1, 600),
).filter(lambda u: u.stamped < T2)  # the third period is not invoiced here


@dataclass
class Expected:
    """What each period must show, worked out from the arrival order alone."""

    drawn: dict[datetime, Decimal]
    overage: dict[datetime, Decimal]
    late_overage: Decimal  # period 1's events rated after its close: overage in period 2


def _expected(events: list[Usage]) -> Expected:
    left = {T0: INCLUDED, T1: INCLUDED, T2: INCLUDED}
    drawn: dict[datetime, Decimal] = defaultdict(Decimal)
    overage: dict[datetime, Decimal] = defaultdict(Decimal)
    late_overage = Decimal(0)
    for usage in sorted(events, key=lambda u: u.arrives):
        own, end = (T0, T1) if usage.stamped < T1 else (T1, T2)
        late = usage.arrives >= end + GRACE
        charged = end if late else own  # after its period's close: the open one's credits
        take = min(left[charged], usage.credits)
        left[charged] -= take
        if not late:
            drawn[own] += take
            overage[own] += usage.credits - take
        elif own == T0:
            late_overage += usage.credits - take
    return Expected(drawn, overage, late_overage)


def _run(events: list[Usage]) -> tuple[Customer, list[Invoice], dict[int, Money]]:
    acme = customer()
    estimates: dict[int, Money] = {}
    with time_machine.travel(T0, tick=False) as clock:
        subscription_start(customer=acme, plan=plan("basic"), actor="t")
        steps: list[tuple[datetime, int, Any]] = [(u.arrives, 1, u) for u in events]
        steps += [(T1, 0, "renew"), (T1 + GRACE, 0, "close"), (T2, 0, "renew")]
        steps += [(T2 + GRACE, 0, "close")]
        for index, (moment, _, step) in enumerate(sorted(steps, key=lambda s: (s[0], s[1]))):
            clock.move_to(moment)
            if step == "renew":
                subscriptions_renew_due()
            elif step == "close":
                for due in SubscriptionPeriod.objects.filter(
                    subscription__customer=acme, status=PeriodStatus.CLOSED
                ).select_related("subscription__customer", "plan_version"):
                    estimates[due.pk] = period_invoice_total(period=due)
                periods_close_due()
            else:
                accepted = events_ingest(events=[_event(f"u{index}", step.stamped, step.credits)])
                assert accepted.count("accepted") == 1
                events_rate_pending()
        periods = SubscriptionPeriod.objects.filter(subscription__customer=acme).order_by("start")
        invoices = [Invoice.objects.get(period=p) for p in periods[:2]]
    return acme, invoices, estimates


@hypothesis_settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(events=st.lists(usages, min_size=1, max_size=8))
# Always tried: period 1's usage arriving after its close, beyond period 2's credits, so
# period 2 bills late overage of its own and of period 1 (a prior-period adjustment).
@example(
    events=[
        Usage(T1 - timedelta(minutes=10), T1 + timedelta(minutes=90), Decimal(600)),
        Usage(T1 - timedelta(minutes=5), T1 + timedelta(minutes=90), Decimal(600)),
        Usage(T1 + timedelta(minutes=5), T1 + timedelta(minutes=20), Decimal(300)),
    ]
)
def test_late_events_in_any_order_are_invoiced_with_their_own_period(events: list[Usage]) -> None:
    load_catalog_with_basic()
    note(repr(events))
    with transaction.atomic():
        _, (first, second), estimates = _run(events)
        expected = _expected(events)
        for invoice, start in ((first, T0), (second, T1)):
            lines = _lines(invoice)
            assert lines["included_usage"].credits == expected.drawn[start]
            overage = lines.get("overage")
            assert (overage.credits if overage else 0) == expected.overage[start]
            base_fee = invoice.lines.filter(kind="base_fee").get()
            assert as_money(base_fee.amount).amount == Decimal("10.00")
        adjustments = second.lines.filter(kind=LineKind.PRIOR_PERIOD_ADJUSTMENT)
        assert sum((a.credits for a in adjustments), Decimal(0)) == expected.late_overage
        assert all(a.service_period_start == T0 for a in adjustments)
        p1, p2 = (invoice.period for invoice in (first, second))
        assert p1 is not None and p2 is not None
        assert _breakage(_included_grant(p1)) == INCLUDED - expected.drawn[T0]
        # The portal's estimate just before each close, from the period's counters.
        assert estimates == {invoice.period_id: invoice.total for invoice in (first, second)}
        assert _problems() == {}
        transaction.set_rollback(True)  # each example starts from an empty database
