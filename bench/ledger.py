"""Hold + capture on one hot customer, concurrent clients, at the service level (no HTTP).

Target (performance notes): at least 1,000 hold + capture cycles per second with 32
concurrent clients on one customer, p99 under 25 ms, zero overdraw.

Every client has its own database connection; by default the 32 clients are threads of
one process, calling the service as the threads of an API server process do, and
``--processes N`` spreads them over N processes (``--layouts`` measures other layouts
for comparison: the ledger combines one account's concurrent hold calls within a
process, so the layout matters). Each client loops for a fixed time: ``hold_create``
with a hard stop (``allowance=0``), then ``hold_capture`` of an amount at or below the
hold. A run uses a fresh account that already holds a given amount of ledger history
(written in bulk before the run, not timed), so the same figure can be read at 1x, 10x
and 100x the history. After each run the ledger is checked for overdraw and lost
updates, and at the end the reconciliation checks run over the whole benchmark database.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import queue
import random
import threading
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal
from typing import Any

from bench import env, options, report
from bench.stats import median, ms, percentile, rate, spread

TARGET_RATE = 1000.0  # hold + capture cycles per second
TARGET_P99 = 0.025  # seconds, per service call
ZERO = Decimal(0)
HOLD_AMOUNT = Decimal("5")
# Captures at or below the hold: the whole hold, nearly all, a part, the smallest unit.
CAPTURE_AMOUNTS = (Decimal("5"), Decimal("4.999999"), Decimal("3.25"), Decimal("0.000001"))
# The hot customer's usable grants: (amount, category, priority, expires in days).
GRANTS: tuple[tuple[str, str, int, int | None], ...] = (
    ("1000000", "included", 10, 30),
    ("250000", "promotional", 50, 90),
    ("5000000", "paid", 50, None),
)
DEFAULT_HISTORY = (1_000, 10_000, 100_000)
# The scarcity phase: so few credits that they run out halfway through the measured
# window, at the rate just measured, so cycles race the last credits under contention and
# an overdraw would show. Included credits first, then paid (as in GRANTS), 5 : 3.
SCARCE_SHARES: tuple[tuple[Decimal, str, int, int | None], ...] = (
    (Decimal("0.625"), "included", 10, 30),
    (Decimal("0.375"), "paid", 50, None),
)
SCARCE_MINIMUM = 1_000  # cycles' worth, whatever the rate


def scarce_grants(
    rate: float, warmup: float, duration: float
) -> tuple[tuple[str, str, int, int | None], ...]:
    """Grants that last ``rate`` cycles/s until the middle of the measured window."""
    mean_capture = sum(CAPTURE_AMOUNTS, ZERO) / len(CAPTURE_AMOUNTS)
    cycles = max(SCARCE_MINIMUM, round(rate * (warmup + duration / 2)))
    credits = (mean_capture * cycles).to_integral_value()
    return tuple(
        (str((credits * share).to_integral_value()), category, priority, expires)
        for share, category, priority, expires in SCARCE_SHARES
    )


# --- what a client does ----------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    account_id: int
    start_at: float  # wall clock (time.time()), the same instant for every client
    warmup: float
    duration: float
    seed: int
    floor_row: int = 0  # > 0: the reference loop on this row instead of hold + capture


@dataclass
class ClientResult:
    cycles: int = 0  # hold + capture cycles that finished inside the measured window
    hold_latency: list[float] = field(default_factory=list)
    capture_latency: list[float] = field(default_factory=list)
    cycle_latency: list[float] = field(default_factory=list)
    holds: int = 0  # every hold allowed, warm-up included
    denied: int = 0
    requested: Decimal = ZERO
    consumed: Decimal = ZERO
    overage: Decimal = ZERO
    error: str = ""


FLOOR_TABLE = "bench_row_lock_floor"


def floor_loop(task: Task) -> ClientResult:
    """The reference: one committed single-row UPDATE per call, nothing else.

    Any design that takes one row lock per call and commits durably under it can do no
    better on this machine; a hold + capture cycle is at least two such calls.
    """
    from django.db import connection

    result = ClientResult()
    window_start = task.start_at + task.warmup
    window_end = window_start + task.duration
    sql = f"UPDATE {FLOOR_TABLE} SET n = n + 1 WHERE id = %s"
    with connection.cursor() as cursor:
        time.sleep(max(0.0, task.start_at - time.time()))
        while time.time() < window_end:
            began = time.time()
            t0 = time.perf_counter()
            cursor.execute(sql, [task.floor_row])  # autocommit: one transaction each
            elapsed = time.perf_counter() - t0
            if window_start <= began + elapsed < window_end:
                result.cycles += 1
                result.hold_latency.append(elapsed)
    return result


def client_loop(task: Task) -> ClientResult:
    """One client: hold then capture, again and again, until the window closes."""
    if task.floor_row:
        return floor_loop(task)
    from django.utils import timezone

    from ledger import services
    from ledger.models import Account

    result = ClientResult()
    rng = random.Random(task.seed)
    account = Account.objects.get(pk=task.account_id)
    expires_at = timezone.now() + timedelta(hours=1)
    window_start = task.start_at + task.warmup
    window_end = window_start + task.duration
    time.sleep(max(0.0, task.start_at - time.time()))
    n = 0
    while time.time() < window_end:
        n += 1
        began = time.time()
        t0 = time.perf_counter()
        decision = services.hold_create(
            account=account,
            amount=HOLD_AMOUNT,
            expires_at=expires_at,
            actor="bench:client",
            allowance=ZERO,
        )
        t1 = time.perf_counter()
        if not decision.allowed or decision.hold is None:
            result.denied += 1
            continue
        result.holds += 1
        amount = rng.choice(CAPTURE_AMOUNTS)
        debit = services.hold_capture(
            hold=decision.hold,
            amount=amount,
            cause=services.Cause("event", f"bench-{task.seed}-{n}"),
            actor="bench:client",
        )
        t2 = time.perf_counter()
        result.requested += amount
        result.consumed += debit.consumed
        result.overage += debit.overage
        finished = began + (t2 - t0)
        if window_start <= finished < window_end:
            result.cycles += 1
            result.hold_latency.append(t1 - t0)
            result.capture_latency.append(t2 - t1)
            result.cycle_latency.append(t2 - t0)
    return result


# --- the clients: processes or threads, each with its own connection -------------------


def _serve(index: int, inbox: Any, outbox: Any) -> None:
    from django.db import connections

    try:
        connections["default"].ensure_connection()
    except BaseException:
        outbox.put(("failed", index, traceback.format_exc()))
        return
    outbox.put(("ready", index, None))
    try:
        while (task := inbox.get()) is not None:
            try:
                result = client_loop(task)
            except BaseException:
                result = ClientResult(error=traceback.format_exc())
            outbox.put(("result", index, result))
    finally:
        connections["default"].close()


def _process_main(first: int, database_name: str, inboxes: list[Any], outbox: Any) -> None:
    """One client process: its clients are threads sharing the process, as the threads
    of one API server process do (hold calls of one account combine within a process)."""
    try:
        env.django_setup(database_name)
    except BaseException:
        for i in range(len(inboxes)):
            outbox.put(("failed", first + i, traceback.format_exc()))
        return
    threads = [
        threading.Thread(target=_serve, args=(first + i, inbox, outbox), daemon=True)
        for i, inbox in enumerate(inboxes)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _share(size: int, parts: int, part: int) -> tuple[int, int]:
    """The clients [first, last) that process ``part`` of ``parts`` hosts."""
    return size * part // parts, size * (part + 1) // parts


class ClientPool:
    """``size`` long-lived clients; each run hands every client one task."""

    def __init__(self, size: int, processes: int, database_name: str) -> None:
        """``processes`` = 0: every client a thread of this process; otherwise the
        clients spread evenly over that many processes, as threads."""
        self.size = size
        self.processes = processes
        self.database_name = database_name
        self.workers: list[Any] = []
        self.inboxes: list[Any] = []
        self.outbox: Any = None

    def __enter__(self) -> ClientPool:
        if self.processes:
            ctx = multiprocessing.get_context("spawn")
            self.outbox = ctx.Queue()
            self.inboxes = [ctx.Queue() for _ in range(self.size)]
            for p in range(self.processes):
                first, last = _share(self.size, self.processes, p)
                worker: Any = ctx.Process(
                    target=_process_main,
                    args=(first, self.database_name, self.inboxes[first:last], self.outbox),
                    name=f"bench-clients-{p}",
                    daemon=True,
                )
                self.workers.append(worker)
        else:
            self.outbox = queue.Queue()
            for i in range(self.size):
                inbox: Any = queue.Queue()
                worker = threading.Thread(
                    target=_serve, args=(i, inbox, self.outbox), name=f"bench-client-{i}"
                )
                self.inboxes.append(inbox)
                self.workers.append(worker)
        for worker in self.workers:
            worker.start()
        failures = []
        for _ in range(self.size):
            kind, index, detail = self.outbox.get(timeout=300)
            if kind != "ready":
                failures.append(f"client {index}: {detail}")
        if failures:
            self.__exit__(None, None, None)
            raise RuntimeError("benchmark clients failed to start:\n" + "\n".join(failures))
        return self

    def run(self, tasks: list[Task]) -> list[ClientResult]:
        assert len(tasks) <= self.size
        for inbox, task in zip(self.inboxes, tasks, strict=False):
            inbox.put(task)
        longest = max(t.start_at + t.warmup + t.duration for t in tasks) - time.time()
        results = []
        for _ in tasks:
            _, _, result = self.outbox.get(timeout=longest + 120)
            results.append(result)
        return results

    def __exit__(self, *exc: object) -> None:
        for inbox in self.inboxes:
            inbox.put(None)
        for worker in self.workers:
            worker.join(timeout=30)
        self.workers.clear()
        self.inboxes.clear()


# --- the hot customer and its history --------------------------------------------------


@dataclass(frozen=True)
class HotAccount:
    account_id: int
    granted: Decimal  # every grant's amount, the history's included
    history_entries: int
    history_holds: int
    history_consumed: Decimal


# Prior hold + capture cycles, written in bulk: per cycle one hold, two operations and
# three entries (hold, capture, consume), drawn from one grant that they deplete. The
# ledger tables refuse UPDATE and DELETE, not INSERT, so this is the same shape the
# services would have written, only faster.
_HISTORY_SQL = (
    """
    CREATE TEMP TABLE bench_history ON COMMIT DROP AS
    SELECT g AS n,
           nextval(pg_get_serial_sequence('ledger_hold', 'id')) AS hold_id,
           nextval(pg_get_serial_sequence('ledger_ledgeroperation', 'id')) AS hold_op,
           nextval(pg_get_serial_sequence('ledger_ledgeroperation', 'id')) AS capture_op,
           %(now)s::timestamptz - make_interval(secs => g * 30) AS at
    FROM generate_series(1, %(cycles)s::int) AS g
    """,
    """
    INSERT INTO ledger_hold (id, account_id, credits, captured_credits, status, meter,
                             workspace, expires_at, idempotency_key, created_at, resolved_at)
    SELECT hold_id, %(account)s::bigint, 1, 1, 'captured', '', NULL,
           at + interval '1 hour', NULL, at, at + interval '1 second'
    FROM bench_history
    """,
    """
    INSERT INTO ledger_ledgeroperation (id, account_id, kind, actor, reason, memo,
                                        idempotency_key, created_at)
    SELECT hold_op, %(account)s::bigint, 'hold', 'bench:history', '', '', NULL::varchar, at
    FROM bench_history
    UNION ALL
    SELECT capture_op, %(account)s::bigint, 'capture', 'bench:history', '', '', NULL,
           at + interval '1 second'
    FROM bench_history
    """,
    """
    INSERT INTO ledger_ledgerentry (operation_id, account_id, kind, grant_id, hold_id,
                                    credits, held, cause_type, cause_id, meter, workspace,
                                    created_at)
    SELECT hold_op, %(account)s::bigint, 'hold', NULL::bigint, hold_id, 0, 1, 'hold',
           hold_id::text, '', NULL::varchar, at
    FROM bench_history
    UNION ALL
    SELECT capture_op, %(account)s::bigint, 'capture', NULL, hold_id, 0, -1, 'hold',
           hold_id::text, '', NULL, at + interval '1 second'
    FROM bench_history
    UNION ALL
    SELECT capture_op, %(account)s::bigint, 'consume', %(grant)s::bigint, NULL, -1, 0,
           'event', 'history-' || n, '', NULL, at + interval '1 second'
    FROM bench_history
    """,
)


def create_hot_account(
    history_entries: int, grants: tuple[tuple[str, str, int, int | None], ...] = GRANTS
) -> HotAccount:
    from django.db import connection, transaction
    from django.utils import timezone

    from ledger import services
    from ledger.models import CreditGrant, GrantStatus

    now = timezone.now()
    account = services.account_create()
    granted = ZERO
    for amount, category, priority, expires_in_days in grants:
        grant = services.credit_grant_create(
            account=account,
            amount=amount,
            category=category,
            priority=priority,
            actor="bench:setup",
            effective_at=now - timedelta(days=1),
            expires_at=now + timedelta(days=expires_in_days) if expires_in_days else None,
        )
        granted += grant.amount
    # One grant entry plus three entries per cycle.
    cycles = max(0, (history_entries - 1) // 3)
    if not cycles:
        return HotAccount(account.pk, granted, 0, 0, ZERO)
    history_grant = services.credit_grant_create(
        account=account,
        amount=Decimal(cycles),
        category="included",
        actor="bench:setup",
        effective_at=now - timedelta(days=400),
        reason="history",
    )
    params: dict[str, Any] = {
        "now": now,
        "cycles": cycles,
        "account": account.pk,
        "grant": history_grant.pk,
    }
    with transaction.atomic(), connection.cursor() as cursor:
        for sql in _HISTORY_SQL:
            cursor.execute(sql, params)
        CreditGrant.objects.filter(pk=history_grant.pk).update(
            remaining=ZERO, status=GrantStatus.DEPLETED, closed_at=now
        )
    with connection.cursor() as cursor:
        cursor.execute(
            "ANALYZE ledger_hold, ledger_ledgeroperation, ledger_ledgerentry, ledger_creditgrant"
        )
    return HotAccount(
        account_id=account.pk,
        granted=granted + history_grant.amount,
        history_entries=1 + 3 * cycles,
        history_holds=cycles,
        history_consumed=Decimal(cycles),
    )


def verify(hot: HotAccount, results: list[ClientResult]) -> tuple[Decimal, list[str]]:
    """Overdrawn credits and every broken rule after one run on ``hot``."""
    from django.db.models import Sum

    from ledger.models import Account, CreditGrant, EntryKind, Hold, HoldStatus, LedgerEntry

    problems = [f"client error: {r.error.strip()}" for r in results if r.error]

    def total(kind: str) -> Decimal:
        found = LedgerEntry.objects.filter(account_id=hot.account_id, kind=kind).aggregate(
            t=Sum("credits")
        )["t"]
        return -(found or ZERO)

    consumed = total(EntryKind.CONSUME)
    overage = total(EntryKind.OVERAGE)
    overdrawn = max(ZERO, consumed - hot.granted) + overage
    if overdrawn:
        problems.append(f"overdraw: consumed {consumed} of {hot.granted}, overage {overage}")
    clients_consumed = sum((r.consumed for r in results), ZERO)
    clients_requested = sum((r.requested for r in results), ZERO)
    if consumed - hot.history_consumed != clients_consumed:
        problems.append(
            f"lost update: callers were told {clients_consumed} consumed, "
            f"the ledger holds {consumed - hot.history_consumed}"
        )
    if clients_consumed != clients_requested:
        problems.append(f"captured {clients_consumed} of {clients_requested} requested")
    negative = CreditGrant.objects.filter(account_id=hot.account_id, remaining__lt=0).count()
    if negative:
        problems.append(f"{negative} grants below zero")
    held = Account.objects.values_list("held", flat=True).get(pk=hot.account_id)
    open_holds = Hold.objects.filter(account_id=hot.account_id, status=HoldStatus.OPEN).count()
    if held != 0 or open_holds:
        problems.append(f"held {held} with {open_holds} open holds after the run")
    holds = Hold.objects.filter(account_id=hot.account_id).count() - hot.history_holds
    if holds != sum(r.holds for r in results):
        problems.append(f"{holds} holds stored, callers were given {sum(r.holds for r in results)}")
    return overdrawn, problems


# --- measuring ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RunFigures:
    rate: float
    call_p50: float
    call_p99: float
    hold_p99: float
    capture_p99: float
    cycle_p99: float
    denied: int
    per_transaction: float  # ledger calls per committed transaction


@dataclass
class LevelFigures:
    history: int
    runs: list[RunFigures] = field(default_factory=list)
    overdrawn: Decimal = ZERO
    problems: list[str] = field(default_factory=list)

    def median(self, name: str) -> float:
        return median([float(getattr(r, name)) for r in self.runs])

    @property
    def rates(self) -> list[float]:
        return [r.rate for r in self.runs]


def _operations_since(account_id: int, after_id: int) -> tuple[int, int]:
    """Ledger operations (one per call) of the account after ``after_id``, and the
    transactions that wrote them."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(DISTINCT xmin::text) FROM ledger_ledgeroperation "
            "WHERE account_id = %s AND id > %s",
            [account_id, after_id],
        )
        calls, transactions = cursor.fetchone()
    return calls, transactions


