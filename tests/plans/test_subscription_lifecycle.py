"""Fourteen months of one subscription: renewals, rollover, upgrade, downgrade, cancel.

The ledger is checked after every period against numbers computed by hand.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from django.conf import settings
from djmoney.money import Money

from billing_portal.invoicing.models import Invoice
from billing_portal.invoicing.period_close import periods_close_due
from ledger import services as ledger
from ledger.models import CreditGrant, GrantStatus, LedgerEntry
from ledger.reconcile import run_checks
from ledger.selectors import account_balance
from plans.models import (
    ChangeKind,
    Customer,
    PeriodStatus,
    Subscription,
    SubscriptionChange,
    SubscriptionPeriod,
    SubscriptionStatus,
)
from plans.periods import add_months
from plans.services import (
    SubscriptionError,
    subscription_cancel,
    subscription_change_plan,
    subscription_start,
    subscriptions_renew_due,
)
from tests.plans.factories import customer, load_demo_catalog, plan

pytestmark = pytest.mark.django_db

ANCHOR = datetime(2024, 1, 31, 10, tzinfo=UTC)
START = ANCHOR  # where the clock fixture (tests/conftest.py) stops time


def _use(who: Customer, credits: str, n: int) -> None:
    ledger.credits_consume(
        account=who.account, amount=credits, cause=ledger.Cause("event", str(n)), actor="t"
    )


def _renew(clock: time_machine.Traveller, at: datetime) -> None:
    """Renew at ``at``, then close the ended period once its grace window has passed:
    until then its late events may still draw on its credits."""
    clock.move_to(at)
    assert subscriptions_renew_due() == 1
    assert subscriptions_renew_due() == 0  # running twice does nothing more
    ended = SubscriptionPeriod.objects.get(end=at, status=PeriodStatus.CLOSED)
    assert all(g.status != GrantStatus.EXPIRED for g in _period_grants(ended))
    clock.move_to(at + timedelta(seconds=settings.BILLING_GRACE_PERIOD_SECONDS))
    assert periods_close_due() == 1


def _period_grants(period: SubscriptionPeriod) -> list[CreditGrant]:
    return list(
        CreditGrant.objects.filter(source_type="subscription_period", source_id=str(period.pk))
    )


def _grants(who: Customer, period: SubscriptionPeriod) -> dict[str, tuple[Decimal, Decimal, str]]:
    return {
        g.category: (g.amount, g.remaining, g.status)
        for g in CreditGrant.objects.filter(
            account=who.account, source_type="subscription_period", source_id=str(period.pk)
        )
    }


def _assert_clean() -> None:
    assert [f for f in run_checks() if f.problems] == []


def test_fourteen_months_with_upgrade_downgrade_rollover_and_cancel(
    clock: time_machine.Traveller,
) -> None:
    load_demo_catalog()
    acme = customer()
    sub = subscription_start(customer=acme, plan=plan("pro"), actor="t")
    p0 = SubscriptionPeriod.objects.get(subscription=sub)
    assert (p0.start, p0.end) == (ANCHOR, datetime(2024, 2, 29, 10, tzinfo=UTC))
    assert _grants(acme, p0) == {"included": (Decimal(20000), Decimal(20000), "active")}

    # Month 1 (pro): 12,000 used, 8,000 left: 5,000 roll over (the plan's cap).
    clock.move_to(datetime(2024, 2, 10, tzinfo=UTC))
    _use(acme, "12000", 1)
    _renew(clock, p0.end)
    p0.refresh_from_db()
    p1 = SubscriptionPeriod.objects.get(subscription=sub, start=p0.end)
    assert p0.status == PeriodStatus.INVOICING
    assert p1.end == datetime(2024, 3, 31, 10, tzinfo=UTC)
    assert _grants(acme, p0) == {"included": (Decimal(20000), Decimal(0), "expired")}
    assert LedgerEntry.objects.get(grant__source_id=str(p0.pk), kind="expire").credits == -8000
    assert _grants(acme, p1) == {
        "included": (Decimal(20000), Decimal(20000), "active"),
        "rollover": (Decimal(5000), Decimal(5000), "active"),
    }
    assert account_balance(account=acme.account).posted == Decimal(25000)
    _assert_clean()

    # Month 2: upgrade to team on Mar 15, 16 of the period's 31 days left.
    clock.move_to(datetime(2024, 3, 15, 10, tzinfo=UTC))
    sub = subscription_change_plan(subscription=sub, plan=plan("team"), actor="t")
    change = SubscriptionChange.objects.get(subscription=sub, kind=ChangeKind.PLAN_CHANGE)
    assert change.proration == Money("77.42", "USD")  # (199 - 49) * 16 / 31
    assert change.extra_included_credits == Decimal("41290.322581")  # 80,000 * 16 / 31
    assert sub.plan_version.plan.code == "team"
    assert account_balance(account=acme.account).posted == Decimal("66290.322581")
    clock.move_to(datetime(2024, 3, 20, tzinfo=UTC))
    _use(acme, "30000", 2)  # included 20,000, rollover 5,000, then 5,000 of the extra grant
    _renew(clock, p1.end)
    p2 = SubscriptionPeriod.objects.get(subscription=sub, start=p1.end)
    # Left of the period's included credits: 36,290.322581; team caps rollover at 20,000.
    expired = LedgerEntry.objects.filter(grant__source_id=str(p1.pk), kind="expire")
    assert sum(e.credits for e in expired) == Decimal("-36290.322581")
    assert _grants(acme, p2) == {
        "included": (Decimal(100000), Decimal(100000), "active"),
        "rollover": (Decimal(20000), Decimal(20000), "active"),
    }
    _assert_clean()

    # Month 3 (team): a downgrade to pro waits for the period end.
    clock.move_to(datetime(2024, 4, 10, tzinfo=UTC))
    sub = subscription_change_plan(subscription=sub, plan=plan("pro"), actor="t")
    assert (sub.plan_version.plan.code, sub.pending_plan_version.plan.code) == ("team", "pro")  # type: ignore[union-attr]
    _renew(clock, p2.end)
    sub.refresh_from_db()
    p3 = SubscriptionPeriod.objects.get(subscription=sub, start=p2.end)
    assert (sub.plan_version.plan.code, sub.pending_plan_version) == ("pro", None)
    assert p3.plan_version.plan.code == "pro"
    assert _grants(acme, p3) == {
        "included": (Decimal(20000), Decimal(20000), "active"),
        "rollover": (Decimal(20000), Decimal(20000), "active"),  # team's cap, not pro's
    }
    # The old rollover grant lapses at its own expiry.
    clock.move_to(p3.start + timedelta(minutes=1))
    ledger.credit_grants_expire_due()
    assert account_balance(account=acme.account).posted == Decimal(40000)
    _assert_clean()

    # Months 4-14 (pro): 19,000 used each month, 1,000 rolls over each time; cancelled
    # in month 14 at period end.
    period = p3
    for month in range(4, 15):
        clock.move_to(period.start + timedelta(days=5))
        _use(acme, "19000", 100 + month)
        if month == 14:
            sub = subscription_cancel(subscription=sub, actor="t")
            assert sub.cancel_at_period_end and sub.status == SubscriptionStatus.ACTIVE
        _renew(clock, period.end)
        ledger.credit_grants_expire_due()
        if month == 14:
            break
        period = SubscriptionPeriod.objects.get(subscription=sub, start=period.end)
        assert period.start == add_months(ANCHOR, month)
        assert _grants(acme, period) == {
            "included": (Decimal(20000), Decimal(20000), "active"),
            "rollover": (Decimal(1000), Decimal(1000), "active"),
        }
        assert account_balance(account=acme.account).posted == Decimal(21000)
        _assert_clean()

    sub.refresh_from_db()
    assert sub.status == SubscriptionStatus.CANCELED
    assert sub.canceled_at == datetime(2025, 3, 31, 10, tzinfo=UTC)
    assert SubscriptionPeriod.objects.filter(subscription=sub).count() == 14
    assert account_balance(account=acme.account).posted == 0
    assert subscriptions_renew_due() == 0
    _assert_clean()


def test_periods_go_to_invoicing_once_after_the_grace_window(
    clock: time_machine.Traveller,
) -> None:
    load_demo_catalog()
    sub = subscription_start(customer=customer(), plan=plan("pro"), actor="t")
    clock.move_to(sub.current_period_end)
    assert subscriptions_renew_due() == 1
    assert periods_close_due() == 0  # still inside the grace window
    clock.shift(timedelta(hours=1))
    assert periods_close_due() == 1
    assert periods_close_due() == 0
    first = SubscriptionPeriod.objects.get(subscription=sub, start=ANCHOR)
    assert first.status == PeriodStatus.INVOICING
    assert Invoice.objects.filter(period=first).count() == 1


def test_cancel_now_ends_the_period_and_expires_included_credits(
    clock: time_machine.Traveller,
) -> None:
    load_demo_catalog()
    acme = customer()
    sub = subscription_start(customer=acme, plan=plan("pro"), actor="t")
    clock.move_to(ANCHOR + timedelta(days=3))
    sub = subscription_cancel(subscription=sub, actor="t", when="now")
    period = SubscriptionPeriod.objects.get(subscription=sub)
    assert (sub.status, sub.canceled_at) == (
        SubscriptionStatus.CANCELED,
        ANCHOR + timedelta(days=3),
    )
    assert (period.status, period.end) == (PeriodStatus.CLOSED, ANCHOR + timedelta(days=3))
    assert _grants(acme, period) == {"included": (Decimal(20000), Decimal(0), GrantStatus.EXPIRED)}
    with pytest.raises(SubscriptionError, match="is canceled"):
        subscription_cancel(subscription=sub, actor="t")
    _assert_clean()


def test_one_active_subscription_per_customer(clock: time_machine.Traveller) -> None:
    load_demo_catalog()
    acme = customer()
    subscription_start(customer=acme, plan=plan("pro"), actor="t")
    with pytest.raises(SubscriptionError, match="already has an active subscription"):
        subscription_start(customer=acme, plan=plan("team"), actor="t")
    assert Subscription.objects.count() == 1


def test_a_missed_renewal_catches_up_every_period(clock: time_machine.Traveller) -> None:
    load_demo_catalog()
    sub = subscription_start(customer=customer(), plan=plan("starter"), actor="t")
    clock.move_to(ANCHOR + timedelta(days=95))  # three period ends passed while beat was down
    assert subscriptions_renew_due() == 3
    sub.refresh_from_db()
    assert sub.current_period_start == datetime(2024, 4, 30, 10, tzinfo=UTC)
    assert SubscriptionPeriod.objects.filter(subscription=sub).count() == 4


def test_switching_interval_now_is_refused_with_a_fix(clock: time_machine.Traveller) -> None:
    load_demo_catalog()
    from plans import catalog
    from tests.plans.factories import DEMO_CATALOG

    catalog.load(
        DEMO_CATALOG.read_text().replace(
            "code: team\n    name: Team\n    interval: month",
            "code: team\n    name: Team\n    interval: year",
        )
    )
    sub = subscription_start(customer=customer(), plan=plan("pro"), actor="t")
    with pytest.raises(SubscriptionError, match="send when=period_end"):
        subscription_change_plan(subscription=sub, plan=plan("team"), actor="t", when="now")
