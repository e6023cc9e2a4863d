"""Rating capacity, measured before figure 2: a backlog queued with the worker stopped,
then timed while the worker drains it; and a profile of the code the worker runs."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bench.metering.context import Context, check_load, ingest_jobs
from bench.metering.cpu import CpuTracker, CpuUse
from bench.metering.data import Setup, queued
from bench.metering.output import cpu_parts
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
    """Start the worker and track the CPU until the queue is empty (10 minutes at most)."""
    ctx.services.start_worker()
    tracker = CpuTracker(ctx.meter)
    deadline = time.monotonic() + 600
    while queued() and time.monotonic() < deadline:
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