def measure_run(
    pool: ClientPool, hot: HotAccount, args: argparse.Namespace, seed: int
) -> tuple[RunFigures, Decimal, list[str]]:
    from django.db.models import Max

    from ledger.models import LedgerOperation

    before = LedgerOperation.objects.aggregate(m=Max("id"))["m"] or 0
    start_at = time.time() + 0.5
    tasks = [
        Task(hot.account_id, start_at, args.warmup, args.duration, seed=seed * 1000 + i)
        for i in range(args.clients)
    ]
    results = pool.run(tasks)
    calls = [x for r in results for x in r.hold_latency + r.capture_latency]
    figures = RunFigures(
        rate=sum(r.cycles for r in results) / args.duration,
        call_p50=percentile(calls, 50),
        call_p99=percentile(calls, 99),
        hold_p99=percentile([x for r in results for x in r.hold_latency], 99),
        capture_p99=percentile([x for r in results for x in r.capture_latency], 99),
        cycle_p99=percentile([x for r in results for x in r.cycle_latency], 99),
        denied=sum(r.denied for r in results),
        per_transaction=_ratio(*_operations_since(hot.account_id, before)),
    )
    overdrawn, problems = verify(hot, results)
    return figures, overdrawn, problems


@dataclass
class ScarceFigures:
    """Runs in which the credits run out under load: the phase where overdraw can show."""

    granted: Decimal = ZERO
    runs: list[RunFigures] = field(default_factory=list)
    left: list[Decimal] = field(default_factory=list)  # available after each run
    overdraws: list[Decimal] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def overdrawn(self) -> Decimal:
        return sum(self.overdraws, ZERO)

    @property
    def runs_out(self) -> int:
        """Runs denied for want of credits that ended with less than a hold left."""
        return sum(
            1
            for figures, left in zip(self.runs, self.left, strict=True)
            if figures.denied > 0 and left < HOLD_AMOUNT
        )

    @property
    def ran_out(self) -> bool:
        return bool(self.runs) and self.runs_out == len(self.runs)


