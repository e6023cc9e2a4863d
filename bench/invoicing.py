"""Period close: N subscription periods invoiced by a pool of workers.

Target (performance notes): 10,000 subscriptions invoiced in under 60 s, Stripe calls
excluded and counted separately.

Data, fresh for every run: a few template customers go through the real services with
the clock moved back (customer and subscription created, events ingested and rated, one
event cancelled, the period renewed and due to be closed), then their rows (account,
customer, subscription, periods, changes, grants, ledger operations and entries, events,
ratings, cancellations, rollups, period usage) are copied in bulk with shifted ids until
there are N customers, each with one ended period due to be closed.

Close: the due periods are cut into batches as the beat job ``close-periods`` cuts them
(``period_close.periods_due`` in batches of ``period_close.BATCH_SIZE``), and the batches
go to a pool of worker processes (one per CPU, as a Celery worker's default concurrency),
each calling the ``periods_close_task`` task's body for one batch at a time, as a worker
with prefetch 1 does: per period, write off and roll over its credits and hand it over;
then build the batch's invoices, number them and queue their Stripe syncs, all in one
transaction (``billing_portal/invoicing/period_close.py``). Stripe is configured with a
placeholder key and the Celery broker is in-process memory, so each invoice queues its
Stripe sync as in production but no sync runs: the pending syncs are counted separately.

Checks after each run: one invoice per period, each total equal to the template's
expected total computed here from the catalog's prices (base fee plus overage beyond the
included credits, for postpaid plans), and ``ledger.reconcile`` clean.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import logging
import multiprocessing
import pstats
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from bench import env, report
from bench.stats import median

if TYPE_CHECKING:
    from django.db.models import Model

TARGET_SECONDS = 60.0
TARGET_PERIODS = 10_000
DEFAULT_SIZES = (1_000, 10_000)
STRIPE_PLACEHOLDER_KEY = "sk_test_bench_placeholder"  # enables the queueing, never used to call
PREFIX = "bench-"
CENT = Decimal("0.01")

# The demo catalog's prices, written out here so that the expected totals do not come
# from the code under test: credits per 1,000 tokens, and (base fee, included credits,
# overage price per credit or None when overage is not billed).
CREDITS_PER_1000 = {
    ("large", "input"): Decimal("2.5"),
    ("large", "output"): Decimal("15"),
    ("small", "input"): Decimal("0.5"),
    ("small", "output"): Decimal("0.5"),
}
PLAN_PRICES: dict[str, tuple[Decimal, Decimal, Decimal | None]] = {
    "starter": (Decimal("0.00"), Decimal(2_000), None),
    "pro": (Decimal("49.00"), Decimal(20_000), Decimal("0.004")),
    "team": (Decimal("199.00"), Decimal(100_000), None),
}


@dataclass(frozen=True)
class Shape:
    """One template customer: its plan and its events in the period."""

    code: str
    plan: str
    model: str
    token_type: str
    tokens: int  # per event
    events: int
    cancelled: int = 0  # extra events, ingested and rated, then cancelled

    def credits(self) -> Decimal:
        return self.tokens * CREDITS_PER_1000[(self.model, self.token_type)] / 1000 * self.events

    def overage(self) -> Decimal:
        _, included, price = PLAN_PRICES[self.plan]
        return max(Decimal(0), self.credits() - included) if price is not None else Decimal(0)

    def expected_total(self) -> Decimal:
        base, _, price = PLAN_PRICES[self.plan]
        overage = (self.overage() * price).quantize(CENT, ROUND_HALF_UP) if price else Decimal(0)
        return base + overage


SHAPES = (
    Shape("starterlight", "starter", "small", "input", 100_000, 10),  # 500 of 2,000
    Shape("startermid", "starter", "small", "output", 200_000, 15),  # 1,500 of 2,000
    Shape("prounder", "pro", "large", "input", 200_000, 20),  # 10,000 of 20,000
    Shape("proover", "pro", "large", "output", 80_000, 20, cancelled=1),  # 4,000 beyond
    Shape("proheavy", "pro", "large", "output", 200_000, 30),  # 70,000 beyond
    Shape("proslight", "pro", "large", "input", 400_000, 25),  # 5,000 beyond
    Shape("teamunder", "team", "large", "output", 100_000, 40),  # 60,000 of 100,000
    Shape("teamsoft", "team", "large", "output", 200_000, 35),  # 105,000: soft limit, unbilled
)
SHAPE_BY_CODE = {shape.code: shape for shape in SHAPES}


@dataclass
class Run:
    periods: int
    seconds: float
    setup_seconds: float
    stripe_syncs: int
    stripe_lines: int
    problems: list[str] = field(default_factory=list)


@dataclass
class Size:
    periods: int
    runs: list[Run] = field(default_factory=list)

    def seconds(self) -> float:
        return median([run.seconds for run in self.runs])

    def spread(self) -> str:
        values = [run.seconds for run in self.runs]
        return f"{min(values):.1f}-{max(values):.1f} s"

    def per_1000(self) -> float:
        return self.seconds() / self.periods * 1000

    def rate(self) -> float:
        return self.periods / self.seconds()

    def ratio(self) -> float:
        """Median seconds over the target scaled to this size (60 s per 10,000)."""
        return self.seconds() / (TARGET_SECONDS * self.periods / TARGET_PERIODS)


# --- data -----------------------------------------------------------------------------


def _cloned_models() -> list[type[Model]]:
    from ledger.models import Account, CreditGrant, LedgerEntry, LedgerOperation
    from metering.models import (
        EventCancellation,
        EventRating,
        MeterEvent,
        PeriodUsage,
        UsageRollup,
    )
    from plans.models import Customer, Subscription, SubscriptionChange, SubscriptionPeriod

    return [
        Account,
        Customer,
        Subscription,
        SubscriptionPeriod,
        SubscriptionChange,
        CreditGrant,
        LedgerOperation,
        LedgerEntry,
        MeterEvent,
        EventRating,
        EventCancellation,
        UsageRollup,
        PeriodUsage,
    ]


def _reset() -> None:
    """Empty the per-customer tables (and, by cascade, invoices and what refers to them)."""
    from django.db import connection

    from metering.models import EventKey

    # With the events, their keys: an identifier whose key is left would be a duplicate.
    models: list[type[Model]] = [*_cloned_models(), EventKey]
    tables = ", ".join(connection.ops.quote_name(m._meta.db_table) for m in models)
    with connection.cursor() as cursor:
        cursor.execute(f"TRUNCATE {tables} CASCADE")


def _templates(start: datetime) -> int:
    """One customer per shape through the real services; returns the periods due."""
    import time_machine

    from metering.ingest import events_ingest
    from metering.rating import events_rate_pending
    from metering.services import event_cancel
    from plans import catalog
    from plans.models import Plan, SubscriptionPeriod
    from plans.services import (
        customer_create,
        periods_due_for_close,
        subscription_start,
        subscriptions_renew_due,
    )

    logging.disable(logging.INFO)  # the templates' usage alerts
    try:
        with time_machine.travel(start, tick=False) as clock:
            if not Plan.objects.exists():
                catalog.load((env.ROOT / "docs" / "examples" / "catalog.yaml").read_text())
            customers = {}
            for shape in SHAPES:
                customer = customer_create(
                    external_id=f"{PREFIX}{shape.code}",
                    name=shape.code,
                    email=f"{shape.code}@bench.test",
                )
                subscription_start(
                    customer=customer,
                    plan=Plan.objects.get(code=shape.plan),
                    actor="system:bench",
                    start_at=start,
                )
                customers[shape.code] = customer
            clock.move_to(start + timedelta(days=25))
            events = [event for shape in SHAPES for event in _events(shape, start)]
            outcome = events_ingest(events=events)
            if outcome.count("accepted") != len(events):
                raise RuntimeError(f"template events: {outcome.count('accepted')} accepted")
            while events_rate_pending(budget_seconds=30.0):
                pass
            for shape in SHAPES:
                for n in range(shape.cancelled):
                    event_cancel(
                        customer=customers[shape.code],
                        identifier=f"{shape.code}-cancelled-{n}",
                        reason="duplicate",
                        actor="system:bench",
                    )
            first = SubscriptionPeriod.objects.order_by("end").first()
            assert first is not None
            clock.move_to(first.end)
            subscriptions_renew_due()
            clock.move_to(first.end + timedelta(hours=2))
            return len(periods_due_for_close())
    finally:
        logging.disable(logging.NOTSET)


def _events(shape: Shape, start: datetime) -> list[dict[str, Any]]:
    names = [f"{shape.code}-{n}" for n in range(shape.events)]
    names += [f"{shape.code}-cancelled-{n}" for n in range(shape.cancelled)]
    return [
        {
            "identifier": name,
            "event_name": "llm.tokens",
            "customer": f"{PREFIX}{shape.code}",
            "timestamp": (start + timedelta(days=1, hours=7 * n)).isoformat(),
            "value": str(shape.tokens),
            "dimensions": {"model": shape.model, "token_type": shape.token_type},
        }
        for n, name in enumerate(names)
    ]


def _pk(model: type[Model]) -> str:
    pk = model._meta.pk
    assert pk is not None and pk.column is not None
    return pk.column


def _column(model: type[Model], field: Any, strides: dict[type[Model], int]) -> str:
    """The SELECT expression that shifts one column of a copy (copy number ``bench_k``)."""
    from django.db import connection

    from ledger.models import CreditGrant, LedgerEntry
    from metering.models import MeterEvent
    from plans.models import Customer, SubscriptionPeriod

    column = connection.ops.quote_name(field.column)
    if field.is_relation and field.related_model in strides:
        return f"{column} + bench_k * {strides[field.related_model]}"
    if field.primary_key:
        return f"{column} + bench_k * {strides[model]}"
    if model is Customer and field.name == "external_id":
        return f"{column} || '-' || bench_k"
    if model is LedgerEntry and field.name == "cause_id":
        return (
            f"CASE WHEN cause_type = 'event' THEN "
            f"({column}::bigint + bench_k * {strides[MeterEvent]})::text ELSE {column} END"
        )
    if model is CreditGrant and field.name == "source_id":
        return (
            f"CASE WHEN source_type = 'subscription_period' THEN "
            f"({column}::bigint + bench_k * {strides[SubscriptionPeriod]})::text ELSE {column} END"
        )
    return column


def _clone(copies: int) -> int:
    """Copy every row of the per-customer tables ``copies`` times with shifted ids."""
    from django.db import connection, transaction

    from metering.models import MeterEvent
    from plans.models import Customer

    if copies <= 0:
        return 0
    models = _cloned_models()
    bounds: dict[type[Model], tuple[int, int]] = {}
    with connection.cursor() as cursor:
        for model in models:
            pk = connection.ops.quote_name(_pk(model))
            cursor.execute(f"SELECT min({pk}), max({pk}) FROM {model._meta.db_table}")
            low, high = cursor.fetchone()
            if low is not None:
                bounds[model] = (int(low), int(high))
    strides = {model: high - low + 1 for model, (low, high) in bounds.items()}
    rows = 0
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        if cursor.fetchone()[0]:
            # Copies of consistent rows are consistent: skip the per-row key checks.
            cursor.execute("SET LOCAL session_replication_role = replica")
        for model, (low, high) in bounds.items():
            fields = model._meta.concrete_fields
            columns = ", ".join(connection.ops.quote_name(str(f.column)) for f in fields)
            values = ", ".join(_column(model, f, strides) for f in fields)
            pk = connection.ops.quote_name(_pk(model))
            cursor.execute(
                f"INSERT INTO {model._meta.db_table} ({columns}) SELECT {values} "
                f"FROM {model._meta.db_table} CROSS JOIN generate_series(1, %s) AS bench_k "
                f"WHERE {pk} BETWEEN %s AND %s",
                [copies, low, high],
            )
            rows += cursor.rowcount
        if MeterEvent in bounds:
            # Each copied event's key, under its copied customer: the identifier stays.
            events_low, events_high = bounds[MeterEvent]
            cursor.execute(
                "INSERT INTO metering_eventkey (customer_id, identifier, event_id) "
                "SELECT customer_id + bench_k * %s, identifier, event_id + bench_k * %s "
                "FROM metering_eventkey CROSS JOIN generate_series(1, %s) AS bench_k "
                "WHERE event_id BETWEEN %s AND %s",
                [strides[Customer], strides[MeterEvent], copies, events_low, events_high],
            )
        cursor.execute("SET LOCAL session_replication_role = origin")
        for model in bounds:
            if model._meta.pk.is_relation:
                continue
            table, pk = model._meta.db_table, _pk(model)
            cursor.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', '{pk}'), "
                f"(SELECT max({connection.ops.quote_name(pk)}) FROM {table}))"
            )
    with connection.cursor() as cursor:
        # Production tables have statistics; freshly copied ones must get theirs too.
        cursor.execute("ANALYZE")
    return rows


def _prepare(periods: int) -> tuple[list[int], float]:
    """Fresh data: ``periods`` customers, each with one period due to be closed."""
    from django.utils import timezone

    from plans.models import PeriodStatus, SubscriptionPeriod

    started = time.monotonic()
    _reset()
    start = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(days=45)
    due = _templates(start)
    if due != len(SHAPES):
        raise RuntimeError(f"templates: {due} periods due to be closed")
    _clone(periods // len(SHAPES) - 1)
    ids = list(
        SubscriptionPeriod.objects.filter(status=PeriodStatus.CLOSED)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    if len(ids) != periods:
        raise RuntimeError(f"expected {periods} periods to invoice, found {len(ids)}")
    return ids, time.monotonic() - started


# --- close ----------------------------------------------------------------------------


def _quiet_broker() -> None:
    """Tasks queued by the services stay in this process's memory; none is ever run."""
    from billing_portal.celery import app

    app.conf.broker_url = "memory://localhost/"
    app.conf.broker_transport_options = {}


