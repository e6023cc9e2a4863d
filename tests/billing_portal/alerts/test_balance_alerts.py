"""Low balance, spend limit, balance depleted and anomalous burn: each once per period."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.core import mail
from django.utils import timezone

from billing_portal.alerts.models import Alert, AlertKind
from billing_portal.outbound.models import OutboundEvent
from billing_portal.portal.services import spend_limit_set
from metering.models import UsageRollup
from plans.models import Customer, Meter
from tests.billing_portal.alerts.factories import alert_settings, fired, use
from tests.billing_portal.portal.factories import member, subscribed_customer
from tests.plans.factories import load_demo_catalog

pytestmark = pytest.mark.django_db


@pytest.fixture
def acme(clock: time_machine.Traveller) -> Customer:
    load_demo_catalog()
    customer = subscribed_customer("acme")  # pro: 20,000 included credits
    member(customer)
    alert_settings(customer, usage_thresholds=[])
    return customer


def test_it_alerts_once_when_available_falls_below_the_low_balance(
    acme: Customer, django_capture_on_commit_callbacks: Any
) -> None:
    alert_settings(acme, low_balance_credits=Decimal(17500))
    with django_capture_on_commit_callbacks(execute=True):
        use(acme, 1)  # 18,500 left
    assert fired(acme) == []
    with django_capture_on_commit_callbacks(execute=True):
        use(acme, 2)  # 15,500 left
        use(acme, 1)  # 14,000 left
    assert fired(acme) == [("low_balance", "17500")]
    alert = Alert.objects.get()
    assert alert.data["available"] == "15500.000000"
    assert "fell below 17,500" in alert.message
    (email,) = mail.outbox
    assert email.to == ["owner@acme.test"]
    assert email.subject == "[Acme] Low credit balance"
    assert "fell below 17,500" in email.body


def test_without_settings_the_plans_low_balance_applies(clock: time_machine.Traveller) -> None:
    load_demo_catalog()
    starter = subscribed_customer("starter-co", plan_code="starter")  # 2,000; alerts below 200
    use(starter, 1, tokens="120000")  # 1,800 used, 200 left
    assert fired(starter, AlertKind.LOW_BALANCE) == []
    use(starter, 1, tokens="10000")  # 150 more: 50 left
    assert fired(starter, AlertKind.LOW_BALANCE) == [("low_balance", "200")]
    assert "fell below 200" in Alert.objects.get(kind=AlertKind.LOW_BALANCE).message


def test_it_alerts_once_when_the_spend_limit_is_reached(
    acme: Customer, django_capture_on_commit_callbacks: Any
) -> None:
    spend_limit_set(customer=acme, limit=Decimal(3000))
    with django_capture_on_commit_callbacks(execute=True):
        use(acme, 1)
    assert fired(acme) == []
    with django_capture_on_commit_callbacks(execute=True):
        use(acme, 1)  # 3,000 used: the limit
        use(acme, 1)
    assert fired(acme) == [("spend_limit_reached", "3000")]
    assert len(mail.outbox) == 1
    event = OutboundEvent.objects.get(type="alert.triggered")
    assert event.customer_id == acme.pk
    assert event.data["kind"] == "spend_limit_reached"
    assert event.data["data"]["spend_limit"] == "3000.000000"


def test_it_alerts_once_when_the_balance_is_depleted(
    clock: time_machine.Traveller, django_capture_on_commit_callbacks: Any
) -> None:
    load_demo_catalog()
    starter = subscribed_customer("starter-co", plan_code="starter")  # 2,000, hard stop
    alert_settings(starter, usage_thresholds=[], recipients=["ops@starter.test"])
    with django_capture_on_commit_callbacks(execute=True):
        use(starter, 1)  # 500 left
    assert fired(starter) == []
    with django_capture_on_commit_callbacks(execute=True):
        use(starter, 1)  # 0 left, 1,000 beyond
        use(starter, 1)
    assert fired(starter) == [("balance_depleted", "0")]
    (email,) = mail.outbox
    assert email.to == ["ops@starter.test"]
    depleted = OutboundEvent.objects.get(type="balance.depleted")
    assert depleted.customer_id == starter.pk
    assert depleted.data["data"]["available"] == "0.000000"
    assert OutboundEvent.objects.filter(type="alert.triggered").count() == 1


def _history(customer: Customer, hours: int, credits: str) -> None:
    """One rollup an hour for the ``hours`` before the current one."""
    meter = Meter.objects.get(code="llm_tokens")
    this_hour = timezone.now().replace(minute=0, second=0, microsecond=0)
    UsageRollup.objects.bulk_create(
        UsageRollup(
            customer=customer,
            meter=meter,
            hour=this_hour - timedelta(hours=h),
            dimensions={},
            dimensions_key="{}",
            value=Decimal(1),
            events=1,
            credits=Decimal(credits),
        )
        for h in range(1, hours + 1)
    )


def test_an_hour_far_above_the_trailing_average_is_anomalous_once(acme: Customer) -> None:
    _history(acme, 7 * 24, "100")
    use(acme, 1)  # 1,500 credits this hour, over 5 x 100
    assert fired(acme, AlertKind.ANOMALOUS_BURN) == [
        ("anomalous_burn", "2026-10-10T12:00:00+00:00")
    ]
    use(acme, 1)
    assert len(fired(acme, AlertKind.ANOMALOUS_BURN)) == 1
    alert = Alert.objects.get(kind=AlertKind.ANOMALOUS_BURN)
    assert alert.data["credits"] == "1500.000000"
    assert alert.data["hourly_average"] == "100.000000"


def test_usage_within_five_times_the_average_is_not_anomalous(acme: Customer) -> None:
    _history(acme, 7 * 24, "400")
    use(acme, 1)  # 1,500 < 5 x 400
    assert fired(acme, AlertKind.ANOMALOUS_BURN) == []


def test_less_than_a_day_of_history_is_not_enough_to_call_an_hour_anomalous(
    acme: Customer,
) -> None:
    _history(acme, 20, "1")
    use(acme, 1)
    assert fired(acme, AlertKind.ANOMALOUS_BURN) == []


def test_a_tiny_hour_is_never_anomalous(acme: Customer, settings: Any) -> None:
    settings.ALERT_BURN_MIN_CREDITS = "2000"
    _history(acme, 48, "1")
    use(acme, 1)  # 1,500: far above average, under the minimum
    assert fired(acme, AlertKind.ANOMALOUS_BURN) == []
