"""Reads of credits: balances, usable grants and the ledger's entries."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any, NamedTuple

from django.db.models import Q, QuerySet, Sum
from django.utils import timezone

from ledger.models import (
    DRAW_DOWN_ORDER,
    ZERO,
    Account,
    CreditGrant,
    EntryKind,
    GrantStatus,
    LedgerEntry,
    LedgerOperation,
)
from ledger.sql import Statement


def grants_usable(
    *, account: Account, meter: str | None, workspace: str | None, at: datetime
) -> QuerySet[CreditGrant]:
    """Grants that may pay for usage of ``meter`` in ``workspace`` at ``at``.

    ``meter=None`` means any meter (the account-wide view); ``workspace=None`` usage
    may use only pooled grants.
    """
    grants = CreditGrant.objects.filter(
        Q(expires_at__isnull=True) | Q(expires_at__gt=at),
        account=account,
        status=GrantStatus.ACTIVE,
        remaining__gt=0,
        effective_at__lte=at,
    )
    if meter is not None:
        grants = grants.filter(Q(applies_to=[]) | Q(applies_to__contains=[meter]))
    if workspace is None:
        return grants.filter(workspace__isnull=True)
    return grants.filter(Q(workspace__isnull=True) | Q(workspace=workspace))


def grant_is_usable(
    grant: CreditGrant, meter: str | None, workspace: str | None, at: datetime
) -> bool:
    """The same rule as :func:`grants_usable`, for grants already in memory."""
    return (
        grant.status == GrantStatus.ACTIVE
        and grant.effective_at <= at
        and (grant.expires_at is None or grant.expires_at > at)
        and (meter is None or not grant.applies_to or meter in grant.applies_to)
        and (grant.workspace is None or grant.workspace == workspace)
    )


def posted_in_scope(
    *, account: Account, meter: str | None, workspace: str | None, at: datetime
) -> Decimal:
    total = grants_usable(account=account, meter=meter, workspace=workspace, at=at).aggregate(
        total=Sum("remaining")
    )["total"]
    return total or ZERO


@dataclass(frozen=True)
class Balance:
    posted: Decimal
    held: Decimal
    available: Decimal
    grants: list[CreditGrant]
    as_of: datetime


class BalanceTotals(NamedTuple):
    """A balance's numbers without its grants."""

    posted: Decimal
    held: Decimal

    @property
    def available(self) -> Decimal:
        return self.posted - self.held


# The numbers of ``account_balance`` in one statement, for a caller that reads them in one
# round trip with others (ledger.sql.pipelined): one row (posted, held). The same grants
# as account_balance's (a test holds the two to the same figures).
_BALANCE_TOTALS_SQL = f"""
SELECT coalesce((
           SELECT sum(g.remaining) FROM {CreditGrant._meta.db_table} g
           WHERE g.account_id = a.id AND g.status = %(active)s AND g.effective_at <= %(at)s
             AND (g.expires_at IS NULL OR g.expires_at > %(at)s)
       ), 0),
       a.held
FROM {Account._meta.db_table} a
WHERE a.id = %(account)s
"""


def balance_totals_statement(*, account_id: int, at: datetime) -> Statement:
    return _BALANCE_TOTALS_SQL, {
        "active": GrantStatus.ACTIVE.value,
        "at": at,
        "account": account_id,
    }


def balance_totals_from(rows: list[tuple[Any, ...]]) -> BalanceTotals:
    ((posted, held),) = rows
    return BalanceTotals(posted, held)


def account_balance(*, account: Account, at: datetime | None = None) -> Balance:
    """The number the customer sees and the number authorizations enforce.

    Two indexed reads (the account row and its active grants), whatever the history.
    """
    at = at or timezone.now()
    held = Account.objects.values_list("held", flat=True).get(pk=account.pk)
    grants = list(
        CreditGrant.objects.filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=at),
            account=account,
            status=GrantStatus.ACTIVE,
            effective_at__lte=at,
        ).order_by(*DRAW_DOWN_ORDER)
    )
    posted = sum((g.remaining for g in grants), ZERO)
    return Balance(posted=posted, held=held, available=posted - held, grants=grants, as_of=at)


# --- entries ------------------------------------------------------------------------------


def ledger_entries_for(
    *, account_id: int, kind: str | None = None, grant_id: int | None = None
) -> QuerySet[LedgerEntry]:
    """An account's entries, each with its operation (who, why)."""
    entries = LedgerEntry.objects.filter(account_id=account_id).select_related("operation")
    if kind is not None:
        entries = entries.filter(kind=kind)
    if grant_id is not None:
        entries = entries.filter(grant_id=grant_id)
    return entries


def ledger_entries_caused_by(
    *, account_id: int, cause_type: str, cause_id: str
) -> QuerySet[LedgerEntry]:
    return ledger_entries_for(account_id=account_id).filter(
        cause_type=cause_type, cause_id=cause_id
    )


def grant_close_operations(*, grant_ids: Iterable[int]) -> dict[int, LedgerOperation]:
    """The operation that voided or expired each grant, by grant id: its actor and reason.

    Read from the grant's void or expire entry. A grant closed with nothing left in it
    got no entry, and so is absent here: its operation does not name the grant.
    """
    entries = LedgerEntry.objects.filter(
        grant_id__in=list(grant_ids), kind__in=[EntryKind.VOID, EntryKind.EXPIRE]
    ).select_related("operation")
    return {entry.grant_id: entry.operation for entry in entries if entry.grant_id is not None}
