"""Combine concurrent writes to one account into one transaction.

Every write to an account commits under that account's row lock, so on a hot customer
calls queue on the lock and the rate is bounded by one durable commit per call. Here the
calls of one process that arrive while a transaction on the same account is running wait
in line; when it ends, the first of them leads the next transaction and applies the whole
line in arrival order (one lock, one read of the grants, multi-row writes, one commit)
and hands each caller its own answer. Decisions are still made one request at a time on
the running numbers, so a hard stop stays exact.

Only calls outside a transaction are combined: a caller inside ``transaction.atomic``
must see its write in its own transaction, so it applies its request alone, in place.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

# A batch is one transaction; capping it bounds how long its lock is held and how long
# the callers at the end of the line wait for the ones at the front.
MAX_BATCH = 64


class _Slot:
    __slots__ = ("done", "error", "lead", "request", "result")

    def __init__(self, request: object) -> None:
        self.request = request
        self.result: object = None
        self.error: BaseException | None = None
        self.lead = False  # woken to lead the next batch rather than with an answer
        self.done = threading.Event()

    def outcome(self) -> object:
        if self.error is not None:
            raise self.error
        return self.result


class _Line:
    """The calls waiting for one account in this process."""

    __slots__ = ("__weakref__", "busy", "mutex", "pending")

    def __init__(self) -> None:
        self.mutex = threading.Lock()
        self.pending: list[_Slot] = []
        self.busy = False  # a batch is being applied; invariant: not busy -> nothing pending


# A line lives as long as a caller holds it: idle accounts cost nothing.
_lines: weakref.WeakValueDictionary[int, _Line] = weakref.WeakValueDictionary()
_lines_mutex = threading.Lock()


# Applies a batch in one transaction. It calls ``take`` once, after it has locked the
# account, and gets the requests to apply: whatever queued while it waited for the lock
# joins the batch. It returns one result per request, in order, where a result may be an
# exception meant for that request's caller alone.
Take = Callable[[], list[Any]]
Apply = Callable[[int, Take], list[object]]


def submit(account_id: int, request: object, apply: Apply) -> object:
    """Apply ``request`` to the account, combined with whatever else is waiting."""
    with _lines_mutex:
        line = _lines.get(account_id)
        if line is None:
            line = _lines[account_id] = _Line()
    slot = _Slot(request)
    with line.mutex:
        line.pending.append(slot)
        leads = not line.busy
        line.busy = True
    if not leads:
        slot.done.wait()
        if not slot.lead:
            return slot.outcome()
    _lead(account_id, line, slot, apply)
    return slot.outcome()


def _lead(account_id: int, line: _Line, own: _Slot, apply: Apply) -> None:
    batch: list[_Slot] = []

    def take() -> list[Any]:
        with line.mutex:
            batch.extend(line.pending[:MAX_BATCH])
            del line.pending[:MAX_BATCH]
        return [slot.request for slot in batch]

    successor: _Slot | None = None
    try:
        _answer(account_id, batch, take, apply)
    except BaseException as error:  # interrupted: nobody waits for an answer forever
        for slot in batch:
            if slot.result is None and slot.error is None:
                slot.error = error
        raise
    finally:
        with line.mutex:
            if own not in batch:  # failed before taking anything: own is still queued
                line.pending.remove(own)
            if line.pending:
                successor = line.pending[0]
                successor.lead = True
            else:
                line.busy = False
        for slot in batch:
            slot.done.set()
        if successor is not None:
            successor.done.set()


def _answer(account_id: int, batch: list[_Slot], take: Take, apply: Apply) -> None:
    try:
        results = apply(account_id, take)
    except Exception as error:
        if len(batch) <= 1:
            for slot in batch:
                slot.error = error
            if not batch:
                raise
            return
        # The transaction failed as a whole (a lost connection, a constraint): give each
        # request its own transaction so one caller's failure is not everyone's.
        for slot in batch:
            _answer(account_id, [slot], _only(slot), apply)
        return
    for slot, result in zip(batch, results, strict=True):
        if isinstance(result, BaseException):
            slot.error = result
        else:
            slot.result = result


def _only(slot: _Slot) -> Take:
    return lambda: [slot.request]
