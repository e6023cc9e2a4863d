"""The building blocks every write to credits shares: amounts, causes, debits, and the
in-memory draw-down of an account's grants in the documented order."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

from django.db import connection
from django.utils import timezone

from ledger.errors import InvalidAmount
from ledger.models import (
    CREDIT_QUANTUM,
    ZERO,
    Account,
    CreditGrant,
    EntryKind,
    GrantStatus,
    Hold,
    LedgerEntry,
    LedgerOperation,
    draw_down_key,
)
from ledger.selectors import grant_is_usable
from ledger.sql import Statement, numbers_array, pipelined, texts_array

# --- the account lock and its live grants, as statements a caller can pipeline --------

LOCK_ACCOUNT_SQL = "SELECT id, held FROM ledger_account WHERE id = %s FOR UPDATE"
# What the draw-down reads of a grant; the other fields are loaded if touched.
GRANT_FIELDS = (
    "id",
    "account_id",
    "amount",
    "remaining",
    "category",
    "category_rank",
    "priority",
    "effective_at",
    "expires_at",
    "applies_to",
    "workspace",
    "status",
)
LOCK_GRANTS_SQL = f"""
    SELECT {", ".join(GRANT_FIELDS)} FROM ledger_creditgrant
    WHERE account_id = %s AND status = 'active' AND remaining > 0
    ORDER BY id FOR UPDATE