def measure_scarce(pool: ClientPool, args: argparse.Namespace, rate: float) -> ScarceFigures:
    """``rate``: cycles/s measured on this pool, which sizes the credits."""
    from ledger.models import Account
    from ledger.selectors import account_balance

    grants = scarce_grants(rate, args.warmup, args.duration)
    scarce = ScarceFigures(granted=sum((Decimal(g[0]) for g in grants), ZERO))
    for run in range(args.runs):
        hot = create_hot_account(args.history[0], grants=grants)
        figures, overdrawn, problems = measure_run(pool, hot, args, seed=91_000 + run)
        scarce.runs.append(figures)
        balance = account_balance(account=Account.objects.get(pk=hot.account_id))
        scarce.left.append(balance.available)
        scarce.overdraws.append(overdrawn)
        scarce.problems.extend(problems)
        if args.verbose:
            print(
                f"  run {run + 1}, scarce credits: {figures.rate * args.duration:,.0f} cycles in "
                f"the window, {figures.denied:,} denied, "
                f"{balance.available} left, overdraw {overdrawn}",
                flush=True,
            )
    if not scarce.ran_out:
        scarce.problems.append(
            "the scarcity phase did not run out of credits in every run: it proves nothing"
        )
    return scarce


def scarce_line(scarce: ScarceFigures, duration: float) -> str:
    denied = sum(r.denied for r in scarce.runs)
    cycles = sum(r.rate * duration for r in scarce.runs)
    return (
        f"ledger scarcity phase, {scarce.granted:,} credits per run: ran out in "
        f"{scarce.runs_out} of {len(scarce.runs)} runs, {cycles:,.0f} cycles in the measured "
        f"windows, {denied:,} holds denied, overdraw {scarce.overdrawn}"
    )


