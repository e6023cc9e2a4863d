"""Monthly partitions of raw meter events and their ratings.

An event's id carries the month it is stamped in (UTC): the month's index since January
1970 in the bits above ``SEQUENCE_BITS``, a number from one sequence below them. The
event table is partitioned by ranges of id, one partition a month, so:

- the primary key is the partition key: every reference to an event by id (its rating,
  queue row, cancellation, the ledger entries that name it) finds its one partition, and
  a foreign key may still point at the table;
- ratings, keyed by their event's id, are partitioned by the same ranges: an event and
  its rating sit in partitions of the same month, and retention drops both;
- a month's partition holds exactly the events stamped in that month, so retention
  removes a month by dropping two tables instead of deleting rows.

Uniqueness of ``(customer, identifier)`` cannot be an index of a table partitioned by
something else, so it is a table of its own, ``metering_eventkey``: ingest inserts there
first, and only the keys it wins become events.

Partitions are made ahead, for the months ingest can still accept (back to
``METERING_MAX_EVENT_AGE_DAYS``) and ``AHEAD`` months after this one, by the migration and
then by beat once a day (``metering.tasks.partitions_ensure``). An event in a month with
no partition lands in the table's DEFAULT partition; making that month's partition later
moves it there. Events stored before partitioning keep their ids, below any month's, in
the ``_legacy`` partition: retention deletes from it row by row as it did before.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

logger = logging.getLogger(__name__)

SEQUENCE_BITS = 40
SEQUENCE_MASK = (1 << SEQUENCE_BITS) - 1
AHEAD = 2
# How long making or dropping a partition waits for its table: ingest queues behind the
# wait, so not long; but longer than deadlock_timeout (1 s), after which PostgreSQL
# cancels an autovacuum that is in the way.
LOCK_TIMEOUT = "3s"

# The partitioned tables and the column each is partitioned by.
EVENTS = "metering_meterevent"
RATINGS = "metering_eventrating"
TABLES = {EVENTS: "id", RATINGS: "event_id"}
SEQUENCE = "metering_meterevent_id_seq"


def month_index(moment: datetime) -> int:
    """Months since January 1970 of ``moment``'s UTC month."""
    moment = moment.astimezone(UTC)
    return (moment.year - 1970) * 12 + moment.month - 1


