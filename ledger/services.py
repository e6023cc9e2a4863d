"""Every write to credits: one transaction each, locks in one fixed order.

Lock order: the account row, then the grants touched (primary-key order), then the hold.
Every writer of an account's grants or holds takes the account lock first, so two
writers on one customer queue there and writers on different customers never meet.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

from django.db import transaction
from django.utils import timezone
from djmoney.money import Money

from ledger.errors import (  # re-exported: callers catch them from here
    GrantNotActive,
    HoldNotOpen,
    IdempotencyConflict,
    InvalidAmount,
    InvalidRequest,
    LedgerError,
)
from ledger.models import (
    CATEGORY_RANK,
    CREDIT_QUANTUM,
    ZERO,
    Account,
    CauseType,
    CreditGrant,
    EntryKind,
    GrantCategory,
    GrantStatus,
    Hold,
    HoldStatus,
    LedgerEntry,
    LedgerOperation,
    OperationKind,
)
from ledger.selectors import grant_is_usable, posted_in_scope
from ledger.signals import credit_grant_created


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


def _lock_account(account_id: int) -> Account:
    return Account.objects.select_for_update().get(pk=account_id)


def _operation(
    account: Account, kind: str, *, actor: str, reason: str = "", memo: str = "", key: str | None
) -> LedgerOperation:
    return LedgerOperation.objects.create(
        account=account, kind=kind, actor=actor, reason=reason, memo=memo, idempotency_key=key
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


def _debit_from_operation(operation: LedgerOperation) -> Debit:
    entries = list(
        operation.entries.filter(kind__in=[EntryKind.CONSUME, EntryKind.OVERAGE]).order_by("pk")
    )
    consumed = -sum((e.credits for e in entries if e.kind == EntryKind.CONSUME), ZERO)
    overage = -sum((e.credits for e in entries if e.kind == EntryKind.OVERAGE), ZERO)
    return Debit(operation=operation, consumed=consumed, overage=overage, entries=entries)


# --- grants ---------------------------------------------------------------------------


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
    source_type: str = "",
    source_id: str = "",
    idempotency_key: str | None = None,
) -> CreditGrant:
    amount = credits(amount)
    _validate_grant(amount, category, priority, effective_at, expires_at, cost_basis)
    effective_at = effective_at or timezone.now()
    basis = cost_basis if cost_basis is not None else Money(0, "USD")
    with transaction.atomic():
        locked = _lock_account(account.pk)
        if idempotency_key is not None:
            existing = CreditGrant.objects.filter(
                account=locked, idempotency_key=idempotency_key
            ).first()
            if existing is not None:
                return _same_grant_or_conflict(existing, amount, category)
        operation = _operation(
            locked, OperationKind.GRANT, actor=actor, reason=reason, memo=memo, key=None
        )
        grant = CreditGrant.objects.create(
            account=locked,
            amount=amount,
            remaining=amount,
            category=category,
            category_rank=CATEGORY_RANK[GrantCategory(category)],
            priority=priority,
            effective_at=effective_at,
            expires_at=expires_at,
            applies_to=list(applies_to),
            workspace=workspace,
            cost_basis=basis.amount,
            cost_basis_currency=str(basis.currency),
            reason=reason,
            memo=memo,
            actor=actor,
            source_type=source_type,
            source_id=source_id,
            idempotency_key=idempotency_key,
        )
        LedgerEntry.objects.create(
            operation=operation,
            account=locked,
            kind=EntryKind.GRANT,
            grant=grant,
            credits=amount,
            cause_type=CauseType.STAFF_ACTION if actor.startswith("staff:") else CauseType.SYSTEM,
            cause_id=source_id,
        )
        if expires_at is not None and expires_at <= timezone.now():
            _close_grant(grant, operation, EntryKind.EXPIRE, GrantStatus.EXPIRED)
        credit_grant_created.send(sender=CreditGrant, grant=grant, account=locked)
    return grant


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
    *, grant: CreditGrant, actor: str, reason: str = "", memo: str = ""
) -> CreditGrant:
    return _grant_close(grant, actor, reason, memo, EntryKind.VOID, GrantStatus.VOIDED)


def credit_grant_expire(
    *, grant: CreditGrant, actor: str, reason: str = "expired", memo: str = ""
) -> CreditGrant:
    return _grant_close(grant, actor, reason, memo, EntryKind.EXPIRE, GrantStatus.EXPIRED)


def _grant_close(
    grant: CreditGrant, actor: str, reason: str, memo: str, kind: str, status: str
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
        operation = _operation(account, kind, actor=actor, reason=reason, memo=memo, key=None)
        _close_grant(locked, operation, kind, status)
    return locked


def _close_grant(grant: CreditGrant, operation: LedgerOperation, kind: str, status: str) -> None:
    """Write off what is left in a locked grant; consumed credits stay consumed."""
    if grant.remaining > 0:
        LedgerEntry.objects.create(
            operation=operation,
            account_id=grant.account_id,
            kind=kind,
            grant=grant,
            credits=-grant.remaining,
            cause_type=CauseType.STAFF_ACTION
            if operation.actor.startswith("staff:")
            else CauseType.SYSTEM,
            cause_id=str(operation.pk),
        )
    grant.remaining = ZERO
    grant.status = status
    grant.closed_at = timezone.now()
    grant.save(update_fields=["remaining", "status", "closed_at"])


def credit_grants_expire_due(*, now: datetime | None = None, limit: int = 500) -> int:
    """Expire grants past expires_at. Safe to run twice or from two workers."""
    now = now or timezone.now()
    due = CreditGrant.objects.filter(
        status__in=[GrantStatus.ACTIVE, GrantStatus.DEPLETED], expires_at__lte=now
    ).values_list("pk", flat=True)[:limit]
    count = 0
    for grant in CreditGrant.objects.filter(pk__in=list(due)).order_by("pk"):
        try:
            credit_grant_expire(grant=grant, actor="system:expiry", reason="expired")
        except GrantNotActive:
            continue  # voided meanwhile
        count += 1
    return count


# --- consumption ----------------------------------------------------------------------


@dataclass(frozen=True)
class DebitRequest:
    amount: Decimal
    cause: Cause
    meter: str = ""
    workspace: str | None = None


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
    amount = _non_negative(amount)
    with transaction.atomic():
        locked = _lock_account(account.pk)
        replayed = _replayed_operation(locked, OperationKind.CONSUME, idempotency_key)
        if replayed is not None:
            return _same_debit_or_conflict(_debit_from_operation(replayed), amount)
        operation = _operation(
            locked, OperationKind.CONSUME, actor=actor, reason=reason, key=idempotency_key
        )
        drawer = _Drawer(locked, operation, at or timezone.now())
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
    carries no idempotency key.
    """
    for request in debits:
        _non_negative(request.amount)
    with transaction.atomic():
        locked = _lock_account(account.pk)
        operation = _operation(locked, OperationKind.CONSUME, actor=actor, key=None)
        drawer = _Drawer(locked, operation, at or timezone.now())
        results = [drawer.debit(request) for request in debits]
        drawer.flush()
    return results


