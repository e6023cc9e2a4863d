"""Holds, captures and releases, applied in batches per account.

The calls of a process that arrive while the account's previous transaction runs are
applied together in the next one (``ledger.combiner``), in arrival order, each decided
on the running numbers, so a hard stop stays exact. A caller already inside a
transaction applies its request alone, in place.

A batch costs four round trips to PostgreSQL whatever its size: the account row lock,
one pipelined read (its live grants and the holds the batch touches, locked in the
ledger's order: account, grants, holds), one pipelined write, and the commit. The batch
is taken from the line once the account lock is held, so on a busy account the callers
that queued while the lock was busy all join it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from django.db import connection, transaction
from django.utils import timezone

from ledger import combiner
from ledger.drawing import (
    LOCK_ACCOUNT_SQL,
    LOCK_GRANTS_SQL,
    Cause,
    Debit,
    DebitRequest,
    Drawer,
    HoldDecision,
    debit_from_operation,
    entries_insert,
    entries_saved,
    grants_from_rows,
    grants_update,
    instance_from_row,
    locked_account,
    non_negative,
)
from ledger.errors import HoldNotOpen, IdempotencyConflict, LedgerError
from ledger.models import (
    ZERO,
    Account,
    CauseType,
    CreditGrant,
    EntryKind,
    Hold,
    HoldStatus,
    LedgerEntry,
    LedgerOperation,
    OperationKind,
)
from ledger.selectors import grant_is_usable
from ledger.sql import Statement, pipelined


@dataclass(frozen=True)
class _HoldRequest:
    amount: Decimal
    expires_at: datetime
    actor: str
    allowance: Decimal | None
    meter: str
    workspace: str | None
    idempotency_key: str | None
    record: Record | None = None


# A caller's own row about the decision (an authorization, say), written in the hold's
# transaction: built from the decision, it returns the statement to run and its
# parameters; the rows it returns are handed back in ``HoldDecision.recorded``.
Record = Callable[[HoldDecision], tuple[str, Sequence[Any]]]


@dataclass(frozen=True)
class _CaptureRequest:
    hold_id: int
    amount: Decimal
    cause: Cause
    actor: str
    at: datetime | None


@dataclass(frozen=True)
class _ReleaseRequest:
    hold_id: int
    actor: str
    reason: str
    status: str  # released, or expired when the expiry sweep releases it


_HoldCall = _HoldRequest | _CaptureRequest | _ReleaseRequest


def hold_create(
    *,
    account: Account,
    amount: Decimal | str,
    expires_at: datetime,
    actor: str,
    allowance: Decimal | None = ZERO,
    meter: str = "",
    workspace: str | None = None,
    idempotency_key: str | None = None,
    record: Record | None = None,
) -> HoldDecision:
    """Reserve credits if the policy allows.

    ``allowance`` is how far below zero the policy lets available go: ``0`` for a hard
    stop, a share of the allowance for a soft limit, ``None`` for no limit (postpaid).
    A denied hold writes nothing of the ledger's. The same ``idempotency_key`` again
    returns the first hold. ``record`` writes the caller's own row about the decision in
    the same transaction (see ``Record``), so the two are committed together.
    """
    request = _HoldRequest(
        non_negative(amount),
        expires_at,
        actor,
        allowance,
        meter,
        workspace,
        idempotency_key,
        record,
    )
    result = _call(account.pk, request)
    assert isinstance(result, HoldDecision)
    return result


def hold_capture(
    *, hold: Hold, amount: Decimal | str, cause: Cause, actor: str, at: datetime | None = None
) -> Debit:
    """Charge the actual credits and release the rest of the hold, exactly once.

    Above the hold, the extra comes only from credits nobody else has reserved; what is
    left is overage, which the plan's policy bills (postpaid) or reports as leakage.
    """
    request = _CaptureRequest(hold.pk, non_negative(amount), cause, actor, at)
    result = _call(hold.account_id, request)
    assert isinstance(result, Debit)
    return result


def hold_release(*, hold: Hold, actor: str, reason: str = "released") -> Hold:
    return _release(hold, actor, reason, HoldStatus.RELEASED)


def holds_expire(*, now: datetime | None = None, limit: int = 1000) -> int:
    """Release open holds past expires_at. Safe to run twice or from two workers."""
    now = now or timezone.now()
    due = list(
        Hold.objects.filter(status=HoldStatus.OPEN, expires_at__lte=now)
        .order_by("expires_at")
        .values_list("pk", flat=True)[:limit]
    )
    count = 0
    for hold in Hold.objects.filter(pk__in=due).order_by("pk"):
        try:
            result = _release(hold, "system:expiry", "expired", HoldStatus.EXPIRED)
        except HoldNotOpen:
            continue  # captured meanwhile
        count += result.status == HoldStatus.EXPIRED
    return count


def _release(hold: Hold, actor: str, reason: str, status: str) -> Hold:
    result = _call(hold.account_id, _ReleaseRequest(hold.pk, actor, reason, status))
    assert isinstance(result, Hold)
    return result


def _call(account_id: int, request: _HoldCall) -> object:
    if transaction.get_connection().in_atomic_block:
        result = holds_apply(account_id, lambda: [request])[0]
    else:
        result = combiner.submit(account_id, request, holds_apply)
    if isinstance(result, BaseException):
        raise result
    return result


def holds_apply(account_id: int, take: Callable[[], list[_HoldCall]]) -> list[object]:
    """Apply a batch of one account's hold calls in one transaction, in order.

    ``take`` gives the requests once the account is locked, so the calls that queued
    while this transaction waited for the lock join it. Returns one result per request;
    a request that cannot be done gets its error as its result and changes nothing, and
    the others go ahead.
    """
    with transaction.atomic():
        account = _lock_account(account_id)
        requests = take()
        batch = _Batch.read(account, requests)
        results = [batch.apply(request) for request in requests]
        batch.write()
    return results


def _lock_account(account_id: int) -> Account:
    # Pipelined, so the transaction's BEGIN travels with it: one round trip, not two.
    [rows] = pipelined([(LOCK_ACCOUNT_SQL, [account_id])])
    return locked_account(account_id, rows)


# --- one batch ------------------------------------------------------------------------

_HOLD_FIELDS = tuple(f.attname for f in Hold._meta.concrete_fields)

_LOCK_HOLDS = f"""
    SELECT {", ".join(_HOLD_FIELDS)} FROM ledger_hold
    WHERE account_id = %s AND id = ANY(%s::bigint[]) ORDER BY id FOR UPDATE
