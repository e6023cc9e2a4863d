"""What must never happen is refused by PostgreSQL itself, whatever code issues it."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from ledger import services
from ledger.models import Account, CreditGrant, Hold, LedgerEntry, LedgerOperation
from tests.ledger import factories as f

pytestmark = pytest.mark.django_db


def _sql(statement: str, params: list[int]) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(statement, params)


def test_it_refuses_an_update_of_a_ledger_entry() -> None:
    entry = LedgerEntry.objects.get(grant=f.grant(f.account(), "10"))
    with pytest.raises(match="append-only"):
        _sql("UPDATE ledger_ledgerentry SET credits = 99 WHERE id = %s", [entry.pk])
    entry.refresh_from_db()
    assert entry.credits == Decimal("10")


def test_it_refuses_a_delete_of_a_ledger_entry() -> None:
    entry = LedgerEntry.objects.get(grant=f.grant(f.account(), "10"))
    with pytest.raises(match="append-only"):
        _sql("DELETE FROM ledger_ledgerentry WHERE id = %s", [entry.pk])
    assert LedgerEntry.objects.filter(pk=entry.pk).exists()


def test_it_refuses_the_orm_deleting_or_editing_entries_and_operations() -> None:
    f.grant(f.account(), "10")
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        LedgerEntry.objects.all().update(credits=0)
    with pytest.raises(IntegrityError, match="append-only"), transaction.atomic():
        LedgerOperation.objects.all().update(actor="someone else")
    with pytest.raises(IntegrityError, match="append-only"):
        _sql("DELETE FROM ledger_ledgeroperation", [])
    assert LedgerEntry.objects.get().credits == Decimal("10")


def test_it_refuses_negative_remaining_on_a_grant() -> None:
    grant = f.grant(f.account(), "10")
    with pytest.raises(IntegrityError, match="ledger_grant_remaining_gte_0"):
        _sql("UPDATE ledger_creditgrant SET remaining = -1 WHERE id = %s", [grant.pk])
    grant.refresh_from_db()
    assert grant.remaining == Decimal("10")


def test_it_refuses_remaining_above_the_amount() -> None:
    grant = f.grant(f.account(), "10")
    with pytest.raises(IntegrityError, match="ledger_grant_remaining_lte_amount"):
        _sql("UPDATE ledger_creditgrant SET remaining = 11 WHERE id = %s", [grant.pk])


def test_it_refuses_negative_held_on_an_account() -> None:
    account = f.account()
    with pytest.raises(IntegrityError, match="ledger_account_held_gte_0"):
        _sql("UPDATE ledger_account SET held = -0.000001 WHERE id = %s", [account.pk])
    account.refresh_from_db()
    assert account.held == 0


def test_it_refuses_a_second_grant_row_with_the_same_idempotency_key() -> None:
    grant = f.grant(f.account(), "10", idempotency_key="grant-1")
    with pytest.raises(IntegrityError, match="ledger_grant_idempotency_key"), transaction.atomic():
        CreditGrant.objects.create(
            account=grant.account,
            amount=5,
            remaining=5,
            category="paid",
            category_rank=1,
            effective_at=timezone.now(),
            actor="raw",
            idempotency_key="grant-1",
        )


def test_a_retried_grant_returns_the_first_result_and_writes_nothing() -> None:
    account = f.account()
    first = f.grant(account, "10", idempotency_key="grant-1")
    again = f.grant(account, "10", idempotency_key="grant-1")
    assert again.pk == first.pk
    assert CreditGrant.objects.filter(account=account).count() == 1
    assert LedgerEntry.objects.filter(account=account).count() == 1


def test_a_retried_grant_with_another_amount_is_a_conflict() -> None:
    account = f.account()
    f.grant(account, "10", idempotency_key="grant-1")
    with pytest.raises(services.IdempotencyConflict, match="already used"):
        f.grant(account, "11", idempotency_key="grant-1")
    assert CreditGrant.objects.get(account=account).amount == Decimal("10")


def test_a_retried_consume_returns_the_first_debit() -> None:
    account = f.account()
    f.grant(account, "10")
    kwargs = {
        "account": account,
        "amount": "4",
        "cause": services.Cause("event", "e1"),
        "actor": "test",
        "idempotency_key": "consume-e1",
    }
    first = services.credits_consume(**kwargs)  # type: ignore[arg-type]
    again = services.credits_consume(**kwargs)  # type: ignore[arg-type]
    assert again.operation.pk == first.operation.pk
    assert again.consumed == first.consumed == Decimal("4")
    assert CreditGrant.objects.get(account=account).remaining == Decimal("6")


def test_a_retried_hold_returns_the_first_hold() -> None:
    account = f.account()
    f.grant(account, "10")
    expires_at = timezone.now() + timedelta(minutes=5)
    first = services.hold_create(
        account=account, amount="6", expires_at=expires_at, actor="t", idempotency_key="h1"
    )
    again = services.hold_create(
        account=account, amount="6", expires_at=expires_at, actor="t", idempotency_key="h1"
    )
    assert first.hold is not None and again.hold is not None
    assert again.hold.pk == first.hold.pk
    assert Hold.objects.count() == 1
    assert Account.objects.get(pk=account.pk).held == Decimal("6")


def test_a_second_hold_row_with_the_same_key_is_refused() -> None:
    account = f.account()
    Hold.objects.create(account=account, credits=1, expires_at=timezone.now(), idempotency_key="h1")
    with pytest.raises(IntegrityError, match="ledger_hold_idempotency_key"), transaction.atomic():
        Hold.objects.create(
            account=account, credits=1, expires_at=timezone.now(), idempotency_key="h1"
        )


def test_every_index_on_ledger_entries_is_one_something_reads() -> None:
    # Each index costs every entry written, and rating writes one or more per event.
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT array_agg(a.attname ORDER BY k.n), pg_get_expr(i.indpred, i.indrelid)
            FROM pg_index i
            CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
            WHERE i.indrelid = 'ledger_ledgerentry'::regclass
            GROUP BY i.indexrelid, i.indpred, i.indrelid
            """
        )
        indexes = sorted(
            ((tuple(columns), predicate) for columns, predicate in cursor.fetchall()),
            key=lambda index: (index[0], index[1] or ""),
        )
    assert indexes == [
        # An account's statement, and every other lookup by account.
        (("account_id", "created_at"), None),
        (("cause_type", "cause_id"), None),  # what an event, hold or invoice line charged
        (("grant_id",), None),  # a grant's history; invariant 1
        # What was written off a grant (included credits used): write-offs only.
        (
            ("grant_id",),
            "((kind)::text = ANY ((ARRAY['expire'::character varying, "
            "'void'::character varying])::text[]))",
        ),
        # Entries naming a hold only (holds, captures, releases): debits name none.
        (("hold_id",), "(hold_id IS NOT NULL)"),
        (("id",), None),
        (("operation_id",), None),  # an operation's entries: replays, the audit trail
    ]