def _worker_start(stripe: bool) -> None:
    from django.conf import settings
    from django.db import connection

    settings.STRIPE_API_KEY = STRIPE_PLACEHOLDER_KEY if stripe else ""
    connection.ensure_connection()


def _invoice_batch(period_ids: list[int]) -> int:
    from billing_portal.invoicing.tasks import periods_close_task

    return len(periods_close_task(period_ids))  # the task's body, in this worker process


def _batches(ids: list[int]) -> list[list[int]]:
    """The due periods as the beat job sends them: in its order, in its batches."""
    from billing_portal.invoicing import period_close

    due = period_close.periods_due()
    if sorted(due) != sorted(ids):
        raise RuntimeError(f"{len(due)} periods due, expected {len(ids)}")
    return list(period_close.batches(due))


def _close(ids: list[int], workers: int, stripe: bool) -> float:
    from django.db import connections

    batches = _batches(ids)
    connections.close_all()  # the workers are forked: each opens its own connection
    context = multiprocessing.get_context("fork")
    with context.Pool(workers, initializer=_worker_start, initargs=(stripe,)) as pool:
        pool.map(time.sleep, [0.2] * workers)  # every worker started and connected
        started = time.perf_counter()
        for _ in pool.imap_unordered(_invoice_batch, batches, chunksize=1):
            pass
        return time.perf_counter() - started


