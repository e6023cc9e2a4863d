"""Rating with a real Celery worker process: every event rated once, even across SIGKILL.

The worker is ``celery -A billing_portal worker`` in a subprocess, on the test database
(committed data: ``transaction=True``) and a private queue (see ``worker_support``). The
test process plays beat: it sends ``metering.tasks.events_rate_pending`` and waits for
the worker to log the task's end. Tasks are sent with rounds=1: each rates at most one
batch (1000 events) per customer, so the test can stop between batches.

The kill test stops the worker's rating transaction at a known point by holding, from
another session, a row lock the transaction needs next (the account row, taken before
the ledger is debited; the period-usage row, written after the ledger entries, ratings
and rollups): the worker is then provably inside a batch, with its writes made and not
committed, when its whole process group gets SIGKILL. A third kill hits a worker that
is running free, moments after it claimed a batch.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db.models import Count, Sum
from django.utils import timezone

from ledger.models import ZERO, CreditGrant, EntryKind, LedgerEntry, LedgerOperation
from ledger.reconcile import run_checks
from metering.ingest import MAX_EVENTS, events_ingest
from metering.models import (
    EventRating,
    MeterEvent,
    PeriodUsage,
    RatingQueue,
    RatingStatus,
    UsageRollup,
)
from metering.rating import BATCH
from plans.models import Customer, SubscriptionPeriod
from plans.services import subscription_start
from tests.metering.worker_support import (
    Backend,
    RowLock,
    StartWorker,
    TableLock,
    Worker,
    WorkerError,
    wait_until,
)
from tests.plans.factories import customer, load_demo_catalog, plan

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

DRAIN_TIMEOUT = 60.0
# Credits per unit, from docs/examples/catalog.yaml (the "standard" rate card).
TOKEN_RATES = {
    ("large", "input"): Decimal("2.5") / 1000,
    ("large", "output"): Decimal("15") / 1000,
    ("small", "input"): Decimal("0.5") / 1000,
    ("small", "output"): Decimal("0.5") / 1000,
}
SUMMARY_CREDITS = Decimal(50)


# --- fixtures -------------------------------------------------------------------------


# --- data -----------------------------------------------------------------------------


@dataclass
class Usage:
    """A customer's generated events and the credits they must cost, worked out here."""

    customer: Customer
    events: list[dict[str, Any]]
    expected_credits: Decimal
    subscribed: bool


def _usage(external_id: str, count: int, *, subscribe: str | None, seed: int) -> Usage:
    now = timezone.now()
    who = customer(external_id)
    if subscribe:
        subscription_start(
            customer=who, plan=plan(subscribe), actor="test", start_at=now - timedelta(days=2)
        )
    rng = random.Random(seed)
    events: list[dict[str, Any]] = []
    expected = ZERO
    for index in range(count):
        # Spread over the last day: many hourly rollups, all inside the open period.
        moment: datetime = now - timedelta(seconds=rng.randint(60, 24 * 3600))
        event: dict[str, Any] = {
            "identifier": f"{external_id}-{index}",
            "customer": external_id,
            "timestamp": moment.isoformat(),
        }
        if rng.random() < 0.1:
            event |= {"event_name": "doc.summary", "value": 1}
            expected += SUMMARY_CREDITS
        else:
            model, token_type = rng.choice(list(TOKEN_RATES))
            tokens = rng.choice([200, 1000, 4000, 12000])
            event |= {
                "event_name": "llm.tokens",
                "value": tokens,
                "dimensions": {"model": model, "token_type": token_type},
            }
            expected += tokens * TOKEN_RATES[(model, token_type)]
        events.append(event)
    return Usage(who, events, expected if subscribe else ZERO, subscribed=bool(subscribe))


def _ingest(*usages: Usage) -> None:
    for usage in usages:
        events = usage.events
        for start in range(0, len(events), MAX_EVENTS):
            chunk = events[start : start + MAX_EVENTS]
            outcome = events_ingest(events=chunk)
            rejected = [r.as_dict() for r in outcome.results if r.status != "accepted"]
            assert not rejected, rejected[:3]
    assert RatingQueue.objects.count() == sum(len(u.events) for u in usages)


# --- driving the worker ---------------------------------------------------------------


def _drain(worker: Worker, *, timeout: float = DRAIN_TIMEOUT) -> None:
    """Send rating tasks one after another until the queue is empty."""
    deadline = time.monotonic() + timeout
    while RatingQueue.objects.exists():
        if time.monotonic() > deadline:
            raise WorkerError(
                f"{RatingQueue.objects.count()} events still queued after {timeout}s:\n"
                f"{worker.log_tail()}"
            )
        rated = worker.rate_once()
        assert rated > 0, f"a rating task rated nothing with events queued:\n{worker.log_tail()}"


