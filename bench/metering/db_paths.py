"""Figure 1's references, from the benchmark's own connection: a raw ``COPY`` of the rows
the API just stored, and the same rows written by the ingest's statement with one cost
added at a time (no foreign keys and no queue rows; no foreign keys; as it runs)."""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bench.metering.context import Context
from bench.metering.cpu import CpuMeter, CpuUse
from bench.metering.data import (
    COLUMNS,
    SCRATCH,
    discard_since,
    raw_connection,
    run_sql,
)
from bench.metering.output import cpu_ms
from bench.stats import median, rate

COPY_PATH = "raw `COPY` (binary) into the scratch table: no foreign keys, no queue"
NO_QUEUE_PATH = "the ingest statement without foreign keys and without its queue rows"
NO_FK_PATH = "the ingest statement without foreign keys (events and queue rows)"
AS_IT_RUNS_PATH = (
    "the ingest statement as it runs (`metering.ingest._INSERT`; of the foreign keys, "
    "only the event's authorization's is left)"
)
_QUEUE_CTE = re.compile(r"\), queued AS \(.*?FROM inserted\s*\)", re.DOTALL)
_EVENTS, _QUEUE = "bench_meterevent_nofk", "bench_ratingqueue_nofk"
_KEYS = "bench_eventkey_nofk"

Way = tuple[str, str, Callable[[], None]]  # label, statement, reset after each use


@dataclass
class DbPath:
    """One way of writing a run's rows, from one connection: rows/s and its CPU."""

    label: str
    rows: int
    rate: float
    cpu: CpuUse

    def postgres_ms(self) -> float:
        return cpu_ms(self.cpu, self.rows / 1000, "postgres")


def copy_reference(watermark: int, meter: CpuMeter) -> DbPath:
    """COPY the rows the API stored in this run into the scratch table."""
    blocks: list[bytes] = []
    with raw_connection().cursor() as cursor:
        with cursor.copy(
            f"COPY (SELECT id, {COLUMNS} FROM metering_meterevent WHERE id > {int(watermark)} "
            "ORDER BY id) TO STDOUT (FORMAT BINARY)"
        ) as copy:
            blocks.extend(bytes(block) for block in copy)
        counted = cursor.execute(
            "SELECT count(*) FROM metering_meterevent WHERE id > %s", [watermark]
        ).fetchone()
        rows = int(counted[0]) if counted else 0
        first = meter.snapshot()
        started = time.perf_counter()
        with cursor.copy(f"COPY {SCRATCH} (id, {COLUMNS}) FROM STDIN (FORMAT BINARY)") as copy:
            for block in blocks:
                copy.write(block)
        elapsed = time.perf_counter() - started
        last = meter.snapshot()
    return DbPath(COPY_PATH, rows, rows / elapsed if elapsed else 0.0, meter.between(first, last))


def _statement_path(
    label: str, sql: str, rows: list[tuple[Any, ...]], batch: int, meter: CpuMeter
) -> DbPath:
    """The ingest's INSERT, one batch per transaction, from this process (no HTTP)."""
    import psycopg
    from django.utils import timezone

    raw = raw_connection()
    first = meter.snapshot()
    started = time.perf_counter()
    for i in range(0, len(rows), batch):
        columns = [list(column) for column in zip(*rows[i : i + batch], strict=True)]
        now = timezone.now()
        with psycopg.Cursor(raw) as cursor:
            params = [*columns, now, now][: sql.count("%b")]
            cursor.execute(sql, params, binary=True)
            cursor.fetchall()
    elapsed = time.perf_counter() - started
    last = meter.snapshot()
    return DbPath(
        label, len(rows), len(rows) / elapsed if elapsed else 0.0, meter.between(first, last)
    )


def _combine(paths: list[DbPath]) -> DbPath:
    """Repeats of one way: the median rate, CPU summed over every row written."""
    groups: dict[str, float] = defaultdict(float)
    for path in paths:
        for name, seconds in path.cpu.groups.items():
            groups[name] += seconds
    cpu = CpuUse(
        wall=sum(p.cpu.wall for p in paths), busy=sum(p.cpu.busy for p in paths), groups=groups
    )
    return DbPath(paths[0].label, sum(p.rows for p in paths), median([p.rate for p in paths]), cpu)