def _non_negative(amount: Decimal | str) -> Decimal:
    value = credits(amount)
    if value < 0:
        raise InvalidAmount("amount must not be negative", param="amount")
    return value


class _Drawer:
    """An account's live grants, locked and read once, drawn down in memory.

    The caller holds the account lock; ``flush`` writes every change at once.
    """

    def __init__(self, account: Account, operation: LedgerOperation, at: datetime) -> None:
        self.account = account
        self.operation = operation
        self.at = at
        self.grants = list(
            CreditGrant.objects.filter(account=account, status=GrantStatus.ACTIVE, remaining__gt=0)
            .order_by("pk")
            .select_for_update()
        )
        self.touched: dict[int, CreditGrant] = {}
        self.entries: list[LedgerEntry] = []

    def debit(self, request: DebitRequest) -> Debit:
        usable = sorted(
            (
                g
                for g in self.grants
                if g.remaining > 0 and grant_is_usable(g, request.meter, request.workspace, self.at)
            ),
            key=draw_down_key,
        )
        available = max(ZERO, sum((g.remaining for g in usable), ZERO) - self.account.held)
        left = min(request.amount, available)
        entry = _entry_factory(
            self.account, self.operation, request.cause, request.meter, request.workspace
        )
        debit = Debit(operation=self.operation)
        for grant in usable:
            if left <= 0:
                break
            take = min(grant.remaining, left)
            grant.remaining -= take
            if grant.remaining == 0:
                grant.status = GrantStatus.DEPLETED
            self.touched[grant.pk] = grant
            debit.entries.append(entry(EntryKind.CONSUME, credits=-take, grant=grant))
            left -= take
            debit.consumed += take
        debit.overage = request.amount - debit.consumed
        if debit.overage > 0:
            debit.entries.append(entry(EntryKind.OVERAGE, credits=-debit.overage))
        self.entries.extend(debit.entries)
        return debit

    def flush(self) -> None:
        CreditGrant.objects.bulk_update(list(self.touched.values()), ["remaining", "status"])
        LedgerEntry.objects.bulk_create(self.entries)


