"""The previews of a plan change and of a cancellation are what the change then records."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
import time_machine
from djmoney.money import Money

from ledger import services as ledger
from ledger.models import EntryKind, LedgerEntry
from plans.models import ChangeKind, Subscription, SubscriptionChange, SubscriptionPeriod
from plans.services import (
    SubscriptionConflict,
    subscription_cancel,
    subscription_cancel_preview,
    subscription_change_plan,
    subscription_change_plan_preview,
    subscription_start,
)
from tests.plans.factories import customer, load_demo_catalog, plan

pytestmark = pytest.mark.django_db

START = datetime(2024, 3, 1, 10, tzinfo=UTC)  # a 31-day period
MID = START + timedelta(days=15)  # 16 of 31 days left


def _pro(clock: time_machine.Traveller) -> Subscription:
    load_demo_catalog()
    subscription = subscription_start(customer=customer(), plan=plan("pro"), actor="t")
    clock.move_to(MID)
    return subscription


def test_an_upgrade_preview_is_what_the_upgrade_records(clock: time_machine.Traveller) -> None:
    subscription = _pro(clock)
    preview = subscription_change_plan_preview(subscription=subscription, plan=plan("team"))
    assert not SubscriptionChange.objects.exclude(kind=ChangeKind.START).exists()
    assert (preview.when, preview.effective_at) == ("now", MID)
    assert preview.proration == Money("77.42", "USD")  # (199 - 49) x 16 / 31
    assert preview.extra_included_credits == Decimal("41290.322581")  # 80,000 x 16 / 31

    subscription_change_plan(subscription=subscription, plan=plan("team"), actor="t")
    change = SubscriptionChange.objects.get(kind=ChangeKind.PLAN_CHANGE)
    assert change.proration == preview.proration
    assert change.extra_included_credits == preview.extra_included_credits
    assert change.effective_at == preview.effective_at
    assert (change.from_version, change.to_version) == (preview.from_version, preview.to_version)
    assert SubscriptionPeriod.objects.get().included_credits == Decimal(20000) + Decimal(
        "41290.322581"
    )


def test_a_downgrade_preview_waits_for_the_renewal(clock: time_machine.Traveller) -> None:
    subscription = _pro(clock)
    preview = subscription_change_plan_preview(subscription=subscription, plan=plan("starter"))
    assert (preview.when, preview.proration, preview.extra_included_credits) == (
        "period_end",
        None,
        Decimal(0),
    )
    assert preview.effective_at == subscription.current_period_end
    subscription = subscription_change_plan(
        subscription=subscription, plan=plan("starter"), actor="t"
    )
    change = SubscriptionChange.objects.get(kind=ChangeKind.PLAN_CHANGE_SCHEDULED)
    assert (change.effective_at, change.proration) == (preview.effective_at, None)
    assert subscription.pending_plan_version == preview.to_version

    # Keeping the current plan now drops the scheduled downgrade; the same plan with
    # nothing scheduled is no change at all.
    keep = subscription_change_plan_preview(subscription=subscription, plan=plan("pro"))
    assert (keep.unchanged, keep.replaces) == (False, preview.to_version)
    subscription = subscription_change_plan(subscription=subscription, plan=plan("pro"), actor="t")
    assert subscription.pending_plan_version is None
    again = subscription_change_plan_preview(subscription=subscription, plan=plan("pro"))
    assert again.unchanged


def test_a_cancel_now_preview_is_what_the_cancel_records(clock: time_machine.Traveller) -> None:
    subscription = _pro(clock)
    ledger.credits_consume(
        account=subscription.customer.account,
        amount="5000",
        cause=ledger.Cause("event", "1"),
        actor="t",
    )
    at_end = subscription_cancel_preview(subscription=subscription)
    assert (at_end.when, at_end.effective_at, at_end.refund) == (
        "period_end",
        subscription.current_period_end,
        None,
    )
    preview = subscription_cancel_preview(subscription=subscription, when="now")
    assert preview.refund == Money("-25.29", "USD")  # 49 x 16 / 31, given back
    assert preview.credits_written_off == Decimal(15000)
    assert preview.effective_at == MID

    subscription_cancel(subscription=subscription, actor="t", when="now")
    change = SubscriptionChange.objects.get(kind=ChangeKind.CANCEL)
    assert (change.proration, change.effective_at) == (preview.refund, preview.effective_at)
    expired = LedgerEntry.objects.filter(kind=EntryKind.EXPIRE)
    assert -sum(e.credits for e in expired) == preview.credits_written_off
    with pytest.raises(SubscriptionConflict):
        subscription_cancel_preview(subscription=subscription, when="now")
