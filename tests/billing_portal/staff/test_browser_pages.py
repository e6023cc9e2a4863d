"""The staff pages in a real (headless) chromium at 1280 px: the void confirmation names the
customer and the balance after and warns at zero; the customer page and the grant form pass
axe-core; no table is wider than the page. Screenshots go to test-artifacts/."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group, User

from ledger import services as ledger
from ledger.models import CreditGrant
from plans.models import Customer
from tests.accessibility import assert_accessible
from tests.billing_portal.portal.factories import member, subscribed_customer, usage
from tests.browser import screenshot
from tests.plans.factories import load_demo_catalog

pytestmark = pytest.mark.django_db(transaction=True)


def _fits(page: Any) -> None:
    """Nothing runs off the page: the document is no wider than the window."""
    widths = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.documentElement.clientWidth]"
    )
    assert widths[0] <= widths[1], f"{page.url}: {widths[0]} px wide in a {widths[1]} px window"


def _log_in(page: Any, base: str) -> None:
    user = User.objects.create_user("billie", password="pw-billing", is_staff=True)
    user.groups.add(Group.objects.get(name="Billing admin"))
    page.goto(f"{base}/admin/login/")
    page.fill("#id_username", "billie")
    page.fill("#id_password", "pw-billing")
    page.click("input[type=submit]")
    page.wait_for_selector("#user-tools")


def _customer() -> Customer:
    load_demo_catalog()
    acme = subscribed_customer("acme")
    usage(acme, "evt-1")
    member(acme, email="ops@acme.test")
    return acme


def test_the_void_confirmation_shows_the_customer_the_balance_after_and_warns_at_zero(
    page: Any, live_server: Any
) -> None:
    acme = _customer()
    for grant in CreditGrant.objects.filter(account=acme.account, status="active"):
        ledger.credit_grant_void(grant=grant, actor="t", reason="test")
    kept = ledger.credit_grant_create(
        account=acme.account, amount="1500", category="promotional", actor="t"
    )
    last = ledger.credit_grant_create(
        account=acme.account, amount="250.5", category="promotional", actor="t"
    )
    base = live_server.url
    _log_in(page, base)

    page.goto(f"{base}/admin/ledger/creditgrant/{kept.pk}/void/")
    page.select_option("#id_reason", "service_outage")
    page.fill("#id_memo", "internal: ticket 4411")
    page.click("input[name=review]")
    summary = page.locator(".staff-summary")
    assert "acme" in summary.inner_text()
    assert "Available balance after (void)\t250.5 credits" in summary.inner_text()
    assert "Credits removed: Service outage" in summary.inner_text()
    assert page.locator(".staff-warning").count() == 0
    screenshot(page, "staff-void-confirmation-balance-after.png")
    _fits(page)
    page.click("input[name=confirm]")
    page.wait_for_selector(".messagelist")

    page.goto(f"{base}/admin/ledger/creditgrant/{last.pk}/void/")
    page.select_option("#id_reason", "fraud")
    page.click("input[name=review]")
    assert "Available balance after (void)\t0 credits" in summary.inner_text()
    warning = page.locator(".staff-warning").inner_text()
    assert "acme ends with no credits available" in warning
    screenshot(page, "staff-void-confirmation-zero-warning.png")
    _fits(page)
    assert_accessible(page)
    assert CreditGrant.objects.get(pk=last.pk).remaining == Decimal("250.5")


def test_the_customer_page_and_the_grant_form_are_accessible_and_fit(
    page: Any, live_server: Any
) -> None:
    acme = _customer()
    base = live_server.url
    _log_in(page, base)

    page.goto(f"{base}/admin/plans/customer/{acme.pk}/change/")
    assert "ops@acme.test" in page.content()
    screenshot(page, "staff-customer-page.png")
    _fits(page)
    assert_accessible(page)

    page.goto(f"{base}/admin/plans/customer/{acme.pk}/grant/")
    screenshot(page, "staff-grant-form.png")
    _fits(page)
    assert_accessible(page)

    for name, path in [
        ("staff-customers-list.png", "/admin/plans/customer/"),
        ("staff-grants-list.png", "/admin/ledger/creditgrant/"),
        ("staff-ledger-entries.png", "/admin/ledger/ledgerentry/"),
        ("staff-audit-log.png", "/admin/staff/auditlog/"),
        ("staff-revenue-report.png", "/admin/staff/auditlog/reports/revenue/"),
        ("staff-meter-events.png", "/admin/metering/meterevent/"),
    ]:
        page.goto(f"{base}{path}")
        screenshot(page, name)
        _fits(page)
