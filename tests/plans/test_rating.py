from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from django.db import connection, transaction

from ledger.reconcile import run_checks
from ledger.sql import pipelined
from plans import catalog
from plans.models import Meter, Rate, RateCard
from plans.rating import (
    CATALOG_GENERATION_STATEMENT,
    RateTable,
    RatingError,
    credits_for,
    event_credits,
)
from tests.plans.factories import DEMO_CATALOG, load_demo_catalog

pytestmark = pytest.mark.django_db

JAN = datetime(2026, 1, 15, tzinfo=UTC)


@pytest.fixture
def card_id() -> int:
    load_demo_catalog()
    return RateCard.objects.get(code="standard").pk


@pytest.mark.parametrize(
    ("event", "value", "dimensions", "credits"),
    [
        ("llm.tokens", "812", {"model": "large", "token_type": "output"}, "12.18"),
        ("llm.tokens", "1000", {"model": "large", "token_type": "input"}, "2.5"),
        # {model: small} matches whatever the token type: the most specific match wins.
        ("llm.tokens", "3", {"model": "small", "token_type": "output"}, "0.0015"),
        ("doc.summary", "7", {}, "50"),  # a count meter counts the event, not its value
    ],
)
def test_it_prices_events_with_the_most_specific_rate(
    card_id: int, event: str, value: str, dimensions: dict[str, str], credits: str
) -> None:
    rated = event_credits(
        rate_card_id=card_id, event_name=event, value=Decimal(value), dimensions=dimensions, at=JAN
    )
    assert rated.credits == Decimal(credits)


def test_it_rounds_half_to_even_at_six_places() -> None:
    # 1 unit at 0.0000025 credits each: 0.0000025 -> 0.000002 (even), 0.0000035 -> 0.000004
    assert credits_for(units=Decimal(1), credits=Decimal("0.0025"), per=1000) == Decimal("0.000002")
    assert credits_for(units=Decimal(1), credits=Decimal("0.0035"), per=1000) == Decimal("0.000004")
    assert credits_for(units=Decimal(1), credits=Decimal(1), per=3) == Decimal("0.333333")


def test_it_uses_the_version_in_effect_at_the_event_timestamp(card_id: int) -> None:
    newer = (
        DEMO_CATALOG.read_text()
        .replace('effective_from: "2026-01-01T00:00:00Z"', 'effective_from: "2026-06-01T00:00:00Z"')
        .replace('credits: "15",  per: 1000', 'credits: "20",  per: 1000')
    )
    catalog.load(newer)
    table = RateTable.load([card_id])
    dims = {"model": "large", "token_type": "output"}
    june = datetime(2026, 6, 1, tzinfo=UTC)
    before, after = (
        table.rate(
            rate_card_id=card_id,
            event_name="llm.tokens",
            value=Decimal(1000),
            dimensions=dims,
            at=at,
        )
        for at in (JAN, june)
    )
    assert (before.credits, after.credits) == (Decimal(15), Decimal(20))
    assert (before.version.version, after.version.version) == (1, 2)


@pytest.mark.parametrize(
    ("event", "dimensions", "at", "code"),
    [
        ("nope", {}, JAN, "unknown_event_name"),
        ("llm.tokens", {"model": "medium"}, JAN, "no_matching_rate"),
        (
            "llm.tokens",
            {"model": "small"},
            datetime(2025, 12, 31, tzinfo=UTC),
            "no_rate_card_version",
        ),
    ],
)
def test_it_explains_what_it_cannot_rate(
    card_id: int, event: str, dimensions: dict[str, str], at: datetime, code: str
) -> None:
    with pytest.raises(RatingError) as error:
        event_credits(
            rate_card_id=card_id, event_name=event, value=Decimal(1), dimensions=dimensions, at=at
        )
    assert error.value.code == code


def _generation() -> int:
    ((generation,),) = pipelined([CATALOG_GENERATION_STATEMENT])[0]
    return int(generation)


def _large_output(table: RateTable, card_id: int) -> Decimal:
    dims = {"model": "large", "token_type": "output"}
    return table.rate(
        rate_card_id=card_id, event_name="llm.tokens", value=Decimal(1000), dimensions=dims, at=JAN
    ).credits


def test_charges_keep_a_rate_table_only_while_the_catalog_is_unchanged(card_id: int) -> None:
    generation = _generation()
    table = RateTable.current([card_id], generation)
    assert RateTable.current([card_id], _generation()) is table  # nothing changed
    assert _large_output(table, card_id) == Decimal(15)

    # A rate repriced in place moves the generation: the next batch reads the table anew.
    Rate.objects.filter(version__rate_card_id=card_id, credits=Decimal(15)).update(
        credits=Decimal(18)
    )
    assert _generation() > generation
    fresh = RateTable.current([card_id], _generation())
    assert fresh is not table and _large_output(fresh, card_id) == Decimal(18)

    # So does a meter or a new version, whatever statement writes it.
    before = _generation()
    Meter.objects.filter(code="llm_tokens").update(unit="tokens")
    assert _generation() > before
    before = _generation()
    catalog.load(
        DEMO_CATALOG.read_text().replace(
            'effective_from: "2026-01-01T00:00:00Z"', 'effective_from: "2026-06-01T00:00:00Z"'
        )
    )
    assert _generation() > before

    # Without a generation (none could be read) nothing is kept.
    assert RateTable.current([card_id], None) is not RateTable.current([card_id], None)


@pytest.mark.django_db(transaction=True)
def test_a_rolled_back_catalog_change_never_hands_its_generation_out_again() -> None:
    load_demo_catalog()
    committed = _generation()
    with pytest.raises(RuntimeError), transaction.atomic():
        Meter.objects.update(unit="x")
        seen_inside = _generation()
        assert seen_inside > committed
        raise RuntimeError("rolled back")
    assert _generation() == committed  # the change's number was never seen outside it
    Meter.objects.update(unit="tokens")
    assert _generation() > seen_inside


def test_reconcile_reports_a_catalog_table_whose_changes_would_go_unseen() -> None:
    assert _problems("rate_tables_follow_the_catalog") == []
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE plans_rate DISABLE TRIGGER plans_catalog_changed")
    assert _problems("rate_tables_follow_the_catalog") == [
        "trigger plans_catalog_changed on plans_rate is missing or disabled"
    ]


def _problems(check: str) -> list[str]:
    return {finding.check: finding.problems for finding in run_checks()}[check]
