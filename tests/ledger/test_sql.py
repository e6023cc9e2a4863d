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
from ledger.sql import bools_array, execute_binary, numbers_array, pipelined, texts_array
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


TRICKY_TEXTS = [
    "plain",
    "",
    "NULL",
    "null",
    'a "quoted" word',
    "back\\slash\\",
    '\\"',
    "comma, {brace} }{",
    "  leading and trailing  ",
    "tab\tnew\nline",
    "ünïcødé ✓",
    None,
]


@pytest.mark.parametrize("binary", [False, True])
def test_array_literals_read_back_as_the_values_they_were_made_of(binary: bool) -> None:
    numbers = [0, -1, 750966441771218, 2**63 - 1, None]
    decimals = [Decimal("15.000000"), Decimal("-0.000001"), Decimal("1E+3"), None, Decimal(0)]
    flags = [True, False, None]
    sql = "SELECT %s::text[], %s::bigint[], %s::numeric[], %s::boolean[]"
    params = [
        texts_array(TRICKY_TEXTS),
        numbers_array(numbers),
        numbers_array(decimals),
        bools_array(flags),
    ]
    if binary:  # as ingest sends its insert
        rows = execute_binary(sql.replace("%s", "%b"), params)
    else:
        (rows,) = pipelined([(sql, params)])
    ((texts, ints, numerics, bools),) = rows
    assert texts == TRICKY_TEXTS
    assert ints == numbers
    assert numerics == decimals
    assert bools == flags


def test_an_empty_column_is_an_empty_array() -> None:
    ((row,),) = pipelined([("SELECT cardinality(%s::text[])", [texts_array([])])])
    assert row == (0,)


def test_statements_run_often_are_prepared_on_the_connection() -> None:
    """DATABASE_PREPARE_THRESHOLD (5 by default): after that many runs PostgreSQL keeps
    the statement prepared, and stops parsing and planning it for every batch."""
    statement = "SELECT %s::bigint + 41 AS prepared_probe"

    def prepared() -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_prepared_statements WHERE statement LIKE %s",
                ["%prepared_probe%"],
            )
            return int(cursor.fetchone()[0])

    assert connection.connection.prepare_threshold == 5
    for run in range(1, 7):
        assert execute_binary(statement, [run]) == [(run + 41,)]
        pipelined([(statement, [run])])
    assert prepared() == 1
