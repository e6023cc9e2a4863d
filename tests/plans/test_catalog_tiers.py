"""Catalog keys for tiered and package prices, provider cost and past-due policy."""

from __future__ import annotations

from decimal import Decimal

import pytest

from plans import catalog
from plans.models import PlanVersion, Rate, RateCardVersion
from plans.money import as_money
from tests.metering.test_tiers import CATALOG

pytestmark = pytest.mark.django_db

COSTED = CATALOG.replace(
    '        round: up\n        credits: "5"\n',
    '        round: up\n        credits: "5"\n        cost: "0.04"\n',
).replace(
    '    overage: {policy: postpaid, price_per_credit: "0.01"}\n',
    '    overage: {policy: postpaid, price_per_credit: "0.01"}\n'
    "    past_due_policy: {deny_after_days: 3}\n",
)


def _problems(text: str) -> list[str]:
    with pytest.raises(catalog.CatalogError) as caught:
        catalog.load(text)
    return caught.value.problems


def _tiers(tiers: str) -> str:
    start = CATALOG.index("        tiers_mode: graduated")
    end = CATALOG.index("      - meter: input_tokens\n        match: {model: vol}")
    return CATALOG[:start] + "        tiers_mode: graduated\n" + tiers + CATALOG[end:]


def test_tiers_packages_cost_and_past_due_policy_load_and_dump_back() -> None:
    assert catalog.load(COSTED)
    graduated = Rate.objects.get(match={"model": "grad"})
    assert graduated.tiers_mode == "graduated"
    assert graduated.tiers == [
        {"up_to": "10000", "credits": "2"},
        {"up_to": "50000", "credits": "1"},
        {"up_to": None, "credits": "0.5"},
    ]
    assert graduated.credits == Decimal(2)  # the highest tier: what holds reserve at
    images = Rate.objects.get(meter__code="images")
    assert (images.round_up, images.per, as_money(images.cost).amount) == (
        True,
        10,
        Decimal("0.04"),
    )
    assert PlanVersion.objects.get().past_due_deny_after_days == 3

    dumped = catalog.dump()
    assert "tiers_mode: volume" in dumped and "round: up" in dumped
    assert "past_due_policy:\n    deny_after_days: 3" in dumped
    assert catalog.load(dumped) == []  # the same catalog: nothing to change
    assert catalog.dump() == dumped


def test_a_change_of_tiers_on_a_card_is_a_new_version() -> None:
    catalog.load(CATALOG)
    changed = CATALOG.replace('{up_to: inf, credits: "0.5"}', '{up_to: inf, credits: "0.4"}')
    assert catalog.load(changed) == ["rate card tiered from 2020-01-01: updated (not yet in use)"]
    assert RateCardVersion.objects.count() == 1
    assert Rate.objects.get(match={"model": "grad"}).tiers[-1]["credits"] == "0.4"
    # Written another way ("0.40", from: stated) is the same tiers: no change.
    assert catalog.load(changed.replace('credits: "0.4"}', 'credits: "0.40"}')) == []


@pytest.mark.parametrize(
    ("tiers", "problem"),
    [
        (
            '        tiers:\n          - {up_to: 10000, credits: "2"}\n'
            '          - {from: 12000, up_to: 50000, credits: "1"}\n'
            '          - {credits: "0.5"}\n',
            "tiers[1].from: leaves a gap: units 10000 to 12000 have no tier",
        ),
        (
            '        tiers:\n          - {up_to: 10000, credits: "2"}\n'
            '          - {from: 9000, up_to: 50000, credits: "1"}\n'
            '          - {credits: "0.5"}\n',
            "tiers[1].from: overlaps the tier before, which ends at 10000: start at it",
        ),
        (
            '        tiers:\n          - {up_to: 50000, credits: "2"}\n'
            '          - {up_to: 10000, credits: "1"}\n'
            '          - {credits: "0.5"}\n',
            "tiers[1].up_to: must be above the tier before's 50000: bounds increase tier by tier",
        ),
        (
            '        tiers:\n          - {credits: "2"}\n          - {credits: "1"}\n',
            "tiers[0].up_to: only the last tier may be open; give its last unit",
        ),
        (
            '        tiers:\n          - {up_to: 10000, credits: "2"}\n'
            '          - {up_to: 50000, credits: "1"}\n',
            "tiers[1].up_to: the last tier must be open: write up_to: inf or omit it",
        ),
        (
            '        tiers:\n          - {up_to: 10000, credits: "-2"}\n'
            '          - {credits: "1"}\n',
            "tiers[0].credits: must be zero or more, not -2",
        ),
        ("        tiers: []\n", "tiers: graduated pricing needs at least one tier"),
    ],
)
def test_malformed_tiers_are_refused_with_the_field_named(tiers: str, problem: str) -> None:
    problems = _problems(_tiers(tiers))
    assert [p.split(".rates[0].", 1)[1] for p in problems] == [problem]
    assert problems[0].startswith("rate_cards[0] (tiered).rates[0].")


def test_tiers_without_a_mode_credits_beside_tiers_and_rounded_tiers_are_refused() -> None:
    no_mode = CATALOG.replace("        tiers_mode: volume\n", "")
    assert any("rates[1].tiers_mode: is required with tiers" in p for p in _problems(no_mode))
    both = CATALOG.replace(
        "        tiers_mode: volume\n", '        tiers_mode: volume\n        credits: "1"\n'
    )
    assert any("a tiered rate is priced by its tiers; remove credits" in p for p in _problems(both))
    rounded = CATALOG.replace(
        "        tiers_mode: volume\n", "        tiers_mode: volume\n        round: up\n"
    )
    assert any("cannot be combined with tiers" in p for p in _problems(rounded))


def test_tiers_on_a_max_meter_and_a_negative_cost_are_refused() -> None:
    peak = CATALOG.replace(
        "    aggregation: sum\n    unit: tokens", "    aggregation: max\n    unit: tokens"
    )
    assert any("keeps the period's peak (max)" in p for p in _problems(peak))
    negative = COSTED.replace('cost: "0.04"', 'cost: "-1"')
    assert any("rates[2].cost: must be zero or more, not -1" in p for p in _problems(negative))
    days = COSTED.replace("deny_after_days: 3", "deny_after_days: 400")
    assert any(
        "past_due_policy.deny_after_days: must be 0 to 365 days" in p for p in _problems(days)
    )
