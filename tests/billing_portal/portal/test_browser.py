"""The portal in a real browser (Debian's headless chromium): sign in, read the balance,
switch the chart in place, change a threshold, export CSV, buy a pack in demo mode."""

from __future__ import annotations

import csv
import io
import os
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from django.db import connections
from django.utils import timezone

from billing_portal.alerts.models import Alert, AlertSettings
from ledger.selectors import account_balance
from plans.models import Customer
from tests.accessibility import assert_accessible
from tests.billing_portal.portal.factories import PASSWORD, member, subscribed_customer, usage
from tests.browser import ARTIFACTS, screenshot
from tests.plans.factories import load_demo_catalog

pytestmark = pytest.mark.django_db(transaction=True)


def _customer_with_history() -> Customer:
    load_demo_catalog()
    acme = subscribed_customer("acme", days_ago=12)
    now = timezone.now()
    mixes = [
        ("large", "output", "40000"),
        ("large", "input", "100000"),
        ("small", "input", "300000"),
    ]
    for day in range(12):
        for n, (model, token_type, value) in enumerate(mixes[: 1 + day % 3]):
            usage(
                acme,
                f"evt-{day}-{n}",
                at=now - timedelta(days=day, hours=1),
                value=value,
                dimensions={"model": model, "token_type": token_type},
            )
    usage(acme, "evt-doc", at=now - timedelta(days=2), value="3", event_name="doc.summary")
    return acme


def test_it_works_in_a_browser(page: Any, live_server: Any) -> None:
    acme = _customer_with_history()
    owner = member(acme)
    available = account_balance(account=acme.account).available
    base = live_server.url

    page.goto(f"{base}/portal/")
    assert page.url.startswith(f"{base}/portal/login/")
    page.fill("input[name=username]", owner.username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/portal/")
    shown = page.inner_text("#available").replace(",", "")
    assert Decimal(shown) == available.quantize(Decimal("0.01")).normalize()
    assert page.evaluate("typeof window.htmx") == "object", "htmx.min.js is served"
    screenshot(page, "portal-dashboard.png")
    assert_accessible(page)

    # The range switch swaps the usage section in place: the page itself is not reloaded.
    page.evaluate("window.__stay = 1")
    page.click("text=7 days")
    page.wait_for_selector('#usage a[aria-current][href*="range=7&"]')
    assert page.evaluate("window.__stay") == 1
    assert "range=7" in page.url
    page.click("text=by feature")
    page.wait_for_selector('#usage a[aria-current][href*="group=feature"]')
    assert page.evaluate("window.__stay") == 1
    screenshot(page, "portal-dashboard-7-days-by-feature.png")

    page.set_viewport_size({"width": 390, "height": 844})
    page.goto(f"{base}/portal/")
    screenshot(page, "portal-dashboard-mobile.png")
    page.set_viewport_size({"width": 1280, "height": 900})

    page.goto(f"{base}/portal/controls/")
    page.fill("#id_usage_thresholds", "60, 90")
    page.click("#alerts button[type=submit]")
    page.wait_for_selector("#alerts .ok")
    assert AlertSettings.objects.get(customer=acme).usage_thresholds == [60, 90]
    page.fill("#id_spend_limit_credits", "-3")
    page.click("#limit button[type=submit]")
    page.wait_for_selector("#id_spend_limit_credits-error")
    screenshot(page, "portal-controls.png")
    assert_accessible(page)

    page.goto(f"{base}/portal/activity/")
    with page.expect_download() as download_info:
        page.click("text=Download CSV")
    path = download_info.value.path()
    rows = list(csv.DictReader(io.StringIO(Path(path).read_text())))
    assert "evt-0-0" in {row["identifier"] for row in rows}
    screenshot(page, "portal-activity.png")
    assert_accessible(page)

    page.goto(f"{base}/portal/billing/")
    screenshot(page, "portal-billing.png")
    assert_accessible(page)
    page.select_option("#id_pack", "pack_10k")
    page.click("#packs button[type=submit]")
    page.wait_for_url(f"{base}/portal/billing/checkout/*/")
    screenshot(page, "portal-checkout.png")
    page.click("text=Pay $35.00")
    page.wait_for_url(f"{base}/portal/")
    grown = Decimal(page.inner_text("#available").replace(",", ""))
    assert grown == (available + 10000).quantize(Decimal("0.01")).normalize()
    assert "Payment received" in page.inner_text(".messages")
    screenshot(page, "portal-dashboard-after-purchase.png")
    assert os.path.getsize(ARTIFACTS / "portal-dashboard.png") > 10_000
    # The ORM calls above ran beside playwright's event loop, in a context of their own:
    # close their connection here, where it can be reached.
    connections.close_all()


def test_an_alert_shows_as_a_banner_and_is_marked_read_in_place(
    page: Any, live_server: Any
) -> None:
    load_demo_catalog()
    acme = subscribed_customer("acme", days_ago=3)
    owner = member(acme)
    for n in range(5):  # 5 x 2,400 of the plan's 20,000 included credits: 60 %
        usage(acme, f"burst-{n}")
    alert = Alert.objects.get(customer=acme, kind="usage_threshold", threshold="50")
    base = live_server.url

    page.goto(f"{base}/portal/login/")
    page.fill("input[name=username]", owner.username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/portal/")
    assert alert.message in page.inner_text("#alert-banner")
    screenshot(page, "portal-alert-banner.png")

    page.evaluate("window.__stay = 1")
    page.click("#alert-banner button")
    page.wait_for_selector("#alert-banner li", state="detached")
    assert page.evaluate("window.__stay") == 1, "marked read in place, no reload"
    alert.refresh_from_db()
    assert alert.read_at is not None

    page.goto(f"{base}/portal/notifications/")
    assert alert.message in page.inner_text("body")
    page.goto(f"{base}/portal/")
    assert page.inner_text("#alert-banner").strip() == ""
    connections.close_all()