"""


def instance_from_row(model: type[Any], fields: Sequence[str], row: Sequence[Any]) -> Any:
    return model.from_db(connection.alias, list(fields), list(row))


def locked_account(account_id: int, rows: Sequence[Sequence[Any]]) -> Account:
    """The account ``LOCK_ACCOUNT_SQL`` returned, or DoesNotExist."""
    if not rows:
        raise Account.DoesNotExist(f"account {account_id} does not exist")
    return instance_from_row(Account, ["id", "held"], rows[0])


def grants_from_rows(rows: Sequence[Sequence[Any]]) -> list[CreditGrant]:
    return [instance_from_row(CreditGrant, GRANT_FIELDS, row) for row in rows]


@dataclass(frozen=True)
class Cause:
    type: str
    id: str = ""


@dataclass
class Debit:
    """What a consumption or capture did: credits taken from grants and overage."""

    operation: LedgerOperation
    consumed: Decimal = ZERO
    overage: Decimal = ZERO
    entries: list[LedgerEntry] = field(default_factory=list)


@dataclass(frozen=True)
class HoldDecision:
    allowed: bool
    hold: Hold | None
    available: Decimal
    # Rows returned by the caller's record statement (see ledger.holds.Record).
    recorded: list[tuple[Any, ...]] = field(default_factory=list)


def credits(value: Decimal | int | str, *, param: str = "amount") -> Decimal:
    """Parse a credit amount: exact, at most 6 decimal places, never a float."""
    if isinstance(value, float):
        raise InvalidAmount(f"{param} must be a decimal string, not a float", param=param)
    try:
        amount = Decimal(value)
    except ArithmeticError as exc:
        raise InvalidAmount(f"{param} must be a number, not {value!r}", param=param) from exc
    if not amount.is_finite():
        raise InvalidAmount(f"{param} must be a finite number", param=param)
    if amount != amount.quantize(CREDIT_QUANTUM):
        raise InvalidAmount(f"{param} has more than 6 decimal places: {value}", param=param)
    return amount.quantize(CREDIT_QUANTUM)


def debit_from_operation(operation: LedgerOperation) -> Debit:
    entries = list(
        operation.entries.filter(kind__in=[EntryKind.CONSUME, EntryKind.OVERAGE]).order_by("pk")
    )
    consumed = -sum((e.credits for e in entries if e.kind == EntryKind.CONSUME), ZERO)
    overage = -sum((e.credits for e in entries if e.kind == EntryKind.OVERAGE), ZERO)
    return Debit(operation=operation, consumed=consumed, overage=overage, entries=entries)


@dataclass(frozen=True)
class DebitRequest:
    amount: Decimal
    cause: Cause
    meter: str = ""
    workspace: str | None = None
    # When the usage happened: it draws on the grants usable then (default: now).
    at: datetime | None = None


def non_negative(amount: Decimal | str) -> Decimal:
    value = credits(amount)
    if value < 0:
        raise InvalidAmount("amount must not be negative", param="amount")
    return value


class Drawer:
    """An account's live grants, locked and read once, drawn down in memory.

    The caller holds the account lock; ``flush`` writes every change at once.
    """

    def __init__(
        self,
        account: Account,
        operation: LedgerOperation | None,
        at: datetime,
        *,
        grants: list[CreditGrant] | None = None,
        keep_entries: bool = True,
    ) -> None:
        """``grants``: the account's live grants if the caller already locked and read
        them (in primary-key order). ``keep_entries=False``: the debits' entries are
        written as rows and not handed back (``Debit.entries`` stays empty); a batch of
        thousands of debits whose caller reads only the amounts builds no model instance
        per entry."""
        self.account = account
        self.keep_entries = keep_entries
        self.rows: list[EntryRow] = []
        self.operation = operation
        self.at = at
        if grants is None:
            grants = list(
                CreditGrant.objects.filter(
                    account=account, status=GrantStatus.ACTIVE, remaining__gt=0
                )
                .order_by("pk")
                .select_for_update()
            )
        self.grants = grants
        self.touched: dict[int, CreditGrant] = {}
        self.entries: list[LedgerEntry] = []
        self._usable: dict[tuple[str | None, str | None, datetime], list[CreditGrant]] = {}
        self._ordered: list[CreditGrant] | None = None

    def debit(
        self,
        request: DebitRequest,
        *,
        operation: LedgerOperation | None = None,
        at: datetime | None = None,
    ) -> Debit:
        operation = operation or self.operation
        assert operation is not None
        at = at or request.at or self.at
        # Which grants may pay, in draw-down order, depends only on the scope and the
        # time: worked out once per batch, not per debit. A grant drawn to zero stays in
        # the list and is skipped.
        scope = (request.meter, request.workspace, at)
        usable = self._usable.get(scope)
        if usable is None:
            usable = self._usable[scope] = [
                g
                for g in self._in_order()
                if grant_is_usable(g, request.meter, request.workspace, at)
            ]
        left = min(request.amount, self._available(usable, request))
        debit = Debit(operation=operation)
        for grant in usable:
            if left <= 0:
                break
            if grant.remaining <= 0:
                continue
            take = min(grant.remaining, left)
            grant.remaining -= take
            if grant.remaining == 0:
                grant.status = GrantStatus.DEPLETED
            self.touched[grant.pk] = grant
            self._record(operation, EntryKind.CONSUME, grant.pk, -take, request, debit)
            left -= take
            debit.consumed += take
        debit.overage = request.amount - debit.consumed
        if debit.overage > 0:
            self._record(operation, EntryKind.OVERAGE, None, -debit.overage, request, debit)
        self.entries.extend(debit.entries)
        return debit

    def _record(
        self,
        operation: LedgerOperation,
        kind: str,
        grant_id: int | None,
        credits: Decimal,
        request: DebitRequest,
        debit: Debit,
    ) -> None:
        if self.keep_entries:
            debit.entries.append(debit_entry(operation, kind, grant_id, credits, request))
        else:
            self.rows.append(EntryRow(operation.pk, kind, grant_id, credits, request))

    def _in_order(self) -> list[CreditGrant]:
        if self._ordered is None:
            self._ordered = sorted(self.grants, key=draw_down_key)
        return self._ordered

    def _available(self, usable: list[CreditGrant], request: DebitRequest) -> Decimal:
        """What the debit may take: open holds reserve credits of the grants usable now,
        so late usage drawing on grants that have since expired is not held back by them."""
        total = sum((g.remaining for g in usable), ZERO)
        now = timezone.now()
        current = (
            total
            if request.at is None
            else sum(
                (
                    g.remaining
                    for g in usable
                    if grant_is_usable(g, request.meter, request.workspace, now)
                ),
                ZERO,
            )
        )
        return max(ZERO, total - min(self.account.held, current))

    def flush(self) -> None:
        """Write the grants drawn on and the entries, in one round trip."""
        now = timezone.now()
        statements = []
        if self.touched:
            statements.append(grants_update(list(self.touched.values())))
        if self.rows:
            statements.append(entry_rows_insert(self.account.pk, now, self.rows))
        if self.entries:
            statements.append(entries_insert(self.account.pk, now, self.entries))
        if not statements:
            return
        results = pipelined(statements)
        if self.entries:
            entries_saved(self.entries, results[-1])


# --- set-based writes: one statement for any number of rows -----------------------------
#
# bulk_create and bulk_update build per-row SQL and CASE expressions in Python, which costs
# more than the rest of a batch; these send one array per column instead.

_GRANTS_UPDATE = """
    UPDATE ledger_creditgrant AS g SET remaining = v.remaining, status = v.status
    FROM unnest(%s::bigint[], %s::numeric[], %s::text[]) AS v(id, remaining, status)
    WHERE g.id = v.id