def _verify(ids: list[int], stripe: bool) -> tuple[list[str], int, int]:
    """Problems found, the Stripe syncs left pending and the lines they would push."""
    from billing_portal.invoicing.models import Invoice, InvoiceKind, InvoiceLine, SyncState
    from ledger import reconcile

    problems: list[str] = []
    invoices = list(
        Invoice.objects.filter(kind=InvoiceKind.PERIOD).values_list(
            "period_id", "customer__external_id", "total", "sync_state"
        )
    )
    periods = Counter(period_id for period_id, _, _, _ in invoices)
    if len(invoices) != len(ids) or set(periods) != set(ids):
        problems.append(f"{len(invoices)} invoices for {len(ids)} periods")
    wrong = 0
    for _, external_id, total, _ in invoices:
        shape = SHAPE_BY_CODE[external_id.removeprefix(PREFIX).split("-")[0]]
        if Decimal(total) != shape.expected_total():
            wrong += 1
            if wrong <= 3:
                problems.append(f"{external_id}: total {total}, expected {shape.expected_total()}")
    if wrong:
        problems.append(f"{wrong} invoices with a wrong total")
    copies = len(ids) // len(SHAPES)
    lines = Counter(
        InvoiceLine.objects.filter(invoice__kind=InvoiceKind.PERIOD).values_list("kind", flat=True)
    )
    expected_lines = Counter(
        {"base_fee": len(ids), "included_usage": len(ids)}
        | {"overage": copies * sum(1 for s in SHAPES if s.overage() > 0)}
    )
    if lines != expected_lines:
        problems.append(f"invoice lines {dict(lines)}, expected {dict(expected_lines)}")
    billable = sum(1 for _, _, total, _ in invoices if Decimal(total) != 0)
    pending = sum(1 for _, _, _, state in invoices if state == SyncState.PENDING)
    if pending != (billable if stripe else 0):
        problems.append(f"{pending} Stripe syncs pending, expected {billable if stripe else 0}")
    pending_lines = InvoiceLine.objects.filter(
        invoice__kind=InvoiceKind.PERIOD, invoice__sync_state=SyncState.PENDING
    ).count()
    for finding in reconcile.run_checks():
        if finding.problems:
            problems.append(f"reconcile {finding.check}: {finding.problems[:3]}")
    return problems, pending, pending_lines


