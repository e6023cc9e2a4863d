"""Figure 1, durable ingest through ``POST /api/v1/events``, next to a raw ``COPY``.

1000 events per request, every identifier new (the unique index that deduplicates
decides each one), several client processes in a closed loop for a fixed time. Next to
it, in the same run, a raw ``COPY`` of the very rows the API stored into a scratch copy
of the events table, and the same figure with 1x, 10x and 100x rows already in the
table. Target: 25,000 events/s. No worker runs meanwhile.
"""

from __future__ import annotations

import argparse
import random
from dataclasses import dataclass, field
from functools import partial
from types import SimpleNamespace
from typing import TYPE_CHECKING

from bench.metering.clients import events_body
from bench.metering.context import Context, ingest_jobs, measured_load
from bench.metering.cpu import CpuUse
from bench.metering.data import SCRATCH, Setup, discard_since, max_event_id, preload, run_sql
from bench.metering.db_paths import DbPath, copy_reference, measure_db_paths, path_line
from bench.metering.output import CPU_HEADER, count, cpu_parts, cpu_row, met
from bench.metering.profiling import (
    PhaseProbe,
    RequestProfile,
    common_phases,
    django_client,
    profile_line,
    profile_requests,
    profile_table,
)
from bench.stats import median, ms, percentile, rate, spread

if TYPE_CHECKING:
    from bench.metering.results import Results

INGEST_TARGET = 25_000.0  # events/s
COPY_REFERENCE = 140_000.0  # rows/s, raw COPY on this machine (performance notes)


@dataclass
class IngestRun:
    rate: float
    events: int
    p50: float
    p99: float
    copy: DbPath
    cpu: CpuUse
    load: float

    @property
    def copy_rows(self) -> int:
        return self.copy.rows

    @property
    def copy_rate(self) -> float:
        return self.copy.rate

    @property
    def of_copy(self) -> float:
        return self.rate / self.copy_rate if self.copy_rate else 0.0


@dataclass
class Level:
    rows: int
    preload_rate: float = 0.0
    runs: list[IngestRun] = field(default_factory=list)

    def med(self, name: str) -> float:
        return median([float(getattr(r, name)) for r in self.runs])

    def values(self, name: str) -> list[float]:
        return [float(getattr(r, name)) for r in self.runs]

    def cpu_units(self) -> tuple[list[CpuUse], list[float]]:
        """Each run's CPU, and its thousands of events accepted."""
        return [r.cpu for r in self.runs], [r.events / 1000 for r in self.runs]


# --- measuring -------------------------------------------------------------------------


def ingest_run(ctx: Context, paths: list[DbPath] | None = None) -> IngestRun:
    """One closed-loop run, then the COPY reference of its rows; with ``paths``, also
    the statement decomposition on the same rows."""
    args = ctx.args
    watermark = max_event_id()
    jobs_at = partial(ingest_jobs, ctx)
    result, cpu, load = measured_load(ctx, jobs_at, args.duration, "ingest")
    copy = copy_reference(watermark, ctx.meter)
    if paths is not None:
        paths += measure_db_paths(ctx, watermark, copy)
    else:
        discard_since(watermark)
    return IngestRun(
        rate=result.events / args.duration,
        events=result.events,
        p50=percentile(result.latencies, 50),
        p99=percentile(result.latencies, 99),
        copy=copy,
        cpu=cpu,
        load=load,
    )


def _fill(level: Level, loaded: int, setup: Setup) -> int:
    """Grow the events table and its scratch copy by COPY to the level's size; return
    the rows now loaded."""
    if level.rows > loaded:
        level.preload_rate = preload(level.rows - loaded, setup)
        run_sql(
            f"INSERT INTO {SCRATCH} SELECT * FROM metering_meterevent WHERE id > "
            f"(SELECT COALESCE(MAX(id), 0) FROM {SCRATCH})"
        )
        loaded = level.rows
    run_sql(f"VACUUM (ANALYZE) metering_meterevent, {SCRATCH}")
    return loaded


def _measure_level(ctx: Context, level: Level, paths: list[DbPath] | None, done: int) -> int:
    """The level's runs (the last one also writes ``paths``, if given); return the
    events accepted so far, for the web server's memory samples."""
    args = ctx.args
    for run in range(args.runs):
        level.runs.append(ingest_run(ctx, paths if run == args.runs - 1 else None))
        done += level.runs[-1].events
        ctx.web_memory.sample(done, ctx.services.web.pids())
        if args.verbose:
            r = level.runs[-1]
            print(
                f"  ingest, {count(level.rows)} rows, run {run + 1}: {rate(r.rate)} "
                f"(p99 {ms(r.p99)}), COPY {rate(r.copy_rate)} of {r.copy_rows:,} rows, "
                f"load {r.load:.1f}",
                flush=True,
            )
    return done


