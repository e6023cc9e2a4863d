"""Tiered and package prices, charged in real time and trued up at period close.

Rate card "tiered" (per 1,000 input tokens):

- model ``grad``, graduated: 0-10,000 tokens at 2 credits, 10,000-50,000 at 1, above at 0.5
  (so 10,000 tokens cost 20 credits, the next 40,000 cost 40);
- model ``vol``, volume: up to 10,000 tokens at 2 credits, above at 1 for every token;
- images, packages of 10 at 5 credits, a started package costs a whole one.

Plan "tiered": $0 a month, 50 included credits, postpaid overage at $0.01 a credit.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.conf import settings
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st

from billing_portal.invoicing.models import Invoice, LineKind
from billing_portal.invoicing.period_close import periods_close_due
from billing_portal.invoicing.services import period_invoice_draft
from ledger.models import LedgerEntry
from ledger.reconcile import run_checks
from metering.ingest import events_ingest
from metering.models import EventRating, RateUsage
from metering.rating import events_rate_pending
from metering.services import event_cancel
from plans import catalog
from plans.models import Rate, SubscriptionPeriod
from plans.money import as_money
from plans.services import subscription_start
from plans.tiers import breakdown, event_charge, period_credits
from tests.plans.factories import customer, plan

CATALOG = """
currency: USD
meters:
  - code: input_tokens
    event_name: llm.input
    aggregation: sum
    unit: tokens
    dimensions: [model]
    display_name: Input tokens
  - code: images
    event_name: image.render
    aggregation: count
    unit: images
rate_cards:
  - code: tiered
    effective_from: "2020-01-01T00:00:00Z"
    rates:
      - meter: input_tokens
        match: {model: grad}
        per: 1000
        tiers_mode: graduated
        tiers:
          - {up_to: 10000, credits: "2"}
          - {from: 10000, up_to: 50000, credits: "1"}
          - {up_to: inf, credits: "0.5"}
      - meter: input_tokens
        match: {model: vol}
        per: 1000
        tiers_mode: volume
        tiers:
          - {up_to: 10000, credits: "2"}
          - {credits: "1"}
      - meter: images
        per: 10
        round: up
        credits: "5"
plans:
  - code: tiered
    name: Tiered
    interval: month
    base_fee: "0.00"
    included_credits: "50"
    rate_card: tiered
    overage: {policy: postpaid, price_per_credit: "0.01"}
