"""Billing periods: calendar months (or years) counted from the anchor.

Period ``n`` starts at the anchor plus ``n`` months, on the anchor's day of the month
clamped to the month's length: an anchor on the 31st gives Feb 28 (29 in a leap year),
then Mar 31 again. Counting from the anchor, not from the previous period's start, is
what keeps a 31st anchor from drifting to the 28th forever.
"""

from __future__ import annotations

import calendar
from datetime import datetime

MONTHS = {"month": 1, "year": 12}


def add_months(moment: datetime, months: int) -> datetime:
    month_index = moment.month - 1 + months
    year = moment.year + month_index // 12
    month = month_index % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def period_bounds(anchor: datetime, interval: str, index: int) -> tuple[datetime, datetime]:
    step = MONTHS[interval]
    return add_months(anchor, step * index), add_months(anchor, step * (index + 1))


def period_containing(
    anchor: datetime, interval: str, moment: datetime
) -> tuple[int, datetime, datetime]:
    """The index and bounds of the period that contains ``moment`` (>= anchor)."""
    if moment < anchor:
        raise ValueError("moment is before the anchor")
    step = MONTHS[interval]
    index = ((moment.year - anchor.year) * 12 + moment.month - anchor.month) // step
    while True:
        start, end = period_bounds(anchor, interval, index)
        if moment < start:
            index -= 1
        elif moment >= end:
            index += 1
        else:
            return index, start, end
