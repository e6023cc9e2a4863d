"""Figure 2, accepted -> reflected in the balance.

Ingest paced at 5,000 events/s while the worker rates what the API enqueues; for sampled
events, the time from the 202 until the event's rating is visible (it commits in the
transaction that writes the event's ledger debit and period usage, which ``GET
.../balance`` reads). Target: p99 under 2 s. After each run every customer's balance is
checked against what rating stored.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import queue
import threading
import time
import traceback
from dataclasses import dataclass
from decimal import Decimal
from functools import partial
from typing import TYPE_CHECKING, Any

from bench.metering.clients import Job, http
from bench.metering.context import Context, ingest_jobs, measured_load
from bench.metering.cpu import CpuUse
from bench.metering.data import queued, run_sql
from bench.metering.output import CPU_HEADER, cpu_parts, cpu_row, met, secs, times
from bench.metering.profiling import profile_table
from bench.stats import median, ms, percentile, rate

if TYPE_CHECKING:
    from bench.metering.results import Results

LAG_TARGET = 2.0  # seconds, p99 accepted -> reflected
# Seconds between counts of the rating queue (the figure's "most waiting"). A count reads
# the whole queue and the dead rows rating leaves in it, 6-16 ms at 10,000 events/s,
# and PostgreSQL's CPU is counted as the server's: four a second took 2-6% of a CPU.
BACKLOG_EVERY = 1.0


class LagPoller(threading.Thread):
    """Takes the clients' sampled events and polls for their ratings every ``interval``;
    the lag is from the 202 to the start of the query that first sees the rating."""

    def __init__(self, samples: Any, pks: dict[str, int], interval: float = 0.02) -> None:
        super().__init__(name="bench-lag-poller", daemon=True)
        self.samples = samples
        self.pks = pks
        self.interval = interval
        self.pending: dict[tuple[int, str], float] = {}
        self.lags: list[float] = []
        self.received = 0
        self.expected: int | None = None
        self.deadline: float | None = None
        self.backlog: list[int] = []
        self.error = ""

    def finish(self, expected: int, timeout: float) -> None:
        self.deadline = time.time() + timeout
        self.expected = expected
        self.join(timeout + 30)

    def _take_samples(self) -> None:
        while True:
            try:
                customer, identifier, accepted_at = self.samples.get_nowait()
            except queue.Empty:
                return
            self.pending[(self.pks[customer], identifier)] = accepted_at
            self.received += 1

    def _poll(self) -> None:
        keys = list(self.pending)
        started = time.time()
        # One index look-up per sample, through the identifier's key: the event table
        # has no index on the identifier, and while the tables fill faster than their
        # statistics follow, a join lets the planner hash the whole month's ratings.
        # Either cost PostgreSQL most of a CPU per second, which the figure would have
        # counted as the server's and taken from it.
        rows = run_sql(
            "SELECT s.customer_id, s.identifier "
            "FROM unnest(%s::bigint[], %s::text[]) AS s (customer_id, identifier) "
            "CROSS JOIN LATERAL (SELECT FROM metering_eventkey k "
            "JOIN metering_eventrating r ON r.event_id = k.event_id "
            "WHERE k.customer_id = s.customer_id AND k.identifier = s.identifier "
            "LIMIT 1) AS seen",
            [[k[0] for k in keys], [k[1] for k in keys]],
        )
        for customer_id, identifier in rows:
            self.lags.append(started - self.pending.pop((customer_id, identifier)))

    def _over(self, now: float) -> bool:
        """Every sample seen rated, or out of time."""
        done = self.expected is not None and self.received >= self.expected
        return (done and not self.pending) or (self.deadline is not None and now > self.deadline)

    def run(self) -> None:
        from django.db import connections

        counted = 0.0
        try:
            while True:
                self._take_samples()
                if self.pending:
                    self._poll()
                now = time.time()
                if now - counted >= BACKLOG_EVERY:
                    self.backlog.append(queued())
                    counted = now
                if self._over(now):
                    break
                time.sleep(self.interval)
        except Exception:
            self.error = traceback.format_exc()
        finally:
            connections["default"].close()


@dataclass
class LagRun:
    lags: list[float]
    unresolved: int
    achieved: float  # events/s accepted in the window
    p99_request: float
    late: float
    backlog: int  # the most events waiting for rating, sampled every BACKLOG_EVERY
    cpu: CpuUse
    load: float
    paced: float  # events/s the clients were asked for

    def p(self, q: float) -> float:
        values = self.lags + [math.inf] * self.unresolved
        return percentile(values, q)


# The share of the asked rate the clients must achieve for a lag to count: a lag measured
# while the server took fewer events than asked is the lag at that lower rate.
ACHIEVED_AT_LEAST = 0.95


def _lag_met(runs: list[LagRun]) -> bool:
    achieved = median([r.achieved for r in runs])
    return _p99(runs) < LAG_TARGET and achieved >= ACHIEVED_AT_LEAST * runs[0].paced


def _paced_jobs(ctx: Context, start_at: float) -> list[Job]:
    """The lag clients on a fixed schedule adding up to ``--lag-rate``, each process
    offset by its share of the interval; every request's last event a sample."""
    args = ctx.args
    interval = args.lag_clients * args.lag_batch / args.lag_rate
    return ingest_jobs(
        ctx,
        start_at,
        duration=args.lag_duration,
        batch=args.lag_batch,
        interval=interval,
        phase_step=interval / args.lag_clients,
        sample=True,
        clients=args.lag_clients,
        max_requests=math.ceil((args.warmup + args.lag_duration) / interval) + 1,
    )


