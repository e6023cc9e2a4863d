"""Rating goes on when alerts cannot be evaluated: billing usage comes first."""

from __future__ import annotations

from typing import Any

import pytest
import time_machine

from billing_portal.alerts import services
from billing_portal.alerts.models import Alert
from metering.models import EventRating, PeriodUsage
from plans.models import SubscriptionPeriod
from tests.billing_portal.alerts.factories import use
from tests.billing_portal.portal.factories import subscribed_customer
from tests.plans.factories import load_demo_catalog

pytestmark = pytest.mark.django_db


def test_a_failing_evaluation_does_not_stop_rating(
    clock: time_machine.Traveller, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_demo_catalog()
    acme = subscribed_customer("acme")

    def broken(**kwargs: object) -> None:
        Alert.objects.create(customer=acme, kind="low_balance", threshold="x", message="")
        raise RuntimeError("broken rule")

    monkeypatch.setattr(services, "usage_evaluate", broken)
    use(acme, 8)

    assert EventRating.objects.count() == 8
    assert PeriodUsage.objects.get().credits == 12000
    assert not Alert.objects.exists()  # its writes were rolled back with its savepoint


def test_rating_hands_the_customers_periods_to_the_evaluation(
    clock: time_machine.Traveller,
    monkeypatch: pytest.MonkeyPatch,
    django_assert_max_num_queries: Any,
) -> None:
    load_demo_catalog()
    acme = subscribed_customer("acme")
    calls: list[dict[str, Any]] = []
    evaluate = services.usage_evaluate

    def spied(**kwargs: Any) -> Any:
        calls.append(kwargs)
        if len(calls) > 1:
            return evaluate(**kwargs)
        # Where nothing fires, what rating read is enough: nothing is read through the ORM.
        with django_assert_max_num_queries(0):
            return evaluate(**kwargs)

    monkeypatch.setattr(services, "usage_evaluate", spied)
    use(acme, 1)  # 1,500 of 20,000 included credits: no alert
    use(acme, 7)  # 12,000: 60%

    call = calls[0]
    periods = call["customer_periods"]
    assert [p.pk for p in periods] == list(
        SubscriptionPeriod.objects.filter(subscription__customer=acme).values_list("pk", flat=True)
    )
    assert call["account_locked"] is True
    assert [(a.kind, a.threshold) for a in Alert.objects.all()] == [("usage_threshold", "50")]