def _ratio(calls: int, transactions: int) -> float:
    return calls / transactions if transactions else 0.0


@dataclass
class LayoutFigures:
    processes: int
    level: LevelFigures


def measure_layout(pool: ClientPool, processes: int, args: argparse.Namespace) -> LayoutFigures:
    level = LevelFigures(history=args.history[0])
    for run in range(args.runs):
        hot = create_hot_account(level.history)
        figures, overdrawn, problems = measure_run(pool, hot, args, seed=77_000 + run)
        level.runs.append(figures)
        level.overdrawn += overdrawn
        level.problems.extend(problems)
    return LayoutFigures(processes, level)


@dataclass
class FloorFigures:
    rows: int
    rates: list[float] = field(default_factory=list)
    p99s: list[float] = field(default_factory=list)


FLOOR_ROWS = (1, 8)


def create_floor_table() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(f"CREATE TABLE {FLOOR_TABLE} (id int PRIMARY KEY, n bigint NOT NULL)")
        cursor.execute(
            f"INSERT INTO {FLOOR_TABLE} SELECT g, 0 FROM generate_series(1, %s) AS g",
            [max(FLOOR_ROWS)],
        )


def measure_floor(pool: ClientPool, floor: FloorFigures, args: argparse.Namespace) -> None:
    start_at = time.time() + 0.5
    tasks = [
        Task(0, start_at, args.warmup, args.duration, seed=i, floor_row=1 + i % floor.rows)
        for i in range(args.clients)
    ]
    results = pool.run(tasks)
    errors = [r.error for r in results if r.error]
    if errors:
        raise RuntimeError(f"reference run failed: {errors[0]}")
    floor.rates.append(sum(r.cycles for r in results) / args.duration)
    floor.p99s.append(percentile([x for r in results for x in r.hold_latency], 99))