def measure_ingest(ctx: Context) -> tuple[list[Level], RequestProfile | None, list[DbPath]]:
    args = ctx.args
    paths: list[DbPath] = []
    run_sql(f"DROP TABLE IF EXISTS {SCRATCH}")
    run_sql(f"CREATE TABLE {SCRATCH} (LIKE metering_meterevent INCLUDING ALL)")
    # The identifier's uniqueness, which ingest pays in metering_eventkey (the events
    # table is partitioned by month): the reference pays it too, on its one table.
    run_sql(f"CREATE UNIQUE INDEX ON {SCRATCH} (customer_id, identifier)")
    levels: list[Level] = []
    profile = None
    loaded = 0
    done = 0  # events accepted so far
    for rows in args.levels:
        level = Level(rows)
        loaded = _fill(level, loaded, ctx.setup)
        decompose = not levels and args.profile
        done = _measure_level(ctx, level, paths if decompose else None, done)
        levels.append(level)
        if profile is None and args.profile:
            watermark = max_event_id()
            profile = profile_ingest(ctx.setup, args.batch, args.profile_requests)
            discard_since(watermark)
    run_sql(f"DROP TABLE {SCRATCH}")
    # The pre-loaded rows were never queued for rating: clear them for what follows.
    run_sql(
        "TRUNCATE metering_ratingqueue, metering_eventrating, metering_eventcancellation, "
        "metering_meterevent, metering_eventkey, metering_rejectedevent"
    )
    _purge_broker()
    return levels, profile, paths


def _purge_broker() -> None:
    """Drop the rating tasks the API enqueued while no worker ran."""
    from billing_portal.celery import app

    app.control.purge()


def _patch_ingest(probe: PhaseProbe) -> None:
    from django.db import connection

    from billing_portal.api import events
    from billing_portal.api.base import FastJSONRenderer
    from metering import ingest, tasks

    common_phases(probe)
    probe.patch(events, "events_from_body", "parse the JSON body")
    probe.patch(ingest, "_Lookups", "look up customers and meters")
    probe.patch(ingest, "validate", "validate each event")
    probe.patch(ingest, "_content_hash", "content hash (SHA-256) per event")
    probe.patch(ingest, "events_ingest", "events_ingest (its own loop)")
    probe.patch(ingest, "_insert", "INSERT ... ON CONFLICT + queue rows (psycopg)")
    probe.patch(ingest, "_classify_existing", "classify skipped rows")
    probe.patch(ingest, "_store_rejections", "store rejections")
    probe.patch(connection, "_commit", "COMMIT")
    probe.patch(ingest.IngestOutcome, "as_dict", "build the 1000 results")
    probe.patch(FastJSONRenderer, "render", "render JSON")
    task = tasks.events_rate_pending
    probe.replace(
        tasks,
        "events_rate_pending",
        SimpleNamespace(delay_on_commit=probe.timed("enqueue rating task", task.delay_on_commit)),
    )


def profile_ingest(setup: Setup, batch: int, requests: int) -> RequestProfile:
    """Where a 1000-event POST spends its time (the rows it stores are left for the
    caller to discard; the worker is not running)."""
    client = django_client(setup.key)
    rng = random.Random(7)
    customers = tuple(t for t, _ in setup.tenants)
    bodies = [events_body(customers, batch, rng)[0] for _ in range(requests + 1)]
    probe = PhaseProbe()

    def send(i: int) -> None:
        response = client.post("/api/v1/events", data=bodies[i], content_type="application/json")
        assert response.status_code == 202, response.content[:300]

    send(-1)  # warm: imports and caches, not measured
    _patch_ingest(probe)
    return profile_requests(f"POST /api/v1/events, {batch} events", probe, send, requests)


def run_figure(ctx: Context, res: Results) -> None:
    """Measure figure 1 and print its lines."""
    res.levels, res.ingest_profile, res.paths = measure_ingest(ctx)
    res.loads += [r.load for level in res.levels for r in level.runs]
    base = res.levels[0]
    for level in res.levels:
        print(ingest_line(level, base), flush=True)
    for level in res.levels:
        print(ingest_cpu_line(level), flush=True)
    for db_path in res.paths:
        print(path_line(db_path), flush=True)
    if res.ingest_profile:
        print(profile_line(res.ingest_profile), flush=True)
    print(ctx.web_memory.line(), flush=True)


# --- output ------------------------------------------------------------------------------


