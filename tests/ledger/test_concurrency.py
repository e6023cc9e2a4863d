"""Many clients on one customer at once: no overdraw, no lost update, no deadlock.

Each thread has its own database connection, so the services really run in parallel
transactions against PostgreSQL and meet on the account's row lock.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import connection
from django.db.models import Sum
from django.utils import timezone

from ledger import services
from ledger.errors import HoldNotOpen
from ledger.models import (
    ZERO,
    Account,
    CreditGrant,
    EntryKind,
    GrantStatus,
    Hold,
    HoldStatus,
    LedgerEntry,
)
from ledger.reconcile import run_checks
from tests.ledger import factories

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

THREADS = 32
# Wall-clock bound for the whole race; a deadlock or a lost wake-up shows up as a thread
# still alive after it.
RACE_TIMEOUT = 45.0
HARD_STOP = Decimal(0)


def _race(worker: Callable[[int], None]) -> list[str]:
    """Run ``worker(i)`` in THREADS threads released together; return what escaped."""
    barrier = threading.Barrier(THREADS)
    errors: list[str] = []
    lock = threading.Lock()

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=RACE_TIMEOUT)
            worker(i)
        except BaseException as exc:  # a deadlock or serialization failure must not hide
            with lock:
                errors.append(f"thread {i}: {type(exc).__name__}: {exc}")
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(i,), name=f"race-{i}") for i in range(THREADS)]
    deadline = time.monotonic() + RACE_TIMEOUT
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"threads still running after {RACE_TIMEOUT}s (deadlock?): {stuck}"
    return errors


def _entries_total(account: Account, kind: str) -> Decimal:
    total = LedgerEntry.objects.filter(account=account, kind=kind).aggregate(t=Sum("credits"))["t"]
    return -(total or ZERO)


def _assert_reconciled() -> None:
    problems = {f.check: f.problems for f in run_checks() if f.problems}
    assert problems == {}


def _assert_available_never_negative(account: Account) -> None:
    """Replay the account's operations in the order they held the account lock.

    Every writer takes the account lock before it writes, so ids follow the lock order;
    after each operation posted - held (what a hard stop allows) must not be negative.
    """
    by_operation: dict[int, list[LedgerEntry]] = defaultdict(list)
    for entry in LedgerEntry.objects.filter(account=account).order_by("pk"):
        by_operation[entry.operation_id].append(entry)
    posted = held = ZERO
    for operation_id in sorted(by_operation):
        for entry in by_operation[operation_id]:
            if entry.grant_id is not None:
                posted += entry.credits
            held += entry.held
        assert posted - held >= 0, (
            f"after operation {operation_id}: posted {posted}, held {held}: overdrawn"
        )
    assert held == 0


# --- hold + capture / release on one hot customer --------------------------------------

HOLD_ROUNDS = 8
HOLD_AMOUNT = Decimal("10")


@dataclass
class HoldLog:
    allowed: list[tuple[int, Decimal]] = field(default_factory=list)  # (hold id, available after)
    denied: list[Decimal] = field(default_factory=list)  # available seen when denied
    captured: dict[int, Decimal] = field(default_factory=dict)  # hold id -> requested
    consumed: dict[int, Decimal] = field(default_factory=dict)  # hold id -> returned consumed
    overage: Decimal = ZERO
    released: list[int] = field(default_factory=list)
    resolutions: Counter[int] = field(default_factory=Counter)


def test_concurrent_holds_and_captures_never_overdraw_and_lose_nothing() -> None:
    acct = factories.account()
    grants = [
        factories.grant(acct, "180", priority=10),
        factories.grant(acct, "170.5", category="included"),
        factories.grant(acct, "149.5", category="paid"),
    ]
    granted = sum((g.amount for g in grants), ZERO)
    logs = [HoldLog() for _ in range(THREADS)]
    expires_at = timezone.now() + timedelta(hours=1)

    def worker(i: int) -> None:
        rng = random.Random(1000 + i)
        log = logs[i]
        account = Account.objects.get(pk=acct.pk)
        for _ in range(HOLD_ROUNDS):
            decision = services.hold_create(
                account=account,
                amount=HOLD_AMOUNT,
                expires_at=expires_at,
                actor=f"test:thread-{i}",
                allowance=HARD_STOP,
            )
            if not decision.allowed:
                assert decision.hold is None
                log.denied.append(decision.available)
                continue
            hold = decision.hold
            assert hold is not None
            log.allowed.append((hold.pk, decision.available))
            action = rng.choice(("below", "equal", "release"))
            if action == "release":
                services.hold_release(hold=hold, actor=f"test:thread-{i}")
                log.released.append(hold.pk)
            else:
                amount = (
                    HOLD_AMOUNT
                    if action == "equal"
                    else Decimal(rng.randint(1, 9_999_999)).scaleb(-6)  # below, 6 places
                )
                debit = services.hold_capture(
                    hold=hold,
                    amount=amount,
                    cause=services.Cause("event", f"t{i}-h{hold.pk}"),
                    actor=f"test:thread-{i}",
                )
                log.captured[hold.pk] = amount
                log.consumed[hold.pk] = debit.consumed
                log.overage += debit.overage
            log.resolutions[hold.pk] += 1

    errors = _race(worker)
    assert errors == []

    allowed = [hold_id for log in logs for hold_id, _ in log.allowed]
    denied = [available for log in logs for available in log.denied]
    # The race really hit the hard stop, and both paths ran.
    assert allowed and denied
    assert sum(len(log.captured) for log in logs) > 0
    assert sum(len(log.released) for log in logs) > 0

    # Hard stop: a hold was allowed only if it fit, and denied only if it did not.
    assert all(available >= 0 for log in logs for _, available in log.allowed)
    assert all(available < HOLD_AMOUNT for available in denied)

    # No lost update: what the callers were told equals what the ledger holds.
    consumed_by_callers = sum((c for log in logs for c in log.consumed.values()), ZERO)
    requested = sum((c for log in logs for c in log.captured.values()), ZERO)
    consumed_in_ledger = _entries_total(acct, EntryKind.CONSUME)
    assert consumed_by_callers == consumed_in_ledger == requested
    assert sum((log.overage for log in logs), ZERO) == 0
    assert not LedgerEntry.objects.filter(account=acct, kind=EntryKind.OVERAGE).exists()

    # No overdraw: never more taken than granted, no grant below zero.
    assert consumed_in_ledger <= granted
    for grant in CreditGrant.objects.filter(account=acct):
        taken = -(
            LedgerEntry.objects.filter(grant=grant, kind=EntryKind.CONSUME).aggregate(
                t=Sum("credits")
            )["t"]
            or ZERO
        )
        assert grant.remaining >= 0
        assert grant.remaining == grant.amount - taken
    assert (
        CreditGrant.objects.filter(account=acct).aggregate(t=Sum("remaining"))["t"]
        == granted - consumed_in_ledger
    )
    # At every step of the race, holds plus consumption stayed within the grants.
    _assert_available_never_negative(acct)

    # Every hold resolved exactly once, and only the holds the callers were given exist.
    acct.refresh_from_db()
    assert acct.held == 0
    assert all(n == 1 for log in logs for n in log.resolutions.values())
    holds = {h.pk: h for h in Hold.objects.filter(account=acct)}
    assert sorted(holds) == sorted(allowed)
    assert len(set(allowed)) == len(allowed)
    for log in logs:
        for hold_id, amount in log.captured.items():
            assert holds[hold_id].status == HoldStatus.CAPTURED
            assert holds[hold_id].captured_credits == amount
        for hold_id in log.released:
            assert holds[hold_id].status == HoldStatus.RELEASED
    resolving = Counter(
        LedgerEntry.objects.filter(
            account=acct, kind__in=[EntryKind.CAPTURE, EntryKind.RELEASE]
        ).values_list("hold_id", flat=True)
    )
    assert resolving == Counter(dict.fromkeys(allowed, 1))

    _assert_reconciled()


# --- consumption racing voids on the same grants ----------------------------------------

CONSUMERS = 24  # the other 8 threads void: two per voided grant
CONSUME_ROUNDS = 8


@dataclass
class ConsumeLog:
    requested: dict[str, Decimal] = field(default_factory=dict)  # cause id -> amount
    consumed: dict[str, Decimal] = field(default_factory=dict)
    overage: dict[str, Decimal] = field(default_factory=dict)
    voided: list[int] = field(default_factory=list)


def test_concurrent_consumption_and_voids_keep_every_grant_whole() -> None:
    acct = factories.account()
    grants = [
        factories.grant(acct, "120", priority=5),
        factories.grant(acct, "95.25", priority=20, category="included"),
        factories.grant(acct, "110", category="paid"),
        factories.grant(acct, "80.5", expires_in=timedelta(days=3)),
        factories.grant(acct, "75", priority=90, category="paid"),
    ]
    to_void = grants[:4]
    granted = sum((g.amount for g in grants), ZERO)
    logs = [ConsumeLog() for _ in range(THREADS)]

    def worker(i: int) -> None:
        rng = random.Random(2000 + i)
        log = logs[i]
        if i >= CONSUMERS:
            # Two threads race to void each grant, somewhere inside the consumption.
            time.sleep(rng.uniform(0, 0.3))
            grant = CreditGrant.objects.get(pk=to_void[(i - CONSUMERS) % len(to_void)].pk)
            voided = services.credit_grant_void(grant=grant, actor="staff:test", reason="race")
            assert voided.status == GrantStatus.VOIDED
            assert voided.remaining == 0
            log.voided.append(voided.pk)
            return
        account = Account.objects.get(pk=acct.pk)
        for r in range(CONSUME_ROUNDS):
            cause_id = f"t{i}-r{r}"
            amount = Decimal(rng.randint(1, 12_000_000)).scaleb(-6)
            debit = services.credits_consume(
                account=account,
                amount=amount,
                cause=services.Cause("event", cause_id),
                actor=f"test:thread-{i}",
                idempotency_key=cause_id,
            )
            assert debit.consumed + debit.overage == amount
            assert debit.consumed >= 0 and debit.overage >= 0
            log.requested[cause_id] = amount
            log.consumed[cause_id] = debit.consumed
            log.overage[cause_id] = debit.overage
            if rng.random() < 0.25:
                # A retry of the same call returns the first result and writes nothing.
                again = services.credits_consume(
                    account=account,
                    amount=amount,
                    cause=services.Cause("event", cause_id),
                    actor=f"test:thread-{i}",
                    idempotency_key=cause_id,
                )
                assert (again.consumed, again.overage) == (debit.consumed, debit.overage)
                assert again.operation.pk == debit.operation.pk

    errors = _race(worker)
    assert errors == []

    # No lost update: the callers' results are exactly what the ledger recorded.
    consumed_by_callers = sum((c for log in logs for c in log.consumed.values()), ZERO)
    overage_by_callers = sum((c for log in logs for c in log.overage.values()), ZERO)
    consumed_in_ledger = _entries_total(acct, EntryKind.CONSUME)
    assert consumed_by_callers == consumed_in_ledger
    assert overage_by_callers == _entries_total(acct, EntryKind.OVERAGE)
    assert consumed_in_ledger <= granted
    for log in logs:
        for cause_id, amount in log.requested.items():
            charged = LedgerEntry.objects.filter(
                account=acct,
                cause_type="event",
                cause_id=cause_id,
                kind__in=[EntryKind.CONSUME, EntryKind.OVERAGE],
            ).aggregate(t=Sum("credits"))["t"]
            assert -(charged or ZERO) == amount, cause_id

    # Each voided grant: voided once, nothing taken from it after the void, and
    # amount = remaining + consumed + written off, never below zero.
    assert sorted(g for log in logs for g in log.voided) == sorted([g.pk for g in to_void] * 2)
    for grant in CreditGrant.objects.filter(account=acct).order_by("pk"):
        entries = list(LedgerEntry.objects.filter(grant=grant).order_by("pk"))
        voids = [e for e in entries if e.kind == EntryKind.VOID]
        consumed = -sum((e.credits for e in entries if e.kind == EntryKind.CONSUME), ZERO)
        written_off = -sum((e.credits for e in voids), ZERO)
        assert grant.remaining >= 0
        assert grant.amount == grant.remaining + consumed + written_off
        if grant.pk in {g.pk for g in to_void}:
            assert grant.status == GrantStatus.VOIDED
            assert grant.remaining == 0
            assert len(voids) <= 1  # none when consumption had already emptied it
            if voids:
                assert all(e.kind != EntryKind.CONSUME for e in entries if e.pk > voids[0].pk)
        else:
            assert not voids

    _assert_available_never_negative(acct)
    _assert_reconciled()


# --- racing resolutions of the same holds -------------------------------------------------


def test_racing_capture_release_and_expiry_resolve_each_hold_once() -> None:
    """Two threads per hold race to resolve it: capture vs capture (a retry), capture vs
    release, release vs release, capture vs the expiry sweep. One wins; the other sees
    the first result or a clear HoldNotOpen."""
    acct = factories.account()
    factories.grant(acct, "1000")
    now = timezone.now()
    pairs = ("capture/capture", "capture/release", "release/release", "capture/expire")
    holds: list[Hold] = []
    for k in range(THREADS // 2):
        # Holds meant for the expiry sweep are already due; the others are not.
        expires_at = now - timedelta(seconds=1) if k % 4 == 3 else now + timedelta(hours=1)
        decision = services.hold_create(
            account=acct,
            amount=Decimal("10"),
            expires_at=expires_at,
            actor="test:setup",
            allowance=HARD_STOP,
        )
        assert decision.hold is not None
        holds.append(decision.hold)
    outcomes: dict[int, list[tuple[str, object]]] = defaultdict(list)
    lock = threading.Lock()

    def worker(i: int) -> None:
        k = i // 2
        action = pairs[k % 4].split("/")[i % 2]
        hold = Hold.objects.get(pk=holds[k].pk)
        amount = Decimal(k + 1).scaleb(-1)  # the same for both threads of a hold
        outcome: tuple[str, object]
        try:
            if action == "capture":
                debit = services.hold_capture(
                    hold=hold,
                    amount=amount,
                    cause=services.Cause("event", f"hold-{hold.pk}"),
                    actor=f"test:thread-{i}",
                )
                outcome = ("captured", (debit.operation.pk, debit.consumed))
            elif action == "release":
                released = services.hold_release(hold=hold, actor=f"test:thread-{i}")
                outcome = ("released", released.status)
            else:
                outcome = ("expired", services.holds_expire())
        except HoldNotOpen as exc:
            outcome = ("not_open", str(exc))
        with lock:
            outcomes[k].append(outcome)

    errors = _race(worker)
    assert errors == []

    captured_total = ZERO
    for k, hold in enumerate(holds):
        hold.refresh_from_db()
        results = sorted(kind for kind, _ in outcomes[k])
        pair = pairs[k % 4]
        if pair == "capture/capture":
            assert results == ["captured", "captured"]
            # The retry got the first capture back, not a second one.
            assert len({value for _, value in outcomes[k]}) == 1
            assert hold.status == HoldStatus.CAPTURED
        elif pair == "capture/release":
            assert results in (["captured", "not_open"], ["not_open", "released"])
            assert hold.status == (
                HoldStatus.CAPTURED if "captured" in results else HoldStatus.RELEASED
            )
        elif pair == "release/release":
            assert results == ["released", "released"]
            assert hold.status == HoldStatus.RELEASED
        else:
            # The sweep either expired it or found it captured; the capture either won
            # or was told the hold had expired.
            assert "expired" in results
            assert hold.status in (HoldStatus.CAPTURED, HoldStatus.EXPIRED)
            assert ("captured" in results) == (hold.status == HoldStatus.CAPTURED)
        if hold.status == HoldStatus.CAPTURED:
            assert hold.captured_credits == Decimal(k + 1).scaleb(-1)
            captured_total += Decimal(k + 1).scaleb(-1)
        resolving = LedgerEntry.objects.filter(
            hold=hold, kind__in=[EntryKind.CAPTURE, EntryKind.RELEASE]
        ).count()
        assert resolving == 1, f"hold {hold.pk} ({pair}) resolved {resolving} times"

    acct.refresh_from_db()
    assert acct.held == 0
    assert _entries_total(acct, EntryKind.CONSUME) == captured_total
    _assert_available_never_negative(acct)
    _assert_reconciled()
