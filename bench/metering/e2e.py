"""Figure 6, end to end: events accepted *and* charged, as a customer experiences them.

A load generator sends ``--e2e-events`` new events (a million by default) as fast as the
server takes them, over ``--e2e-customers`` customers (1,000) of which one receives a
fifth of the events, once in batches of 1,000 events per request and once of 100, with
the Procfile's processes running: gunicorn, a Celery worker and beat. The figure is the
events divided by the time from the first request to the moment the last of them is
reflected in its customer's balance: its rating committed, in the transaction that
writes its ledger entries and the period usage ``GET .../balance`` reads. With it, the
server CPU per 1,000 events by process over the same time, and afterwards a check of the
balances: each customer's period usage is the sum of its ratings. Target: 20,000
events/s.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from bench.metering.context import Context, check_load, ingest_jobs
from bench.metering.cpu import CpuTracker, CpuUse
from bench.metering.data import max_event_id, run_sql
from bench.metering.output import CPU_HEADER, cpu_parts, cpu_row, group_ms, met, server_ms
from bench.stats import rate

if TYPE_CHECKING:
    from bench.metering.results import Results

E2E_TARGET = 20_000.0  # events/s, first request -> last event in its balance
HOT_SHARE = 0.2  # of the events, to one customer
SECTION = "metering-e2e"  # its own section of docs/benchmarks.md
POLL = 0.05  # seconds between looks for the last rating
COUNT_EVERY = 2.0  # seconds between counts of the queue while the clients send
RATING_DEADLINE = 900.0  # seconds after the last request for the last event to be rated


@dataclass
class EndToEnd:
    batch: int
    events: int  # accepted
    accepted_after: float  # seconds, first request -> last answer
    charged_after: float  # seconds, first request -> last event rated
    waiting_at_most: int  # events accepted and not yet rated, the most seen
    cpu: CpuUse
    load: float
    hot_events: int = 0  # of the hot customer, rated
    unbalanced: list[str] = field(default_factory=list)  # customers whose usage disagrees

    @property
    def rate(self) -> float:
        return self.events / self.charged_after if self.charged_after else 0.0

    @property
    def accept_rate(self) -> float:
        return self.events / self.accepted_after if self.accepted_after else 0.0

    @property
    def met(self) -> bool:
        return self.rate >= E2E_TARGET

    @property
    def server_ms(self) -> float:
        return server_ms([self.cpu], [self.events / 1000])


@dataclass
class Figure:
    customers: int
    hot: str
    runs: list[EndToEnd] = field(default_factory=list)


# --- measuring -------------------------------------------------------------------------


def _customers(count: int) -> tuple[list[str], str]:
    """``count`` customers on the postpaid plan (usage is never refused), created once;
    returns their external ids and the hot one's."""
    from plans.models import Customer, Plan
    from plans.services import customer_create, subscription_start

    names = [f"e2e-{i:04d}" for i in range(count)]
    existing = set(
        Customer.objects.filter(external_id__in=names).values_list("external_id", flat=True)
    )
    pro = Plan.objects.get(code="pro")
    for name in names:
        if name not in existing:
            customer = customer_create(external_id=name, name=name, email=f"billing@{name}.test")
            subscription_start(customer=customer, plan=pro, actor="bench:e2e")
    return names, names[0]


def _weighted(names: list[str], hot: str) -> tuple[str, ...]:
    """The customers as the clients pick them (uniformly from this tuple): the hot one
    repeated so that it gets ``HOT_SHARE`` of the events."""
    others = [n for n in names if n != hot]
    copies = max(1, round(HOT_SHARE * len(others) / (1 - HOT_SHARE)))
    return (hot,) * copies + tuple(others)


def _unrated_since(watermark: int) -> int:
    """Events of the run not rated yet: still queued (rating deletes the queue row in the
    transaction that writes the rating and the ledger entries)."""
    return int(
        run_sql("SELECT count(*) FROM metering_ratingqueue WHERE event_id > %s", [watermark])[0][0]
    )


def _any_unrated_since(watermark: int) -> bool:
    """Whether any event of the run is still queued: the drain's poll, every ``POLL``.
    It reads one index entry where a count reads the whole queue (hundreds of thousands
    of rows at 1,000 per request), and the server's figures would count that as
    PostgreSQL's CPU."""
    return bool(
        run_sql(
            "SELECT EXISTS (SELECT FROM metering_ratingqueue WHERE event_id > %s)", [watermark]
        )[0][0]
    )