"""
_HOLDS_BY_KEY = f"""
    SELECT {", ".join(_HOLD_FIELDS)} FROM ledger_hold
    WHERE account_id = %s AND idempotency_key = ANY(%s::text[])
"""
# Ids for the batch's new holds and operations (one operation per request).
_NEW_IDS = """
    SELECT CASE WHEN n <= %s THEN nextval(pg_get_serial_sequence('ledger_hold', 'id')) END,
           nextval(pg_get_serial_sequence('ledger_ledgeroperation', 'id'))
    FROM generate_series(1, %s) AS n
"""

_INSERT_HOLDS = """
    INSERT INTO ledger_hold (id, account_id, credits, status, meter, workspace, expires_at,
                             idempotency_key, created_at)
    SELECT v.id, %s, v.credits, 'open', v.meter, v.workspace, v.expires_at, v.key, %s
    FROM unnest(%s::bigint[], %s::numeric[], %s::text[], %s::text[], %s::timestamptz[],
                %s::text[]) AS v(id, credits, meter, workspace, expires_at, key)
"""
_INSERT_OPERATIONS = """
    INSERT INTO ledger_ledgeroperation (id, account_id, kind, actor, reason, memo, created_at)
    SELECT v.id, %s, v.kind, v.actor, v.reason, '', %s
    FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::text[]) AS v(id, kind, actor, reason)
"""
_RESOLVE_HOLDS = """
    UPDATE ledger_hold AS h
    SET status = v.status, resolved_at = %s, captured_credits = v.captured
    FROM unnest(%s::bigint[], %s::text[], %s::numeric[]) AS v(id, status, captured)
    WHERE h.id = v.id
