"""Auto-recharge: once per trigger, one at a time, back-off after a decline, a monthly cap."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.core import mail
from django.db import IntegrityError, transaction
from djmoney.money import Money

from billing_portal.alerts.models import (
    Alert,
    AlertKind,
    AutoRecharge,
    RechargeAttempt,
    RechargeStatus,
)
from billing_portal.alerts.recharge import recharge_attempts_reconcile
from billing_portal.alerts.tasks import recharge_attempt_run_task
from billing_portal.invoicing.models import CreditPackPurchase, PurchaseStatus
from billing_portal.stripe import adapter as stripe_adapter
from billing_portal.stripe import sync
from ledger.models import CreditGrant, GrantCategory
from ledger.selectors import account_balance
from plans.models import CreditPack, Customer
from tests.billing_portal.alerts.factories import (
    NOW,
    alert_settings,
    auto_recharge,
    events_add,
    fired,
    rate,
    use,
)
from tests.billing_portal.portal.factories import member, subscribed_customer
from tests.billing_portal.stripe import fake_stripe
from tests.billing_portal.stripe.fake_stripe import FakeStripe
from tests.plans.factories import load_demo_catalog

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme(clock: time_machine.Traveller) -> Customer:
    load_demo_catalog()
    customer = subscribed_customer("acme")  # pro: 20,000 included credits
    member(customer)
    alert_settings(customer, usage_thresholds=[])
    auto_recharge(customer, threshold="5000", pack="pack_10k")
    return customer


@pytest.fixture
def committed(django_capture_on_commit_callbacks: Any) -> Callable[..., None]:
    """Use credits and let what waits for the commit (tasks, e-mail) run."""

    def run(customer: Customer, count: int = 1, *, tokens: str = "100000") -> None:
        with django_capture_on_commit_callbacks(execute=True):
            use(customer, count, tokens=tokens)

    return run


def _paid_grants(customer: Customer) -> int:
    return CreditGrant.objects.filter(account=customer.account, category=GrantCategory.PAID).count()


def test_a_burst_of_batches_under_the_threshold_buys_once(
    acme: Customer, django_capture_on_commit_callbacks: Any
) -> None:
    # The worker is busy: every batch commits before the recharge task starts.
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        events_add(acme, 16)  # 24,000 credits; under 5,000 left from the 11th on
        assert rate(acme, batch=1) == 16

    (attempt,) = RechargeAttempt.objects.all()
    assert (attempt.status, attempt.trigger_key) == (RechargeStatus.PENDING, "2026-10:0")
    assert not CreditPackPurchase.objects.exists()
    for callback in callbacks:
        callback()
    recharge_attempt_run_task(attempt.pk)  # a redelivered message
    assert recharge_attempts_reconcile() == 0

    attempt.refresh_from_db()
    assert attempt.status == RechargeStatus.SUCCEEDED
    (purchase,) = CreditPackPurchase.objects.all()
    assert attempt.purchase_id == purchase.pk
    assert (purchase.status, purchase.source) == (PurchaseStatus.PAID, "auto_recharge")
    assert purchase.idempotency_key == f"auto-recharge-{attempt.pk}"
    assert _paid_grants(acme) == 1
    assert account_balance(account=acme.account).available == Decimal(10000)
    assert attempt.amount == Money("35.00", "USD")


def test_a_recharge_lifts_the_balance_so_the_next_batches_buy_nothing(
    acme: Customer, committed: Callable[..., None]
) -> None:
    committed(acme, 11)  # 3,500 left: buys 10,000
    committed(acme, 1)
    committed(acme, 1)  # 10,500 left
    assert RechargeAttempt.objects.get().status == RechargeStatus.SUCCEEDED
    assert _paid_grants(acme) == 1


def test_a_disabled_rule_or_a_balance_above_the_threshold_buys_nothing(
    acme: Customer, committed: Callable[..., None]
) -> None:
    committed(acme, 10)  # 5,000 left: not under 5,000
    assert not RechargeAttempt.objects.exists()
    acme.portal_auto_recharge.enabled = False
    acme.portal_auto_recharge.save()
    committed(acme, 1)
    assert not RechargeAttempt.objects.exists()


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, settings: Any) -> FakeStripe:
    return fake_stripe.install(monkeypatch, settings)


def _card(fake: FakeStripe, customer: Customer, method: str) -> None:
    gateway = stripe_adapter.gateway_from_settings()
    assert gateway is not None
    customer_id = sync.stripe_customer_ensure(gateway=gateway, customer=customer)
    fake.payment_method_save(customer_id, method, default=True)


def test_a_declined_payment_backs_off_then_tries_again(
    acme: Customer, fake: FakeStripe, clock: time_machine.Traveller, committed: Any
) -> None:
    _card(fake, acme, "pm_card_chargeDeclined")

    committed(acme, 11)  # 3,500 left

    first = RechargeAttempt.objects.get()
    assert first.status == RechargeStatus.DECLINED
    assert "declined" in first.failure_message
    assert first.next_allowed_at == NOW + timedelta(hours=1)
    assert CreditPackPurchase.objects.get().status == PurchaseStatus.FAILED
    (alert,) = Alert.objects.filter(kind=AlertKind.AUTO_RECHARGE_FAILED)
    assert alert.threshold == "2026-10:0"
    assert "could not buy 10,000 credits" in alert.message
    assert [m.subject for m in mail.outbox] == ["[Acme] Auto-recharge failed"]

    committed(acme, 1)  # still low, but inside the back-off
    clock.shift(timedelta(minutes=59))
    committed(acme, 1)
    assert RechargeAttempt.objects.count() == 1
    assert len(fake.calls("POST", "/v1/payment_intents")) == 1

    clock.shift(timedelta(minutes=2))
    committed(acme, 1)  # declined again: the wait doubles
    second = RechargeAttempt.objects.latest("pk")
    assert (second.trigger_key, second.status) == ("2026-10:1", RechargeStatus.DECLINED)
    assert second.next_allowed_at == NOW + timedelta(minutes=61) + timedelta(hours=2)
    assert Alert.objects.filter(kind=AlertKind.AUTO_RECHARGE_FAILED).count() == 2

    _card(fake, acme, "pm_card_visa")
    clock.shift(timedelta(hours=1))
    committed(acme, 1)
    assert RechargeAttempt.objects.count() == 2
    clock.shift(timedelta(hours=1, minutes=1))
    committed(acme, 1)

    third = RechargeAttempt.objects.latest("pk")
    assert (third.trigger_key, third.status) == ("2026-10:2", RechargeStatus.SUCCEEDED)
    assert third.next_allowed_at is None
    assert list(CreditPackPurchase.objects.order_by("pk").values_list("status", flat=True)) == [
        PurchaseStatus.FAILED,
        PurchaseStatus.FAILED,
        PurchaseStatus.PAID,
    ]
    assert _paid_grants(acme) == 1


def test_the_monthly_cap_stops_buying_and_alerts_once(
    acme: Customer, clock: time_machine.Traveller, committed: Any
) -> None:
    auto_recharge(acme, threshold="5000", pack="pack_10k", cap=2)
    big = "500000"  # 7,500 credits
    committed(acme, 3, tokens=big)  # 0 left: recharge 1 (10,000)
    committed(acme, 1, tokens=big)  # 2,500 left: recharge 2 (12,500)
    committed(acme, 2, tokens=big)  # 0 left: the cap
    committed(acme, 1, tokens=big)

    statuses = list(RechargeAttempt.objects.order_by("pk").values_list("status", flat=True))
    assert statuses == [
        RechargeStatus.SUCCEEDED,
        RechargeStatus.SUCCEEDED,
        RechargeStatus.SKIPPED_CAP,
    ]
    assert CreditPackPurchase.objects.count() == 2
    assert fired(acme, AlertKind.AUTO_RECHARGE_CAP_REACHED) == [
        ("auto_recharge_cap_reached", "2026-10")
    ]
    subjects = [m.subject for m in mail.outbox]
    assert subjects.count("[Acme] Auto-recharge monthly cap reached") == 1

    clock.move_to(datetime(2026, 11, 1, 12, 30, tzinfo=UTC))  # a new month
    committed(acme, 1, tokens=big)
    assert RechargeAttempt.objects.latest("pk").trigger_key == "2026-11:0"
    assert CreditPackPurchase.objects.filter(status=PurchaseStatus.PAID).count() == 3


def test_the_money_cap_stops_the_pack_that_would_pass_it(
    acme: Customer, clock: time_machine.Traveller, committed: Any
) -> None:
    auto_recharge(acme, threshold="5000", pack="pack_10k", amount_cap=Money("60.00", "USD"))
    big = "500000"  # 7,500 credits
    committed(acme, 3, tokens=big)  # 0 left: recharge 1 for 35.00
    committed(acme, 1, tokens=big)  # 2,500 left: 70.00 would pass 60.00
    committed(acme, 1, tokens=big)

    statuses = list(RechargeAttempt.objects.order_by("pk").values_list("status", flat=True))
    assert statuses == [RechargeStatus.SUCCEEDED, RechargeStatus.SKIPPED_CAP]
    assert CreditPackPurchase.objects.count() == 1
    assert fired(acme, AlertKind.AUTO_RECHARGE_CAP_REACHED) == [
        ("auto_recharge_cap_reached", "2026-10")
    ]
    alert = Alert.objects.get(kind=AlertKind.AUTO_RECHARGE_CAP_REACHED)
    assert "would pass its monthly cap of $60.00" in alert.message
    assert alert.data["spent"] == "35.00"
    subjects = [m.subject for m in mail.outbox]
    assert subjects.count("[Acme] Auto-recharge monthly cap reached") == 1

    clock.move_to(datetime(2026, 11, 1, 0, 30, tzinfo=UTC))  # a new calendar month (UTC)
    committed(acme, 1, tokens=big)
    assert RechargeAttempt.objects.latest("pk").status == RechargeStatus.SUCCEEDED
    assert CreditPackPurchase.objects.filter(status=PurchaseStatus.PAID).count() == 2


def test_the_money_cap_allows_spending_up_to_it(acme: Customer, committed: Any) -> None:
    auto_recharge(acme, threshold="5000", pack="pack_10k", amount_cap=Money("70.00", "USD"))
    committed(acme, 3, tokens="500000")
    committed(acme, 1, tokens="500000")
    assert CreditPackPurchase.objects.filter(status=PurchaseStatus.PAID).count() == 2
    assert not Alert.objects.filter(kind=AlertKind.AUTO_RECHARGE_CAP_REACHED).exists()


def test_a_money_cap_in_another_currency_is_refused_with_an_alert(
    acme: Customer, committed: Any
) -> None:
    auto_recharge(acme, threshold="5000", pack="pack_10k", amount_cap=Money("500.00", "EUR"))
    committed(acme, 11)  # 3,500 left
    committed(acme, 1)

    attempt = RechargeAttempt.objects.get()
    assert (attempt.status, attempt.trigger_key) == (
        RechargeStatus.SKIPPED_CAP,
        "2026-10:cap:currency",
    )
    assert not CreditPackPurchase.objects.exists()
    (alert,) = Alert.objects.filter(kind=AlertKind.AUTO_RECHARGE_CAP_REACHED)
    assert alert.threshold == "2026-10:currency"
    assert "cap is €500.00 in EUR, but the pack costs $35.00" in alert.message
    assert "not converted" in alert.message


def test_the_database_refuses_a_money_cap_that_is_not_positive(acme: Customer) -> None:
    rules = AutoRecharge.objects.filter(customer=acme)
    with pytest.raises(IntegrityError), transaction.atomic():
        rules.update(max_amount_per_month=Decimal("0.00"))
    with pytest.raises(IntegrityError), transaction.atomic():
        rules.update(max_amount_per_month=Decimal("-1.00"))


def test_a_pack_no_longer_sold_fails_the_attempt_and_says_why(
    acme: Customer, committed: Any
) -> None:
    CreditPack.objects.filter(code="pack_10k").update(active=False)
    committed(acme, 11)
    attempt = RechargeAttempt.objects.get()
    assert attempt.status == RechargeStatus.FAILED
    assert "no longer sold" in attempt.failure_message
    assert attempt.next_allowed_at is not None
    assert fired(acme, AlertKind.AUTO_RECHARGE_FAILED) == [("auto_recharge_failed", "2026-10:0")]


def test_the_database_refuses_a_second_recharge_in_flight(acme: Customer) -> None:
    pack = CreditPack.objects.get(code="pack_10k")
    fields = {"customer": acme, "pack": pack, "credits": pack.credits, "amount": pack.price}
    RechargeAttempt.objects.create(**fields, trigger_key="2026-10:0")
    with pytest.raises(IntegrityError), transaction.atomic():
        RechargeAttempt.objects.create(**fields, trigger_key="2026-10:1")
    with pytest.raises(IntegrityError), transaction.atomic():
        RechargeAttempt.objects.create(
            **fields, trigger_key="2026-10:0", status=RechargeStatus.DECLINED
        )