"""

_ENTRIES_INSERT = """
    INSERT INTO ledger_ledgerentry (operation_id, account_id, kind, grant_id, hold_id, credits,
                                    held, cause_type, cause_id, meter, workspace, created_at)
    SELECT v.operation_id, %s, v.kind, v.grant_id, v.hold_id, v.credits, v.held, v.cause_type,
           v.cause_id, v.meter, v.workspace, %s
    FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::bigint[], %s::numeric[],
                %s::numeric[], %s::text[], %s::text[], %s::text[], %s::text[])
        WITH ORDINALITY AS v(operation_id, kind, grant_id, hold_id, credits, held, cause_type,
                             cause_id, meter, workspace, n)
    ORDER BY v.n
    RETURNING id
"""


_ENTRY_ROWS_INSERT = """
    INSERT INTO ledger_ledgerentry (operation_id, account_id, kind, grant_id, credits, held,
                                    cause_type, cause_id, meter, workspace, created_at)
    SELECT v.operation_id, %s, v.kind, v.grant_id, v.credits, 0, v.cause_type, v.cause_id,
           v.meter, v.workspace, %s
    FROM unnest(%s::bigint[], %s::text[], %s::bigint[], %s::numeric[], %s::text[], %s::text[],
                %s::text[], %s::text[])
        WITH ORDINALITY AS v(operation_id, kind, grant_id, credits, cause_type, cause_id,
                             meter, workspace, n)
    ORDER BY v.n
"""


class EntryRow(NamedTuple):
    """A debit's consume or overage entry, not yet written (see ``keep_entries``)."""

    operation_id: int
    kind: str
    grant_id: int | None
    credits: Decimal
    request: DebitRequest


def grants_update(grants: list[CreditGrant]) -> Statement:
    """Write ``remaining`` and ``status`` of the grants."""
    return (
        _GRANTS_UPDATE,
        [[g.pk for g in grants], [g.remaining for g in grants], [g.status for g in grants]],
    )


def entries_insert(account_id: int, at: datetime, entries: list[LedgerEntry]) -> Statement:
    """Insert the entries in order; returns their ids (see ``entries_saved``)."""
    for entry in entries:
        entry.created_at = at
    return (
        _ENTRIES_INSERT,
        [
            account_id,
            at,
            numbers_array([e.operation_id for e in entries]),
            texts_array([e.kind for e in entries]),
            numbers_array([e.grant_id for e in entries]),
            numbers_array([e.hold_id for e in entries]),
            numbers_array([e.credits for e in entries]),
            numbers_array([e.held for e in entries]),
            texts_array([e.cause_type for e in entries]),
            texts_array([e.cause_id for e in entries]),
            texts_array([e.meter for e in entries]),
            texts_array([e.workspace for e in entries]),
        ],
    )


def entry_rows_insert(account_id: int, at: datetime, rows: list[EntryRow]) -> Statement:
    """Insert debit entries in order, returning nothing."""
    return (
        _ENTRY_ROWS_INSERT,
        [
            account_id,
            at,
            numbers_array([r.operation_id for r in rows]),
            texts_array([r.kind for r in rows]),
            numbers_array([r.grant_id for r in rows]),
            numbers_array([r.credits for r in rows]),
            texts_array([r.request.cause.type for r in rows]),
            texts_array([r.request.cause.id for r in rows]),
            texts_array([r.request.meter for r in rows]),
            texts_array([r.request.workspace for r in rows]),
        ],
    )


def entries_saved(entries: list[LedgerEntry], ids: Sequence[Sequence[Any]]) -> None:
    for entry, (pk, *_) in zip(entries, ids, strict=True):
        entry.pk = pk
        entry._state.adding = False
        entry._state.db = connection.alias


# Built positionally: Django's keyword path costs about three times as much per entry, and
# rating writes one or more entries per event.
_ENTRY_FIELDS = [f.attname for f in LedgerEntry._meta.concrete_fields]
assert _ENTRY_FIELDS == [
    "id",
    "operation_id",
    "account_id",
    "kind",
    "grant_id",
    "hold_id",
    "credits",
    "held",
    "cause_type",
    "cause_id",
    "meter",
    "workspace",
    "created_at",
], "LedgerEntry's columns changed: update debit_entry"
_new_entry: Callable[..., LedgerEntry] = LedgerEntry  # positional, column order above


def debit_entry(
    operation: LedgerOperation,
    kind: str,
    grant_id: int | None,
    credits: Decimal,
    request: DebitRequest,
) -> LedgerEntry:
    """A consume or overage entry of ``request`` (``credits`` signed)."""
    assert operation.pk is not None
    return _new_entry(
        None,
        operation.pk,
        operation.account_id,
        kind,
        grant_id,
        None,
        credits,
        ZERO,
        request.cause.type,
        request.cause.id,
        request.meter,
        request.workspace,
        None,
    )