def lag_run(ctx: Context) -> LagRun:
    args = ctx.args
    poller = LagPoller(ctx.pool.samples, {t: pk for t, pk in ctx.setup.tenants})
    poller.start()
    jobs_at = partial(_paced_jobs, ctx)
    result, cpu, load = measured_load(ctx, jobs_at, args.lag_duration, "paced ingest")
    poller.finish(result.samples, args.lag_timeout)
    if poller.error:
        raise RuntimeError(f"lag poller failed:\n{poller.error}")
    _wait_drained(ctx, "paced ingest")
    return LagRun(
        lags=poller.lags,
        unresolved=len(poller.pending) + max(0, result.samples - poller.received),
        achieved=result.events / args.lag_duration,
        p99_request=percentile(result.latencies, 99),
        late=result.late,
        backlog=max(poller.backlog or [0]),
        cpu=cpu,
        load=load,
        paced=args.lag_rate,
    )


def _wait_drained(ctx: Context, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while queued() and time.monotonic() < deadline:
        time.sleep(0.2)
    if queued():
        ctx.problems.append(f"{what}: rating queue not drained after {timeout:g} s")


def _balance_problem(shown: Decimal, external_id: str, pk: int) -> str | None:
    """The balance's period used against ``PeriodUsage`` and the sum of the period's
    ratings; what is wrong, if anything."""
    from django.db.models import Sum

    from metering.models import EventRating, PeriodUsage
    from plans import selectors
    from plans.models import Customer

    period = selectors.period_in_force(customer=Customer.objects.get(pk=pk))
    usage = PeriodUsage.objects.filter(period=period).first()
    stored = usage.credits if usage else Decimal(0)
    rated = EventRating.objects.filter(event__customer_id=pk, period=period).aggregate(
        total=Sum("credits")
    )["total"] or Decimal(0)
    if shown == stored == rated:
        return None
    return (
        f"balance of {external_id}: shows used {shown}, period usage {stored}, ratings sum {rated}"
    )


def balance_check(ctx: Context) -> list[float]:
    """Every tenant's ``GET .../balance`` shows what rating stored: period used =
    PeriodUsage = the sum of the period's event ratings. Returns the GET latencies."""
    latencies = []
    for external_id, pk in ctx.setup.tenants:
        started = time.perf_counter()
        status, body = http(
            ctx.port, "GET", f"/api/v1/customers/{external_id}/balance", ctx.setup.key
        )
        latencies.append(time.perf_counter() - started)
        if status != 200:
            ctx.problems.append(f"GET balance of {external_id}: HTTP {status}")
            continue
        shown = Decimal(json.loads(body)["period"]["used"])
        if problem := _balance_problem(shown, external_id, pk):
            ctx.problems.append(problem)
    return latencies


@dataclass
class BalanceCost:
    events: int  # rated events in the period of the busy customer
    busy: float  # median GET balance latency, busy customer
    fresh: float  # the same for a customer with none


def balance_cost(ctx: Context, requests: int = 20) -> BalanceCost:
    from metering.models import PeriodUsage
    from plans.models import Plan
    from plans.services import customer_create, subscription_start

    busy_id, busy_pk = ctx.setup.tenants[0]
    fresh = customer_create(external_id="fresh-balance", name="Fresh", email="f@fresh.test")
    subscription_start(customer=fresh, plan=Plan.objects.get(code="pro"), actor="bench")

    def timed(external_id: str) -> float:
        values = []
        for _ in range(requests):
            started = time.perf_counter()
            http(ctx.port, "GET", f"/api/v1/customers/{external_id}/balance", ctx.setup.key)
            values.append(time.perf_counter() - started)
        return median(values)

    events = sum(PeriodUsage.objects.filter(customer_id=busy_pk).values_list("events", flat=True))
    return BalanceCost(int(events), timed(busy_id), timed(fresh.external_id))


def _measure_runs(ctx: Context, res: Results) -> None:
    """The paced runs, each followed by the worker's memory and the balance check."""
    args = ctx.args
    for i in range(args.runs):
        res.lags.append(lag_run(ctx))
        ctx.rated += round(res.lags[-1].achieved * args.lag_duration)
        ctx.worker_memory.sample(ctx.rated, ctx.services.worker.pids())
        res.balance_latencies += balance_check(ctx)
        if args.verbose:
            r = res.lags[-1]
            print(
                f"  lag run {i + 1}: p50 {secs(r.p(50))}, p99 {secs(r.p(99))}, "
                f"{len(r.lags)} samples, {r.unresolved} not seen, achieved "
                f"{rate(r.achieved)}, most waiting {r.backlog:,}, load {r.load:.1f}",
                flush=True,
            )


def _measure_high_runs(ctx: Context, res: Results) -> None:
    """The same paced runs at ``--lag-high-rate``, each followed by the balance check."""
    high = argparse.Namespace(**vars(ctx.args))
    high.lag_rate = ctx.args.lag_high_rate
    at_high = dataclasses.replace(ctx, args=high)  # the same services, clients and problems
    for _ in range(ctx.args.runs):
        res.lags_high.append(lag_run(at_high))
        ctx.rated += round(res.lags_high[-1].achieved * ctx.args.lag_duration)
        res.balance_latencies += balance_check(at_high)


def run_figure(ctx: Context, res: Results) -> None:
    """Measure figure 2 (after the rating capacity) and print its lines; the worker is
    stopped at the end."""
    _measure_runs(ctx, res)
    if ctx.args.lag_high_rate:
        _measure_high_runs(ctx, res)
    res.loads += [r.load for r in res.lags + res.lags_high]
    print(ctx.worker_memory.line(), flush=True)
    res.balance = balance_cost(ctx)
    ctx.services.worker.stop()  # figure 3 needs no rating
    print(lag_line(res.lags, ctx.args.lag_rate, ctx.args), flush=True)
    print(lag_cpu_line(res.lags), flush=True)
    if res.lags_high:
        print(lag_line(res.lags_high, ctx.args.lag_high_rate, ctx.args), flush=True)
        print(lag_cpu_line(res.lags_high), flush=True)
    print(
        f"metering GET balance: {ms(res.balance.busy)} with {res.balance.events:,} "
        f"rated events in the period, {ms(res.balance.fresh)} with none",
        flush=True,
    )


# --- output ------------------------------------------------------------------------------


def _p99(runs: list[LagRun]) -> float:
    return median([r.p(99) for r in runs])


def lag_line(runs: list[LagRun], paced: float, args: argparse.Namespace) -> str:
    pooled = [x for r in runs for x in r.lags]
    unresolved = sum(r.unresolved for r in runs)
    p99 = _p99(runs)
    return (
        f"metering accepted -> reflected, paced at {rate(paced)} "
        f"({args.lag_batch} per request): p99 {secs(p99)} median of {len(runs)} "
        f"runs ({', '.join(secs(r.p(99)) for r in runs)}), "
        f"{times(p99, LAG_TARGET)} of target 2 s; p50 "
        f"{secs(median([r.p(50) for r in runs]))}, max "
        f"{secs(max(pooled + [math.inf] * unresolved) if pooled or unresolved else math.nan)}; "
        f"{len(pooled) + unresolved} samples, {unresolved} not seen within "
        f"{args.lag_timeout:g} s; achieved {rate(median([r.achieved for r in runs]))}, "
        f"most waiting for rating {max(r.backlog for r in runs):,} events"
    )


def paced_units(runs: list[LagRun]) -> tuple[list[CpuUse], list[float]]:
    """The paced runs' CPU, and their thousands of events accepted."""
    return [r.cpu for r in runs], [r.achieved * r.cpu.wall / 1000 for r in runs]


def lag_cpu_line(runs: list[LagRun]) -> str:
    return "metering paced ingest + rating: " + cpu_parts(*paced_units(runs), "1000 events")


def _verdict(runs: list[LagRun]) -> str:
    achieved = median([r.achieved for r in runs])
    short = (
        f", the clients achieved only {rate(achieved)} of {rate(runs[0].paced)}"
        if achieved < ACHIEVED_AT_LEAST * runs[0].paced
        else ""
    )
    return (
        f"accepted -> reflected at {rate(runs[0].paced)} {met(_lag_met(runs))} "
        f"(p99 {secs(_p99(runs))}{short})"
    )


def verdict(res: Results) -> str:
    return _verdict(res.lags)


def verdict_high(res: Results) -> str:
    return _verdict(res.lags_high)


def _intro(args: argparse.Namespace) -> list[str]:
    return [
        "",
        "### 2. Accepted -> reflected in the balance",
        "",
        f"{args.lag_clients} client processes send {args.lag_batch}-event requests on a "
        f"fixed schedule adding up to {args.lag_rate:,.0f} events/s for "
        f"{args.lag_duration:g} s (after {args.warmup:g} s warm-up); the worker rates what "
        "each accepted batch enqueues (no beat). The last event of every request is a "
        "sample: its lag runs from the client receiving the 202 to the start of the first "
        "query (every 20 ms) that sees its `EventRating`, which commits in the "
        "transaction that writes the event's ledger entries and `PeriodUsage`, the rows "
        "`GET .../balance` reads. After each run every customer's `GET .../balance` is "
        "checked: period `used` = `PeriodUsage` = the sum of the period's ratings.",
    ]


def _runs_table(runs: list[LagRun]) -> list[str]:
    lines = [
        "",
        "| run | samples | p50 | p99 | max | not seen | achieved events/s | most waiting "
        "for rating | request p99 | load |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for i, run in enumerate(runs):
        lines.append(
            f"| {i + 1} | {len(run.lags) + run.unresolved} | {secs(run.p(50))} "
            f"| {secs(run.p(99))} | {secs(run.p(100))} | {run.unresolved} "
            f"| {run.achieved:,.0f} | {run.backlog:,} | {ms(run.p99_request)} "
            f"| {run.load:.1f} |"
        )
    return lines


def section(res: Results, args: argparse.Namespace) -> list[str]:
    """Figure 2 in the docs: the paced runs, the rating capacity, CPU, the rating
    profile and the cost of the balance read."""
    lines = _intro(args) + _runs_table(res.lags)
    lines += [
        "",
        f"p99 (median of runs): {secs(res.lag_p99)} = {times(res.lag_p99, LAG_TARGET)} of "
        "the 2 s target.",
    ]
    if res.lags_high:
        lines += [
            "",
            f"The same runs paced at {args.lag_high_rate:,.0f} events/s (`--lag-high-rate`), "
            "after the ones above:",
            *_runs_table(res.lags_high),
            "",
            f"p99 (median of runs): {secs(res.lag_high_p99)} = "
            f"{times(res.lag_high_p99, LAG_TARGET)} of the 2 s target. Verdict: "
            f"{verdict_high(res)} (a lag counts only when the clients achieved at least "
            f"{ACHIEVED_AT_LEAST:.0%} of the rate asked for).",
        ]
    if res.drain:
        lines.append(
            f"Rating capacity, measured first: a backlog of {res.drain.events:,} events "
            f"queued with the worker stopped drained in {res.drain.seconds:.1f} s once it "
            f"started: {res.drain.rate:,.0f} events/s."
        )
    lines += ["", *CPU_HEADER]
    lines.append(cpu_row("paced ingest + rating, per 1000 events", *paced_units(res.lags), 1000))
    if res.lags_high:
        lines.append(
            cpu_row(
                f"the same at {args.lag_high_rate:,.0f} events/s, per 1000 events",
                *paced_units(res.lags_high),
                1000,
            )
        )
    if res.drain and res.drain.profile:
        lines += profile_table([res.drain.profile])
    if res.balance:
        lines += [
            "",
            f"`GET .../balance` (median of 20, one at a time): {ms(res.balance.busy)} for "
            f"a customer with {res.balance.events:,} rated events in the period, "
            f"{ms(res.balance.fresh)} for one with none.",
        ]
    return lines