def _rated_since(watermark: int) -> int:
    return int(
        run_sql("SELECT count(*) FROM metering_eventrating WHERE event_id > %s", [watermark])[0][0]
    )


def _unbalanced(names: list[str]) -> list[str]:
    """Customers whose period usage is not the sum of their period's ratings."""
    rows = run_sql(
        """
        SELECT c.external_id, u.credits, COALESCE(SUM(r.credits), 0)
        FROM plans_customer c
        JOIN metering_periodusage u ON u.customer_id = c.id
        LEFT JOIN metering_eventrating r ON r.period_id = u.period_id AND r.status = 'rated'
        WHERE c.external_id = ANY(%s)
        GROUP BY c.external_id, u.period_id, u.credits
        HAVING u.credits <> COALESCE(SUM(r.credits), 0)
        ORDER BY c.external_id
        """,
        [names],
    )
    return [f"{name}: period usage {used}, ratings {rated}" for name, used, rated in rows]


def _hot_rated(hot: str, watermark: int) -> int:
    return int(
        run_sql(
            "SELECT count(*) FROM metering_eventrating r JOIN metering_meterevent e "
            "ON e.id = r.event_id JOIN plans_customer c ON c.id = e.customer_id "
            "WHERE c.external_id = %s AND r.event_id > %s",
            [hot, watermark],
        )[0][0]
    )


def measure_run(ctx: Context, figure: Figure, names: tuple[str, ...], batch: int) -> EndToEnd:
    """One run: ``--e2e-events`` events in requests of ``batch``, timed until rated."""
    args = ctx.args
    per_client = math.ceil(args.e2e_events / (args.clients * batch))
    watermark = max_event_id()
    load = os.getloadavg()[0]
    start_at = time.time() + 0.5
    jobs = ingest_jobs(
        ctx,
        start_at,
        warmup=0.0,
        duration=RATING_DEADLINE,
        max_requests=per_client,
        batch=batch,
        customers=names,
    )
    ctx.pool.start(jobs)
    time.sleep(max(0.0, start_at - time.time()))
    tracker = CpuTracker(ctx.meter)
    waiting = 0
    counted = 0.0

    def look() -> None:
        nonlocal waiting, counted
        tracker.sample()
        if time.monotonic() - counted >= COUNT_EVERY:
            waiting = max(waiting, _unrated_since(watermark))
            counted = time.monotonic()

    # Each client answers once all its requests are done: the last answer is the moment
    # the last event was accepted. From then on the queue only shrinks, so its length
    # now is the last candidate for the most waiting.
    result = ctx.pool.collect(every=look)
    accepted_after = time.time() - start_at
    check_load(result, f"end to end, {batch} per request", ctx)
    waiting = max(waiting, _unrated_since(watermark))
    deadline = time.monotonic() + RATING_DEADLINE
    while (pending := _any_unrated_since(watermark)) and time.monotonic() < deadline:
        tracker.wait_until(time.time() + POLL)
    charged_after = time.time() - start_at
    cpu = tracker.result()
    left = _unrated_since(watermark) if pending else 0
    if left:
        ctx.problems.append(f"end to end, {batch} per request: {left:,} events never rated")
    rated = _rated_since(watermark)
    if rated != result.accepted_total:
        ctx.problems.append(
            f"end to end, {batch} per request: {result.accepted_total:,} events accepted, "
            f"{rated:,} rated"
        )
    ctx.rated += rated
    run = EndToEnd(
        batch,
        result.accepted_total,
        accepted_after,
        charged_after,
        waiting,
        cpu,
        load,
        hot_events=_hot_rated(figure.hot, watermark),
        unbalanced=_unbalanced(list(dict.fromkeys(names))),
    )
    ctx.problems += [f"end to end: {line}" for line in run.unbalanced]
    return run