def measure_levels(
    pool: ClientPool, args: argparse.Namespace
) -> tuple[list[LevelFigures], list[FloorFigures]]:
    """Every history size (and the reference) once per round, so slow spells on a shared
    machine hit all alike."""
    levels = [LevelFigures(history=history) for history in args.history]
    floors = [FloorFigures(rows=rows) for rows in FLOOR_ROWS] if args.reference else []
    if floors:
        create_floor_table()
    for run in range(args.runs):
        for floor in floors:
            measure_floor(pool, floor, args)
            if args.verbose:
                print(
                    f"  run {run + 1}, reference on {floor.rows} row(s): "
                    f"{rate(floor.rates[-1])}, p99 {ms(floor.p99s[-1])}",
                    flush=True,
                )
        for level in levels:
            hot = create_hot_account(level.history)
            figures, overdrawn, problems = measure_run(pool, hot, args, seed=level.history + run)
            level.runs.append(figures)
            level.overdrawn += overdrawn
            level.problems.extend(problems)
            if args.verbose:
                print(
                    f"  run {run + 1}, {_count(level.history)} history: {rate(figures.rate)}, "
                    f"call p99 {ms(figures.call_p99)}, cycle p99 {ms(figures.cycle_p99)}",
                    flush=True,
                )
    return levels, floors


