"""History at scale: ingest, rating and the dashboard with 1M, 10M and 20M events stored.

Target (issue 19, target 5): with meter events and their ratings partitioned by month,
ingest, rating and the dashboard stay flat within 15% from 1M to 20M events in the
table, and retention removes a month by dropping its partitions.

The data: ``manage.py generate_load_data`` makes the load customers (subscriptions,
portal owners, this period's usage); then the history is written by SQL straight into
past months' partitions, the rows ingest and rating would have left (an event, its key,
its rating), random identifiers, oldest month first, 2M events a month. The current
month holds only what the benchmark itself sends.

At each level, in this process (no HTTP, whose cost does not depend on history):
- ingest: ``metering.ingest.events_ingest``, batches of 1,000 new events over 100 of the
  load customers, one of them receiving a fifth;
- rating: ``metering.rating.events_rate_pending`` draining what was ingested;
- the dashboard: the portal benchmark's full page ``GET /portal/`` (Django test client).
Each is the median of its rounds, and each level is compared with the first. At the
last level, the oldest month is removed the way retention removes one (its partitions
dropped, with its keys), and timed.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bench import env, report
from bench.stats import median, ms, percentile, spread

DEFAULT_LEVELS = (1_000_000, 10_000_000, 20_000_000)
PER_MONTH = 2_000_000
CHUNK = 500_000
FLAT = 1.15  # the target: within 15% of the first level
BATCH = 1_000
SENDERS = 100
DELETE_CHUNKS = 5
MODELS = (("large", "input"), ("large", "output"), ("small", "input"), ("small", "output"))

# One chunk of a past month's history, as ingest and rating leave it.
_HISTORY_SQL = """
WITH rows AS MATERIALIZED (
    SELECT (%(month)s::bigint << 40) | nextval('metering_meterevent_id_seq') AS id,
           (%(customers)s::bigint[])[1 + mod(i, %(n)s::int)] AS customer_id,
           md5(%(tag)s::text || i) AS identifier,
           %(start)s::timestamptz + mod(i * 7919, %(seconds)s::bigint) * interval '1 second'
               AS ts,
           1 + mod(i * 7919, 4000) AS value, mod(i, 4)::int AS combo
    FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i
), keys AS (
    INSERT INTO metering_eventkey (customer_id, identifier, event_id)
    SELECT customer_id, identifier, id FROM rows
), events AS (
    INSERT INTO metering_meterevent (
        id, customer_id, identifier, event_name, meter_id, timestamp, value, dimensions,
        content_hash, received_at
    )
    SELECT id, customer_id, identifier, 'llm.tokens', %(meter)s::bigint, ts, value,
           ((%(dims)s::text[])[1 + combo])::jsonb, md5(identifier) || md5(id::text), ts
    FROM rows
)
INSERT INTO metering_eventrating (
    event_id, status, credits, units, rate_id, period_id, prior_period_adjustment,
    error_code, error_message, rated_at
)
SELECT id, 'rated', value * 0.015, value, %(rate)s::bigint, NULL, false, '', '', ts FROM rows
"""


HEADER = (
    "| events stored | months | host probe (vs first) | ingest (rounds) | ingest vs first "
    "| rating (rounds) | rating vs first | page p95 | page vs first | history written in |\n"
    "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
)


@dataclass
class Level:
    events: int
    load_seconds: float = 0.0
    ingest: list[float] = field(default_factory=list)  # events/s, one per round
    rating: list[float] = field(default_factory=list)
    page_p95: list[float] = field(default_factory=list)  # seconds, one per round
    # The host's speed: seconds of a fixed workload that no history touches, before
    # each round and after the last (see _host_probe).
    probe: list[float] = field(default_factory=list)
    months: int = 0
    current_month_events: int = 0


@dataclass
class Removal:
    month: str
    events: int
    seconds: float
    deleted: int = 0  # rows removed by retention's DELETE, for comparison
    delete_seconds: float = 0.0

    def delete_estimate(self) -> float:
        """Seconds the month would have taken row by row, at the DELETE's rate."""
        return self.events * self.delete_seconds / self.deleted if self.deleted else 0.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--events",
        type=int,
        nargs="+",
        default=None,
        help="history sizes to measure at, ascending (default: 1M 10M 20M)",
    )
    parser.add_argument("--customers", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=20, help="batches of 1,000 per round")
    parser.add_argument("--sample", type=int, default=20, help="dashboard customers")
    # A p95 of 20 requests is about their slowest, one stall of this shared host away
    # from a verdict; 100 a round make it a percentile.
    parser.add_argument(
        "--page-requests", type=int, default=5, help="dashboard requests per customer a round"
    )
    parser.add_argument("--no-write", action="store_true", help="do not update the docs")