"""


class _Rate:
    """The fields the formulas read, without a database."""

    def __init__(self, mode: str, tiers: list[dict[str, str | None]], per: int = 1000) -> None:
        self.tiers_mode = mode
        self.tiers = tiers
        self.per = per
        self.round_up = False
        self.credits = max(Decimal(str(t["credits"])) for t in tiers)


GRADUATED = _Rate(
    "graduated",
    [
        {"up_to": "10000", "credits": "2"},
        {"up_to": "50000", "credits": "1"},
        {"up_to": None, "credits": "0.5"},
    ],
)
VOLUME = _Rate("volume", [{"up_to": "10000", "credits": "2"}, {"up_to": None, "credits": "1"}])

# --- the formulas, by hand ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "units", "charged"),
    [
        (0, 6_000, "12"),  # all in the first tier
        (6_000, 7_000, "11"),  # 4,000 at 2 + 3,000 at 1: straddles 10,000
        (13_000, 50_000, "43.5"),  # 37,000 at 1 + 13,000 at 0.5
        (0, 10_000, "20"),  # up to the bound, inclusive
        (10_000, 1, "0.001"),  # the first unit above it
        (0, 63_000, "66.5"),  # 20 + 40 + 6.5
        (9_999, 2, "0.003"),  # one unit each side of the bound: 0.002 + 0.001
    ],
)
def test_graduated_charges_each_unit_at_its_tier(before: int, units: int, charged: str) -> None:
    assert event_charge(GRADUATED, Decimal(before), Decimal(units)) == Decimal(charged)


@pytest.mark.parametrize(
    ("total", "credits"),
    [(6_000, "12"), (10_000, "20"), (10_001, "10.001"), (63_000, "63")],
)
def test_volume_prices_every_unit_at_the_tier_the_total_reaches(total: int, credits: str) -> None:
    assert period_credits(VOLUME, Decimal(total)) == Decimal(credits)


def test_volume_charges_the_running_tier() -> None:
    # 6,000 tokens at 2; then 7,000 take the total to 13,000: all 7,000 at 1.
    assert event_charge(VOLUME, Decimal(0), Decimal(6_000)) == Decimal(12)
    assert event_charge(VOLUME, Decimal(6_000), Decimal(7_000)) == Decimal(7)


def test_packages_charge_a_started_package_whole() -> None:
    packages = _Rate("", [{"up_to": None, "credits": "5"}], per=10)
    packages.tiers_mode, packages.tiers, packages.round_up, packages.credits = (
        "",
        [],
        True,
        Decimal(5),
    )
    charges = [event_charge(packages, Decimal(n), Decimal(1)) for n in range(21)]
    assert charges[0] == charges[10] == charges[20] == Decimal(5)  # units 1, 11, 21
    assert sum(charges) == Decimal(15) == period_credits(packages, Decimal(21))
    (part,) = breakdown(packages, Decimal(21))
    assert (part.units, part.packages, part.credits) == (Decimal(21), Decimal(3), Decimal(15))


@given(
    st.lists(st.decimals(min_value=0, max_value=40_000, places=3, allow_nan=False), max_size=25),
    st.randoms(use_true_random=False),
)
def test_graduated_charges_sum_to_the_formula_in_any_order(
    units: list[Decimal], order: Any
) -> None:
    shuffled = list(units)
    order.shuffle(shuffled)
    before, charged = Decimal(0), Decimal(0)
    for event in shuffled:
        charged += event_charge(GRADUATED, before, event)
        before += event
    assert charged == period_credits(GRADUATED, sum(units, Decimal(0)))
    split = breakdown(GRADUATED, before)
    assert sum((p.units for p in split), Decimal(0)) == before


# --- charged by rating, invoiced at close -------------------------------------------------


def _setup() -> tuple[Any, SubscriptionPeriod]:
    catalog.load(CATALOG)
    acme = customer()
    subscription_start(
        customer=acme,
        plan=plan("tiered"),
        actor="t",
        start_at=timezone.now() - timedelta(days=32),
    )
    first = SubscriptionPeriod.objects.filter(subscription__customer=acme).earliest("start")
    return acme, first


def _send(identifier: str, at: datetime, tokens: int, model: str = "grad") -> None:
    event = {
        "identifier": identifier,
        "event_name": "llm.input",
        "customer": "acme",
        "timestamp": at.isoformat(),
        "value": str(tokens),
        "dimensions": {"model": model},
    }
    assert events_ingest(events=[event]).count("accepted") == 1
    events_rate_pending()


def _charged(identifier: str) -> Decimal:
    return EventRating.objects.get(event__identifier=identifier).credits


def _close(period: SubscriptionPeriod) -> Invoice:
    later = timezone.now() + timedelta(seconds=settings.BILLING_GRACE_PERIOD_SECONDS + 1)
    with time_machine.travel(later):
        assert periods_close_due() == 1
    return Invoice.objects.get(period=period)


def _problems() -> dict[str, list[str]]:
    return {f.check: f.problems for f in run_checks() if f.problems}


@pytest.mark.django_db
def test_events_arriving_out_of_order_are_charged_by_arrival_and_sum_to_the_formula() -> None:
    _, first = _setup()
    day = first.start + timedelta(days=1)
    # Stamped late-first: the last to happen arrives first; tiers count arrival.
    _send("c", day + timedelta(days=9), 50_000)
    _send("a", day, 6_000)
    _send("b", day + timedelta(days=5), 7_000)
    assert [_charged(i) for i in "cab"] == [Decimal(60), Decimal(3), Decimal("3.5")]
    usage = RateUsage.objects.get(period=first)
    assert (usage.units, usage.credits) == (Decimal(63_000), Decimal("66.5"))

    invoice = _close(first)
    lines: dict[str, list[Any]] = {}
    for line in invoice.lines.all():
        lines.setdefault(line.kind, []).append(line)
    assert LineKind.TIER_TRUE_UP not in lines  # graduated needs none
    tiers = [(line.quantity, line.credits) for line in lines[LineKind.USAGE_TIER]]
    assert tiers == [
        (Decimal(10_000), Decimal(20)),
        (Decimal(40_000), Decimal(40)),
        (Decimal(13_000), Decimal("6.5")),
    ]
    assert "Input tokens (model=grad): 40,000 tokens in tier 10,000-50,000" in (
        lines[LineKind.USAGE_TIER][1].description
    )
    # 66.5 credits: 50 included, 16.5 overage at $0.01.
    assert lines[LineKind.INCLUDED_USAGE][0].credits == Decimal(50)
    assert lines[LineKind.OVERAGE][0].credits == Decimal("16.5")
    assert as_money(invoice.total).amount == Decimal("0.17")  # 0.165, half up
    assert _problems() == {}


@pytest.mark.django_db
def test_a_cancel_across_a_boundary_is_reversed_and_the_close_trues_up_to_the_formula() -> None:
    acme, first = _setup()
    day = first.start + timedelta(days=1)
    _send("a", day, 6_000)  # 12
    _send("b", day, 7_000)  # 8 + 3 = 11, across 10,000
    _send("c", day, 50_000)  # 37 + 6.5 = 43.5
    event_cancel(customer=acme, identifier="b", reason="duplicate", actor="t")
    # b's 11 credits come back; the count drops to 56,000 tokens.
    usage = RateUsage.objects.get(period=first)
    assert (usage.units, usage.credits) == (Decimal(56_000), Decimal("55.5"))
    _send("d", day, 1_000)  # 56,000 -> 57,000: all above 50,000, at 0.5
    assert _charged("d") == Decimal("0.5")

    # The formula on 57,000 tokens is 20 + 40 + 3.5 = 63.5; 56 were charged.
    draft = period_invoice_draft(period=first)
    (projected,) = [line for line in draft.lines if line.kind == LineKind.TIER_TRUE_UP]
    assert projected.credits == Decimal("7.5")

    invoice = _close(first)
    (true_up,) = invoice.lines.filter(kind=LineKind.TIER_TRUE_UP)
    assert true_up.credits == Decimal("7.5")
    assert as_money(true_up.amount).amount == Decimal(0)  # the included credits paid it
    entries = LedgerEntry.objects.filter(cause_type="tier_true_up")
    assert -sum(e.credits for e in entries) == Decimal("7.5")
    assert set(true_up.entry_links.values_list("entry_id", flat=True)) == {e.pk for e in entries}
    included = invoice.lines.get(kind=LineKind.INCLUDED_USAGE).credits
    overage = invoice.lines.get(kind=LineKind.OVERAGE).credits
    # a 12 + c 27 + d 0.5 from the included 50 (b's 11 came back), c's 16.5 overage.
    assert (included, overage) == (Decimal("39.5"), Decimal("16.5"))
    assert included + overage + true_up.credits == period_credits(
        Rate.objects.get(match={"model": "grad"}), Decimal(57_000)
    )
    assert _problems() == {}


@pytest.mark.django_db
def test_volume_is_charged_at_the_running_tier_and_given_back_at_close() -> None:
    _, first = _setup()
    day = first.start + timedelta(days=1)
    _send("a", day, 6_000, "vol")  # 6,000 at 2 = 12
    _send("b", day, 7_000, "vol")  # total 13,000: 7,000 at 1 = 7
    _send("c", day, 40_000, "vol")  # total 53,000: 40 = 40
    assert [_charged(i) for i in "abc"] == [Decimal(12), Decimal(7), Decimal(40)]
    # 59 charged: 50 included, 9 overage. The formula: 53,000 at 1 = 53.
    draft = period_invoice_draft(period=first)
    (projected,) = [line for line in draft.lines if line.kind == LineKind.TIER_TRUE_UP]
    invoice = _close(first)
    (true_up,) = invoice.lines.filter(kind=LineKind.TIER_TRUE_UP)
    # 6 credits given back, off the overage first: the invoice bills 3 credits of overage.
    assert true_up.credits == Decimal(-6)
    assert as_money(true_up.amount).amount == Decimal("-0.06")
    assert (projected.credits, projected.amount.amount) == (Decimal(-6), Decimal("-0.06"))
    assert invoice.lines.get(kind=LineKind.OVERAGE).credits == Decimal(9)
    assert as_money(invoice.total).amount == Decimal("0.03")  # 0.09 - 0.06
    (tier,) = invoice.lines.filter(kind=LineKind.USAGE_TIER)
    assert (tier.quantity, tier.credits) == (Decimal(53_000), Decimal(53))
    assert "all 53,000 tokens at the above 10,000 tier" in tier.description
    assert _problems() == {}


@pytest.mark.django_db
def test_packages_are_charged_when_a_package_starts() -> None:
    _, first = _setup()
    day = first.start + timedelta(days=1)
    events = [
        {
            "identifier": f"img{i:02d}",
            "event_name": "image.render",
            "customer": "acme",
            "timestamp": (day + timedelta(minutes=i)).isoformat(),
            "value": "1",
        }
        for i in range(12)
    ]
    assert events_ingest(events=events).count("accepted") == 12
    events_rate_pending()
    charged = [_charged(f"img{i:02d}") for i in range(12)]
    assert charged == [Decimal(5)] + [Decimal(0)] * 9 + [Decimal(5), Decimal(0)]
    invoice = _close(first)
    (line,) = invoice.lines.filter(kind=LineKind.USAGE_TIER)
    assert "12 images in 2 started packages of 10, 5 credits each" in line.description


@pytest.mark.django_db
def test_reconcile_names_a_tier_count_that_disagrees_with_its_events() -> None:
    _, first = _setup()
    _send("a", first.start + timedelta(days=1), 6_000)
    assert _problems() == {}
    RateUsage.objects.filter(period=first).update(units=Decimal(1_000))  # a lost update
    (problem,) = _problems()["tiered_rate_usage_equals_its_charges"]
    assert "counted 1000.000000 units and 12.000000 credits" in problem
    assert "its events and true-up come to 6000.000000 units" in problem
