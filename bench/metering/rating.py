"""Rating capacity, measured before figure 2: a backlog queued with the worker stopped,
then timed while the worker drains it; and a profile of the code the worker runs.

And the memory figure: the rating worker's resident memory before, while and after it
rates a backlog of ``--memory-events`` events (a million by default), queued at once by
SQL and swept to the worker as the beat does."""

from __future__ import annotations

import json
import math
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.metering.clients import MODELS
from bench.metering.context import Context, check_load, ingest_jobs
from bench.metering.cpu import CpuTracker, CpuUse
from bench.metering.data import Setup, queued, run_sql
from bench.metering.memory import Memory
from bench.metering.memory import section as memory_section
from bench.metering.output import count, cpu_parts
from bench.metering.profiling import PhaseProbe, RequestProfile, profile_line
from bench.stats import ms, rate

if TYPE_CHECKING:
    from bench.metering.results import Results


@dataclass
class Drain:
    events: int
    seconds: float
    cpu: CpuUse
    profile: RequestProfile | None = None

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def _queue_backlog(ctx: Context) -> None:
    """About ``--backlog`` events accepted, and queued for rating, while no worker runs."""
    args = ctx.args
    per_client = max(1, math.ceil(args.backlog / (args.clients * args.batch)))
    start_at = time.time() + 0.5
    result = ctx.pool.run(
        ingest_jobs(ctx, start_at, warmup=0.0, duration=300.0, max_requests=per_client)
    )
    check_load(result, "backlog ingest", ctx)


def _drain(ctx: Context) -> CpuUse:
    """Start the worker and track the CPU until the queue is empty (10 minutes at most),
    sweeping the queue to it every ``SWEEP_SECONDS`` as beat does. Without the sweep the
    drain could wait for nothing: ingest sends no task while the flag of one already
    waiting is up (for up to 5 s), and the broker purge of the figure before may have
    dropped that one."""
    ctx.services.start_worker()
    tracker = CpuTracker(ctx.meter)
    deadline = time.monotonic() + 600
    next_sweep = 0.0
    while queued() and time.monotonic() < deadline:
        if time.monotonic() >= next_sweep:
            _sweep()
            next_sweep = time.monotonic() + SWEEP_SECONDS
        tracker.wait_until(time.time() + 0.1)
    cpu = tracker.result()
    if queued():
        ctx.problems.append("rating did not drain the backlog within 10 minutes")
    return cpu


def measure_drain(ctx: Context) -> Drain:
    """Rating capacity: queue a backlog with the worker stopped, then time its drain."""
    _queue_backlog(ctx)
    profile = profile_rating(ctx.setup, 3) if ctx.args.profile else None
    backlog = queued()
    cpu = _drain(ctx)
    ctx.rated += backlog
    ctx.worker_memory.sample(ctx.rated, ctx.services.worker.pids())  # warm: a backlog rated
    return Drain(backlog, cpu.wall, cpu, profile)


def _patch_rating(probe: PhaseProbe) -> None:
    from django.db import connection

    from ledger import services as ledger
    from metering import rating

    probe.patch(rating, "events_rate_for_customer", "claim, load and dequeue the batch")
    probe.patch(rating._Rater, "__init__", "load periods and the rate table")
    probe.patch(rating._Rater, "_price", "price each event")
    probe.patch(ledger, "credits_consume_batch", "ledger: lock the account, operation")
    probe.patch(ledger.Drawer, "__init__", "ledger: lock and read the grants")
    probe.patch(ledger.Drawer, "debit", "ledger: draw down per event")
    probe.patch(ledger.Drawer, "flush", "ledger: write grants and entries")
    probe.patch(rating, "_ratings_insert", "INSERT the ratings")
    probe.patch(rating, "_rollups_add", "hourly usage rollups")
    probe.patch(rating, "_period_usage_add", "period usage")
    probe.patch(rating.usage_rated, "send", "usage_rated receivers")
    probe.patch(connection, "_commit", "COMMIT")


def profile_rating(setup: Setup, customers: int) -> RequestProfile:
    """Where rating spends its time: one batch per customer, run here while no worker
    runs; figures per 1000 events rated."""
    from metering import rating

    probe = PhaseProbe()
    _patch_rating(probe)
    events = 0
    total = 0.0
    with probe.measuring():
        for _, pk in setup.tenants[:customers]:
            started = time.perf_counter()
            events += rating.events_rate_for_customer(customer_id=pk)
            total += time.perf_counter() - started
    per = max(1, events) / 1000
    return RequestProfile(
        "rating (events_rate_for_customer)",
        customers,
        total / per,
        probe.phases(per, max(1, customers)),
        unit="1000 events",
        statements_per="batch",
        intro=f"{events:,} queued events rated in one batch per customer for {customers} "
        "customers, in this process while no worker runs (the code the worker runs; the "
        "timers cost a little)",
    )


def drain_line(drain: Drain) -> str:
    return (
        f"metering rating capacity (backlog of {drain.events:,} events, worker alone): "
        f"{rate(drain.rate)} ({drain.seconds:.1f} s), "
        + cpu_parts([drain.cpu], [drain.events / 1000], "1000 events")
    )


def run_figure(ctx: Context, res: Results) -> None:
    """Measure the rating capacity and print its lines (every phase with ``-v``)."""
    res.drain = measure_drain(ctx)
    print(drain_line(res.drain), flush=True)
    if not res.drain.profile:
        return
    print(profile_line(res.drain.profile), flush=True)
    if ctx.args.verbose:
        for phase in res.drain.profile.phases:
            print(
                f"  {phase.name}: {ms(phase.seconds)} (SQL {ms(phase.sql)}, "
                f"{phase.statements:.1f} statements per batch)",
                flush=True,
            )


