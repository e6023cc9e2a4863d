"""Figure 4, the vendor-compatible ingest paths next to the native one, in the same run.

Each path is driven in a closed loop for the same time, by the same clients, with the same
usage (``llm.tokens``: a value, a model and a token type) in its vendor's shape, at the
same batch size as the native path it is compared to:

- 100 events per request: native ``POST /api/v1/events``, OpenMeter's CloudEvents batch
  and Lago's ``events/batch``; and native ``llm.call`` events with ``properties``, each
  feeding three meters (three rows), against native plain events;
- one event per request: the native single event object, Stripe's form-encoded meter
  event, one OpenMeter CloudEvent and Lago's single event.

The paths take turns within every run (the order rotating from run to run), so the
machine's noise falls on all of them alike; figures are medians over the runs and each
path's ratio to its native reference is the median of the ratios within a run. Every
answer must be the path's success status, and after each run the rows stored are counted
and must be the events accepted times the rows each makes: a path that drops events
cannot look fast. Each run's rows are deleted after it. No worker runs meanwhile, as in
figure 1. Target: each vendor path at least 0.8x the native rate at its batch size.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

from bench.metering.clients import ROUTES
from bench.metering.context import Context, ingest_jobs, measured_load
from bench.metering.cpu import CpuUse
from bench.metering.data import max_event_id, run_sql
from bench.metering.output import group_ms, met
from bench.stats import median, ms, percentile, rate, spread

if TYPE_CHECKING:
    from bench.metering.results import Results

COMPAT_TARGET = 0.8  # a vendor path's events/s over the native path's, same batch size
SECTION = "metering-compat"  # its own section of docs/benchmarks.md


@dataclass(frozen=True)
class IngestPath:
    route: str  # a key of clients.ROUTES
    label: str
    batch: int
    reference: str = ""  # the route it is compared to; "" for a native reference
    rows_per_event: int = 1

    @property
    def vendor(self) -> bool:
        """A vendor-compatible path, held to the target (the others are native)."""
        return not self.route.startswith("native")

    @property
    def request(self) -> str:
        r = ROUTES[self.route]
        return f"`POST {r.path}` ({r.content_type})"


PATHS = (
    IngestPath("native", "native", 100),
    IngestPath("openmeter-batch", "OpenMeter, CloudEvents batch", 100, "native"),
    IngestPath("lago-batch", "Lago, events/batch", 100, "native"),
    IngestPath("native-calls", "native llm.call with properties (3 meters)", 100, "native", 3),
    IngestPath("native-single", "native, one event object", 1),
    IngestPath("stripe", "Stripe, meter_events (form-encoded)", 1, "native-single"),
    IngestPath("openmeter-single", "OpenMeter, one CloudEvent", 1, "native-single"),
    IngestPath("lago-single", "Lago, one event", 1, "native-single"),
)


@dataclass
class CompatRun:
    rate: float  # events/s accepted in the measured window
    events: int  # accepted in the window
    accepted: int  # accepted in the whole run, warm-up included
    rows: int  # rows the run stored, counted in the table
    p50: float
    p99: float
    cpu: CpuUse
    load: float


@dataclass
class PathResult:
    path: IngestPath
    runs: list[CompatRun] = field(default_factory=list)
    ratios: list[float] = field(default_factory=list)  # to the reference, run by run

    def med(self, name: str) -> float:
        return median([float(getattr(r, name)) for r in self.runs])

    def values(self, name: str) -> list[float]:
        return [float(getattr(r, name)) for r in self.runs]

    def cpu_ms(self, group: str) -> float:
        """Median CPU milliseconds of ``group`` per 1000 events accepted."""
        return group_ms([r.cpu for r in self.runs], [r.events / 1000 for r in self.runs], group)

    @property
    def ratio(self) -> float:
        return median(self.ratios)

    @property
    def met(self) -> bool:
        return self.ratio >= COMPAT_TARGET

    @property
    def rows_rate(self) -> float:
        return self.med("rate") * self.path.rows_per_event


@dataclass
class Compat:
    clients: int
    processes: int
    rows_before: int  # events already in the table when the figure started
    paths: list[PathResult]

    def of(self, route: str) -> PathResult:
        return next(p for p in self.paths if p.path.route == route)

    def compared(self) -> list[PathResult]:
        return [p for p in self.paths if p.path.reference]


# --- measuring -------------------------------------------------------------------------


def _discard(watermark: int) -> None:
    """Delete a run's events and their queue rows, so every run sees the same table."""
    run_sql("DELETE FROM metering_ratingqueue WHERE event_id > %s", [watermark])
    run_sql("DELETE FROM metering_meterevent WHERE id > %s", [watermark])
    run_sql("DELETE FROM metering_eventkey WHERE event_id > %s", [watermark])
    run_sql("VACUUM (ANALYZE) metering_meterevent, metering_eventkey, metering_ratingqueue")