def ingest_line(level: Level, base: Level) -> str:
    med = level.med("rate")
    return (
        f"metering ingest, {count(level.rows)} rows in the table: {rate(med)} median of "
        f"{len(level.runs)} runs ({spread(level.values('rate'))}), "
        f"{med / INGEST_TARGET:.2f}x of target {rate(INGEST_TARGET)}, "
        f"{med / base.med('rate'):.2f}x of the {count(base.rows)} rate; raw COPY "
        f"{rate(level.med('copy_rate'))} ({spread(level.values('copy_rate'))}), ingest = "
        f"{level.med('of_copy'):.3f}x of COPY; request p50 {ms(level.med('p50'))}, "
        f"p99 {ms(level.med('p99'))}"
    )


def ingest_cpu_line(level: Level) -> str:
    parts = cpu_parts(*level.cpu_units(), "1000 events")
    return f"metering ingest, {count(level.rows)} rows: " + parts


def verdict(res: Results) -> str:
    base = res.levels[0]
    return (
        f"ingest {met(base.med('rate') >= INGEST_TARGET)} "
        f"({base.med('rate') / INGEST_TARGET:.2f}x of 25,000/s at {count(base.rows)} rows"
        + "".join(
            f", {level.med('rate') / INGEST_TARGET:.2f}x at {count(level.rows)}"
            for level in res.levels[1:]
        )
        + ")"
    )


def _rates_table(res: Results, args: argparse.Namespace) -> list[str]:
    base = res.levels[0]
    lines = [
        "",
        "### 1. Durable ingest",
        "",
        f"{args.clients} client processes in a closed loop, {args.batch} new events per "
        f"request (random 128-bit identifiers, spread over {args.customers} customers), "
        f"{args.runs} runs of {args.duration:g} s (after {args.warmup:g} s warm-up) at "
        "each table size. The table is first filled by `COPY` to the size shown; each "
        "run's events are deleted after it, so every run of a size starts from the same "
        "table. Reference, in the same run: the rows the API just stored, `COPY`ed "
        "(binary, one stream) into a scratch table created `LIKE metering_meterevent "
        "INCLUDING ALL` (same columns, unique and other indexes; no foreign keys) that "
        "holds the same pre-loaded rows. No worker runs during these runs (rating is "
        "figure 2).",
        "",
        "| rows in table | events/s | spread | vs 25,000/s | vs "
        f"{count(base.rows)} | raw COPY rows/s | ingest / COPY | request p50 | request "
        "p99 |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level in res.levels:
        med = level.med("rate")
        lines.append(
            f"| {level.rows:,} | {med:,.0f} | {spread(level.values('rate'))} "
            f"| {med / INGEST_TARGET:.2f}x | {med / base.med('rate'):.2f}x "
            f"| {level.med('copy_rate'):,.0f} | {level.med('of_copy'):.3f} "
            f"| {ms(level.med('p50'))} | {ms(level.med('p99'))} |"
        )
    return lines


def _cpu_table(res: Results) -> list[str]:
    lines = [
        "",
        "CPU per 1000 events accepted, in milliseconds, measured from `/proc` over the "
        "measured window (`others`: the machine's busy time that none of these processes "
        "used, i.e. other tenants):",
        "",
        *CPU_HEADER,
    ]
    for level in res.levels:
        label = f"ingest, {count(level.rows)} rows, per 1000 events"
        lines.append(cpu_row(label, *level.cpu_units(), 1000))
    if res.drain:
        lines.append(
            cpu_row(
                "rating (backlog drain), per 1000 events",
                [res.drain.cpu],
                [res.drain.events / 1000],
                1000,
            )
        )
    return lines


def _paths_table(res: Results, args: argparse.Namespace) -> list[str]:
    if not res.paths:
        return []
    return [
        "",
        f"Where the database's share goes: the rows of the last {count(res.levels[0].rows)} "
        "run written again from the benchmark's own connection (no HTTP, no "
        f"validation), {args.batch} per statement and transaction, each way adding one "
        "cost of the ingest's statement; postgres CPU from `/proc` (its backends, WAL "
        "writer and checkpointer).",
        "",
        "| how | rows/s, one connection | postgres CPU per 1000 rows |",
        "| --- | ---: | ---: |",
        *[f"| {p.label} | {p.rate:,.0f} | {p.postgres_ms():.1f} ms |" for p in res.paths],
    ]


def section(res: Results, args: argparse.Namespace) -> list[str]:
    """Figure 1 in the docs: rates, CPU, the database alone and the profile."""
    lines = _rates_table(res, args) + _cpu_table(res) + _paths_table(res, args)
    if res.ingest_profile:
        lines += profile_table([res.ingest_profile])
    return lines
