"""Catalog loading bounds what a rate may charge, so that one event of the largest value
(plans.models.MAX_EVENT_VALUE) always rates to credits the ledger can store."""

from __future__ import annotations

from decimal import Decimal

import pytest

from plans import catalog
from plans.models import MAX_CREDITS, MAX_EVENT_VALUE, Meter, Rate
from plans.rating import credits_for
from tests.plans.factories import DEMO_CATALOG

pytestmark = pytest.mark.django_db

DEMO = DEMO_CATALOG.read_text()
SMALL_RATE = (
    '{meter: llm_tokens, match: {model: small},                     credits: "0.5", per: 1000}'
)
SUMMARY_RATE = (
    '{meter: doc_summaries,                                         credits: "50",  per: 1}'
)


def _with_small_rate(credits: str, per: int) -> str:
    assert SMALL_RATE in DEMO
    return DEMO.replace(
        SMALL_RATE,
        f'{{meter: llm_tokens, match: {{model: small}}, credits: "{credits}", per: {per}}}',
    )


def _refusal(text: str) -> list[str]:
    with pytest.raises(catalog.CatalogError) as refused:
        catalog.load(text)
    assert not Meter.objects.exists()
    return refused.value.problems


@pytest.mark.parametrize(
    ("credits", "per", "most"),
    [
        ("100000", 1, "99999.999999"),
        ("99999999999999.999999", 1000, "99999999.999999"),
        ("100000000000000", 2_000_000_000, "99999999999999.999999"),  # the column's own limit
    ],
)
def test_a_rate_that_could_overflow_the_ledger_is_refused(
    credits: str, per: int, most: str
) -> None:
    problems = _refusal(_with_small_rate(credits, per))

    assert problems == [
        f"rate_cards[0] (standard).rates[2].credits: {Decimal(credits)} per {per} could price "
        f"one event above {MAX_CREDITS} credits, more than the ledger holds (an event may "
        f"carry up to {MAX_EVENT_VALUE} units); charge at most {most} per {per}"
    ]


def test_per_beyond_its_column_is_refused() -> None:
    problems = _refusal(_with_small_rate("1", 2**31))
    assert problems == [
        "rate_cards[0] (standard).rates[2].per: must be at most 2147483647, not 2147483648"
    ]


@pytest.mark.parametrize(("credits", "per"), [("99999.999999", 1), ("99999999.999999", 1000)])
def test_the_most_expensive_rate_allowed_rates_the_largest_event_within_the_ledger(
    credits: str, per: int
) -> None:
    catalog.load(_with_small_rate(credits, per))

    rate = Rate.objects.get(
        version__rate_card__code="standard", meter__code="llm_tokens", match={"model": "small"}
    )
    assert (rate.credits, rate.per) == (Decimal(credits), per)
    assert credits_for(units=MAX_EVENT_VALUE, credits=rate.credits, per=rate.per) <= MAX_CREDITS


def test_a_count_meter_is_bounded_by_one_unit_per_event() -> None:
    # doc_summaries counts events: each is one unit whatever its value.
    expensive = DEMO.replace(SUMMARY_RATE, '{meter: doc_summaries, credits: "5000000", per: 1}')
    catalog.load(expensive)
    summaries = Rate.objects.get(version__rate_card__code="standard", meter__code="doc_summaries")
    assert summaries.credits == Decimal(5_000_000)

    beyond = DEMO.replace(
        SUMMARY_RATE, '{meter: doc_summaries, credits: "100000000000000", per: 1}'
    )
    with pytest.raises(catalog.CatalogError) as refused:
        catalog.load(beyond)
    assert refused.value.problems == [
        "rate_cards[0] (standard).rates[3].credits: 100000000000000 per 1 could price one event "
        f"above {MAX_CREDITS} credits, more than the ledger holds (an event of a count meter "
        f"is 1 unit); charge at most {MAX_CREDITS} per 1"
    ]
