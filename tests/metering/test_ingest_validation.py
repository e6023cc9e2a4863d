"""Ingest's checks of one event's dimensions and value, without the database: the
messages say what to change, and the first problem found is the one reported."""

from __future__ import annotations

from decimal import Decimal

import pytest

from metering.ingest import Rejection, _dimensions, _value
from plans.models import Meter

METER = Meter(code="llm_tokens", event_name="llm.tokens", dimensions=["model", "token_type"])
NOT_TEXT = "dimensions must be an object of string values (at most 128 characters)"


@pytest.mark.parametrize(
    "raw",
    [
        {"model": 5},
        {"model": "x" * 129},
        {"x" * 129: "large"},
        {"model": "lar\x00ge"},
        {"mo\x00del": "large"},
        # Not text is reported before an unknown name, whichever comes first.
        {"colour": "red", "model": None},
        ["model", "large"],
    ],
)
def test_dimensions_that_are_not_short_text_are_refused(raw: object) -> None:
    assert _dimensions(raw, METER) == Rejection("invalid_dimensions", NOT_TEXT, "dimensions")


def test_unknown_dimensions_are_named_with_the_meters_own() -> None:
    rejection = _dimensions({"model": "large", "zone": "eu", "colour": "red"}, METER)
    assert rejection == Rejection(
        "invalid_dimensions",
        "colour, zone is not a dimension of meter 'llm_tokens' (its dimensions: model, token_type)",
        "dimensions",
    )


def test_known_dimensions_are_kept_as_sent() -> None:
    raw = {"token_type": "output", "model": "x" * 128}
    kept = _dimensions(raw, METER)
    assert kept == raw and kept is not raw
    assert _dimensions(None, METER) == {}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (1000, Decimal("1000.000000")),
        ("0.5", Decimal("0.500000")),
        ("1.123456", Decimal("1.123456")),
    ],
)
def test_values_are_kept_to_six_places(raw: object, expected: Decimal) -> None:
    value = _value(raw)
    assert value == expected and str(value) == str(expected)


def test_a_seventh_decimal_place_is_refused() -> None:
    assert _value("1.1234567") == Rejection(
        "invalid_value", "value has more than 6 decimal places", "value"
    )
