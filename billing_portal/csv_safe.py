"""CSV that spreadsheets open as data: text never turns into a formula.

Excel, LibreOffice and Google Sheets run a cell that starts with = + - or @ as a formula
(tab and carriage return are skipped before that test by some of them), so a value a
customer controls, such as an event identifier or a workspace, could make an export run
``=HYPERLINK(...)`` or a DDE command on the machine of whoever opens it. Such text cells
are written with a leading single quote, as OWASP recommends ("CSV Injection"). Numbers
are passed as numbers and written as they are, so -5 stays -5.

Every CSV the product writes goes through :class:`SafeWriter`.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from decimal import Decimal
from typing import Any, Protocol

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

Cell = str | int | Decimal | None


class Writable(Protocol):
    def write(self, value: str, /) -> Any: ...


def cell_text(value: Cell) -> str:
    """The text written for one cell; a Decimal in plain notation, never 1E+4."""
    if value is None:
        return ""
    if isinstance(value, str):
        return f"'{value}" if value.startswith(FORMULA_STARTS) else value
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, int):
        return str(value)
    # A float (or a date) here would be written however str() chose; format it first.
    raise TypeError(f"format {type(value).__name__} as text or a Decimal before writing it")


class SafeWriter:
    """csv.writer whose text cells cannot start a formula; numbers are left as numbers."""

    def __init__(self, stream: Writable, **fmtparams: Any) -> None:
        self._writer = csv.writer(stream, **fmtparams)

    def writerow(self, row: Iterable[Cell]) -> Any:
        return self._writer.writerow([cell_text(cell) for cell in row])
