"""Combining one account's concurrent hold calls into one transaction."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.db import connection, connections, transaction
from django.utils import timezone

from ledger import combiner, services
from ledger.models import Account, Hold, LedgerOperation
from tests.ledger.factories import grant


def _run_threads(count: int, target: Callable[[int], Any]) -> list[Any]:
    results: list[Any] = [None] * count
    start = threading.Barrier(count)

    def run(i: int) -> None:
        start.wait()
        try:
            results[i] = target(i)
        except Exception as error:
            results[i] = error
        finally:
            connections.close_all()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(t.is_alive() for t in threads)
    return results


class _Recorder:
    """An apply function that doubles numbers slowly and records how it was called."""

    def __init__(self, fail_on: frozenset[int] = frozenset(), poison: int | None = None) -> None:
        self.batches: list[list[int]] = []
        self.running = 0
        self.most_running = 0
        self.mutex = threading.Lock()
        self.fail_on = fail_on
        self.poison = poison

    def __call__(self, account_id: int, take: combiner.Take) -> list[object]:
        with self.mutex:
            self.running += 1
            self.most_running = max(self.most_running, self.running)
        try:
            time.sleep(0.01)  # the account lock is held: others queue meanwhile
            requests = take()
            with self.mutex:
                self.batches.append(list(requests))
            if self.poison in requests:
                raise RuntimeError("the whole transaction failed")
            return [
                ValueError(f"request {r} refused") if r in self.fail_on else r * 2 for r in requests
            ]
        finally:
            with self.mutex:
                self.running -= 1


def test_concurrent_calls_are_combined_and_each_gets_its_own_answer() -> None:
    apply = _Recorder()
    results = _run_threads(24, lambda i: combiner.submit(1, i, apply))
    assert results == [i * 2 for i in range(24)]
    assert apply.most_running == 1, "one transaction at a time per account"
    assert sorted(r for batch in apply.batches for r in batch) == list(range(24))
    assert max(len(batch) for batch in apply.batches) > 1
    assert len(apply.batches) < 24


def test_a_refused_request_fails_only_its_caller() -> None:
    apply = _Recorder(fail_on=frozenset({5}))
    results = _run_threads(12, lambda i: combiner.submit(2, i, apply))
    assert isinstance(results[5], ValueError)
    assert [r for i, r in enumerate(results) if i != 5] == [i * 2 for i in range(12) if i != 5]


def test_a_failed_transaction_is_retried_request_by_request() -> None:
    apply = _Recorder(poison=3)
    results = _run_threads(12, lambda i: combiner.submit(3, i, apply))
    assert isinstance(results[3], RuntimeError)
    assert [r for i, r in enumerate(results) if i != 3] == [i * 2 for i in range(12) if i != 3]


def test_a_failure_before_taking_the_batch_reaches_the_leader_and_the_line_goes_on() -> None:
    calls = 0

    def apply(account_id: int, take: combiner.Take) -> list[object]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("lost the connection before locking")
        return [r * 2 for r in take()]

    with pytest.raises(ConnectionError):
        combiner.submit(4, 1, apply)
    assert combiner.submit(4, 2, apply) == 4


def test_different_accounts_do_not_wait_for_each_other() -> None:
    apply = _Recorder()
    results = _run_threads(8, lambda i: combiner.submit(100 + i, i, apply))
    assert results == [i * 2 for i in range(8)]
    assert apply.most_running > 1


@pytest.mark.django_db(transaction=True)
def test_concurrent_holds_share_transactions_and_never_overdraw() -> None:
    account = Account.objects.create()
    grant(account, "100")
    expires = timezone.now() + timedelta(minutes=5)

    def hold(i: int) -> services.HoldDecision:
        return services.hold_create(
            account=account, amount="7", expires_at=expires, actor=f"t{i}", allowance=Decimal(0)
        )

    decisions = _run_threads(32, hold)
    assert all(isinstance(d, services.HoldDecision) for d in decisions)
    allowed = [d for d in decisions if d.allowed]
    assert len(allowed) == 14  # 14 x 7 = 98 of 100
    account.refresh_from_db()
    assert account.held == Decimal("98")
    assert Hold.objects.filter(account=account).count() == 14
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(DISTINCT xmin::text) FROM ledger_ledgeroperation "
            "WHERE account_id = %s AND kind = 'hold'",
            [account.pk],
        )
        (transactions,) = cursor.fetchone()
    assert transactions < 14, "holds that arrived together were written together"


@pytest.mark.django_db(transaction=True)
def test_a_hold_inside_a_transaction_is_part_of_it() -> None:
    account = Account.objects.create()
    grant(account, "100")
    expires = timezone.now() + timedelta(minutes=5)
    with pytest.raises(RuntimeError), transaction.atomic():
        decision = services.hold_create(
            account=account, amount="40", expires_at=expires, actor="t", allowance=Decimal(0)
        )
        assert decision.allowed
        assert Account.objects.get(pk=account.pk).held == Decimal("40")
        raise RuntimeError("the caller's transaction rolls back")
    assert Account.objects.get(pk=account.pk).held == 0
    assert not Hold.objects.filter(account=account).exists()
    assert not LedgerOperation.objects.filter(account=account, kind="hold").exists()


@pytest.mark.django_db(transaction=True)
def test_a_callers_record_is_written_in_the_holds_transaction() -> None:
    account = Account.objects.create()
    grant(account, "100")
    expires = timezone.now() + timedelta(minutes=5)
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMP TABLE decisions (hold_id bigint, allowed boolean)")

    def record(decision: services.HoldDecision) -> tuple[str, list[object]]:
        hold_id = decision.hold.pk if decision.hold else None
        return (
            "INSERT INTO decisions VALUES (%s, %s) RETURNING hold_id, allowed",
            [hold_id, decision.allowed],
        )

    allowed = services.hold_create(
        account=account, amount="60", expires_at=expires, actor="t", record=record
    )
    denied = services.hold_create(
        account=account, amount="60", expires_at=expires, actor="t", record=record
    )
    assert allowed.hold is not None
    assert allowed.recorded == [(allowed.hold.pk, True)]
    assert denied.recorded == [(None, False)]

    def failing(decision: services.HoldDecision) -> tuple[str, list[object]]:
        return "INSERT INTO no_such_table VALUES (%s)", [1]

    with pytest.raises(Exception, match="no_such_table"):
        services.hold_create(
            account=account, amount="10", expires_at=expires, actor="t", record=failing
        )
    # The failed record took its hold with it: nothing reserved, nothing stored.
    assert Account.objects.get(pk=account.pk).held == Decimal("60")
    assert Hold.objects.filter(account=account).count() == 1