def _rating_backend(worker: Worker, ready: Callable[[Backend], bool], what: str) -> Backend:
    def found() -> Backend | None:
        if not worker.alive:
            raise WorkerError(f"worker died:\n{worker.log_tail()}")
        return next((b for b in worker.backends() if ready(b)), None)

    backend: Backend = wait_until(found, timeout=30, what=what, interval=0.002)
    return backend


def _claimed(backend: Backend) -> bool:
    """In a rating transaction: it holds the queue rows it claimed FOR UPDATE."""
    return backend.holds("metering_ratingqueue", "RowShareLock")


# --- what the database must show ------------------------------------------------------


@dataclass(frozen=True)
class State:
    """Committed totals; a killed batch must leave them exactly as they were."""

    queued: int
    ratings: int
    operations: int
    entries: int
    charged: Decimal
    grants_remaining: Decimal
    usage_events: int
    usage_credits: Decimal
    rollup_events: int
    rollup_credits: Decimal


def _state() -> State:
    entries = LedgerEntry.objects.aggregate(n=Count("pk"), total=Sum("credits"))
    usage = PeriodUsage.objects.aggregate(events=Sum("events"), credits=Sum("credits"))
    rollups = UsageRollup.objects.aggregate(events=Sum("events"), credits=Sum("credits"))
    charged = LedgerEntry.objects.filter(
        cause_type="event", kind__in=[EntryKind.CONSUME, EntryKind.OVERAGE]
    ).aggregate(total=Sum("credits"))["total"]
    return State(
        queued=RatingQueue.objects.count(),
        ratings=EventRating.objects.count(),
        operations=LedgerOperation.objects.count(),
        entries=entries["n"],
        charged=-(charged or ZERO),
        grants_remaining=CreditGrant.objects.aggregate(t=Sum("remaining"))["t"] or ZERO,
        usage_events=usage["events"] or 0,
        usage_credits=usage["credits"] or ZERO,
        rollup_events=rollups["events"] or 0,
        rollup_credits=rollups["credits"] or ZERO,
    )


def _assert_reconciled() -> None:
    problems = {f.check: f.problems[:5] for f in run_checks() if f.problems}
    assert not problems, problems


def _next_batch() -> list[int]:
    """The events a rating transaction claims next: the oldest queued, one batch."""
    return list(RatingQueue.objects.order_by("event_id").values_list("event_id", flat=True)[:BATCH])


def _assert_nothing_left_by_killed_batch(before: State, claimed: list[int]) -> None:
    after = _state()
    assert after == before, f"the killed batch left writes behind:\n{before}\n{after}"
    assert RatingQueue.objects.filter(event_id__in=claimed).count() == len(claimed)
    assert not EventRating.objects.filter(event_id__in=claimed).exists()
    assert not LedgerEntry.objects.filter(
        cause_type="event", cause_id__in=[str(pk) for pk in claimed]
    ).exists()
    _assert_reconciled()


def _assert_rated_exactly_once(*usages: Usage) -> None:
    assert not RatingQueue.objects.exists()
    total_events = MeterEvent.objects.count()
    assert total_events == sum(len(u.events) for u in usages)
    assert EventRating.objects.count() == total_events
    assert not MeterEvent.objects.filter(rating__isnull=True).exists()
    _assert_reconciled()  # includes event_rated_exactly_once, event_credits_equal_its_entries

    for usage in usages:
        who = usage.customer
        ratings = EventRating.objects.filter(event__customer=who)
        rated = ratings.filter(status=RatingStatus.RATED)
        credits = ratings.aggregate(t=Sum("credits"))["t"] or ZERO
        entries = LedgerEntry.objects.filter(account=who.account)

        def debited(kind: str, entries: Any = entries) -> Decimal:
            total = entries.filter(kind=kind, cause_type="event").aggregate(t=Sum("credits"))["t"]
            return -(total or ZERO)

        consumed, overage = debited(EntryKind.CONSUME), debited(EntryKind.OVERAGE)
        label = who.external_id
        # Worked out from the events themselves: an event charged twice or dropped shows.
        assert credits == usage.expected_credits, label
        assert consumed + overage == usage.expected_credits, label
        charged_events = set(entries.filter(cause_type="event").values_list("cause_id", flat=True))
        assert charged_events == {
            str(pk) for pk in rated.filter(credits__gt=0).values_list("event_id", flat=True)
        }, label
        if not usage.subscribed:
            assert not rated.exists(), label
            assert ratings.filter(status=RatingStatus.UNRATABLE).count() == len(usage.events)
            assert not entries.exists(), label
            continue
        assert rated.count() == len(usage.events), label
        granted = CreditGrant.objects.filter(account=who.account).aggregate(
            amount=Sum("amount"), remaining=Sum("remaining")
        )
        assert granted["amount"] - granted["remaining"] == consumed, label
        period = SubscriptionPeriod.objects.get(subscription__customer=who)
        usage_row = PeriodUsage.objects.get(period=period)
        assert (usage_row.credits, usage_row.overage, usage_row.events) == (
            usage.expected_credits,
            overage,
            len(usage.events),
        ), label
        rollups = UsageRollup.objects.filter(customer=who).aggregate(
            events=Sum("events"), credits=Sum("credits")
        )
        assert (rollups["events"], rollups["credits"]) == (
            len(usage.events),
            usage.expected_credits,
        ), label


