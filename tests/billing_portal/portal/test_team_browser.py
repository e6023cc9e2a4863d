"""Team management in a real browser: an invitation shows as pending, removing asks first."""

from __future__ import annotations

from typing import Any

import pytest
from django.db import connections

from billing_portal.portal.models import PortalMembership
from tests.accessibility import assert_accessible
from tests.billing_portal.portal.factories import PASSWORD, member, subscribed_customer
from tests.browser import screenshot
from tests.plans.factories import load_demo_catalog

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_owner_invites_then_revokes_after_a_confirmation(page: Any, live_server: Any) -> None:
    load_demo_catalog()
    acme = subscribed_customer("acme")
    owner = member(acme)
    base = live_server.url
    page.goto(f"{base}/portal/login/")
    assert page.inner_text("label[for=id_username]") == "E-mail"
    page.fill("input[name=username]", owner.username)
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/portal/")

    page.goto(f"{base}/portal/team/")
    page.fill("#id_email", "new@acme.test")
    page.select_option("#id_role", "admin")
    page.click("#invite button[type=submit]")
    page.wait_for_selector("text=Invitation sent to new@acme.test.")
    row = page.locator("tr", has_text="new@acme.test")
    assert "Invitation pending" in row.inner_text()
    screenshot(page, "portal-team.png")
    assert_accessible(page)

    row.get_by_role("link", name="Revoke invitation to new@acme.test").click()
    page.wait_for_selector("h1:has-text('Revoke the invitation to new@acme.test?')")
    assert PortalMembership.objects.filter(user__email="new@acme.test").exists()
    screenshot(page, "portal-team-revoke.png")
    assert_accessible(page)
    page.click("button:has-text('Revoke invitation')")
    page.wait_for_selector("text=The invitation to new@acme.test is revoked.")
    assert not PortalMembership.objects.filter(user__email="new@acme.test").exists()
    connections.close_all()
