"""The array statements' helpers run in Django's transaction and raise Django's errors, so
callers that tell a lost connection from a bad row (rating, ingest) see what they expect."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction

from ledger.sql import execute_binary, pipelined

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
