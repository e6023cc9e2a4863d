"""Rating goes on when alerts cannot be evaluated: billing usage comes first."""

from __future__ import annotations

import pytest
import time_machine

from billing_portal.alerts import services
from billing_portal.alerts.models import Alert
from metering.models import EventRating, PeriodUsage
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