_ENTRY_INSERT = """
    INSERT INTO ledger_ledgerentry (operation_id, account_id, grant_id, kind, credits, held,
        cause_type, cause_id, meter, created_at)
    VALUES (%s, %s, %s, %s, -1, 0, 'system', 'test', '', now())
"""


def _entry_insert(operation: int, account: int, grant: int | None) -> None:
    with transaction.atomic(), connection.cursor() as cursor:
        kind = "consume" if grant else "overage"  # an overage entry names no grant
        cursor.execute(_ENTRY_INSERT, [operation, account, grant, kind])
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # checked now, not at commit


def test_an_entry_cannot_name_another_accounts_operation_or_grant() -> None:
    mine, theirs = f.account(), f.account()
    my_grant, their_grant = f.grant(mine, "10"), f.grant(theirs, "10")
    my_operation = LedgerEntry.objects.get(grant=my_grant).operation_id
    their_operation = LedgerEntry.objects.get(grant=their_grant).operation_id

    with pytest.raises(IntegrityError, match="ledger_entry_grant_of_account"):
        _entry_insert(my_operation, mine.pk, their_grant.pk)
    with pytest.raises(IntegrityError, match="ledger_entry_operation_of_account"):
        _entry_insert(their_operation, mine.pk, my_grant.pk)
    # Nor an operation, account or grant that does not exist.
    with pytest.raises(IntegrityError, match="ledger_entry_operation_of_account"):
        _entry_insert(my_operation, mine.pk + theirs.pk, None)
    with pytest.raises(IntegrityError, match="ledger_entry_grant_of_account"):
        _entry_insert(my_operation, mine.pk, their_grant.pk + 1000)

    _entry_insert(my_operation, mine.pk, my_grant.pk)  # its own: accepted
    assert LedgerEntry.objects.filter(account=mine).count() == 2
    assert LedgerEntry.objects.filter(account=theirs).count() == 1