def run(args: argparse.Namespace) -> int:
    env.django_setup()
    logging.disable(logging.INFO)  # the usage alerts the load sets off, one line each
    wanted = args.events or list(DEFAULT_LEVELS)
    levels: list[Level] = []
    removal = None
    with env.bench_database():
        machine = env.machine()
        print(f"history: {machine.describe()}", flush=True)
        setup = _setup(args.customers)
        have = 0
        for target in wanted:
            level = Level(events=target)
            started = time.monotonic()
            have = _fill(setup, have, target)
            level.load_seconds = time.monotonic() - started
            level.months = -(-target // PER_MONTH)
            _measure(level, setup, args)
            levels.append(level)
            _print(level, levels[0])
        removal = _remove_oldest(setup)
        print(
            f"history: oldest month ({removal.month}, {removal.events:,} events) removed "
            f"in {removal.seconds:.2f} s; retention's DELETE took {removal.delete_seconds:.2f} "
            f"s for {removal.deleted:,} rows of the next month, "
            f"{removal.delete_estimate():.0f} s for a month at that rate",
            flush=True,
        )
    verdict, problems = _verdict(levels)
    return report.finish(
        "history",
        verdict,
        problems,
        lambda: _section(levels, removal, args, machine.describe(), machine.date),
        write=not args.no_write,
    )


@dataclass
class Setup:
    customers: list[tuple[str, int]]  # (external id, pk)
    meter_id: int
    rate_id: int
    first_month: int  # the oldest month of the history
    tag: str
    now: datetime


def _setup(customers: int) -> Setup:
    import io

    from django.core.management import call_command

    from metering.partitions import month_index
    from plans.models import Customer, Meter, Rate

    out = io.StringIO()
    call_command("generate_load_data", customers=customers, events=100_000, stdout=out)
    rows = list(
        Customer.objects.filter(external_id__startswith="load-")
        .order_by("pk")
        .values_list("external_id", "pk")
    )
    meter = Meter.objects.get(code="llm_tokens")
    rate = Rate.objects.filter(meter=meter).order_by("pk").first()
    assert rate is not None
    now = datetime.now(UTC)
    months = -(-max(DEFAULT_LEVELS) // PER_MONTH)
    # History ends two months back: the months ingest still accepts stay the bench's own.
    first = month_index(now) - 2 - months
    return Setup(rows, meter.pk, rate.pk, first, secrets.token_hex(4), now)


def _fill(setup: Setup, have: int, target: int) -> int:
    """Write history until ``target`` events are stored in past months; return it."""
    from django.db import connection

    from metering.partitions import month_partition_make, month_start

    dims = [json.dumps({"model": m, "token_type": t}) for m, t in MODELS]
    customers = [pk for _, pk in setup.customers]
    while have < target:
        month = setup.first_month + have // PER_MONTH
        month_partition_make(month)
        start = month_start(month)
        seconds = int((month_start(month + 1) - start).total_seconds())
        size = min(CHUNK, target - have, PER_MONTH - have % PER_MONTH)
        with connection.cursor() as cursor:
            cursor.execute(
                _HISTORY_SQL,
                {
                    "month": month,
                    "customers": customers,
                    "n": len(customers),
                    "tag": f"{setup.tag}-{month}-",
                    "start": start,
                    "seconds": seconds,
                    "first": have,
                    "last": have + size - 1,
                    "meter": setup.meter_id,
                    "dims": dims,
                    "rate": setup.rate_id,
                },
            )
        have += size
        print(f"  history: {have:,} events", flush=True)
    with connection.cursor() as cursor:
        cursor.execute(
            "VACUUM (ANALYZE) metering_meterevent, metering_eventkey, metering_eventrating"
        )
        # The history's pages written out now, not by a checkpoint during the measuring
        # (several GB at 20M events: it slowed every figure, the rollup-only page too).
        cursor.execute("CHECKPOINT")
    return have


def _batches(setup: Setup, count: int, rng: random.Random) -> list[list[dict[str, Any]]]:
    # A hundred of the load customers, one of them with a fifth: rating's batches are
    # per customer, and a thousand customers would make them a few events each.
    senders = [external_id for external_id, _ in setup.customers[:SENDERS]]
    batches = []
    for _ in range(count):
        batch = []
        for _ in range(BATCH):
            customer = senders[0] if rng.random() < 0.2 else rng.choice(senders)
            model, token_type = rng.choice(MODELS)
            batch.append(
                {
                    "identifier": secrets.token_hex(16),
                    "event_name": "llm.tokens",
                    "customer": customer,
                    "timestamp": datetime.now(UTC).isoformat(),
                    "value": str(rng.randint(1, 4000)),
                    "dimensions": {"model": model, "token_type": token_type},
                }
            )
        batches.append(batch)
    return batches


def _measure(level: Level, setup: Setup, args: argparse.Namespace) -> None:
    from bench.portal import _clients, _request
    from metering.ingest import events_ingest
    from metering.rating import events_rate_pending

    rng = random.Random(level.events)
    clients = _clients(args.sample, seed=1)
    for client in clients:  # warm-up
        _request(client, "page")
    for _ in range(args.rounds):
        batches = _batches(setup, args.batches, rng)
        level.probe.append(_host_probe())
        started = time.perf_counter()
        accepted = sum(events_ingest(events=b).count("accepted") for b in batches)
        level.ingest.append(accepted / (time.perf_counter() - started))
        started = time.perf_counter()
        rated = 0
        while True:
            done = events_rate_pending()
            rated += done
            if not done:
                break
        level.rating.append(rated / (time.perf_counter() - started))
        pages = [_request(c, "page") for c in clients * args.page_requests]
        level.page_p95.append(percentile(pages, 95))
        level.current_month_events += accepted
    level.probe.append(_host_probe())


# The host probe's work: Python (hashing and JSON, as ingest does) and PostgreSQL (a
# scan of generated rows, no table), in turn, as ingest and rating use them.
_PROBE_SQL = "SELECT count(*) FROM generate_series(1, 400000) AS g WHERE mod(g, 7) = 3"
_PROBE_ITEMS = [{"identifier": f"probe-{i}", "value": i, "model": "large"} for i in range(2000)]


def _host_probe() -> float:
    """Seconds of a fixed workload (the median of 3) that reads no stored row: how fast
    this shared host is right now, so that a level measured while the host was slower
    can be told from one slowed by its history."""
    import hashlib

    from django.db import connection

    times = []
    for _ in range(3):
        started = time.perf_counter()
        for item in _PROBE_ITEMS:
            hashlib.sha256(json.dumps(item, sort_keys=True).encode()).hexdigest()
        with connection.cursor() as cursor:
            cursor.execute(_PROBE_SQL)
            cursor.fetchone()
        times.append(time.perf_counter() - started)
    return median(times)


def _remove_oldest(setup: Setup) -> Removal:
    from django.db import connection, transaction
    from django.utils import timezone

    from metering.partitions import month_ids, month_start
    from metering.retention import _REMOVE_CHUNK, _month_drop
    from metering.retention import CHUNK as CHUNK_DELETE
    from plans.models import PeriodStatus

    now = timezone.now()
    started = time.perf_counter()
    events, _ratings = _month_drop(setup.first_month, now)
    month = f"{month_start(setup.first_month):%Y-%m}"
    removal = Removal(month, events, time.perf_counter() - started)
    # The way rows stored before partitioning still go: retention's chunked DELETE, here
    # on the next month's rows, a few chunks of it.
    params: dict[str, Any] = {
        "before": month_start(setup.first_month + 2),
        "below": month_ids(setup.first_month + 2)[0],
        "invoiced": PeriodStatus.INVOICING,
        "chunk": CHUNK_DELETE,
        "now": now,
    }
    started = time.perf_counter()
    for _ in range(DELETE_CHUNKS):
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(_REMOVE_CHUNK, params)
            removal.deleted += cursor.fetchone()[0]
    removal.delete_seconds = time.perf_counter() - started
    return removal


def _ratio(level: Level, base: Level, which: str) -> float:
    value, first = median(getattr(level, which)), median(getattr(base, which))
    # Rates: lower is worse; times (the page's p95): higher is worse. Always the worse way
    # up, so 1.15 is the limit for both.
    return first / value if which != "page_p95" else value / first


def _host(level: Level, base: Level) -> float:
    """How much slower the host was at this level than at the first (the probe's time
    over the first level's; 1.0 without probes)."""
    if not level.probe or not base.probe:
        return 1.0
    return median(level.probe) / median(base.probe)


def _adjusted(level: Level, base: Level, which: str) -> float:
    """The ratio with the host's own slowing taken out: what the history did."""
    return _ratio(level, base, which) / _host(level, base)


def _print(level: Level, base: Level) -> None:
    def worse(which: str) -> str:
        return f"{_ratio(level, base, which):.2f}x, {_adjusted(level, base, which):.2f}x"

    print(
        f"history @ {level.events:,} events: ingest {median(level.ingest):,.0f}/s "
        f"({worse('ingest')} worse than the first level: as measured, host taken out), "
        f"rating {median(level.rating):,.0f}/s ({worse('rating')}), page p95 "
        f"{ms(median(level.page_p95))} ({worse('page_p95')}); host probe "
        f"{ms(median(level.probe))} ({_host(level, base):.2f}x)",
        flush=True,
    )


def _verdict(levels: list[Level]) -> tuple[str, list[str]]:
    if not levels:
        return "history: nothing measured", ["no level measured"]
    base, last = levels[0], levels[-1]
    # Every level, not only the last: a figure that grows and comes back is not flat.
    # Judged with the host's own slowing taken out: the levels are measured minutes
    # apart on a shared host, and a level measured while it was slower is not one the
    # history slowed. The section shows both.
    problems = [
        f"{name} at {level.events:,} events is {_adjusted(level, base, which):.2f}x worse "
        f"than at {base.events:,} with the host's slowing taken out "
        f"({_ratio(level, base, which):.2f}x as measured; limit {FLAT:.2f}x)"
        for level in levels[1:]
        for name, which in (("ingest", "ingest"), ("rating", "rating"), ("page p95", "page_p95"))
        if _adjusted(level, base, which) > FLAT
    ]
    verdict = "flat within 15%" if not problems else "not flat within 15%"
    return f"history: {verdict} from {base.events:,} to {last.events:,} events", problems


def _section(
    levels: list[Level], removal: Removal | None, args: argparse.Namespace, machine: str, date: str
) -> str:
    base = levels[0]

    def worse(lv: Level, which: str) -> str:
        return f"{_adjusted(lv, base, which):.2f}x ({_ratio(lv, base, which):.2f}x)"

    rows = "\n".join(
        f"| {lv.events:,} | {lv.months} | {ms(median(lv.probe))} ({_host(lv, base):.2f}x) | "
        f"{median(lv.ingest):,.0f}/s ({spread(lv.ingest)}) | {worse(lv, 'ingest')} | "
        f"{median(lv.rating):,.0f}/s ({spread(lv.rating)}) | {worse(lv, 'rating')} | "
        f"{ms(median(lv.page_p95))} | {worse(lv, 'page_p95')} | {lv.load_seconds:.0f} s |"
        for lv in levels
    )
    verdict, problems = _verdict(levels)
    found = "" if not problems else " " + "; ".join(problems) + "."
    removed = (
        f"The oldest month ({removal.month}, {removal.events:,} events and their ratings and "
        f"keys) was removed as retention removes one, its two partitions dropped: "
        f"{removal.seconds:.2f} s. Retention's chunked `DELETE`, the way rows stored before "
        f"partitioning still go, removed {removal.deleted:,} rows of the next month in "
        f"{removal.delete_seconds:.2f} s: {removal.delete_estimate():.0f} s for a month at "
        "that rate."
        if removal
        else "No month was removed."
    )
    pages = args.sample * args.page_requests
    return f"""## History at scale: 1M, 10M and 20M events (target: flat within 15%)

Target: ingest, rating and the dashboard flat within 15% from 1M to 20M events stored;
events and ratings partitioned by month; retention drops whole months.

- Date: {date}
- Machine: {machine}
- Command: `{args.command_line}`
- Data: `generate_load_data` for {args.customers:,} customers (100,000 events this period),
  then the history by SQL into past months' partitions, {PER_MONTH:,} events a month with
  their keys and ratings, random identifiers, ending two months back.
- Load per level: {args.rounds} rounds of {args.batches} batches of {BATCH:,} new events
  (`events_ingest` in this process, over {SENDERS} customers, one receiving a fifth), then
  rating them (`events_rate_pending`), then the dashboard's full page for {args.sample}
  customers, {args.page_requests} times each (p95 of the round's {pages} requests).
  Medians over rounds; "x" is how much worse than the first level (1.00x: the same,
  higher: worse), with the host's own slowing taken out and, in brackets, as measured.
- Host probe: before each round and after the last, a fixed workload that reads no
  stored row (hashing and JSON of 2,000 items in Python, then PostgreSQL counting
  400,000 generated rows; the median of 3). Its time over the first level's is how much
  slower the shared host was; a figure's ratio divided by it is what the history did.
  The verdict is on those.

{HEADER}
{rows}

{removed}

Result: {verdict.removeprefix("history: ")}.{found}
"""