# --- tests ----------------------------------------------------------------------------


def test_a_worker_rates_every_queued_event_exactly_once(start_worker: StartWorker) -> None:
    load_demo_catalog()
    usages = [
        _usage("alpha", 1200, subscribe="pro", seed=1),  # two batches
        _usage("beta", 400, subscribe="pro", seed=2),
        _usage("gamma", 300, subscribe="starter", seed=3),  # runs past its 2,000 credits
        _usage("delta", 100, subscribe=None, seed=4),  # no subscription: unratable
    ]
    _ingest(*usages)

    _drain(start_worker())

    _assert_rated_exactly_once(*usages)
    assert LedgerEntry.objects.filter(kind=EntryKind.OVERAGE).exists()


def test_a_worker_killed_mid_batch_leaves_no_event_unrated_or_charged_twice(
    start_worker: StartWorker,
) -> None:
    load_demo_catalog()
    bulk = _usage("bulk", 5 * BATCH, subscribe="pro", seed=5)
    _ingest(bulk)
    period_id = SubscriptionPeriod.objects.get(subscription__customer=bulk.customer).pk

    first = start_worker()
    assert first.rate_once() == BATCH
    before = _state()
    assert (before.queued, before.ratings, before.usage_events) == (4 * BATCH, BATCH, BATCH)

    # 1. Killed after writing its ledger entries, ratings and rollups, before committing.
    lock = RowLock(
        "SELECT 1 FROM metering_periodusage WHERE period_id = %s FOR UPDATE", [period_id]
    )
    try:
        claimed = _next_batch()
        first.broker.send_rate_pending()
        backend = _rating_backend(
            first,
            lambda b: _claimed(b) and lock.pid in b.blocked_by,
            "the rating transaction to wait for the period-usage row",
        )
        for table in ("ledger_ledgerentry", "metering_eventrating", "metering_usagerollup"):
            assert backend.writes(table), (table, backend)
        assert _state() == before  # its writes are there, uncommitted
        first.kill()
    finally:
        lock.release()
    first.wait_disconnected()
    _assert_nothing_left_by_killed_batch(before, claimed)

    # 2. Killed with its batch claimed, before the ledger was touched. Rating locks the
    # account, claims its batch, then writes the ledger's operation first: held here.
    second = start_worker()
    lock = TableLock("ledger_ledgeroperation", "SHARE")
    try:
        claimed = _next_batch()
        second.broker.send_rate_pending()
        backend = _rating_backend(
            second,
            lambda b: _claimed(b) and lock.pid in b.blocked_by,
            "the rating transaction to wait to write the ledger's operation",
        )
        assert not backend.writes("ledger_ledgerentry"), backend
        assert not backend.writes("metering_eventrating"), backend
        second.kill()
    finally:
        lock.release()
    second.wait_disconnected()
    _assert_nothing_left_by_killed_batch(before, claimed)

    # 3. Killed while running free, just after claiming: all of the batch or none of it.
    third = start_worker()
    claimed = _next_batch()
    task_id = third.broker.send_rate_pending()
    wait_until(
        lambda: (
            any(_claimed(b) for b in third.backends()) or third.task_result(task_id) is not None
        ),
        timeout=30,
        what="the rating transaction to claim a batch",
        interval=0.002,
    )
    third.kill()
    third.wait_disconnected()
    after = _state()
    if after.ratings == before.ratings:
        _assert_nothing_left_by_killed_batch(before, claimed)
    else:  # the kill came after the commit: that whole batch, correctly rated
        assert (after.ratings, after.queued) == (before.ratings + BATCH, before.queued - BATCH)
        assert EventRating.objects.filter(event_id__in=claimed).count() == BATCH
        assert not RatingQueue.objects.filter(event_id__in=claimed).exists()
        assert (after.usage_events, after.rollup_events) == (after.ratings, after.ratings)
        _assert_reconciled()

    # A new worker rates what the killed ones left, each event once.
    last = start_worker()
    _drain(last)
    _assert_rated_exactly_once(bulk)
    final = _state()
    assert final.charged == bulk.expected_credits  # the account's debits: no double charge
    assert final.usage_events == final.rollup_events == 5 * BATCH