def month_start(index: int) -> datetime:
    return datetime(1970 + index // 12, index % 12 + 1, 1, tzinfo=UTC)


def month_ids(index: int) -> tuple[int, int]:
    """The ids of events stamped in month ``index``: ``[low, high)``."""
    return index << SEQUENCE_BITS, (index + 1) << SEQUENCE_BITS


def event_id(timestamp: datetime, number: int) -> int:
    """The id of an event stamped at ``timestamp`` that drew ``number`` from the sequence;
    what ``metering_event_id()`` computes in the database."""
    return (month_index(timestamp) << SEQUENCE_BITS) | (number & SEQUENCE_MASK)


def partition_name(table: str, index: int) -> str:
    start = month_start(index)
    return f"{table}_y{start.year:04d}m{start.month:02d}"


def partition_month_text(index: int) -> str:
    """The month as people write it: 2026-12."""
    start = month_start(index)
    return f"{start.year:04d}-{start.month:02d}"


@dataclass(frozen=True)
class Partition:
    table: str
    name: str
    month: int | None  # None: the DEFAULT or the legacy partition


_PARTITIONS = """
SELECT c.relname
FROM pg_inherits i
JOIN pg_class c ON c.oid = i.inhrelid
WHERE i.inhparent = %s::regclass
ORDER BY c.relname
"""


def partitions(table: str) -> list[Partition]:
    """``table``'s partitions; a monthly one with its month, by name."""
    with connection.cursor() as cursor:
        cursor.execute(_PARTITIONS, [table])
        rows = cursor.fetchall()
    return [Partition(table, name, _month_of(table, name)) for (name,) in rows]


def _month_of(table: str, name: str) -> int | None:
    suffix = name.removeprefix(f"{table}_y")
    if suffix == name or len(suffix) != 7 or suffix[4] != "m":
        return None
    year, month = int(suffix[:4]), int(suffix[5:])
    return (year - 1970) * 12 + month - 1


def months_needed(now: datetime) -> range:
    """The months ingest can accept an event in, and ``AHEAD`` after this one."""
    oldest = now - timedelta(days=settings.METERING_MAX_EVENT_AGE_DAYS)
    return range(month_index(oldest), month_index(now) + AHEAD + 1)


@dataclass(frozen=True)
class PartitionsStatus:
    """What /healthz shows of the partitions: a monitor alerts when beat stops making
    them (``months_ahead`` below ``AHEAD``) or events wait in DEFAULT, where they are
    stored and charged but slow every scan and are removed row by row."""

    made_through: int | None  # the last month with a partition of the events table
    months_ahead: int  # months after this one with a partition made (AHEAD when healthy)
    rows_in_default: int  # counted up to DEFAULT_COUNT_LIMIT


DEFAULT_COUNT_LIMIT = 10_000


def partitions_status(now: datetime | None = None) -> PartitionsStatus:
    current = month_index(now or timezone.now())
    months = {p.month for p in partitions(EVENTS) if p.month is not None}
    ahead = 0
    while current + ahead + 1 in months:
        ahead += 1
    with connection.cursor() as cursor:
        # Bounded: DEFAULT is empty while beat runs, and a probe polled every few seconds
        # must not count millions of rows when it is not.
        cursor.execute(
            f"SELECT count(*) FROM (SELECT FROM {EVENTS}_default LIMIT %s) AS waiting",
            [DEFAULT_COUNT_LIMIT],
        )
        (waiting,) = cursor.fetchone()
    return PartitionsStatus(max(months, default=None), ahead, waiting)


def partitions_ensure(now: datetime | None = None) -> list[str]:
    """Make the monthly partitions ``months_needed`` names that are missing; return their
    names. Safe to run at any time and from several processes at once."""
    made = [
        name
        for index in months_needed(now or timezone.now())
        for name in month_partition_make(index)
    ]
    if made:
        logger.info("partitions made: %s", ", ".join(made))
    return made


def month_partition_make(index: int) -> list[str]:
    """Make month ``index``'s partitions (of events and ratings) when missing."""
    return [
        partition_name(table, index)
        for table, column in TABLES.items()
        if _partition_make(table, column, partition_name(table, index), index)
    ]


def _partition_make(table: str, column: str, name: str, index: int) -> bool:
    low, high = month_ids(index)
    default = f"{table}_default"
    with transaction.atomic(), connection.cursor() as cursor:
        # Making a partition locks its table briefly. While it waits for the lock, ingest
        # queues behind it: so not for long (ingest's transactions take milliseconds); on
        # a timeout the next run, a day later and two months ahead, tries again.
        cursor.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
        # The parent only: its partitions are autovacuum's, and ingest's inserts wait
        # here all the same (they lock the parent too).
        cursor.execute(f"LOCK TABLE ONLY {table} IN SHARE ROW EXCLUSIVE MODE")
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [name])
        if cursor.fetchone()[0]:
            return False
        # Rows of that month already in the DEFAULT partition would make the new bound
        # fail: move them into the new table first, then attach it.
        cursor.execute(
            f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        )
        cursor.execute(
            f"WITH moved AS (DELETE FROM {default} WHERE {column} >= %s AND {column} < %s "
            f"RETURNING *) INSERT INTO {name} SELECT * FROM moved",
            [low, high],
        )
        cursor.execute(
            f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES FROM (%s) TO (%s)",
            [low, high],
        )
    return True


def month_partitions_before(index: int) -> list[int]:
    """The months before ``index`` that have a partition of events, oldest first."""
    return sorted(p.month for p in partitions(EVENTS) if p.month is not None and p.month < index)
