"""The array statements' helpers run in Django's transaction and raise Django's errors, so
callers that tell a lost connection from a bad row (rating, ingest) see what they expect."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from ledger import holds, services
from ledger.drawing import Cause
from ledger.selectors import account_balance, balance_totals_from, balance_totals_statement
from ledger.sql import execute_binary, pipelined
from tests.ledger.factories import account, grant

pytestmark = pytest.mark.django_db


def test_arrays_go_and_come_back_as_python_values() -> None:
    rows = execute_binary(
        "SELECT * FROM unnest(%s::bigint[], %s::numeric[], %s::text[]) ORDER BY 1",
        [[2, 1], [Decimal("1.500000"), Decimal("-0.000001")], ["b", None]],
    )
    assert rows == [(1, Decimal("-0.000001"), None), (2, Decimal("1.500000"), "b")]


def test_pipelined_statements_run_in_order_in_the_callers_transaction() -> None:
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE t (id bigint PRIMARY KEY)")
    with transaction.atomic():
        results = pipelined(
            [
                ("INSERT INTO t SELECT unnest(%s::bigint[])", [[1, 2, 3]]),
                ("DELETE FROM t WHERE id = %s RETURNING id", [2]),
                ("SELECT count(*) FROM t", []),
            ]
        )
        assert results == [[], [(2,)], [(2,)]]
        transaction.set_rollback(True)
    assert execute_binary("SELECT count(*) FROM t", []) == [(0,)]


def test_a_failing_statement_raises_djangos_error_and_rolls_back() -> None:
    with connection.cursor() as cursor:
        cursor.execute("CREATE TEMPORARY TABLE t (id bigint PRIMARY KEY)")
    with pytest.raises(IntegrityError), transaction.atomic():
        execute_binary("INSERT INTO t SELECT unnest(%s::bigint[])", [[1]])
        pipelined([("INSERT INTO t SELECT unnest(%s::bigint[])", [[2, 1]])])
    assert execute_binary("SELECT count(*) FROM t", []) == [(0,)]


def test_the_balance_totals_statement_reads_what_account_balance_reads() -> None:
    acct = account()
    now = timezone.now()
    grant(acct, "100")  # counted, then drawn from below
    grant(acct, "40", expires_in=timedelta(hours=1))  # counted: expires later
    grant(acct, "7", effective_at=now + timedelta(hours=1))  # not yet in effect
    services.credit_grant_void(grant=grant(acct, "500"), actor="test")  # voided
    services.credit_grant_expire(grant=grant(acct, "9"), actor="test")  # expired
    services.credits_consume(account=acct, amount="30", cause=Cause("event", "e1"), actor="t")
    holds.hold_create(account=acct, amount="12", expires_at=now + timedelta(minutes=5), actor="t")

    for at in (now, now + timedelta(hours=2)):
        expected = account_balance(account=acct, at=at)
        totals = balance_totals_from(
            pipelined([balance_totals_statement(account_id=acct.pk, at=at)])[0]
        )
        assert (totals.posted, totals.held, totals.available) == (
            expected.posted,
            expected.held,
            expected.available,
        )
    assert balance_totals_from(
        pipelined([balance_totals_statement(account_id=acct.pk, at=now)])[0]
    ) == (Decimal("110"), Decimal("12"))