def run_figure(ctx: Context, res: Results) -> None:
    """The Procfile's processes (gunicorn runs already; the worker and beat start here),
    then one run per batch size."""
    names, hot = _customers(ctx.args.e2e_customers)
    figure = Figure(len(names), hot)
    if not ctx.services.worker.running:
        ctx.services.start_worker()
    ctx.services.start_beat()
    weighted = _weighted(names, hot)
    for batch in ctx.args.e2e_batches:
        run = measure_run(ctx, figure, weighted, batch)
        figure.runs.append(run)
        print(run_line(run), flush=True)
    ctx.services.stop_beat()
    res.e2e = figure
    res.loads += [run.load for run in figure.runs]


# --- writing -------------------------------------------------------------------------------


def run_line(run: EndToEnd) -> str:
    return (
        f"metering end to end, {run.batch} events per request: {run.events:,} events charged "
        f"in {run.charged_after:.1f} s, {rate(run.rate)} ({run.rate / E2E_TARGET:.2f}x of "
        f"{E2E_TARGET:,.0f}/s: {met(run.met)}); accepted in {run.accepted_after:.1f} s "
        f"({rate(run.accept_rate)}); at most {run.waiting_at_most:,} waiting for rating; "
        + cpu_parts([run.cpu], [run.events / 1000], "1000 events")
    )


def verdict(res: Results) -> str:
    assert res.e2e is not None
    return "end to end " + ", ".join(
        f"{run.batch} per request {rate(run.rate)} ({met(run.met)})" for run in res.e2e.runs
    )


def section(res: Results, args: argparse.Namespace) -> list[str]:
    figure = res.e2e
    if figure is None or not figure.runs:
        return []
    lines = [
        "",
        "### End to end: accepted and charged",
        "",
        f"{args.e2e_events:,} new events per run (rounded up to whole requests per client), "
        f"sent by {args.clients} client processes in a closed loop (each request waits for "
        f"the one before), one run per batch size, over {figure.customers:,} "
        f"customers on the Pro plan of which one (`{figure.hot}`) gets a fifth of the "
        "events; gunicorn, the Celery worker and beat running (the Procfile's processes). "
        "Charged: the time from the first request to the moment no event of the run is "
        "left in the rating queue, which rating empties in the transaction that writes "
        "each event's rating, ledger entries and period usage (looked at every "
        f"{POLL * 1000:.0f} ms). Target: {E2E_TARGET:,.0f} events/s.",
        "",
        "| events per request | events | accepted after | charged after | end to end | vs "
        f"{E2E_TARGET:,.0f}/s | accepted rate | most waiting for rating | hot customer's "
        "events | load |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for run in figure.runs:
        lines.append(
            f"| {run.batch:,} | {run.events:,} | {run.accepted_after:.1f} s | "
            f"{run.charged_after:.1f} s | {rate(run.rate)} | {run.rate / E2E_TARGET:.2f}x "
            f"({met(run.met)}) | {rate(run.accept_rate)} | {run.waiting_at_most:,} | "
            f"{run.hot_events:,} | {run.load:.2f} |"
        )
    lines += [
        "",
        "Server CPU over the same time, per 1,000 events charged:",
        "",
        *CPU_HEADER,
        *(
            cpu_row(f"{run.batch:,} per request", [run.cpu], [run.events / 1000], 1000)
            for run in figure.runs
        ),
        "",
    ]
    worst = min(figure.runs, key=lambda run: run.rate)
    share = {
        group: group_ms([worst.cpu], [worst.events / 1000], group)
        for group in ("web", "worker", "postgres")
    }
    lines.append(
        f"**Verdict: {met(all(run.met for run in figure.runs))}.** At {worst.batch:,} events "
        f"per request the server spent {worst.server_ms:.0f} ms of CPU per 1,000 events "
        f"(web {share['web']:.0f}, worker {share['worker']:.0f}, PostgreSQL "
        f"{share['postgres']:.0f}); {E2E_TARGET:,.0f} events/s on "
        f"{os.cpu_count() or 1} CPUs needs it at or under "
        f"{(os.cpu_count() or 1) * 1000 / (E2E_TARGET / 1000):.0f} ms. Balances after each "
        "run: "
        + (
            "every customer's period usage equals the sum of its ratings."
            if not any(run.unbalanced for run in figure.runs)
            else "**" + "; ".join(line for run in figure.runs for line in run.unbalanced[:3]) + "**"
        )
    )
    return lines
