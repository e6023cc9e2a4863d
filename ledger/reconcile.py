"""Invariant checks over the stored rows, for `manage.py reconcile` and the tests.

Each check returns the offending rows as readable lines; an empty list means it holds.
Higher layers add their own checks with :func:`register` (events rated once, invoice
lines derived from entries).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db import connection

Check = Callable[[], list[str]]
_CHECKS: dict[str, Check] = {}


def register(name: str) -> Callable[[Check], Check]:
    def decorate(check: Check) -> Check:
        _CHECKS[name] = check
        return check

    return decorate


@dataclass(frozen=True)
class Finding:
    check: str
    problems: list[str]


def run_checks() -> list[Finding]:
    return [Finding(check=name, problems=check()) for name, check in _CHECKS.items()]


def query_rows(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return list(cursor.fetchall())


@register("grant_amount_equals_remaining_plus_taken")
def grants_balance() -> list[str]:
    """Invariant 1: amount = remaining + everything the ledger took; the grant entry
    equals the amount; remaining within [0, amount]."""
    rows = query_rows(
        """
        SELECT g.id, g.amount, g.remaining,
               COALESCE(SUM(e.credits), 0) AS entries_sum,
               COALESCE(SUM(e.credits) FILTER (WHERE e.kind = 'grant'), 0) AS granted
        FROM ledger_creditgrant g
        LEFT JOIN ledger_ledgerentry e ON e.grant_id = g.id
        GROUP BY g.id
        HAVING COALESCE(SUM(e.credits), 0) <> g.remaining
            OR COALESCE(SUM(e.credits) FILTER (WHERE e.kind = 'grant'), 0) <> g.amount
            OR g.remaining < 0 OR g.remaining > g.amount
        ORDER BY g.id
        """
    )
    return [
        f"grant {gid}: amount {amount}, remaining {remaining}, entries sum {total}, "
        f"granted {granted}"
        for gid, amount, remaining, total, granted in rows
    ]


@register("account_posted_equals_entries")
def accounts_posted() -> list[str]:
    """Invariant 2a: the sum of an account's grant entries = the credits left in its grants."""
    rows = query_rows(
        """
        WITH entries AS (
            SELECT account_id, SUM(credits) AS total
            FROM ledger_ledgerentry WHERE grant_id IS NOT NULL GROUP BY account_id
        ), grants AS (
            SELECT account_id, SUM(remaining) AS total
            FROM ledger_creditgrant GROUP BY account_id
        )
        SELECT a.id, COALESCE(e.total, 0), COALESCE(g.total, 0)
        FROM ledger_account a
        LEFT JOIN entries e ON e.account_id = a.id
        LEFT JOIN grants g ON g.account_id = a.id
        WHERE COALESCE(e.total, 0) <> COALESCE(g.total, 0)
        ORDER BY a.id
        """
    )
    return [
        f"account {aid}: ledger entries sum {entries}, grants remaining {grants}"
        for aid, entries, grants in rows
    ]


@register("account_held_equals_open_holds")
def accounts_held() -> list[str]:
    """Invariant 2b: held = the sum of open holds = the sum of hold movements."""
    rows = query_rows(
        """
        WITH open_holds AS (
            SELECT account_id, SUM(credits) AS total
            FROM ledger_hold WHERE status = 'open' GROUP BY account_id
        ), movements AS (
            SELECT account_id, SUM(held) AS total FROM ledger_ledgerentry GROUP BY account_id
        )
        SELECT a.id, a.held, COALESCE(h.total, 0), COALESCE(m.total, 0)
        FROM ledger_account a
        LEFT JOIN open_holds h ON h.account_id = a.id
        LEFT JOIN movements m ON m.account_id = a.id
        WHERE a.held <> COALESCE(h.total, 0) OR a.held <> COALESCE(m.total, 0)
        ORDER BY a.id
        """
    )
    return [
        f"account {aid}: held {held}, open holds {open_total}, hold entries sum {moved}"
        for aid, held, open_total, moved in rows
    ]


@register("hold_resolved_once")
def holds_resolved_once() -> list[str]:
    """Each hold has one hold entry, and a resolved hold exactly one resolving entry."""
    rows = query_rows(
        """
        SELECT h.id, h.status,
               COUNT(*) FILTER (WHERE e.kind = 'hold') AS placed,
               COUNT(*) FILTER (WHERE e.kind IN ('capture', 'release')) AS resolved
        FROM ledger_hold h
        LEFT JOIN ledger_ledgerentry e ON e.hold_id = h.id
        GROUP BY h.id, h.status
        HAVING COUNT(*) FILTER (WHERE e.kind = 'hold') <> 1
            OR COUNT(*) FILTER (WHERE e.kind IN ('capture', 'release'))
               <> CASE WHEN h.status = 'open' THEN 0 ELSE 1 END
        ORDER BY h.id
        """
    )
    return [
        f"hold {hid} ({status}): {placed} hold entries, {resolved} resolving entries"
        for hid, status, placed, resolved in rows
    ]


@register("ledger_append_only_enforced")
def append_only_triggers() -> list[str]:
    """Invariant 5: the triggers that refuse UPDATE and DELETE exist and are enabled."""
    return triggers_missing(
        {
            ("ledger_ledgerentry", "ledger_entry_append_only"),
            ("ledger_ledgeroperation", "ledger_operation_append_only"),
        }
    )


@register("ledger_entry_accounts_enforced")
def entry_account_triggers() -> list[str]:
    """An entry's operation and grant are its account's (ledger migration 0009): the
    triggers that refuse anything else exist and are enabled."""
    return triggers_missing(
        {
            ("ledger_ledgerentry", "ledger_entry_of_its_account"),
            ("ledger_creditgrant", "ledger_grant_keeps_its_account"),
        }
    )


def triggers_missing(expected: set[tuple[str, str]]) -> list[str]:
    rows = query_rows(
        """
        SELECT c.relname, t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        WHERE t.tgname = ANY(%s) AND t.tgenabled <> 'D'
        """,
        [[name for _, name in expected]],
    )
    missing = expected - {(str(table), str(name)) for table, name in rows}
    return [f"trigger {name} on {table} is missing or disabled" for table, name in sorted(missing)]
