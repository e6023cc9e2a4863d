"""A Support user grants credits and voids them again, in a real (headless) browser."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest
from django.contrib.auth.models import Group, User
from pytest_django.live_server_helper import LiveServer

from billing_portal.staff.models import AuditLog
from ledger.models import CreditGrant, LedgerEntry
from tests.browser import screenshot
from tests.plans.factories import customer, load_demo_catalog
from tests.real_parts import CHROMIUM_ARGS, chromium_executable


# The live server needs committed rows: a transactional test (its tables flushed, the
# roles restored by billing_portal.staff.roles after the flush).
@pytest.mark.django_db(transaction=True)
def test_support_grants_then_voids_credits(live_server: LiveServer) -> None:
    from playwright.sync_api import expect, sync_playwright

    executable = chromium_executable()
    load_demo_catalog()
    acme = customer()
    user = User.objects.create_user("sam", password="pw-support", is_staff=True)
    user.groups.add(Group.objects.get(name="Support"))

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        page = browser.new_page()
        page.goto(f"{live_server.url}/admin/login/")
        page.fill("#id_username", "sam")
        page.fill("#id_password", "pw-support")
        page.click("input[type=submit]")
        expect(page.locator("#user-tools")).to_contain_text("sam")

        page.goto(f"{live_server.url}/admin/plans/customer/{acme.pk}/change/")
        page.click("text=Grant credits")
        page.fill("#id_amount", "300")
        page.select_option("#id_category", "promotional")
        page.select_option("#id_reason", "goodwill")
        page.fill("#id_memo", "outage on the 3rd")
        page.click("input[name=review]")
        expect(page.locator(".staff-summary")).to_contain_text("300")
        page.click("input[name=confirm]")
        expect(page.locator(".messagelist")).to_contain_text("Granted 300")

        # The ORM may not run inside Playwright's event loop: the page tells the grant id.
        grant_id = re.search(r"grant (\d+)", page.locator(".messagelist").inner_text())
        assert grant_id is not None
        page.click(f"a[href='/admin/ledger/creditgrant/{grant_id[1]}/change/']")
        page.click("a.button:has-text('Void')")
        page.select_option("#id_reason", "fraud")
        page.click("input[name=review]")
        expect(page.locator(".staff-summary")).to_contain_text("Credits that will be voided")
        screenshot(page, "staff-void-confirmation.png")
        page.click("input[name=confirm]")
        expect(page.locator(".messagelist")).to_contain_text("is voided")
        screenshot(page, "staff-void-done.png")
        browser.close()

    grant = CreditGrant.objects.get(pk=int(grant_id[1]))
    assert (grant.status, grant.remaining) == ("voided", Decimal(0))
    assert LedgerEntry.objects.get(grant=grant, kind="void").credits == Decimal("-300")
    assert list(AuditLog.objects.order_by("pk").values_list("action", "operator_name")) == [
        ("grant_create", "sam"),
        ("grant_void", "sam"),
    ]
