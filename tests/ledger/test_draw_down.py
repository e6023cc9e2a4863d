"""Draw-down order: which grants a debit takes from, and in what order."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine

from ledger import services
from ledger.models import CreditGrant, LedgerEntry
from tests.ledger import factories as f

pytestmark = pytest.mark.django_db

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@dataclass
class G:
    label: str
    amount: str = "10"
    category: str = "promotional"
    priority: int = 50
    effective_days_ago: int = 1
    expires_in_days: int | None = None  # from now; negative: already expired
    applies_to: list[str] = field(default_factory=list)
    workspace: str | None = None


@dataclass
class Case:
    id: str
    grants: list[G]
    debit: str
    taken: list[tuple[str, str]]  # (label, credits) in order
    overage: str = "0"
    meter: str = "llm_tokens"
    workspace: str | None = None


CASES = [
    Case(
        "lower-priority-number-first",
        [G("p50"), G("p10", priority=10), G("p90", priority=90)],
        "25",
        [("p10", "10"), ("p50", "10"), ("p90", "5")],
    ),
    Case(
        "earlier-expiry-first-no-expiry-last",
        [G("never"), G("in-30d", expires_in_days=30), G("in-2d", expires_in_days=2)],
        "15",
        [("in-2d", "10"), ("in-30d", "5")],
    ),
    Case(
        "priority-beats-expiry",
        [G("soon", expires_in_days=2, priority=60), G("never", priority=40)],
        "12",
        [("never", "10"), ("soon", "2")],
    ),
    Case(
        "promotional-before-paid",
        [G("paid", category="paid"), G("promo", category="promotional")],
        "10",
        [("promo", "10")],
    ),
    Case(
        "included-and-rollover-before-paid",
        [G("paid", category="paid"), G("incl", category="included")],
        "11",
        [("incl", "10"), ("paid", "1")],
    ),
    Case(
        "expiry-beats-category",
        [G("paid-soon", category="paid", expires_in_days=1), G("promo-later", expires_in_days=9)],
        "4",
        [("paid-soon", "4")],
    ),
    Case(
        "earlier-effective-first",
        [G("newer", effective_days_ago=1), G("older", effective_days_ago=5)],
        "10",
        [("older", "10")],
    ),
    Case(
        "earlier-created-breaks-ties",
        [G("first"), G("second")],
        "15",
        [("first", "10"), ("second", "5")],
    ),
    Case(
        "not-yet-effective-is-skipped",
        [G("future", effective_days_ago=-1), G("now")],
        "12",
        [("now", "10")],
        overage="2",
    ),
    Case(
        "expired-is-skipped",
        [G("expired", effective_days_ago=10, expires_in_days=-5), G("live")],
        "3",
        [("live", "3")],
    ),
    Case(
        "meter-scope-excludes-other-meters",
        [G("docs-only", applies_to=["doc_summaries"], priority=0), G("any")],
        "5",
        [("any", "5")],
    ),
    Case(
        "meter-scope-includes-its-meter",
        [G("tokens-only", applies_to=["llm_tokens"], priority=0), G("any")],
        "12",
        [("tokens-only", "10"), ("any", "2")],
    ),
    Case(
        "workspace-grant-only-for-its-workspace",
        [G("ws-a", workspace="a", priority=0), G("pooled")],
        "5",
        [("pooled", "5")],
        workspace="b",
    ),
    Case(
        "workspace-usage-uses-its-grant-and-pooled",
        [G("ws-a", workspace="a", priority=0), G("pooled")],
        "15",
        [("ws-a", "10"), ("pooled", "5")],
        workspace="a",
    ),
    Case(
        "pooled-usage-never-takes-workspace-grants",
        [G("ws-a", workspace="a")],
        "3",
        [],
        overage="3",
    ),
    Case(
        "uncovered-rest-is-overage",
        [G("only", amount="7.5")],
        "10.000001",
        [("only", "7.5")],
        overage="2.500001",
    ),
]


@pytest.mark.parametrize("path", ["one", "batch"])
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_it_draws_down_in_the_documented_order(case: Case, path: str) -> None:
    """``one``: a debit on its own, handed back with its entries; ``batch``: in a batch,
    whose entries are written as rows (rating's path): read back from the ledger."""
    with time_machine.travel(NOW, tick=False):
        account = f.account()
        grants: dict[str, CreditGrant] = {}
        for spec in case.grants:
            effective_at = NOW - timedelta(days=spec.effective_days_ago)
            grants[spec.label] = services.credit_grant_create(
                account=account,
                amount=spec.amount,
                category=spec.category,
                priority=spec.priority,
                effective_at=effective_at,
                expires_at=(
                    NOW + timedelta(days=spec.expires_in_days)
                    if spec.expires_in_days is not None
                    else None
                ),
                applies_to=spec.applies_to,
                workspace=spec.workspace,
                actor="test",
            )
        cause = services.Cause("event", case.id)
        if path == "one":
            debit = services.credits_consume(
                account=account,
                amount=case.debit,
                cause=cause,
                actor="test",
                meter=case.meter,
                workspace=case.workspace,
            )
        else:
            (debit,) = services.credits_consume_batch(
                account=account,
                debits=[
                    services.DebitRequest(Decimal(case.debit), cause, case.meter, case.workspace)
                ],
                actor="test",
            )
            assert debit.entries == []

    entries = list(LedgerEntry.objects.filter(operation=debit.operation).order_by("pk"))
    if path == "one":
        assert [e.pk for e in debit.entries] == [e.pk for e in entries]
    assert {(e.account_id, e.cause_type, e.cause_id, e.meter, e.workspace) for e in entries} == {
        (account.pk, "event", case.id, case.meter, case.workspace)
    }
    assert [e.kind for e in entries] == ["consume"] * len(case.taken) + (
        ["overage"] if Decimal(case.overage) else []
    )
    assert -sum(e.credits for e in entries if e.kind == "overage") == Decimal(case.overage)
    by_id = {g.pk: label for label, g in grants.items()}
    taken = [
        (by_id[e.grant_id], str(-e.credits))
        for e in entries
        if e.kind == "consume" and e.grant_id is not None
    ]
    assert [(label, Decimal(c)) for label, c in taken] == [
        (label, Decimal(c)) for label, c in case.taken
    ]
    assert debit.overage == Decimal(case.overage)
    for label, credits in case.taken:
        grants[label].refresh_from_db()
        spec = next(s for s in case.grants if s.label == label)
        assert grants[label].remaining == Decimal(spec.amount) - Decimal(credits)