_NEVER = datetime.max.replace(tzinfo=UTC)


def draw_down_key(grant: CreditGrant) -> tuple[object, ...]:
    """Lower priority number; earlier expiry (none last); free before paid; earlier
    effective; earlier created."""
    no_expiry = grant.expires_at is None
    return (
        grant.priority,
        no_expiry,
        grant.expires_at or _NEVER,
        grant.category_rank,
        grant.effective_at,
        grant.pk,
    )


def _entry_factory(
    account: Account, operation: LedgerOperation, cause: Cause, meter: str, workspace: str | None
) -> Callable[..., LedgerEntry]:
    def make(kind: str, **values: object) -> LedgerEntry:
        return LedgerEntry(
            operation=operation,
            account=account,
            kind=kind,
            cause_type=cause.type,
            cause_id=cause.id,
            meter=meter,
            workspace=workspace,
            **values,
        )

    return make


def credits_reverse(
    *, account: Account, cause: Cause, actor: str, reason: str, memo: str = ""
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
            locked, OperationKind.REVERSAL, actor=actor, reason=reason, memo=memo, key=key
        )
        return _reverse_entries(locked, operation, originals)


def _reverse_entries(
    account: Account, operation: LedgerOperation, originals: list[LedgerEntry]
) -> list[LedgerEntry]:
    grant_ids = sorted({e.grant_id for e in originals if e.grant_id is not None})
    grants = {
        g.pk: g
        for g in CreditGrant.objects.filter(pk__in=grant_ids).order_by("pk").select_for_update()
    }
    now = timezone.now()
    reversals: list[LedgerEntry] = []
    for original in originals:
        grant = grants.get(original.grant_id) if original.grant_id is not None else None
        reversals.append(
            LedgerEntry(
                operation=operation,
                account=account,
                kind=EntryKind.REVERSAL,
                grant=grant,
                credits=-original.credits,
                cause_type=original.cause_type,
                cause_id=original.cause_id,
                meter=original.meter,
                workspace=original.workspace,
            )
        )
        if grant is None:
            continue
        grant.remaining -= original.credits
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
        expired = grant.expires_at is not None and grant.expires_at <= now
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