def _ways(watermark: int) -> list[Way]:
    """The statement on copies of the tables without foreign keys, when it can be
    pointed at them (and without its queue rows when that part can be cut out), then
    as it runs."""
    from metering import ingest

    no_fk = (
        ingest._INSERT.replace("metering_meterevent", _EVENTS)
        .replace("metering_ratingqueue", _QUEUE)
        .replace("metering_eventkey", _KEYS)
    )
    without_queue, found = _QUEUE_CTE.subn(")", no_fk)

    def reset_copies() -> None:
        run_sql(f"DELETE FROM {_EVENTS} WHERE id > %s", [watermark])
        run_sql(f"DELETE FROM {_KEYS} WHERE event_id > %s", [watermark])
        run_sql(f"DELETE FROM {_QUEUE}")
        run_sql(f"VACUUM (ANALYZE) {_EVENTS}, {_KEYS}, {_QUEUE}")

    ways: list[Way] = []
    if no_fk.count(_EVENTS) == 1 and no_fk.count(_QUEUE) == 1 and no_fk.count(_KEYS) == 1:
        if found == 1:
            ways.append((NO_QUEUE_PATH, without_queue, reset_copies))
        ways.append((NO_FK_PATH, no_fk, reset_copies))
    ways.append((AS_IT_RUNS_PATH, ingest._INSERT, lambda: discard_since(watermark)))
    return ways


def _fill_copies() -> None:
    """The copy of the events table holds the same rows as the real one."""
    run_sql(f"INSERT INTO {_EVENTS} SELECT * FROM metering_meterevent")
    run_sql(f"INSERT INTO {_KEYS} SELECT * FROM metering_eventkey")
    run_sql(f"VACUUM (ANALYZE) {_EVENTS}, {_KEYS}, {_QUEUE}")


def measure_db_paths(ctx: Context, watermark: int, copy: DbPath, rounds: int = 2) -> list[DbPath]:
    """The same rows written several ways, each adding one cost of the ingest's
    statement: COPY; the statement without foreign keys and without the rating queue;
    with the queue; the statement as it runs on the real tables (since metering 0008 the
    only foreign key left is the event's authorization, checked for events that name one).
    Each way runs ``rounds`` times, the order reversed every other round."""
    rows = run_sql(
        "SELECT customer_id, identifier, event_name, meter_id, timestamp, value, "
        "dimensions::text, workspace, authorization_id, content_hash, parent_identifier "
        "FROM metering_meterevent WHERE id > %s ORDER BY customer_id, identifier",
        [watermark],
    )
    discard_since(watermark)
    ways = _ways(watermark)
    measured: dict[str, list[DbPath]] = defaultdict(list)
    run_sql(f"CREATE TABLE {_EVENTS} (LIKE metering_meterevent INCLUDING ALL)")
    run_sql(f"CREATE TABLE {_QUEUE} (LIKE metering_ratingqueue INCLUDING ALL)")
    run_sql(f"CREATE TABLE {_KEYS} (LIKE metering_eventkey INCLUDING ALL)")
    try:
        _fill_copies()
        for round_no in range(rounds):
            for label, sql, reset in ways if round_no % 2 == 0 else ways[::-1]:
                measured[label].append(_statement_path(label, sql, rows, ctx.args.batch, ctx.meter))
                reset()
    finally:
        run_sql(f"DROP TABLE {_QUEUE}, {_KEYS}, {_EVENTS}")
    return [copy] + [_combine(measured[label]) for label, _, _ in ways]


def path_line(path: DbPath) -> str:
    return (
        f"metering ingest, the database alone: {path.label}: {rate(path.rate)} from one "
        f"connection ({path.rows:,} rows), postgres CPU {path.postgres_ms():.1f} ms per 1000 rows"
    )