def _stored_since(watermark: int) -> int:
    return int(run_sql("SELECT count(*) FROM metering_meterevent WHERE id > %s", [watermark])[0][0])


def _rejected() -> int:
    return int(run_sql("SELECT count(*) FROM metering_rejectedevent")[0][0])


def path_run(
    ctx: Context, path: IngestPath, processes: int, threads: int, duration: float
) -> CompatRun:
    """One closed-loop run of one path; its stored rows counted, checked and deleted."""
    args = ctx.args
    watermark = max_event_id()
    rejected = _rejected()
    jobs_at = partial(
        ingest_jobs,
        ctx,
        route=path.route,
        batch=path.batch,
        clients=processes,
        threads=threads,
        duration=duration,
        max_requests=int((args.warmup + duration) * 20_000 / path.batch) + 1,
    )
    result, cpu, load = measured_load(ctx, jobs_at, duration, f"compat {path.label}")
    rows = _stored_since(watermark)
    expected = result.accepted_total * path.rows_per_event
    if rows != expected:
        ctx.problems.append(
            f"compat {path.label}: {rows} rows stored, expected {expected} "
            f"({result.accepted_total} events accepted x {path.rows_per_event})"
        )
    if _rejected() != rejected:
        ctx.problems.append(f"compat {path.label}: {_rejected() - rejected} events rejected")
    _discard(watermark)
    return CompatRun(
        rate=result.events / duration,
        events=result.events,
        accepted=result.accepted_total,
        rows=rows,
        p50=percentile(result.latencies, 50),
        p99=percentile(result.latencies, 99),
        cpu=cpu,
        load=load,
    )


def _purge_broker() -> None:
    """Drop the rating tasks the paths enqueued while no worker ran."""
    from billing_portal.celery import app

    app.control.purge()