# --- output ------------------------------------------------------------------------------


def layout(clients: int, processes: int) -> str:
    """How the clients are laid out, in words."""
    if processes == 0:
        return f"{clients} client threads in one process"
    if processes >= clients:
        return f"{clients} client processes, one client each"
    return f"{clients} clients as {processes} processes x {clients // processes} threads"


def _count(n: int) -> str:
    return f"{n // 1000}k" if n >= 1000 and n % 1000 == 0 else str(n)


def level_line(level: LevelFigures, base: LevelFigures) -> str:
    med = level.median("rate")
    return (
        f"ledger hold+capture, {_count(level.history)} history entries: "
        f"{rate(med)} median of {len(level.runs)} runs ({spread(level.rates)}), "
        f"{med / TARGET_RATE:.2f}x of target {rate(TARGET_RATE)}, "
        f"{med / base.median('rate'):.2f}x of the {_count(base.history)} rate; "
        f"per call p50 {ms(level.median('call_p50'))}, p99 {ms(level.median('call_p99'))} "
        f"({level.median('call_p99') / TARGET_P99:.2f}x of 25 ms); "
        f"cycle p99 {ms(level.median('cycle_p99'))}; "
        f"{level.median('per_transaction'):.1f} calls per transaction; "
        f"overdraw {level.overdrawn}"
    )


def layout_line(item: LayoutFigures, clients: int) -> str:
    lv = item.level
    return (
        f"ledger hold+capture, {layout(clients, item.processes)}: "
        f"{rate(lv.median('rate'))} median ({spread(lv.rates)}), call p99 "
        f"{ms(lv.median('call_p99'))}, {lv.median('per_transaction'):.1f} calls per "
        f"transaction, overdraw {lv.overdrawn}"
    )


def floor_line(floor: FloorFigures, clients: int) -> str:
    med = median(floor.rates)
    return (
        f"ledger reference, {clients} clients each committing a one-row UPDATE, "
        f"{floor.rows} row(s): {rate(med)} median ({spread(floor.rates)}), p99 "
        f"{ms(median(floor.p99s))}; at two such calls per cycle at most "
        f"{med / 2:,.0f} cycles/s, {med / 2 / TARGET_RATE:.2f}x of target"
    )


def _met(level: LevelFigures) -> bool:
    return (
        level.median("rate") >= TARGET_RATE
        and level.median("call_p99") < TARGET_P99
        and level.overdrawn == 0
        and not level.problems
    )


def verdict_line(levels: list[LevelFigures], scarce: ScarceFigures, problems: list[str]) -> str:
    base = levels[0]
    met = _met(base) and scarce.ran_out and scarce.overdrawn == 0
    return (
        f"ledger verdict: target {'met' if met else 'NOT met'}: "
        f"{base.median('rate'):,.0f} cycles/s ({base.median('rate') / TARGET_RATE:.2f}x of "
        f"1,000/s), call p99 {ms(base.median('call_p99'))} "
        f"({base.median('call_p99') / TARGET_P99:.2f}x of 25 ms), cycle p99 "
        f"{ms(base.median('cycle_p99'))}, overdraw "
        f"{sum((lv.overdrawn for lv in levels), ZERO)} with ample credits and "
        f"{scarce.overdrawn} when they ran out, {len(problems)} correctness problems"
    )