# --- the memory figure -------------------------------------------------------------------

MEMORY_WARMUP = 50_000  # events rated first when the worker has rated nothing yet
QUEUE_CHUNK = 100_000  # events per statement (and transaction) when queueing by SQL
SWEEP_SECONDS = 2.0  # the beat's rating sweep (billing_portal/celery.py)
SAMPLE_SECONDS = 10.0  # the worker's memory while it drains the backlog
RATING_TASK = "metering.tasks.events_rate_pending"

# New events of the ingest customers (round robin) with their rating-queue rows, as
# ingest's own statement writes them: stamped now, the four model/token-type pairs in
# turn, values 1-4000 and a distinct identifier and content hash each.
_QUEUE_SQL = """
WITH rows AS MATERIALIZED (
    SELECT metering_event_id(now()) AS id,
           (%(customers)s::bigint[])[1 + mod(i, %(n)s::int)] AS customer_id,
           %(tag)s::text || '-' || i AS identifier, i
    FROM generate_series(%(first)s::bigint, %(last)s::bigint) AS i
), keys AS (
    INSERT INTO metering_eventkey (customer_id, identifier, event_id)
    SELECT customer_id, identifier, id FROM rows
), inserted AS (
    INSERT INTO metering_meterevent (
        id, customer_id, identifier, event_name, meter_id, timestamp, value, dimensions,
        content_hash, received_at
    )
    SELECT id, customer_id, identifier, 'llm.tokens', %(meter)s::bigint, now(),
           1 + mod(i * 7919, 4000), ((%(dims)s::text[])[1 + mod(i, 4)])::jsonb,
           md5(%(tag)s::text || i) || md5(i || %(tag)s::text), now()
    FROM rows
    RETURNING id, customer_id
)
INSERT INTO metering_ratingqueue (event_id, customer_id, enqueued_at)
SELECT id, customer_id, now() FROM inserted
"""


def queue_by_sql(ctx: Context, events: int) -> float:
    """``events`` new events queued for rating, by SQL in chunks; returns the seconds."""
    customers = [pk for _, pk in ctx.setup.tenants]
    dims = [json.dumps({"model": m, "token_type": t}) for m, t in MODELS]
    tag = f"mem-{secrets.token_hex(4)}"
    started = time.monotonic()
    for first in range(0, events, QUEUE_CHUNK):
        last = min(events, first + QUEUE_CHUNK) - 1
        run_sql(
            _QUEUE_SQL,
            {
                "customers": customers,
                "n": len(customers),
                "tag": tag,
                "meter": ctx.setup.meter_id,
                "dims": dims,
                "first": first,
                "last": last,
            },
        )
    run_sql("ANALYZE metering_ratingqueue")
    return time.monotonic() - started


def _sweep() -> None:
    from billing_portal.celery import app

    app.send_task(RATING_TASK)


def _any_queued() -> bool:
    """Whether an event waits for rating: cheaper than counting a large queue."""
    return bool(run_sql("SELECT EXISTS (SELECT 1 FROM metering_ratingqueue)")[0][0])


def drain_sweeping(ctx: Context, memory: Memory | None = None, total: int = 0) -> CpuUse:
    """Send the rating task every 2 s, as the beat does, until the queue is empty; with
    ``memory``, sample the worker every 10 s (events rated: ``total`` less those still
    queued). A long budget: a million events at a tenth of the usual rate."""
    tracker = CpuTracker(ctx.meter, interval=0.5)
    deadline = time.monotonic() + max(600.0, total / 1000)
    swept = sampled = 0.0
    while _any_queued() and time.monotonic() < deadline:
        now = time.monotonic()
        if now - swept >= SWEEP_SECONDS:
            _sweep()
            swept = now
        if memory is not None and now - sampled >= SAMPLE_SECONDS:
            if sampled:  # the first sample is the warm one, taken before queueing
                memory.sample(total - queued(), ctx.services.worker.pids())
            sampled = now
        tracker.wait_until(time.time() + 1.0)
    cpu = tracker.result()
    if _any_queued():
        ctx.problems.append(f"rating did not drain a backlog of {total:,} events in time")
    return cpu


def run_memory_figure(ctx: Context, res: Results) -> None:
    """The rating worker's memory across a backlog of ``--memory-events`` events."""
    events = ctx.args.memory_events
    started = not ctx.services.worker.running  # figure 2 stops it when it is done
    if started:
        ctx.services.start_worker()
    drain_sweeping(ctx)  # whatever an earlier figure left
    warm = f"the worker warm from the {ctx.rated:,} events before"
    if started:
        queue_by_sql(ctx, MEMORY_WARMUP)
        drain_sweeping(ctx, total=MEMORY_WARMUP)
        ctx.rated += MEMORY_WARMUP
        warm = f"a fresh worker, warmed by a first backlog of {MEMORY_WARMUP:,} events"
    memory = Memory(
        f"celery worker (rating), backlog of {count(events)}",
        between=f"before the backlog ({warm}) -> once all of it is rated",
        backlog=True,
    )
    memory.sample(0, ctx.services.worker.pids())
    queue_seconds = queue_by_sql(ctx, events)
    cpu = drain_sweeping(ctx, memory, events)
    memory.sample(events, ctx.services.worker.pids())
    memory.seconds = cpu.wall
    ctx.rated += events
    res.memory.append(memory)
    print(
        f"metering memory figure: {events:,} events queued by SQL in {queue_seconds:.0f} s, "
        f"rated in {cpu.wall:.0f} s ({rate(memory.rate)}); "
        + cpu_parts([cpu], [events / 1000], "1000 events"),
        flush=True,
    )
    print(memory.line(), flush=True)
    if ctx.args.verbose:
        print("\n".join(memory_section(res.memory)), flush=True)
