"""The balance breakdown in a real browser (Debian's headless chromium): what the balance
is made of, each part's expiry and the warning for what expires soon, at desktop and
phone width."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from django.db import connections
from django.utils import timezone

from ledger.services import credit_grant_create
from tests.accessibility import assert_accessible
from tests.billing_portal.portal.factories import PASSWORD, member, subscribed_customer
from tests.browser import screenshot
from tests.plans.factories import load_demo_catalog

pytestmark = pytest.mark.django_db(transaction=True)


def test_the_dashboard_shows_what_the_balance_is_made_of_with_expiries(
    page: Any, live_server: Any
) -> None:
    load_demo_catalog()
    acme = subscribed_customer("acme", days_ago=3)
    now = timezone.now()
    credit_grant_create(
        account=acme.account,
        amount="5000",
        category="promotional",
        actor="test",
        expires_at=now + timedelta(days=3, hours=2),
    )
    credit_grant_create(
        account=acme.account,
        amount="750",
        category="promotional",
        actor="test",
        workspace="research",
    )
    owner = member(acme)
    base = live_server.url
    page.goto(f"{base}/portal/login/")
    page.fill("input[name=username]", owner.username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/portal/")

    rows = page.locator("#balance-parts tbody tr")
    texts = [" ".join(rows.nth(i).inner_text().split()) for i in range(rows.count())]
    soon = (now + timedelta(days=3, hours=2)).strftime("%-d %b %Y")
    assert texts[0] == f"Promotional credits 5,000 {soon} expiring in 3 days"
    assert texts[1].startswith("Credits included in your plan 20,000 ")
    assert texts[2] == "Promotional credits (workspace research) 750 never"
    warning = page.locator("#balance-parts strong.warning")
    assert warning.count() == 1 and warning.is_visible()
    screenshot(page, "portal-balance-parts.png")
    assert_accessible(page)

    page.set_viewport_size({"width": 390, "height": 844})
    page.reload()
    screenshot(page, "portal-balance-parts-390.png")
    box = page.locator("#balance-parts")
    widths = box.evaluate("b => [b.scrollWidth, b.clientWidth]")
    assert widths[0] <= widths[1] + 1, f"the breakdown fits a phone: {widths}"
    assert page.locator("#balance-parts strong.warning").is_visible()
    screenshot(page, "portal-balance-parts-390.png")
    connections.close_all()
