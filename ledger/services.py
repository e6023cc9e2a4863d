"""Every write to credits: one transaction each, locks in one fixed order.

Holds, captures and releases live in ``ledger.holds`` (batched per account) and are
re-exported here.

Lock order: the account row, then the grants touched (primary-key order), then the hold.
Every writer of an account's grants or holds takes the account lock first, so two
writers on one customer queue there and writers on different customers never meet.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from djmoney.money import Money

from ledger import drawing
from ledger.actors import Actor
from ledger.drawing import (  # re-exported: callers use them from here
    Cause,
    Debit,
    DebitRequest,
    Drawer,
    HoldDecision,
    credits,
    debit_from_operation,
    draw_down_key,
    non_negative,
)
from ledger.errors import (  # re-exported: callers catch them from here
    GrantNotActive,
    HoldNotOpen,
    IdempotencyConflict,
    InvalidAmount,
    InvalidRequest,
    LedgerError,
)
from ledger.holds import (  # re-exported: every write to credits is reachable from here
    hold_capture,
    hold_create,
    hold_release,
    holds_expire,
)
from ledger.models import (
    CATEGORY_RANK,
    ZERO,
    Account,
    CauseType,
    CreditGrant,
    EntryKind,
    GrantCategory,
    GrantStatus,
    LedgerEntry,
    LedgerOperation,
    OperationKind,
)
from ledger.signals import credit_grants_created
from ledger.sql import pipelined


def _lock_account(account_id: int) -> Account:
    return Account.objects.select_for_update().get(pk=account_id)


def _operation(
    account: Account,
    kind: str,
    *,
    actor: str,
    reason: str = "",
    memo: str = "",
    description: str = "",
    key: str | None,
) -> LedgerOperation:
    return LedgerOperation.objects.create(
        account=account,
        kind=kind,
        actor=actor,
        reason=reason,
        memo=memo,
        description=description,
        idempotency_key=key,
    )


def _replayed_operation(account: Account, kind: str, key: str | None) -> LedgerOperation | None:
    # Safe without a race: the caller holds the account lock, and the unique constraint
    # on (account, idempotency_key) is the backstop.
    if key is None:
        return None
    operation = LedgerOperation.objects.filter(account=account, idempotency_key=key).first()
    if operation is not None and operation.kind != kind:
        raise IdempotencyConflict(
            f"idempotency key {key!r} was already used for a {operation.kind} operation; "
            "use a new key for a new operation",
            param="idempotency_key",
        )
    return operation


# --- grants ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GrantRequest:
    """One grant to create, as ``credit_grant_create`` takes it (for a batch)."""

    account_id: int
    amount: Decimal
    category: str
    actor: str
    priority: int = 50
    effective_at: datetime | None = None
    expires_at: datetime | None = None
    applies_to: Sequence[str] = ()
    workspace: str | None = None
    cost_basis: Money | None = None
    reason: str = ""
    memo: str = ""
    description: str = ""
    source_type: str = ""
    source_id: str = ""
    idempotency_key: str | None = None
    expired_by_source: bool = False


def credit_grant_create(
    *,
    account: Account,
    amount: Decimal | str,
    category: str,
    actor: str,
    priority: int = 50,
    effective_at: datetime | None = None,
    expires_at: datetime | None = None,
    applies_to: Sequence[str] = (),
    workspace: str | None = None,
    cost_basis: Money | None = None,
    reason: str = "",
    memo: str = "",
    description: str = "",
    source_type: str = "",
    source_id: str = "",
    idempotency_key: str | None = None,
    expired_by_source: bool = False,
) -> CreditGrant:
    (grant,) = credit_grants_create(
        requests=[
            GrantRequest(
                account_id=account.pk,
                amount=credits(amount),
                category=category,
                actor=actor,
                priority=priority,
                effective_at=effective_at,
                expires_at=expires_at,
                applies_to=applies_to,
                workspace=workspace,
                cost_basis=cost_basis,
                reason=reason,
                memo=memo,
                description=description,
                source_type=source_type,
                source_id=source_id,
                idempotency_key=idempotency_key,
                expired_by_source=expired_by_source,
            )
        ]
    )
    return grant


def credit_grants_create(*, requests: Sequence[GrantRequest]) -> list[CreditGrant]:
    """Create grants, each with its operation and its grant entry, one statement each for
    all of them (a batch of periods' rollovers); returns them in the requests' order.

    A request whose idempotency key its account already used returns that grant, or
    raises IdempotencyConflict if it differs; a grant created past its late-usage window
    is written off at once. ``credit_grants_created`` is sent once, with the new grants
    (not the replayed ones).
    """
    for request in requests:
        _validate_grant(
            credits(request.amount),
            request.category,
            request.priority,
            request.effective_at,
            request.expires_at,
            request.cost_basis,
        )
    if not requests:
        return []
    keyed = [(r.account_id, r.idempotency_key) for r in requests if r.idempotency_key]
    if len(set(keyed)) != len(keyed):
        raise InvalidRequest(
            "two grants of one batch have the same idempotency key; give each its own",
            param="idempotency_key",
        )
    now = timezone.now()
    with transaction.atomic():
        accounts = {
            account.pk: account
            for account in Account.objects.select_for_update()
            .filter(pk__in={request.account_id for request in requests})
            .order_by("pk")
        }
        keys = {request.idempotency_key for request in requests} - {None}
        existing = {
            (grant.account_id, grant.idempotency_key): grant
            for grant in (
                CreditGrant.objects.filter(account__in=list(accounts), idempotency_key__in=keys)
                if keys
                else []
            )
        }
        # Replays first, so that a conflict raises before anything is written.
        replayed = {
            index: _same_grant_or_conflict(
                existing[(request.account_id, request.idempotency_key)],
                credits(request.amount),
                request.category,
            )
            for index, request in enumerate(requests)
            if (request.account_id, request.idempotency_key) in existing
        }
        new = [request for index, request in enumerate(requests) if index not in replayed]
        operations = LedgerOperation.objects.bulk_create(
            LedgerOperation(
                account_id=request.account_id,
                kind=OperationKind.GRANT,
                actor=request.actor,
                reason=request.reason,
                memo=request.memo,
                description=request.description,
                idempotency_key=None,
            )
            for request in new
        )
        created = CreditGrant.objects.bulk_create(_grant_row(request, now) for request in new)
        LedgerEntry.objects.bulk_create(
            LedgerEntry(
                operation=operation,
                account_id=grant.account_id,
                kind=EntryKind.GRANT,
                grant=grant,
                credits=grant.amount,
                cause_type=CauseType.STAFF_ACTION
                if Actor.parse(grant.actor).is_staff
                else CauseType.SYSTEM,
                cause_id=grant.source_id,
            )
            for grant, operation in zip(created, operations, strict=True)
        )
        for grant, operation in zip(created, operations, strict=True):
            if _past_late_usage(grant, now):
                _close_grant(grant, operation, EntryKind.EXPIRE, GrantStatus.EXPIRED)
        if created:
            credit_grants_created.send(sender=CreditGrant, grants=created)
    made = iter(created)
    return [replayed[index] if index in replayed else next(made) for index in range(len(requests))]


def _grant_row(request: GrantRequest, now: datetime) -> CreditGrant:
    amount = credits(request.amount)
    basis = request.cost_basis if request.cost_basis is not None else Money(0, "USD")
    return CreditGrant(
        account_id=request.account_id,
        amount=amount,
        remaining=amount,
        category=request.category,
        category_rank=CATEGORY_RANK[GrantCategory(request.category)],
        priority=request.priority,
        effective_at=request.effective_at or now,
        expires_at=request.expires_at,
        applies_to=list(request.applies_to),
        workspace=request.workspace,
        cost_basis=basis.amount,
        cost_basis_currency=str(basis.currency),
        reason=request.reason,
        memo=request.memo,
        description=request.description,
        actor=request.actor,
        expired_by_source=request.expired_by_source,
        source_type=request.source_type,
        source_id=request.source_id,
        idempotency_key=request.idempotency_key,
    )


def _validate_grant(
    amount: Decimal,
    category: str,
    priority: int,
    effective_at: datetime | None,
    expires_at: datetime | None,
    cost_basis: Money | None,
) -> None:
    if amount <= 0:
        raise InvalidAmount("amount must be greater than 0", param="amount")
    if category not in GrantCategory.values:
        allowed = ", ".join(GrantCategory.values)
        raise InvalidRequest(
            f"category must be one of {allowed}, not {category!r}", param="category"
        )
    if not 0 <= priority <= 100:
        raise InvalidRequest("priority must be between 0 and 100", param="priority")
    if expires_at is not None and expires_at <= (effective_at or timezone.now()):
        raise InvalidRequest("expires_at must be after effective_at", param="expires_at")
    if cost_basis is not None and cost_basis.amount < 0:
        raise InvalidRequest("cost_basis must not be negative", param="cost_basis")


def _same_grant_or_conflict(existing: CreditGrant, amount: Decimal, category: str) -> CreditGrant:
    if existing.amount != amount or existing.category != category:
        raise IdempotencyConflict(
            f"idempotency key {existing.idempotency_key!r} was already used for a grant of "
            f"{existing.amount} {existing.category} credits; use a new key for a new grant",
            param="idempotency_key",
        )
    return existing


def credit_grant_void(
    *, grant: CreditGrant, actor: str, reason: str = "", memo: str = "", description: str = ""
) -> CreditGrant:
    return _grant_close(grant, actor, reason, memo, EntryKind.VOID, GrantStatus.VOIDED, description)


def credit_grant_expire(
    *,
    grant: CreditGrant,
    actor: str,
    reason: str = "expired",
    memo: str = "",
    description: str = "",
) -> CreditGrant:
    return _grant_close(
        grant, actor, reason, memo, EntryKind.EXPIRE, GrantStatus.EXPIRED, description
    )


def _grant_close(
    grant: CreditGrant,
    actor: str,
    reason: str,
    memo: str,
    kind: str,
    status: str,
    description: str = "",
) -> CreditGrant:
    with transaction.atomic():
        account = _lock_account(grant.account_id)
        locked = CreditGrant.objects.select_for_update().get(pk=grant.pk)
        if locked.status == status:
            return locked  # a retry: already done
        if locked.status not in (GrantStatus.ACTIVE, GrantStatus.DEPLETED):
            raise GrantNotActive(
                f"grant {locked.pk} is already {locked.status}; only active grants can be "
                f"{'voided' if kind == EntryKind.VOID else 'expired'}",
                param="grant",
            )
        operation = _operation(
            account,
            kind,
            actor=actor,
            reason=reason,
            memo=memo,
            description=description,
            key=None,
        )
        _close_grant(locked, operation, kind, status)
    return locked


def credit_grants_expire(
    *, grant_ids: Sequence[int], actor: str, reason: str = "expired"
) -> dict[int, Decimal]:
    """Expire many grants at once (a batch of periods' credits), as ``credit_grant_expire``
    expires each: one operation and one write-off entry per grant, written with one
    statement each for the whole set. Grants already closed are left as they are.
    Returns the credits written off, by grant."""
    if not grant_ids:
        return {}
    now = timezone.now()
    with transaction.atomic():
        # Lock order as everywhere: the accounts, then the grants, in primary-key order.
        owners = CreditGrant.objects.filter(pk__in=grant_ids).values("account_id")
        list(Account.objects.select_for_update().filter(pk__in=owners).order_by("pk"))
        grants = list(
            CreditGrant.objects.select_for_update()
            .filter(pk__in=grant_ids, status__in=[GrantStatus.ACTIVE, GrantStatus.DEPLETED])
            .order_by("pk")
        )
        if not grants:
            return {}
        operations = LedgerOperation.objects.bulk_create(
            LedgerOperation(
                account_id=grant.account_id,
                kind=OperationKind.EXPIRE,
                actor=actor,
                reason=reason,
                idempotency_key=None,
            )
            for grant in grants
        )
        LedgerEntry.objects.bulk_create(
            _write_off_entry(grant, operation, EntryKind.EXPIRE)
            for grant, operation in zip(grants, operations, strict=True)
            if grant.remaining > 0
        )
        CreditGrant.objects.filter(pk__in=[grant.pk for grant in grants]).update(
            remaining=ZERO, status=GrantStatus.EXPIRED, closed_at=now
        )
    return {grant.pk: grant.remaining for grant in grants}


def _write_off_entry(grant: CreditGrant, operation: LedgerOperation, kind: str) -> LedgerEntry:
    return LedgerEntry(
        operation=operation,
        account_id=grant.account_id,
        kind=kind,
        grant=grant,
        credits=-grant.remaining,
        cause_type=CauseType.STAFF_ACTION
        if Actor.parse(operation.actor).is_staff
        else CauseType.SYSTEM,
        cause_id=str(operation.pk),
    )


def _close_grant(grant: CreditGrant, operation: LedgerOperation, kind: str, status: str) -> None:
    """Write off what is left in a locked grant; consumed credits stay consumed."""
    if grant.remaining > 0:
        _write_off_entry(grant, operation, kind).save()
    grant.remaining = ZERO
    grant.status = status
    grant.closed_at = timezone.now()
    grant.save(update_fields=["remaining", "status", "closed_at"])


def _late_usage_windows() -> tuple[timedelta, timedelta]:
    """How long after expires_at late usage may still draw on a grant: the grace window;
    for a grant its source expires, until no event that old is accepted any more."""
    grace = timedelta(seconds=settings.BILLING_GRACE_PERIOD_SECONDS)
    return grace, grace + timedelta(days=settings.METERING_MAX_EVENT_AGE_DAYS)


def _past_late_usage(grant: CreditGrant, now: datetime) -> bool:
    if grant.expires_at is None:
        return False
    by_sweep, by_source = _late_usage_windows()
    return grant.expires_at <= now - (by_source if grant.expired_by_source else by_sweep)


def credit_grants_expire_due(*, now: datetime | None = None, limit: int = 500) -> int:
    """Write off grants whose late usage can no longer arrive. Safe to run twice or from
    two workers.

    A grant stops paying for new usage at expires_at, but usage timestamped before then
    may still be rated during the grace window (BILLING_GRACE_PERIOD_SECONDS), so its
    leftovers are expired only after it. Grants their source expires (subscription
    periods) are left to it, unless nothing could draw on them any more: no event older
    than METERING_MAX_EVENT_AGE_DAYS is accepted.
    """
    now = now or timezone.now()
    by_sweep, by_source = _late_usage_windows()
    due = CreditGrant.objects.filter(
        Q(expired_by_source=False, expires_at__lte=now - by_sweep)
        | Q(expires_at__lte=now - by_source),
        status__in=[GrantStatus.ACTIVE, GrantStatus.DEPLETED],
    ).values_list("pk", flat=True)[:limit]
    count = 0
    for grant in CreditGrant.objects.filter(pk__in=list(due)).order_by("pk"):
        try:
            credit_grant_expire(grant=grant, actor=str(Actor.system("expiry")), reason="expired")
        except GrantNotActive:
            continue  # voided meanwhile
        count += 1
    return count


# --- consumption ----------------------------------------------------------------------


def credits_consume(
    *,
    account: Account,
    amount: Decimal | str,
    cause: Cause,
    actor: str,
    meter: str = "",
    workspace: str | None = None,
    at: datetime | None = None,
    reason: str = "",
    idempotency_key: str | None = None,
) -> Debit:
    """Draw credits down in the documented order; what no grant covers is overage.

    Credits reserved by open holds are not taken: a plain debit may use only what is
    available, so a later capture finds what its hold promised.
    """
    amount = non_negative(amount)
    with transaction.atomic():
        locked = _lock_account(account.pk)
        replayed = _replayed_operation(locked, OperationKind.CONSUME, idempotency_key)
        if replayed is not None:
            return _same_debit_or_conflict(debit_from_operation(replayed), amount)
        operation = _operation(
            locked, OperationKind.CONSUME, actor=actor, reason=reason, key=idempotency_key
        )
        drawer = Drawer(locked, operation, at or timezone.now())
        debit = drawer.debit(DebitRequest(amount, cause, meter, workspace))
        drawer.flush()
    return debit


def _same_debit_or_conflict(debit: Debit, amount: Decimal) -> Debit:
    if debit.consumed + debit.overage != amount:
        raise IdempotencyConflict(
            f"idempotency key {debit.operation.idempotency_key!r} was already used for a debit "
            f"of {debit.consumed + debit.overage} credits; use a new key for a new debit",
            param="idempotency_key",
        )
    return debit


def credits_consume_batch(
    *, account: Account, debits: Sequence[DebitRequest], actor: str, at: datetime | None = None
) -> list[Debit]:
    """Many debits of one account in one transaction: one lock, one read of the grants.

    Rating uses this: its own queue makes each event's debit happen once, so the batch
    carries no idempotency key. The debits come back with their amounts and without
    their entries (``Debit.entries`` is empty): the entries are written as rows.
    """
    for request in debits:
        non_negative(request.amount)
    # No savepoint inside the caller's transaction (two round trips per batch): a failure
    # here fails the caller's whole batch, which rating rolls back and retries.
    now = timezone.now()
    with transaction.atomic(savepoint=False):
        # The lock, the operation and the live grants in one round trip, in lock order.
        locked_rows, operation_rows, grant_rows = pipelined(
            [
                (drawing.LOCK_ACCOUNT_SQL, [account.pk]),
                (_INSERT_OPERATION, [account.pk, OperationKind.CONSUME, actor, now]),
                (drawing.LOCK_GRANTS_SQL, [account.pk]),
            ]
        )
        locked = drawing.locked_account(account.pk, locked_rows)
        operation = drawing.instance_from_row(LedgerOperation, _OPERATION_FIELDS, operation_rows[0])
        drawer = Drawer(
            locked,
            operation,
            at or now,
            grants=drawing.grants_from_rows(grant_rows),
            keep_entries=False,
        )
        results = [drawer.debit(request) for request in debits]
        drawer.flush()
    return results


_OPERATION_FIELDS = (
    "id",
    "account_id",
    "kind",
    "actor",
    "reason",
    "memo",
    "description",
    "idempotency_key",
    "created_at",
)
_INSERT_OPERATION = f"""
    INSERT INTO ledger_ledgeroperation
        (account_id, kind, actor, reason, memo, description, idempotency_key, created_at)
    VALUES (%s, %s, %s, '', '', '', NULL, %s)
    RETURNING {", ".join(_OPERATION_FIELDS)}
"""


def credits_reverse(
    *,
    account: Account,
    cause: Cause,
    actor: str,
    reason: str,
    memo: str = "",
    description: str = "",
) -> list[LedgerEntry]:
    """Give back what a cause consumed (a cancelled event); overage is reversed too.

    Credits return to the grant they came from. If that grant has expired or been
    voided meanwhile, they are written off again at once: they would have expired anyway.
    """
    key = f"reverse:{cause.type}:{cause.id}"
    with transaction.atomic():
        locked = _lock_account(account.pk)
        replayed = _replayed_operation(locked, OperationKind.REVERSAL, key)
        if replayed is not None:
            return list(replayed.entries.order_by("pk"))
        originals = list(
            LedgerEntry.objects.filter(
                account=locked,
                cause_type=cause.type,
                cause_id=cause.id,
                kind__in=[EntryKind.CONSUME, EntryKind.OVERAGE],
            ).order_by("pk")
        )
        if not originals:
            return []  # nothing charged yet: keep the key free for when it is
        operation = _operation(
            locked,
            OperationKind.REVERSAL,
            actor=actor,
            reason=reason,
            memo=memo,
            description=description,
            key=key,
        )
        return _reverse_entries(locked, operation, originals)


def credits_return(
    *,
    account: Account,
    amount: Decimal,
    originals: Sequence[LedgerEntry],
    cause: Cause,
    actor: str,
    reason: str,
    idempotency_key: str,
) -> list[LedgerEntry]:
    """Give back ``amount`` credits of what ``originals`` (consume and overage entries)
    charged, overage first, then the newest consumption first: part of a charge, where
    ``credits_reverse`` gives back all of a cause's. The reversal entries carry ``cause``
    (a tiered rate's true-up gives back part of its events' charges)."""
    amount = non_negative(amount)
    with transaction.atomic():
        locked = _lock_account(account.pk)
        replayed = _replayed_operation(locked, OperationKind.REVERSAL, idempotency_key)
        if replayed is not None:
            return list(replayed.entries.order_by("pk"))
        order = sorted(originals, key=lambda e: (e.kind != EntryKind.OVERAGE, -e.pk))
        parts: list[tuple[LedgerEntry, Decimal]] = []
        left = amount
        for original in order:
            if left <= 0:
                break
            part = min(left, -original.credits)
            parts.append((original, part))
            left -= part
        if left > 0:
            raise InvalidAmount(
                f"cannot give back {amount} credits: the entries named charged only {amount - left}"
            )
        operation = _operation(
            locked, OperationKind.REVERSAL, actor=actor, reason=reason, key=idempotency_key
        )
        return _reverse_entries(
            locked, operation, [e for e, _ in parts], [p for _, p in parts], cause
        )


def _reverse_entries(
    account: Account,
    operation: LedgerOperation,
    originals: list[LedgerEntry],
    amounts: list[Decimal] | None = None,
    cause: Cause | None = None,
) -> list[LedgerEntry]:
    """Reversal entries for ``originals``: whole, or ``amounts`` of each; under the
    originals' cause unless ``cause`` is given."""
    grant_ids = sorted({e.grant_id for e in originals if e.grant_id is not None})
    grants = {
        g.pk: g
        for g in CreditGrant.objects.filter(pk__in=grant_ids).order_by("pk").select_for_update()
    }
    now = timezone.now()
    reversals: list[LedgerEntry] = []
    for index, original in enumerate(originals):
        grant = grants.get(original.grant_id) if original.grant_id is not None else None
        given_back = amounts[index] if amounts is not None else -original.credits
        reversals.append(
            LedgerEntry(
                operation=operation,
                account=account,
                kind=EntryKind.REVERSAL,
                grant=grant,
                credits=given_back,
                cause_type=cause.type if cause else original.cause_type,
                cause_id=cause.id if cause else original.cause_id,
                meter=original.meter,
                workspace=original.workspace,
            )
        )
        if grant is None:
            continue
        grant.remaining += given_back
        if grant.status == GrantStatus.DEPLETED:
            grant.status = GrantStatus.ACTIVE
    write_offs = _write_off_closed(account, operation, grants.values(), now)
    CreditGrant.objects.bulk_update(list(grants.values()), ["remaining", "status", "closed_at"])
    LedgerEntry.objects.bulk_create(reversals + write_offs)
    return reversals + write_offs


def _write_off_closed(
    account: Account, operation: LedgerOperation, grants: Iterable[CreditGrant], now: datetime
) -> list[LedgerEntry]:
    entries = []
    for grant in grants:
        # A grant past its expiry but inside its late-usage window still pays for the
        # late events of its period: credits given back to it stay until it is closed.
        expired = _past_late_usage(grant, now)
        if grant.status in (GrantStatus.ACTIVE, GrantStatus.DEPLETED) and not expired:
            continue
        kind = EntryKind.VOID if grant.status == GrantStatus.VOIDED else EntryKind.EXPIRE
        entries.append(
            LedgerEntry(
                operation=operation,
                account=account,
                kind=kind,
                grant=grant,
                credits=-grant.remaining,
                cause_type=CauseType.SYSTEM,
                cause_id=str(operation.pk),
            )
        )
        grant.remaining = ZERO
        if expired and grant.status != GrantStatus.VOIDED:
            grant.status = GrantStatus.EXPIRED
            grant.closed_at = grant.closed_at or now
    return entries


def account_create() -> Account:
    return Account.objects.create()


__all__ = [
    "Cause",
    "Debit",
    "DebitRequest",
    "GrantNotActive",
    "HoldDecision",
    "HoldNotOpen",
    "IdempotencyConflict",
    "InvalidAmount",
    "InvalidRequest",
    "LedgerError",
    "account_create",
    "credit_grant_create",
    "credit_grant_expire",
    "credit_grant_void",
    "credit_grants_expire_due",
    "credits",
    "credits_consume",
    "credits_consume_batch",
    "credits_reverse",
    "draw_down_key",
    "hold_capture",
    "hold_create",
    "hold_release",
    "holds_expire",
]
