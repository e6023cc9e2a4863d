from __future__ import annotations

from datetime import timedelta
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection
from django.utils import timezone

from ledger import services
from ledger.models import Account
from ledger.reconcile import run_checks
from tests.ledger import factories as f

pytestmark = pytest.mark.django_db


def _busy_account() -> Account:
    account = f.account()
    grant = f.grant(account, "100", category="paid")
    f.grant(account, "20")
    services.credits_consume(
        account=account, amount="30", cause=services.Cause("event", "1"), actor="t"
    )
    hold = services.hold_create(
        account=account, amount="15", expires_at=timezone.now() + timedelta(minutes=1), actor="t"
    ).hold
    assert hold is not None
    services.hold_capture(hold=hold, amount="12", cause=services.Cause("event", "2"), actor="t")
    services.hold_create(
        account=account, amount="5", expires_at=timezone.now() + timedelta(minutes=1), actor="t"
    )
    services.credit_grant_void(grant=grant, actor="t")
    return account


def _corrupt(sql: str) -> None:
    # Triggers are disabled only inside this test's transaction, which is rolled back.
    with connection.cursor() as cursor:
        # ALTER TABLE needs the deferred foreign-key checks of earlier inserts settled.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute("ALTER TABLE ledger_ledgerentry DISABLE TRIGGER ledger_entry_append_only")
        cursor.execute(sql)
        cursor.execute("ALTER TABLE ledger_ledgerentry ENABLE TRIGGER ledger_entry_append_only")


def test_it_passes_on_good_data() -> None:
    _busy_account()
    out = StringIO()
    call_command("reconcile", stdout=out)
    assert out.getvalue().startswith("OK: all ")
    assert all(not finding.problems for finding in run_checks())


def test_it_reports_an_entry_changed_behind_the_ledgers_back() -> None:
    account = _busy_account()
    _corrupt(
        "UPDATE ledger_ledgerentry SET credits = credits - 1 "
        f"WHERE id = (SELECT min(id) FROM ledger_ledgerentry WHERE kind = 'consume' "
        f"AND account_id = {account.pk})"
    )
    out = StringIO()
    with pytest.raises(CommandError, match="invariant checks failed"):
        call_command("reconcile", stdout=out)
    report = out.getvalue()
    assert "FAIL grant_amount_equals_remaining_plus_taken" in report
    assert "FAIL account_posted_equals_entries" in report
    assert f"account {account.pk}: ledger entries sum" in report


def test_it_reports_held_that_does_not_match_open_holds() -> None:
    account = _busy_account()
    with connection.cursor() as cursor:
        cursor.execute("UPDATE ledger_account SET held = held + 1 WHERE id = %s", [account.pk])
    findings = {finding.check: finding.problems for finding in run_checks()}
    assert findings["account_held_equals_open_holds"] == [
        f"account {account.pk}: held 6.000000, open holds 5.000000, hold entries sum 5.000000"
    ]


def test_it_reports_a_deleted_resolving_entry() -> None:
    _busy_account()
    _corrupt("DELETE FROM ledger_ledgerentry WHERE kind = 'capture'")
    problems = {finding.check: finding.problems for finding in run_checks()}
    assert len(problems["hold_resolved_once"]) == 1
    assert "0 resolving entries" in problems["hold_resolved_once"][0]


def test_it_reports_a_disabled_append_only_trigger() -> None:
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE ledger_ledgerentry DISABLE TRIGGER ledger_entry_append_only")
    problems = {finding.check: finding.problems for finding in run_checks()}
    assert problems["ledger_append_only_enforced"] == [
        "trigger ledger_entry_append_only on ledger_ledgerentry is missing or disabled"
    ]
