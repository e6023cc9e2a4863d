"""Rating reads its customer and the customer's periods with statements written once,
not querysets compiled every batch: the instances must be the ones the querysets give,
converted fields and related instances included, with no query left to run."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
import time_machine
from django.db import connection, transaction
from django.db.models import Model
from django.test.utils import CaptureQueriesContext

from ledger.sql import pipelined
from metering.rating import _PERIODS_SQL, _customer_locked, _periods
from plans.models import Customer, SubscriptionPeriod
from plans.services import subscription_change_plan, subscriptions_renew_due
from tests.plans.factories import load_demo_catalog, plan, subscribed

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def demo_catalog() -> None:
    load_demo_catalog()


def fields(instance: Model) -> dict[str, Any]:
    return {f.attname: getattr(instance, f.attname) for f in instance._meta.concrete_fields}


def test_the_customer_and_its_account_are_the_querysets() -> None:
    customer = subscribed("acme")
    Customer.objects.filter(pk=customer.pk).update(metadata={"tier": "gold", "seats": 3})
    expected = Customer.objects.select_related("account").get(pk=customer.pk)
    with transaction.atomic():
        read = _customer_locked(customer.pk)
        with CaptureQueriesContext(connection) as queries:
            assert fields(read) == fields(expected)
            assert fields(read.account) == fields(expected.account)
        assert queries.captured_queries == []
        assert read.metadata == {"tier": "gold", "seats": 3}  # decoded, not text
        assert not read._state.adding and read._state.db == "default"


def test_a_missing_customer_is_does_not_exist() -> None:
    with transaction.atomic(), pytest.raises(Customer.DoesNotExist):
        _customer_locked(987654)


def test_the_periods_are_the_querysets_oldest_first() -> None:
    customer = subscribed("acme")
    subscription = customer.subscriptions.get()
    # A downgrade applies at the period's end: the renewal opens a period of another
    # plan, so the customer has periods of two plan versions.
    subscription_change_plan(subscription=subscription, plan=plan("starter"), actor="test")
    with time_machine.travel(subscription.current_period_end + timedelta(hours=1)):
        subscriptions_renew_due()
    expected = list(
        SubscriptionPeriod.objects.filter(subscription__customer=customer)
        .select_related("plan_version__plan", "subscription")
        .order_by("start")
    )
    assert len({p.plan_version_id for p in expected}) == 2
    (rows,) = pipelined([(_PERIODS_SQL, [customer.pk])])
    read = _periods(rows)
    with CaptureQueriesContext(connection) as queries:
        assert [fields(p) for p in read] == [fields(p) for p in expected]
        assert [fields(p.plan_version) for p in read] == [fields(p.plan_version) for p in expected]
        assert [fields(p.plan_version.plan) for p in read] == [
            fields(p.plan_version.plan) for p in expected
        ]
        assert [fields(p.subscription) for p in read] == [fields(p.subscription) for p in expected]
    assert queries.captured_queries == []  # every related instance came with the row
    version = read[-1].plan_version
    assert isinstance(version.features, dict) and version.features  # a JSONField, decoded
    assert version.base_fee == expected[-1].plan_version.base_fee  # Money, with currency
