"""Statements with array parameters, sent the way psycopg sends them fastest.

Django's cursors bind parameters on the client: a 1,000-element array is rendered as
escaped text in Python, which costs more than PostgreSQL's work to insert its rows. These
helpers run on Django's connection, inside its current transaction, with server-side
binding, and raise Django's database errors (``django.db.OperationalError`` and so on)
as its own cursors do. Django's query log does not list what they run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from django.db import connection

# SQL with %s (a sequence) or %(name)s (a mapping) parameters.
Statement = tuple[str, Sequence[Any] | Mapping[str, Any]]


def execute_binary(sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
    """Run one statement with binary parameters and results; its rows, if it has any."""
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(sql, params, binary=True)
        return cursor.fetchall() if cursor.description else []


def pipelined(statements: Sequence[Statement]) -> list[list[tuple[Any, ...]]]:
    """Run the statements in one round trip, in order; each one's rows."""
    connection.ensure_connection()
    pg = connection.connection
    cursors = [psycopg.Cursor(pg) for _ in statements]
    try:
        with connection.wrap_database_errors, pg.pipeline():
            for cursor, (sql, params) in zip(cursors, statements, strict=True):
                cursor.execute(sql, params)
        return [cursor.fetchall() if cursor.description else [] for cursor in cursors]
    finally:
        for cursor in cursors:
            cursor.close()