def markdown(
    machine: env.Machine,
    args: argparse.Namespace,
    levels: list[LevelFigures],
    floors: list[FloorFigures],
    layouts: list[LayoutFigures],
    scarce: ScarceFigures,
    problems: list[str],
) -> str:
    base = levels[0]
    lines = [
        "## Ledger: hold + capture on one hot customer",
        "",
        f"Target: at least {TARGET_RATE:,.0f} hold + capture cycles/s with 32 concurrent "
        "clients on one customer, at the service level (no HTTP); p99 per service call "
        "under 25 ms; zero overdraw.",
        "",
        f"- Date: {machine.date}",
        f"- Machine: {machine.describe()}",
        f"- Command: `{args.command_line}` (or `make bench BENCH_ARGS=ledger`)",
        f"- Load: {layout(args.clients, args.processes)}, each client with its own database "
        "connection, looping `hold_create` (hard stop, `allowance=0`) then `hold_capture` "
        "of an amount at or below the hold. A cycle is one `hold_create` plus one "
        f"`hold_capture`; latencies are per service call. {args.runs} rounds; each round "
        f"measures every history size for {args.duration:g} s (after {args.warmup:g} s "
        "warm-up) on a fresh account whose prior history (hold, capture and consume "
        "entries) is written in bulk before the run.",
        "",
        "| history entries | cycles/s (median) | spread (min-max) | vs 1,000/s "
        f"| vs {_count(base.history)} | call p50 | call p99 | p99 vs 25 ms | cycle p99 "
        "| calls per transaction | overdraw |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for level in levels:
        med = level.median("rate")
        lines.append(
            f"| {level.history:,} | {med:,.0f} | {spread(level.rates)} "
            f"| {med / TARGET_RATE:.2f}x | {med / base.median('rate'):.2f}x "
            f"| {ms(level.median('call_p50'))} | {ms(level.median('call_p99'))} "
            f"| {level.median('call_p99') / TARGET_P99:.2f}x "
            f"| {ms(level.median('cycle_p99'))} | {level.median('per_transaction'):.1f} "
            f"| {level.overdrawn} |"
        )
    if floors:
        lines += [
            "",
            "Reference, measured in the same rounds: the same clients each committing a "
            "bare one-row `UPDATE` (one transaction per call, nothing else). On one row "
            "this is the most any design that locks the customer's row for every call and "
            "commits durably under that lock can do here; a cycle is at least two such "
            "calls. The ledger goes past it by committing many calls in one transaction "
            "(calls per transaction, above).",
            "",
            "| rows | commits/s (median) | spread | p99 | cycles/s at most | vs 1,000/s |",
            "| ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for floor in floors:
            med = median(floor.rates)
            lines.append(
                f"| {floor.rows} | {med:,.0f} | {spread(floor.rates)} "
                f"| {ms(median(floor.p99s))} | {med / 2:,.0f} | {med / 2 / TARGET_RATE:.2f}x |"
            )
    if layouts:
        lines += [
            "",
            "The same hold + capture loop on the "
            f"{_count(base.history)} history with the 32 clients laid out differently. The "
            "ledger combines the hold calls of one account that arrive together in one "
            "process into one transaction (`ledger.combiner`), so the more callers share a "
            "process, the fewer transactions queue on the customer's row; clients in "
            "separate processes each pay a whole transaction. Calls per transaction are "
            "counted in PostgreSQL (`xmin` of the run's ledger operations).",
            "",
            "| layout | cycles/s (median) | spread | vs 1,000/s | call p99 | p99 vs 25 ms "
            "| calls per transaction | overdraw |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for item in layouts:
            lv = item.level
            med = lv.median("rate")
            lines.append(
                f"| {layout(args.clients, item.processes)} | {med:,.0f} | {spread(lv.rates)} "
                f"| {med / TARGET_RATE:.2f}x | {ms(lv.median('call_p99'))} "
                f"| {lv.median('call_p99') / TARGET_P99:.2f}x "
                f"| {lv.median('per_transaction'):.1f} | {lv.overdrawn} |"
            )
    lines += [
        "",
        f"Scarcity phase, in which overdraw can happen: the same {args.clients} clients on a "
        f"fresh account with {_count(base.history)} history and only {scarce.granted:,} "
        f"credits, sized from the {_count(base.history)} rate above so that they run out "
        "halfway through the measured window: until then the clients race the last credits, "
        "after it every hold is denied. A run counts only if it was denied with less than one "
        "hold's credits left.",
        "",
        "| run | cycles | holds denied | credits left | call p99 | cycle p99 | overdraw |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    rows = zip(scarce.runs, scarce.left, scarce.overdraws, strict=True)
    for index, (figures, left, overdrawn) in enumerate(rows):
        lines.append(
            f"| {index + 1} | {figures.rate * args.duration:,.0f} | {figures.denied:,} "
            f"| {left.normalize():f} | {ms(figures.call_p99)} | {ms(figures.cycle_p99)} "
            f"| {overdrawn} |"
        )
    last = levels[-1]
    lines += [
        "",
        f"Result: target {'met' if _met(base) else '**not met**'} at "
        f"{_count(base.history)} history: {base.median('rate'):,.0f} cycles/s = "
        f"{base.median('rate') / TARGET_RATE:.2f}x of 1,000/s, call p99 "
        f"{ms(base.median('call_p99'))} = {base.median('call_p99') / TARGET_P99:.2f}x of "
        f"25 ms (cycle p99 {ms(base.median('cycle_p99'))}), overdraw {base.overdrawn}; when "
        f"the credits ran out ({scarce.runs_out} of "
        f"{len(scarce.runs)} runs), overdraw {scarce.overdrawn}. "
        f"At {_count(last.history)} history the rate is "
        f"{last.median('rate') / base.median('rate'):.2f}x the {_count(base.history)} rate.",
        "",
        "Checked after every run: no overage entry, consumed never above granted, no grant "
        "below zero, `held` back to 0 with no open hold, the callers' consumed credits equal "
        "to the ledger's, every hold the callers were given stored once; then "
        "`ledger.reconcile.run_checks()` over the whole benchmark database: "
        + ("all clean." if not problems else f"**{len(problems)} problems**: {problems[:5]}"),
    ]
    return "\n".join(lines)


# --- entry point -------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--clients", type=int, default=32, help="concurrent clients (32)")
    parser.add_argument("--runs", type=int, default=5, help="rounds; figures are medians (5)")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds (5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds (1)")
    parser.add_argument(
        "--history",
        type=options.sizes,
        default=list(DEFAULT_HISTORY),
        help="prior ledger entries on the account, comma-separated (1000,10000,100000)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=0,
        help="client processes, the clients spread over them as threads, as in API server "
        "processes with threads (0 = every client a thread of this process)",
    )
    parser.add_argument(
        "--no-reference",
        dest="reference",
        action="store_false",
        help="skip the one-row UPDATE reference",
    )
    parser.add_argument(
        "--layouts",
        type=lambda v: [int(x) for x in v.split(",") if x.strip()],
        default=[2, 4, 32],
        help="other client layouts (process counts) measured on the first history size, "
        "for comparison (2,4,32; empty to skip)",
    )
    options.add_output_arguments(parser)


@contextlib.contextmanager
def _timed(label: str, verbose: bool) -> Iterator[None]:
    started = time.perf_counter()
    yield
    if verbose:
        print(f"  {label}: {time.perf_counter() - started:.1f} s", flush=True)


def run(args: argparse.Namespace) -> int:
    env.django_setup()
    from ledger.reconcile import run_checks

    with env.bench_database() as database_name:
        machine = env.machine()
        print(
            f"ledger: hold + capture on one hot customer, {layout(args.clients, args.processes)}, "
            f"{args.runs} rounds x {args.duration:g} s per history size; "
            f"database {database_name} on {machine.postgres} ({machine.database})",
            flush=True,
        )
        layouts: list[LayoutFigures] = []
        with ClientPool(args.clients, args.processes, database_name) as pool:
            with _timed("all runs", args.verbose):
                levels, floors = measure_levels(pool, args)
            for level in levels:
                print(level_line(level, levels[0]), flush=True)
            for floor in floors:
                print(floor_line(floor, args.clients), flush=True)
            with _timed("scarcity phase", args.verbose):
                scarce = measure_scarce(pool, args, levels[0].median("rate"))
            print(scarce_line(scarce, args.duration), flush=True)
        for processes in args.layouts:
            if processes == args.processes:
                continue
            with ClientPool(args.clients, processes, database_name) as pool:
                item = measure_layout(pool, processes, args)
            layouts.append(item)
            print(layout_line(item, args.clients), flush=True)
        problems = [p for level in levels for p in level.problems]
        problems += [p for item in layouts for p in item.level.problems]
        problems += scarce.problems
        problems += [f"{f.check}: {p}" for f in run_checks() for p in f.problems]
    return report.finish(
        "ledger",
        verdict_line(levels, scarce, problems),
        problems,
        lambda: markdown(machine, args, levels, floors, layouts, scarce, problems),
        write=not args.no_docs,
    )
