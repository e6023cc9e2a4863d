"""Retention of raw meter events: ``METERING_RAW_RETENTION_MONTHS``.

Raw events are what grows without end: one row per event, and one rating. With the
setting, events stamped before the first day of the month that many months back are
removed with their ratings and cancellations, in whole months, oldest first, and only
once nothing can still change what they charged:

- every one of them is rated (no queue row: waiting, failing or parked);
- every period their ratings charged is invoiced (handed to invoicing). A late event
  charged in a later period waits for that period's invoice too.

The first event that fails either holds back its whole month and every later one; the
run says which event and why. A month with partitions of its own (``metering.partitions``)
goes by dropping them; events stored before partitioning, or waiting in the DEFAULT
partition, are deleted in chunks. What the events became stays: hourly rollups (the usage
dashboard and exports of usage), ledger entries (which name the events they charged),
invoice lines and revenue. Each period that lost events is marked
(``PeriodUsage.raw_removed_at``): the reconcile checks that recount a period from its
ratings pass over it, and lineage says where the stored events stop
(``RawEventsRemoval``).

An event removed must not be accepted again as new, or it would be charged twice: the
cutoff is always older than ``METERING_MAX_EVENT_AGE_DAYS``, beyond which ingest refuses
an event's timestamp, so the months setting must exceed it (at least 2 months with the
default 35 days; a system check says so, and a run refuses to start otherwise).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import connection, transaction
from django.utils import timezone

from metering.models import RawEventsRemoval
from metering.partitions import (
    EVENTS,
    LOCK_TIMEOUT,
    RATINGS,
    month_ids,
    month_index,
    month_partition_make,
    month_partitions_before,
    month_start,
    partition_name,
)
from plans.models import PeriodStatus

logger = logging.getLogger(__name__)

# The shortest month: a cutoff N months back is at least this many days old times N.
_SHORTEST_MONTH_DAYS = 28
CHUNK = 10_000


def retention_problem(months: int | None, max_age_days: int) -> str | None:
    """Why ``months`` cannot be used, or None when it can (None: keep everything)."""
    if months is None:
        return None
    if months < 1:
        return (
            f"METERING_RAW_RETENTION_MONTHS={months}: give a whole number of months of "
            "1 or more, or leave it empty to keep every event"
        )
    if months * _SHORTEST_MONTH_DAYS <= max_age_days:
        least = max_age_days // _SHORTEST_MONTH_DAYS + 1
        return (
            f"METERING_RAW_RETENTION_MONTHS={months} would remove events that ingest still "
            f"accepts (METERING_MAX_EVENT_AGE_DAYS={max_age_days}): one sent again would be "
            f"charged twice. Use at least {least}, or lower METERING_MAX_EVENT_AGE_DAYS"
        )
    return None


def retention_cutoff(now: datetime, months: int) -> datetime:
    """The first instant (UTC) of the month ``months`` before the one ``now`` is in."""
    moment = now.astimezone(UTC)
    index = moment.year * 12 + moment.month - 1 - months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Removal:
    """What one run removed. ``wanted`` is the cutoff the setting asks for, ``before`` the
    one applied: earlier when an event holds its month back (``held_back``)."""

    wanted: datetime | None
    before: datetime | None
    events: int = 0
    ratings: int = 0
    held_back: str | None = None


# The oldest event before the cutoff that must stay: still queued for rating, or charged
# to a period not yet invoiced. Whole months are removed, so its month stays too. An
# event's id carries its month (metering.partitions), so ``below`` (the first id of the
# cutoff's month) keeps the months after it from being read at all.
_HOLDING_BACK = """
SELECT e.id, e.identifier, e.timestamp, q.event_id IS NOT NULL, p.id, p.status
FROM metering_meterevent e
LEFT JOIN metering_ratingqueue q ON q.event_id = e.id
LEFT JOIN metering_eventrating r ON r.event_id = e.id
LEFT JOIN plans_subscriptionperiod p ON p.id = r.period_id
WHERE e.id < %(below)s AND e.timestamp < %(before)s
  AND (q.event_id IS NOT NULL OR p.status <> %(invoiced)s)