"""
_UPDATE_HELD = "UPDATE ledger_account SET held = %s WHERE id = %s"


class _Batch:
    """One transaction's worth of hold calls, decided in memory, written at once."""

    def __init__(self, account: Account, grants: list[CreditGrant], now: datetime) -> None:
        self.account = account
        self.now = now
        self.drawer = Drawer(account, None, now, grants=grants)
        self.holds: dict[int, Hold] = {}  # locked, by pk: the ones captured or released
        self.by_key: dict[str, Hold] = {}  # holds with an idempotency key, old and new
        self.hold_ids: list[int] = []  # allocated for new holds
        self.operation_ids: list[int] = []  # allocated for operations
        self.new_holds: list[Hold] = []
        self.resolved: list[Hold] = []
        self.operations: list[LedgerOperation] = []
        self.entries: list[LedgerEntry] = []  # in the order they happened
        self.captured: dict[int, Debit] = {}
        self.records: list[tuple[HoldDecision, tuple[str, Sequence[Any]]]] = []
        self.held_before = account.held

    @classmethod
    def read(cls, account: Account, requests: Sequence[_HoldCall]) -> _Batch:
        """Lock and read everything the batch touches, and allocate its ids."""
        hold_ids = sorted(
            {r.hold_id for r in requests if isinstance(r, _CaptureRequest | _ReleaseRequest)}
        )
        keys = sorted(
            {
                r.idempotency_key
                for r in requests
                if isinstance(r, _HoldRequest) and r.idempotency_key is not None
            }
        )
        new_holds = sum(isinstance(r, _HoldRequest) for r in requests)
        needs_grants = any(not isinstance(r, _ReleaseRequest) for r in requests)
        account_id = account.pk
        # Only the statements this batch needs, in the lock order: grants, then holds.
        wanted: list[tuple[str, str, Sequence[Any]]] = [
            ("ids", _NEW_IDS, [new_holds, len(requests)]),
        ]
        if needs_grants:
            wanted.append(("grants", LOCK_GRANTS_SQL, [account_id]))
        if hold_ids:
            wanted.append(("holds", _LOCK_HOLDS, [account_id, hold_ids]))
        if keys:
            wanted.append(("keys", _HOLDS_BY_KEY, [account_id, keys]))
        rows = dict(
            zip(
                [name for name, _, _ in wanted],
                pipelined([(sql, params) for _, sql, params in wanted]),
                strict=True,
            )
        )
        grant_rows, hold_rows, key_rows = (rows.get(k, []) for k in ("grants", "holds", "keys"))
        grants = grants_from_rows(grant_rows)
        batch = cls(account, grants, timezone.now())
        batch.holds = {row[0]: instance_from_row(Hold, _HOLD_FIELDS, row) for row in hold_rows}
        for row in key_rows:
            hold = instance_from_row(Hold, _HOLD_FIELDS, row)
            batch.by_key[hold.idempotency_key] = hold
        batch.hold_ids = [row[0] for row in rows["ids"][:new_holds]]
        batch.operation_ids = [row[1] for row in rows["ids"]]
        return batch

    def apply(self, request: _HoldCall) -> object:
        try:
            if isinstance(request, _HoldRequest):
                return self._hold(request)
            if isinstance(request, _CaptureRequest):
                return self._capture(request)
            return self._release(request)
        except LedgerError as error:
            return error

    def _operation(self, kind: str, actor: str, reason: str = "") -> LedgerOperation:
        operation = LedgerOperation(
            pk=self.operation_ids.pop(0),
            account=self.account,
            kind=kind,
            actor=actor,
            reason=reason,
            created_at=self.now,
        )
        self.operations.append(operation)
        return operation

    def _hold(self, request: _HoldRequest) -> HoldDecision:
        decision = self._decide(request)
        if request.record is not None:
            self.records.append((decision, request.record(decision)))
        return decision

    def _decide(self, request: _HoldRequest) -> HoldDecision:
        posted = sum(
            (
                g.remaining
                for g in self.drawer.grants
                if g.remaining > 0
                and grant_is_usable(g, request.meter, request.workspace, self.now)
            ),
            ZERO,
        )
        available = posted - self.account.held
        key = request.idempotency_key
        existing = self.by_key.get(key) if key is not None else None
        if existing is not None:
            if existing.credits != request.amount:
                raise IdempotencyConflict(
                    f"idempotency key {key!r} was already used for a hold of "
                    f"{existing.credits} credits; use a new key for a new hold",
                    param="idempotency_key",
                )
            return HoldDecision(allowed=True, hold=existing, available=available)
        if request.allowance is not None and request.amount > available + request.allowance:
            return HoldDecision(allowed=False, hold=None, available=available)
        hold = Hold(
            pk=self.hold_ids.pop(0),
            account=self.account,
            credits=request.amount,
            meter=request.meter,
            workspace=request.workspace,
            expires_at=request.expires_at,
            idempotency_key=key,
            created_at=self.now,
        )
        hold._state.adding = False
        hold._state.db = connection.alias
        self.new_holds.append(hold)
        if key is not None:
            self.by_key[key] = hold
        operation = self._operation(OperationKind.HOLD, request.actor)
        self._hold_entry(hold, operation, EntryKind.HOLD, request.amount)
        self.account.held += request.amount
        return HoldDecision(allowed=True, hold=hold, available=available - request.amount)

    def _hold_entry(self, hold: Hold, operation: LedgerOperation, kind: str, held: Decimal) -> None:
        self.entries.append(
            LedgerEntry(
                operation=operation,
                account=self.account,
                kind=kind,
                hold=hold,
                held=held,
                cause_type=CauseType.HOLD,
                cause_id=str(hold.pk),
                meter=hold.meter,
                workspace=hold.workspace,
                created_at=self.now,
            )
        )

    def _locked(self, hold_id: int) -> Hold:
        hold = self.holds.get(hold_id)
        if hold is None:
            raise HoldNotOpen(f"hold {hold_id} does not exist on this account", param="hold")
        return hold

    def _resolve(self, hold: Hold, operation: LedgerOperation, status: str, kind: str) -> None:
        self._hold_entry(hold, operation, kind, -hold.credits)
        self.account.held -= hold.credits
        hold.status = status
        hold.resolved_at = self.now
        self.resolved.append(hold)

    def _capture(self, request: _CaptureRequest) -> Debit:
        hold = self._locked(request.hold_id)
        if hold.status == HoldStatus.CAPTURED:
            if hold.pk in self.captured:
                return self.captured[hold.pk]
            operation = LedgerOperation.objects.get(entries__hold=hold, kind=OperationKind.CAPTURE)
            return debit_from_operation(operation)
        _require_open(hold)
        operation = self._operation(OperationKind.CAPTURE, request.actor)
        hold.captured_credits = request.amount
        self._resolve(hold, operation, HoldStatus.CAPTURED, EntryKind.CAPTURE)
        # The hold is already out of `held`, so what it reserved counts as available.
        debit = self.drawer.debit(
            DebitRequest(request.amount, request.cause, hold.meter, hold.workspace),
            operation=operation,
            at=request.at or self.now,
        )
        self.entries.extend(debit.entries)
        self.captured[hold.pk] = debit
        return debit

    def _release(self, request: _ReleaseRequest) -> Hold:
        hold = self._locked(request.hold_id)
        if hold.status in (HoldStatus.RELEASED, HoldStatus.EXPIRED):
            return hold  # a retry: already done
        _require_open(hold)
        operation = self._operation(OperationKind.RELEASE, request.actor, request.reason)
        self._resolve(hold, operation, request.status, EntryKind.RELEASE)
        return hold

    def write(self) -> None:
        """Every change of the batch in one round trip."""
        account_id = self.account.pk
        statements: list[Statement] = []
        if self.new_holds:
            holds = self.new_holds
            statements.append(
                (
                    _INSERT_HOLDS,
                    [
                        account_id,
                        self.now,
                        [h.pk for h in holds],
                        [h.credits for h in holds],
                        [h.meter for h in holds],
                        [h.workspace for h in holds],
                        [h.expires_at for h in holds],
                        [h.idempotency_key for h in holds],
                    ],
                )
            )
        if self.operations:
            ops = self.operations
            statements.append(
                (
                    _INSERT_OPERATIONS,
                    [
                        account_id,
                        self.now,
                        [o.pk for o in ops],
                        [o.kind for o in ops],
                        [o.actor for o in ops],
                        [o.reason for o in ops],
                    ],
                )
            )
        entries = self.entries
        if entries:
            entries_at = len(statements)
            statements.append(entries_insert(account_id, self.now, entries))
        grants = list(self.drawer.touched.values())
        if grants:
            statements.append(grants_update(grants))
        if self.resolved:
            holds = self.resolved
            statements.append(
                (
                    _RESOLVE_HOLDS,
                    [
                        self.now,
                        [h.pk for h in holds],
                        [h.status for h in holds],
                        [h.captured_credits for h in holds],
                    ],
                )
            )
        if self.account.held != self.held_before:
            statements.append((_UPDATE_HELD, [self.account.held, account_id]))
        records_at = len(statements)
        statements.extend(statement for _, statement in self.records)
        if not statements:
            return
        results = pipelined(statements)
        for (decision, _), rows in zip(self.records, results[records_at:], strict=True):
            decision.recorded.extend(rows)
        if entries:
            entries_saved(entries, results[entries_at])
        for operation in self.operations:
            operation._state.adding = False


def _require_open(hold: Hold) -> None:
    if hold.status != HoldStatus.OPEN:
        raise HoldNotOpen(f"hold {hold.pk} is already {hold.status}", param="hold")


__all__ = ["hold_capture", "hold_create", "hold_release", "holds_apply", "holds_expire"]
