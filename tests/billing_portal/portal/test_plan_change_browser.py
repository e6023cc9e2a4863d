"""Changing plan and cancelling in a real browser (Debian's headless chromium): compare the
plans, read the confirmation with its prorated charge, confirm; then a downgrade for the
renewal and both ways of cancelling, each through its confirmation page."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import time_machine
from django.db import connections
from django.utils import timezone

from billing_portal.invoicing.models import LineKind
from billing_portal.invoicing.selectors import upcoming_invoice
from billing_portal.portal.plan_views import money_text
from plans.models import ChangeKind, Customer, Subscription, SubscriptionChange
from plans.services import subscription_cancel_preview, subscription_change_plan_preview
from tests.accessibility import assert_accessible
from tests.billing_portal.portal.factories import PASSWORD, member, subscribed_customer
from tests.browser import screenshot
from tests.plans.factories import load_demo_catalog, plan

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def stopped_clock() -> Iterator[None]:
    """The server's clock stands still at the real time (cookies stay valid in the
    browser), so the prorated amount on the page is the one the change records."""
    with time_machine.travel(timezone.now().replace(microsecond=0), tick=False):
        yield


def _both_widths(page: Any, name: str) -> None:
    """The page at 1280 px, then at 390 px (a phone)."""
    screenshot(page, f"{name}.png")
    page.set_viewport_size({"width": 390, "height": 844})
    screenshot(page, f"{name}-mobile.png")
    page.set_viewport_size({"width": 1280, "height": 900})


def _sign_in(page: Any, base: str, acme: Customer) -> None:
    owner = member(acme)
    page.goto(f"{base}/portal/login/")
    page.fill("input[name=username]", owner.username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/portal/")


def _subscription(acme: Customer) -> Subscription:
    return Subscription.objects.select_related("plan_version__plan").get(customer=acme)


def test_an_upgrade_is_confirmed_with_its_proration(
    page: Any, live_server: Any, stopped_clock: None
) -> None:
    load_demo_catalog()
    acme = subscribed_customer("acme", days_ago=10)
    base = live_server.url
    _sign_in(page, base, acme)

    page.goto(f"{base}/portal/billing/")
    page.click("text=Compare and change plans")
    page.wait_for_url(f"{base}/portal/billing/plans/")
    cards = page.inner_text("#plans")
    for shown in ("Starter", "$49 a month", "$999 a month", "100,000 a month", "Gpt4 access"):
        assert shown in cards
    assert "Your plan" in page.inner_text("#plan-pro")
    assert_accessible(page)
    _both_widths(page, "portal-plans")

    preview = subscription_change_plan_preview(subscription=_subscription(acme), plan=plan("team"))
    assert preview.when == "now" and preview.proration is not None
    charged = money_text(preview.proration)
    page.click("#plan-team button")
    page.wait_for_url(f"{base}/portal/billing/plans/confirm/?plan=team")
    assert f"Charged today: {charged}" in page.inner_text("#charged-today")
    today = page.inner_text("#today")
    assert "Your plan becomes Team at once." in today
    assert "extra included credits" in today
    assert "full price, $199 a month" in page.inner_text("#at-renewal")
    assert _subscription(acme).plan_version.plan.code == "pro"
    assert_accessible(page)
    _both_widths(page, "portal-plan-confirm-upgrade")

    page.click(f"text=Upgrade now and pay {charged}")
    page.wait_for_url(f"{base}/portal/billing/")
    assert f"Your plan is now Team. {charged} is added" in page.inner_text(".messages")
    assert _subscription(acme).plan_version.plan.code == "team"
    change = SubscriptionChange.objects.get(kind=ChangeKind.PLAN_CHANGE)
    assert change.proration == preview.proration
    assert change.extra_included_credits == preview.extra_included_credits
    lines = upcoming_invoice(customer=acme).lines
    proration = next(line for line in lines if line.kind == LineKind.PRORATION)
    assert proration.amount == preview.proration
    connections.close_all()


def test_a_downgrade_and_both_ways_of_cancelling_are_confirmed(
    page: Any, live_server: Any, stopped_clock: None
) -> None:
    load_demo_catalog()
    acme = subscribed_customer("acme", days_ago=10)
    base = live_server.url
    _sign_in(page, base, acme)
    renewal = f"{timezone.localtime(_subscription(acme).current_period_end):%-d %b %Y}"

    page.goto(f"{base}/portal/billing/plans/")
    page.click("#plan-starter button")
    page.wait_for_url(f"{base}/portal/billing/plans/confirm/?plan=starter")
    assert "Charged today: nothing" in page.inner_text("#charged-today")
    assert f"until {renewal}" in page.inner_text("#today")
    assert "Your plan becomes Starter" in page.inner_text("#at-renewal")
    assert "Not included" in page.inner_text("#feature-changes")
    assert_accessible(page)
    _both_widths(page, "portal-plan-confirm-downgrade")
    page.click(f"text=Change to Starter on {renewal}")
    page.wait_for_url(f"{base}/portal/billing/")
    assert "Changing to Starter at the next renewal" in page.inner_text("#plan")
    subscription = _subscription(acme)
    assert subscription.plan_version.plan.code == "pro"
    assert subscription.pending_plan_version is not None

    now = subscription_cancel_preview(subscription=subscription, when="now")
    assert now.refund is not None
    page.click("text=Cancel subscription")
    page.wait_for_url(f"{base}/portal/billing/cancel/")
    assert f"ends on {renewal}" in page.inner_text("#cancel-at-period-end")
    given_back = page.inner_text("#cancel-now")
    assert f"{money_text(-now.refund)} of this period's base fee" in given_back
    assert "unused included credits expire now" in given_back
    assert_accessible(page)
    _both_widths(page, "portal-cancel-confirm")
    page.click(f"text=Cancel on {renewal}")
    page.wait_for_url(f"{base}/portal/billing/")
    assert f"Your subscription ends on {renewal}" in page.inner_text("#plan")
    assert _subscription(acme).cancel_at_period_end

    page.click("text=Cancel subscription")
    page.wait_for_url(f"{base}/portal/billing/cancel/")
    assert "Already scheduled" in page.inner_text("#cancel-at-period-end")
    page.click("#cancel-now button")
    page.wait_for_url(f"{base}/portal/billing/")
    assert "No active plan" in page.inner_text("#plan")
    assert SubscriptionChange.objects.get(kind=ChangeKind.CANCEL).proration == now.refund
    connections.close_all()
