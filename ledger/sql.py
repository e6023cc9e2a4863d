"""Statements with array parameters, sent the way psycopg sends them fastest.

Django's cursors bind parameters on the client: a 1,000-element array is rendered as
escaped text in Python, which costs more than PostgreSQL's work to insert its rows. These
helpers run on Django's connection, inside its current transaction, with server-side
binding, and raise Django's database errors (``django.db.OperationalError`` and so on)
as its own cursors do. Django's query log does not list what they run.

psycopg itself dumps a list parameter element by element in Python (a call and, for text,
a quoting check per element): about 1.5 ms of CPU per 1,000 numbers. The ``*_array``
helpers below render a whole column as one PostgreSQL array literal in a single join,
about a tenth of that, for a parameter the SQL casts (``%s::bigint[]``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any, TypeVar

import psycopg
from django.db import connection
from django.db.models import Model

M = TypeVar("M", bound=Model)

# SQL with %s (a sequence) or %(name)s (a mapping) parameters.
Statement = tuple[str, Sequence[Any] | Mapping[str, Any]]


def execute_binary(sql: str, params: Sequence[Any] | Mapping[str, Any]) -> list[tuple[Any, ...]]:
    """Run one statement with binary parameters and results; its rows, if it has any."""
    connection.ensure_connection()
    with connection.wrap_database_errors, psycopg.Cursor(connection.connection) as cursor:
        cursor.execute(sql, params, binary=True)
        return cursor.fetchall() if cursor.description else []


def pipelined(
    statements: Sequence[Statement], *, binary: bool = False
) -> list[list[tuple[Any, ...]]]:
    """Run the statements in one round trip, in order; each one's rows (with ``binary``,
    parameters and results in binary, as ``execute_binary``)."""
    connection.ensure_connection()
    pg = connection.connection
    cursors = [psycopg.Cursor(pg) for _ in statements]
    try:
        with connection.wrap_database_errors, pg.pipeline():
            for cursor, (sql, params) in zip(cursors, statements, strict=True):
                cursor.execute(sql, params, binary=binary)
        return [cursor.fetchall() if cursor.description else [] for cursor in cursors]
    finally:
        for cursor in cursors:
            cursor.close()


def numbers_array(values: Iterable[int | Decimal | None]) -> str:
    """``[1, None, Decimal("2.5")]`` -> ``{1,NULL,2.5}``, for a ``bigint[]`` or ``numeric[]``
    parameter. Not for bools (``str(True)`` is not a number)."""
    return "{" + ",".join(["NULL" if v is None else str(v) for v in values]) + "}"


def texts_array(values: Iterable[str | None]) -> str:
    """``['a"b', None]`` -> ``{"a\\"b",NULL}``, for a ``text[]`` parameter: every element
    quoted, its backslashes and double quotes escaped, as PostgreSQL's array input reads
    them; so a comma, a brace, white space or the word NULL stay text."""
    return (
        "{"
        + ",".join(
            [
                "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
                for v in values
            ]
        )
        + "}"
    )


def bools_array(values: Iterable[bool | None]) -> str:
    """``[True, False, None]`` -> ``{t,f,NULL}``, for a ``boolean[]`` parameter."""
    return "{" + ",".join(["NULL" if v is None else "t" if v else "f" for v in values]) + "}"


# --- model instances from hand-written SELECTs ------------------------------------------
#
# Compiling a queryset costs more Python than running it when it is small and runs once
# per batch (a select_related of four models: about 1.5 ms, where PostgreSQL takes 0.1).
# A statement written once with :func:`model_columns` and read back with
# :func:`model_instance` gives the instances the queryset would: the same fields, their
# converters applied (a JSONField's text decoded), related instances set as
# ``select_related`` sets them.

_Converter = tuple[int, Any, Any]
_LOADERS: dict[type[Model], tuple[list[str], list[_Converter]]] = {}


def model_columns(model: type[Model], alias: str) -> str:
    """The model's concrete columns, in field order, as ``alias."column", ...``."""
    return ", ".join(f'{alias}."{f.column}"' for f in model._meta.concrete_fields)


def _loader(model: type[M]) -> tuple[list[str], list[_Converter]]:
    loader = _LOADERS.get(model)
    if loader is None:
        fields = model._meta.concrete_fields
        converters = [
            (i, convert, field.cached_col)
            for i, field in enumerate(fields)
            for convert in field.get_db_converters(connection)
        ]
        loader = _LOADERS[model] = ([f.attname for f in fields], converters)
    return loader


def model_instance(model: type[M], row: Sequence[Any], start: int = 0) -> tuple[M, int]:
    """An instance from ``row[start:]``, read from a SELECT of :func:`model_columns`;
    and where the next model's columns start."""
    names, converters = _loader(model)
    end = start + len(names)
    values = list(row[start:end])
    for i, convert, column in converters:
        values[i] = convert(values[i], column, connection)
    return model.from_db(connection.alias, names, values), end