# --- holds ----------------------------------------------------------------------------


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
) -> HoldDecision:
    """Reserve credits if the policy allows.

    ``allowance`` is how far below zero the policy lets available go: ``0`` for a hard
    stop, a share of the allowance for a soft limit, ``None`` for no limit (postpaid).
    A denied hold writes nothing.
    """
    amount = _non_negative(amount)
    with transaction.atomic():
        locked = _lock_account(account.pk)
        now = timezone.now()
        available = (
            posted_in_scope(account=locked, meter=meter, workspace=workspace, at=now) - locked.held
        )
        if idempotency_key is not None:
            existing = Hold.objects.filter(account=locked, idempotency_key=idempotency_key).first()
            if existing is not None and existing.credits != amount:
                raise IdempotencyConflict(
                    f"idempotency key {idempotency_key!r} was already used for a hold of "
                    f"{existing.credits} credits; use a new key for a new hold",
                    param="idempotency_key",
                )
            if existing is not None:
                return HoldDecision(allowed=True, hold=existing, available=available)
        if allowance is not None and amount > available + allowance:
            return HoldDecision(allowed=False, hold=None, available=available)
        hold = Hold.objects.create(
            account=locked,
            credits=amount,
            meter=meter,
            workspace=workspace,
            expires_at=expires_at,
            idempotency_key=idempotency_key,
        )
        operation = _operation(locked, OperationKind.HOLD, actor=actor, key=None)
        LedgerEntry.objects.create(
            operation=operation,
            account=locked,
            kind=EntryKind.HOLD,
            hold=hold,
            held=amount,
            cause_type=CauseType.HOLD,
            cause_id=str(hold.pk),
            meter=meter,
            workspace=workspace,
        )
        locked.held += amount
        locked.save(update_fields=["held"])
    return HoldDecision(allowed=True, hold=hold, available=available - amount)


def hold_capture(
    *, hold: Hold, amount: Decimal | str, cause: Cause, actor: str, at: datetime | None = None
) -> Debit:
    """Charge the actual credits and release the rest of the hold, exactly once.

    Above the hold, the extra comes only from credits nobody else has reserved; what is
    left is overage, which the plan's policy bills (postpaid) or reports as leakage.
    """
    amount = _non_negative(amount)
    with transaction.atomic():
        account = _lock_account(hold.account_id)
        locked = Hold.objects.select_for_update().get(pk=hold.pk)
        if locked.status == HoldStatus.CAPTURED:
            operation = LedgerOperation.objects.get(
                entries__hold=locked, kind=OperationKind.CAPTURE
            )
            return _debit_from_operation(operation)
        _require_open(locked)
        at = at or timezone.now()
        operation = _operation(account, OperationKind.CAPTURE, actor=actor, key=None)
        locked.captured_credits = amount
        _resolve_hold(account, locked, operation, HoldStatus.CAPTURED, EntryKind.CAPTURE)
        # The hold is already out of `held`, so what it reserved counts as available.
        drawer = _Drawer(account, operation, at)
        debit = drawer.debit(DebitRequest(amount, cause, locked.meter, locked.workspace))
        drawer.flush()
    return debit


def hold_release(*, hold: Hold, actor: str, reason: str = "released") -> Hold:
    return _hold_release(hold, actor, reason, HoldStatus.RELEASED)


def _hold_release(hold: Hold, actor: str, reason: str, status: str) -> Hold:
    with transaction.atomic():
        account = _lock_account(hold.account_id)
        locked = Hold.objects.select_for_update().get(pk=hold.pk)
        if locked.status in (HoldStatus.RELEASED, HoldStatus.EXPIRED):
            return locked  # a retry: already done
        _require_open(locked)
        operation = _operation(account, OperationKind.RELEASE, actor=actor, reason=reason, key=None)
        _resolve_hold(account, locked, operation, status, EntryKind.RELEASE)
    return locked


def _require_open(hold: Hold) -> None:
    if hold.status != HoldStatus.OPEN:
        raise HoldNotOpen(f"hold {hold.pk} is already {hold.status}", param="hold")


def _resolve_hold(
    account: Account, hold: Hold, operation: LedgerOperation, status: str, kind: str
) -> None:
    LedgerEntry.objects.create(
        operation=operation,
        account=account,
        kind=kind,
        hold=hold,
        held=-hold.credits,
        cause_type=CauseType.HOLD,
        cause_id=str(hold.pk),
        meter=hold.meter,
        workspace=hold.workspace,
    )
    account.held -= hold.credits
    account.save(update_fields=["held"])
    hold.status = status
    hold.resolved_at = timezone.now()
    hold.save(update_fields=["status", "resolved_at", "captured_credits"])


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
            result = _hold_release(hold, "system:expiry", "expired", HoldStatus.EXPIRED)
        except HoldNotOpen:
            continue  # captured meanwhile
        count += result.status == HoldStatus.EXPIRED
    return count


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