def _measure(periods: int, workers: int, stripe: bool) -> Run:
    from django.conf import settings

    ids, setup = _prepare(periods)
    seconds = _close(ids, workers, stripe)
    settings.STRIPE_API_KEY = ""
    problems, syncs, lines = _verify(ids, stripe)
    return Run(periods, seconds, setup, syncs, lines, problems)


# --- profile --------------------------------------------------------------------------


@dataclass
class Sample:
    periods: int
    seconds: float
    statements: int
    profile: str


def _sample(periods: int, profile: bool) -> Sample:
    """Close ``periods`` periods batch after batch in this process, counting statements."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    ids, _ = _prepare(periods)
    batches = _batches(ids)
    profiler = cProfile.Profile() if profile else None
    with CaptureQueriesContext(connection) as captured:
        started = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        for batch in batches:
            _invoice_batch(batch)
        if profiler is not None:
            profiler.disable()
        seconds = time.perf_counter() - started
    text = ""
    if profiler is not None:
        out = io.StringIO()
        pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(30)
        text = out.getvalue()
    return Sample(periods, seconds, len(captured.captured_queries), text)


# --- command --------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=list(DEFAULT_SIZES),
        help=f"periods closed per run, ascending, multiples of {len(SHAPES)} (default: 1000 10000)",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per size, each on fresh data")
    parser.add_argument(
        "--workers",
        type=int,
        default=env._cpus(),
        help="worker processes closing periods (default: the CPU count)",
    )
    parser.add_argument(
        "--sample",
        type=int,
        default=400,
        help="periods closed batch after batch in one process, for statements per invoice",
    )
    parser.add_argument(
        "--demo",
        action="store_true",
        help="no Stripe key: invoices queue no Stripe sync (default: queued, never run)",
    )
    parser.add_argument("--profile", action="store_true", help="cProfile the sequential sample")
    parser.add_argument("--no-docs", action="store_true", help="do not update the docs")
    parser.add_argument("-v", "--verbose", action="store_true")


def run(args: argparse.Namespace) -> int:
    for size in args.sizes:
        if size < len(SHAPES) or size % len(SHAPES):
            raise SystemExit(f"--sizes: {size} is not a multiple of {len(SHAPES)}")
    env.django_setup()
    _quiet_broker()
    stripe = not args.demo
    sizes: list[Size] = []
    with env.bench_database(verbosity=1 if args.verbose else 0):
        machine = env.machine()
        print(f"invoicing: {machine.describe()}", flush=True)
        for periods in args.sizes:
            size = Size(periods)
            for n in range(args.runs):
                result = _measure(periods, args.workers, stripe)
                size.runs.append(result)
                print(
                    f"  {periods:,} periods, run {n + 1}: {result.seconds:.1f} s "
                    f"({periods / result.seconds:,.0f} invoices/s; data in "
                    f"{result.setup_seconds:.0f} s)"
                    + (f"; PROBLEMS: {result.problems}" if result.problems else "; checks clean"),
                    flush=True,
                )
            sizes.append(size)
        sample = _sample(args.sample, args.profile)
    for size in sizes:
        _print(size, sizes[0])
    print(
        f"invoicing sequential, one process: {sample.periods / sample.seconds:,.0f} invoices/s, "
        f"{sample.statements / sample.periods:.1f} statements per invoice",
        flush=True,
    )
    if sample.profile:
        print(sample.profile, flush=True)
    clean = all(not run.problems for size in sizes for run in size.runs)
    if not args.no_docs:
        _write(sizes, sample, args, machine.describe(), machine.date, clean, stripe)
    met = sizes[-1].ratio() < 1 if sizes else False
    return 0 if clean and met else 1


def _print(size: Size, base: Size) -> None:
    last = size.runs[-1]
    print(
        f"invoicing close @ {size.periods:,} periods: median {size.seconds():.1f} s "
        f"(spread {size.spread()}), {size.rate():,.0f} invoices/s, "
        f"{size.per_1000():.2f} s per 1,000 periods = {size.per_1000() / base.per_1000():.2f}x "
        f"the {base.periods:,}-period cost; {size.ratio():.2f}x of the target "
        f"({TARGET_SECONDS * size.periods / TARGET_PERIODS:.0f} s); Stripe, counted "
        f"separately: {last.stripe_syncs:,} invoice syncs queued, not run "
        f"({last.stripe_lines:,} lines)",
        flush=True,
    )


def _row(size: Size, base: Size) -> str:
    return (
        f"| {size.periods:,} | {size.seconds():.1f} s | {size.spread()} | {size.rate():,.0f}/s | "
        f"{size.per_1000():.2f} s | {size.per_1000() / base.per_1000():.2f}x | "
        f"{size.ratio():.2f}x | {size.runs[-1].stripe_syncs:,} |"
    )


def _write(
    sizes: list[Size],
    sample: Sample,
    args: argparse.Namespace,
    machine: str,
    date: str,
    clean: bool,
    stripe: bool,
) -> None:
    from billing_portal.invoicing.period_close import BATCH_SIZE as batch_size

    base, last = sizes[0], sizes[-1]
    table = "\n".join(_row(size, base) for size in sizes)
    header = (
        f"| periods | median | spread ({args.runs} runs) | invoices/s | s per 1,000 | "
        f"vs {base.periods:,} | vs target | Stripe syncs |"
    )
    setup = ", ".join(
        f"{size.periods:,}: {median([run.setup_seconds for run in size.runs]):.0f} s"
        for size in sizes
    )
    shapes = "; ".join(
        f"{s.plan} {s.credits():,.0f} credits in {s.events} events"
        + (f" (+{s.cancelled} cancelled)" if s.cancelled else "")
        + f" -> {s.expected_total()}"
        for s in SHAPES
    )
    met = last.ratio() < 1
    stripe_note = (
        "a placeholder Stripe key makes each invoice with something to collect queue its "
        "Stripe sync, as in production, into an in-process memory broker; no sync runs"
        if stripe
        else "demo mode (no Stripe key): nothing is queued for Stripe"
    )
    body = f"""## Invoicing: period close