def measure_compat(ctx: Context) -> Compat:
    args = ctx.args
    clients = args.compat_clients
    processes = min(ctx.pool.size, clients)
    threads = -(-clients // processes)
    results = [PathResult(p) for p in PATHS]
    compat = Compat(clients=processes * threads, processes=processes, rows_before=0, paths=results)
    compat.rows_before = int(run_sql("SELECT count(*) FROM metering_meterevent")[0][0])
    for path in PATHS:  # unmeasured: every path's code loaded in every web process
        path_run(ctx, path, processes, threads, 0.5)
    for run in range(args.runs):
        shift = run % len(results)
        for result in results[shift:] + results[:shift]:
            result.runs.append(path_run(ctx, result.path, processes, threads, args.duration))
            if args.verbose:
                r = result.runs[-1]
                print(
                    f"  compat run {run + 1}, {result.path.label}, batch {result.path.batch}: "
                    f"{rate(r.rate)} (p99 {ms(r.p99)}), {r.rows:,} rows, load {r.load:.1f}",
                    flush=True,
                )
        for result in compat.compared():
            reference = compat.of(result.path.reference).runs[-1].rate
            result.ratios.append(result.runs[-1].rate / reference if reference else 0.0)
    _purge_broker()
    return compat


def run_figure(ctx: Context, res: Results) -> None:
    """Measure figure 4 and print its lines."""
    res.compat = measure_compat(ctx)
    res.loads += [r.load for p in res.compat.paths for r in p.runs]
    for result in res.compat.paths:
        print(compat_line(res.compat, result), flush=True)


# --- output ----------------------------------------------------------------------------


def compat_line(compat: Compat, result: PathResult) -> str:
    path = result.path
    line = (
        f"metering compat, {path.batch} per request, {path.label}: {rate(result.med('rate'))} "
        f"median of {len(result.runs)} runs ({spread(result.values('rate'))})"
    )
    if path.reference:
        reference = compat.of(path.reference).path
        line += f", {result.ratio:.2f}x of {reference.label} ({spread(result.ratios, '{:.2f}')})"
        if path.vendor:
            line += f", target {COMPAT_TARGET}x {met(result.met)}"
        if path.rows_per_event > 1:
            line += f", {rate(result.rows_rate)} rows"
    return line + (
        f"; request p50 {ms(result.med('p50'))}, p99 {ms(result.med('p99'))}; CPU ms per "
        f"1000 events: web {result.cpu_ms('web'):.0f}, postgres {result.cpu_ms('postgres'):.0f}"
    )


def verdict(res: Results) -> str:
    assert res.compat is not None
    vendors = [p for p in res.compat.compared() if p.path.vendor]
    below = [p for p in vendors if not p.met]
    return (
        f"compat {met(not below)} ("
        + ", ".join(f"{p.path.label.split(',')[0]} {p.path.batch}: {p.ratio:.2f}x" for p in vendors)
        + f" of native; target {COMPAT_TARGET}x)"
    )


def _table(compat: Compat) -> list[str]:
    lines = [
        "| per request | path | request | events/s | spread | vs native, same batch "
        "| per-run ratios | rows/s | request p50 | request p99 | web CPU ms / 1000 events "
        "| postgres CPU ms / 1000 events | rows stored / events accepted |",
        "| ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: "
        "| ---: |",
    ]
    for result in compat.paths:
        path = result.path
        accepted = sum(r.accepted for r in result.runs)
        rows = sum(r.rows for r in result.runs)
        if path.reference:
            below = path.vendor and not result.met
            verdict_cell = f"**{result.ratio:.2f}x**" + (" (below 0.8)" if below else "")
            ratios = spread(result.ratios, "{:.2f}")
        else:
            verdict_cell, ratios = "reference", ""
        lines.append(
            f"| {path.batch} | {path.label} | {path.request} | {result.med('rate'):,.0f} "
            f"| {spread(result.values('rate'))} | {verdict_cell} | {ratios} "
            f"| {result.rows_rate:,.0f} | {ms(result.med('p50'))} | {ms(result.med('p99'))} "
            f"| {result.cpu_ms('web'):.0f} | {result.cpu_ms('postgres'):.0f} "
            f"| {rows:,} / {accepted:,} |"
        )
    return lines


def _where(compat: Compat) -> list[str]:
    """Each compared path's extra web CPU per 1000 events over its reference's: what the
    translation (and the vendor's answer) costs, from this run's own measurements."""
    parts = []
    for result in compat.compared():
        reference = compat.of(result.path.reference)
        extra = result.cpu_ms("web") - reference.cpu_ms("web")
        parts.append(
            f"{result.path.label} ({result.path.batch} per request): {extra:+.0f} ms "
            f"({result.cpu_ms('web') / reference.cpu_ms('web'):.2f}x)"
            if reference.cpu_ms("web")
            else f"{result.path.label}: n/a"
        )
    return [
        "",
        "Web (gunicorn) CPU per 1000 events accepted, over the native path's at the same "
        "batch size: " + "; ".join(parts) + ".",
    ]


def section(res: Results, args: argparse.Namespace) -> list[str]:
    """Figure 4 in the docs: the paths' rates, each against the native one."""
    compat = res.compat
    assert compat is not None
    return [
        "",
        f"{compat.clients} concurrent clients ({compat.processes} processes) in a closed "
        f"loop, each request on a new connection, every event new (random 128-bit "
        f"identifiers, spread over {args.customers} customers); every path is run "
        f"{args.runs} times for {args.duration:g} s (after {args.warmup:g} s warm-up), the "
        "paths taking turns within each run (the order rotating from run to run), so the "
        "machine's noise falls on all of them alike. The events table held "
        f"{compat.rows_before:,} rows; each run's rows are deleted after it. No worker "
        "runs meanwhile. Every answer must be the path's success status (native 202 with "
        "its accepted count, Stripe 200 with the meter event, OpenMeter 204, Lago 200 "
        "echoing each event), and after each run the rows stored are counted: they must "
        "be the events accepted (three per `llm.call` event, one per meter it feeds). "
        "Ratios are the median of the ratios within a run.",
        "",
        *_table(compat),
        *_where(compat),
    ]