def test_an_entrys_operation_and_grant_are_checked_with_its_account_once_per_statement() -> None:
    # Not a key per entry (a query and a row lock each): one trigger per INSERT
    # statement. Only the hold is still a foreign key.
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT pg_get_constraintdef(oid) FROM pg_constraint
            WHERE conrelid = 'ledger_ledgerentry'::regclass AND contype = 'f'
            """
        )
        keys = [definition for (definition,) in cursor.fetchall()]
        cursor.execute(
            """
            SELECT tgname, pg_get_triggerdef(oid) FROM pg_trigger
            WHERE tgname IN ('ledger_entry_of_its_account', 'ledger_grant_keeps_its_account')
            """
        )
        triggers = dict(cursor.fetchall())
    assert [k.split(")")[0].removeprefix("FOREIGN KEY (") for k in keys] == ["hold_id"]
    assert "AFTER INSERT" in triggers["ledger_entry_of_its_account"]
    assert "FOR EACH STATEMENT" in triggers["ledger_entry_of_its_account"]
    assert "BEFORE DELETE OR UPDATE OF id, account_id" in triggers["ledger_grant_keeps_its_account"]


def test_a_batch_of_entries_naming_one_foreign_grant_is_refused_whole() -> None:
    mine, theirs = f.account(), f.account()
    my_grant, their_grant = f.grant(mine, "10"), f.grant(theirs, "10")
    operation = LedgerEntry.objects.get(grant=my_grant).operation_id
    with pytest.raises(IntegrityError, match=f"grant {their_grant.pk} is not one of account"):
        _sql(
            """
            INSERT INTO ledger_ledgerentry (operation_id, account_id, grant_id, kind,
                credits, held, cause_type, cause_id, meter, created_at)
            SELECT %s, %s, g, 'consume', -1, 0, 'system', 'test', '', now()
            FROM unnest(ARRAY[%s, %s, %s]) AS g
            """,
            [operation, mine.pk, my_grant.pk, their_grant.pk, my_grant.pk],
        )
    assert LedgerEntry.objects.filter(account=mine).count() == 1


def test_a_grant_with_a_history_is_never_deleted_nor_moved_to_another_account() -> None:
    mine, theirs = f.account(), f.account()
    grant = f.grant(mine, "10")
    with pytest.raises(IntegrityError, match="void it"):
        _sql("DELETE FROM ledger_creditgrant WHERE id = %s", [grant.pk])
    with pytest.raises(IntegrityError, match="keeps its id and account"):
        _sql("UPDATE ledger_creditgrant SET account_id = %s WHERE id = %s", [theirs.pk, grant.pk])
    # Saving it whole (the same account and id written again) is an ordinary update.
    grant.refresh_from_db()
    grant.save()
    assert CreditGrant.objects.get(pk=grant.pk).account_id == mine.pk
