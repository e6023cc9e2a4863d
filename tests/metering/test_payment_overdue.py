"""Authorizations and an unpaid invoice: the plan's past_due_policy decides, from the
subscription's past_due_since, whether requests are denied with payment_overdue."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from metering.models import Authorization
from metering.services import AuthorizationRequest, authorization_create_for
from plans import catalog
from plans.models import Subscription
from tests.plans.factories import DEMO_CATALOG, subscription_recent

pytestmark = pytest.mark.django_db

# "pro" with a three-day grace, and "pro" as the demo catalog has it (allow).
STRICT = """  - code: strict
    name: Strict
    interval: month
    base_fee: "49.00"
    included_credits: "20000"
    rate_card: standard
    overage: {policy: postpaid, price_per_credit: "0.004"}
    past_due_policy: {deny_after_days: 3}
"""


@pytest.fixture(autouse=True)
def _catalog() -> None:
    catalog.load(DEMO_CATALOG.read_text().replace("plans:\n", "plans:\n" + STRICT, 1))


def _past_due(subscription: Subscription, days: float) -> None:
    since = timezone.now() - timedelta(days=days)
    Subscription.objects.filter(pk=subscription.pk).update(past_due_since=since)


def _ask(identifier: str, *, hold: bool = True, feature: str | None = None) -> Authorization:
    request = AuthorizationRequest(
        identifier=identifier, credits=Decimal(10), hold=hold, feature=feature
    )
    return authorization_create_for(external_id="acme", request=request, actor="test")


def test_it_allows_inside_the_grace_and_denies_after_it() -> None:
    subscription = subscription_recent(plan_code="strict")
    _past_due(subscription, 2.9)
    inside = _ask("inside")
    assert (inside.decision, inside.reason, inside.hold is not None) == ("allow", "", True)

    _past_due(subscription, 3)
    after, dry = _ask("after"), _ask("after-dry", hold=False)
    assert (after.decision, after.reason, after.hold) == ("deny", "payment_overdue", None)
    assert (dry.decision, dry.reason) == ("deny", "payment_overdue")
    assert after.credits == Decimal(10)  # the estimate is still priced, as for other denials


def test_payment_overdue_comes_before_the_features() -> None:
    subscription = subscription_recent(plan_code="strict")
    _past_due(subscription, 30)
    denied = _ask("feature", feature="no_such_feature")
    assert (denied.decision, denied.reason) == ("deny", "payment_overdue")


def test_paid_again_it_allows_at_once() -> None:
    subscription = subscription_recent(plan_code="strict")
    _past_due(subscription, 30)
    assert _ask("before").reason == "payment_overdue"
    Subscription.objects.filter(pk=subscription.pk).update(past_due_since=None)
    assert _ask("after").decision == "allow"


def test_a_plan_that_allows_keeps_allowing_while_past_due() -> None:
    subscription = subscription_recent(plan_code="pro")
    _past_due(subscription, 365)
    assert _ask("held").decision == "allow"
    assert _ask("dry", hold=False).decision == "allow"


def test_a_canceled_subscription_past_due_is_not_read() -> None:
    subscription = subscription_recent(plan_code="strict")
    _past_due(subscription, 30)
    Subscription.objects.filter(pk=subscription.pk).update(status="canceled")
    assert _ask("gone").reason == "no_active_subscription"