Target: 10,000 subscriptions invoiced in under 60 s (Stripe calls excluded, counted
separately).

- Date: {date}
- Machine: {machine}
- Command: `{args.command_line}`
- Data, fresh for every run: one customer per shape below goes through the real services
  with the clock moved back 45 days (subscription started, events ingested and rated, one
  event cancelled, period renewed and due to be closed); their rows (accounts, customers,
  subscriptions, periods, changes, grants, ledger operations and entries, events, ratings,
  cancellations, rollups, period usage) are then copied with shifted ids in one
  `INSERT ... SELECT` per table, and the database is analyzed. Median time to build it:
  {setup}.
- Shapes (plan, credits used in the period -> expected invoice total, USD): {shapes}.
- Close: the due periods in the beat job's batches of {batch_size} (`periods_due`, in its
  order), {args.workers} worker processes, each calling the `periods_close_task` task's body
  for one batch at a time (a Celery worker with prefetch 1), one transaction per batch;
  {stripe_note}.
- Checks after every run: one invoice per period, every total equal to the expected total
  computed from the catalog's prices, the expected base fee, included usage and overage
  lines, and `ledger.reconcile` clean: **{"all clean" if clean else "PROBLEMS, see the output"}**.

{header}
| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |
{table}

Columns: "s per 1,000" is the median time per 1,000 periods; "vs {base.periods:,}" that cost
per period over the cost at {base.periods:,} periods; "vs target" the median over 60 s per
10,000 periods; "Stripe syncs" the invoice syncs queued per run and not run.

One process closing {sample.periods:,} periods one batch after the other:
{sample.periods / sample.seconds:,.0f} invoices/s, {sample.statements / sample.periods:.1f} SQL
statements per invoice.

Result: target **{"met" if met else "not met"}**: {last.periods:,} periods closed in
{last.seconds():.1f} s (median) = {last.ratio():.2f}x of the target; the cost per period at
{last.periods:,} periods is {last.per_1000() / base.per_1000():.2f}x the cost at
{base.periods:,}. Stripe, counted separately: {last.runs[-1].stripe_syncs:,} invoice syncs
({last.runs[-1].stripe_lines:,} invoice lines) left queued per run.
"""
    path = report.write_section("invoicing", body)
    print(f"invoicing: wrote {path}", flush=True)
