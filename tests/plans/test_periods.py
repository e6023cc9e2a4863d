from __future__ import annotations

from datetime import UTC, datetime

import pytest

from plans.periods import add_months, period_bounds, period_containing


def d(y: int, m: int, day: int, h: int = 10) -> datetime:
    return datetime(y, m, day, h, tzinfo=UTC)


def test_a_31st_anchor_clamps_to_short_months_and_comes_back() -> None:
    starts = [period_bounds(d(2025, 1, 31), "month", i)[0] for i in range(5)]
    assert starts == [
        d(2025, 1, 31),
        d(2025, 2, 28),
        d(2025, 3, 31),
        d(2025, 4, 30),
        d(2025, 5, 31),
    ]


def test_february_has_29_days_in_a_leap_year() -> None:
    assert period_bounds(d(2024, 1, 30), "month", 0) == (d(2024, 1, 30), d(2024, 2, 29))
    assert period_bounds(d(2024, 1, 30), "month", 1) == (d(2024, 2, 29), d(2024, 3, 30))


def test_a_leap_day_anchor_on_a_yearly_plan() -> None:
    assert period_bounds(d(2024, 2, 29), "year", 0) == (d(2024, 2, 29), d(2025, 2, 28))
    assert period_bounds(d(2024, 2, 29), "year", 4)[0] == d(2028, 2, 29)


def test_periods_keep_the_time_of_day_and_cross_years() -> None:
    assert add_months(d(2025, 12, 15, 23), 1) == d(2026, 1, 15, 23)
    assert add_months(d(2025, 1, 15), 25) == d(2027, 2, 15)


@pytest.mark.parametrize(
    ("moment", "index"),
    [(d(2025, 1, 31), 0), (d(2025, 2, 28, 9), 0), (d(2025, 2, 28), 1), (d(2026, 1, 1), 11)],
)
def test_it_finds_the_period_containing_a_moment(moment: datetime, index: int) -> None:
    found, start, end = period_containing(d(2025, 1, 31), "month", moment)
    assert found == index
    assert start <= moment < end