ORDER BY e.timestamp, e.id
LIMIT 1
"""

# A month whose events all go: what its partitions hold, counted, and what must go with
# them, before the partitions are dropped.
_MONTH_DROP = """
WITH cancellations AS (
    DELETE FROM metering_eventcancellation WHERE event_id >= %(low)s AND event_id < %(high)s
), keys AS (
    DELETE FROM metering_eventkey WHERE event_id >= %(low)s AND event_id < %(high)s
), marked AS (
    UPDATE metering_periodusage u SET raw_removed_at = %(now)s
    WHERE u.period_id IN (
        SELECT DISTINCT period_id FROM {ratings} WHERE period_id IS NOT NULL
    ) AND u.raw_removed_at IS NULL
)
SELECT (SELECT count(*) FROM {events}), (SELECT count(*) FROM {ratings})
"""

# One chunk, in one statement: the events, their ratings and cancellations, and a mark on
# every period the ratings charged. The conditions are checked again row by row.
_REMOVE_CHUNK = """
WITH doomed AS MATERIALIZED (
    SELECT e.id, e.customer_id, e.identifier FROM metering_meterevent e
    WHERE e.id < %(below)s AND e.timestamp < %(before)s
      AND NOT EXISTS (SELECT 1 FROM metering_ratingqueue q WHERE q.event_id = e.id)
      AND NOT EXISTS (
          SELECT 1 FROM metering_eventrating r
          JOIN plans_subscriptionperiod p ON p.id = r.period_id
          WHERE r.event_id = e.id AND p.status <> %(invoiced)s
      )
    ORDER BY e.id
    LIMIT %(chunk)s
    FOR UPDATE OF e SKIP LOCKED
), ratings AS (
    DELETE FROM metering_eventrating r USING doomed d WHERE r.event_id = d.id
    RETURNING r.period_id
), cancellations AS (
    DELETE FROM metering_eventcancellation c USING doomed d WHERE c.event_id = d.id
), keys AS (
    DELETE FROM metering_eventkey k USING doomed d
    WHERE k.customer_id = d.customer_id AND k.identifier = d.identifier
), events AS (
    DELETE FROM metering_meterevent e USING doomed d WHERE e.id = d.id RETURNING e.id
), marked AS (
    UPDATE metering_periodusage u SET raw_removed_at = %(now)s
    WHERE u.period_id IN (SELECT period_id FROM ratings WHERE period_id IS NOT NULL)
      AND u.raw_removed_at IS NULL
)
SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM ratings)
"""


def raw_events_remove(
    *, now: datetime | None = None, months: int | None = None, chunk: int = CHUNK
) -> Removal:
    """Remove the raw events retention no longer keeps (see the module's notes)."""
    now = now or timezone.now()
    if months is None:
        months = settings.METERING_RAW_RETENTION_MONTHS
    if months is None:
        return Removal(wanted=None, before=None)
    problem = retention_problem(months, settings.METERING_MAX_EVENT_AGE_DAYS)
    if problem:
        raise ImproperlyConfigured(problem)
    wanted = retention_cutoff(now, months)
    before, held_back = _removable_before(wanted)
    below = month_ids(month_index(before))[0]
    events = ratings = 0
    # Whole months with partitions of their own: dropped. What is left before the cutoff
    # (events stored before partitioning, or in the DEFAULT partition) goes row by row.
    for month in month_partitions_before(month_index(before)):
        removed, removed_ratings = _month_drop(month, now)
        events += removed
        ratings += removed_ratings
    params: dict[str, Any] = {
        "before": before,
        "below": below,
        "invoiced": PeriodStatus.INVOICING,
        "chunk": chunk,
        "now": now,
    }
    while True:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_REMOVE_CHUNK, params)
            removed, removed_ratings = cursor.fetchone()
            if removed:
                RawEventsRemoval.objects.create(
                    before=before, events=removed, ratings=removed_ratings, removed_at=now
                )
        events += removed
        ratings += removed_ratings
        if removed < chunk:
            break
    if events or held_back:
        logger.info(
            "retention: removed %s raw events and %s ratings stamped before %s%s",
            events,
            ratings,
            before.isoformat(),
            f"; {held_back}" if held_back else "",
        )
    return Removal(wanted, before, events, ratings, held_back)


def _month_drop(month: int, now: datetime) -> tuple[int, int]:
    """Remove month ``month``'s events and ratings by dropping their partitions; return
    how many of each there were. Its keys, cancellations and the marks on the periods it
    charged go in the same transaction."""
    events_table, ratings_table = partition_name(EVENTS, month), partition_name(RATINGS, month)
    low, high = month_ids(month)
    month_partition_make(month)  # both tables' partitions, should one be missing
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(
            _MONTH_DROP.format(events=events_table, ratings=ratings_table),
            {"low": low, "high": high, "now": now},
        )
        events, ratings = cursor.fetchone()
        # Detaching locks the whole table until commit: last, and not waited for long,
        # since ingest and reads queue behind the wait (the next run tries again). A
        # table with checks still pending cannot go.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        for table, partition in ((EVENTS, events_table), (RATINGS, ratings_table)):
            cursor.execute(f"ALTER TABLE {table} DETACH PARTITION {partition}")
            cursor.execute(f"DROP TABLE {partition}")
        if events or ratings:
            RawEventsRemoval.objects.create(
                before=month_start(month + 1), events=events, ratings=ratings, removed_at=now
            )
    return events, ratings


def _removable_before(wanted: datetime) -> tuple[datetime, str | None]:
    below = month_ids(month_index(wanted))[0]
    with connection.cursor() as cursor:
        cursor.execute(
            _HOLDING_BACK,
            {"before": wanted, "below": below, "invoiced": PeriodStatus.INVOICING},
        )
        row = cursor.fetchone()
    if row is None:
        return wanted, None
    event_id, identifier, stamped, queued, period_id, status = row
    before = min(retention_cutoff(stamped, 0), wanted)  # the first instant of its month
    why = (
        "it is still waiting for rating"
        if queued
        else f"period {period_id}, which it was charged to, is {status}, not invoiced yet"
    )
    return before, (
        f"events from {before:%Y-%m-%d} on are kept: event {event_id} ({identifier}, stamped "
        f"{stamped.isoformat()}) holds its month back because {why}"
    )
