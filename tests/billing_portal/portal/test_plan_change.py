"""Plan changes and cancellation in the portal: compare the public plans, then confirm on a
page that shows the prorated charge and what changes today and at renewal."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest
import time_machine
from django.test import Client
from djmoney.money import Money

from billing_portal.invoicing.models import LineKind
from billing_portal.invoicing.selectors import upcoming_invoice
from plans import catalog
from plans.models import ChangeKind, Customer, Plan, Subscription, SubscriptionChange
from plans.services import subscription_cancel_preview, subscription_change_plan_preview
from tests.billing_portal.portal.factories import member, subscribed_customer
from tests.plans.factories import BASIC, DEMO_CATALOG, plan

# The clock stops here (tests/conftest.py); acme's pro period runs from 24 Feb 10:00 to
# 24 Mar 10:00 (28 days), so 23 of its 28 days are left.
START = datetime(2026, 3, 1, 10, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _frozen(clock: time_machine.Traveller) -> None:
    """Every test here runs at START."""


def _subscription(customer: Customer) -> Subscription:
    return Subscription.objects.select_related("plan_version__plan").get(
        customer=customer, status="active"
    )


def _html(client: Client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, response
    return response.content.decode()


def test_it_compares_the_public_plans_with_price_credits_and_features(
    client_owner: Client,
) -> None:
    catalog.load(DEMO_CATALOG.read_text().replace("plans:\n", "plans:\n" + BASIC, 1))
    html = _html(client_owner, "/portal/billing/plans/")
    for name in ("Starter", "Pro", "Team", "Scale"):
        assert f">{name}</h2>" in html
    assert ">Basic</h2>" not in html  # not marked public in the catalog
    assert "$49 a month" in html and "$1,999" not in html and "$999 a month" in html
    assert "20,000 a month" in html and "500,000 a month" in html
    assert "Gpt4 access: Included" in html
    assert "Doc summaries: Up to 500 summaries a month" in html
    assert "Doc summaries: Up to 20,000 summaries a month" in html
    assert "Your plan" in html
    assert html.count("Choose ") == 3  # every plan but the current one
    assert '<input type="hidden" name="plan" value="team">' in html


def test_a_subscriber_keeps_a_plan_no_longer_offered_but_is_offered_only_public_ones(
    db: None,
) -> None:
    catalog.load(DEMO_CATALOG.read_text().replace("plans:\n", "plans:\n" + BASIC, 1))
    legacy = subscribed_customer("legacy", plan_code="basic")
    subscribed_customer("other", plan_code="pro")
    client = Client()
    client.force_login(member(legacy))
    html = _html(client, "/portal/billing/plans/")
    assert ">Basic</h2>" in html and "no longer offered" in html
    assert "$10 a month" in html
    Plan.objects.filter(code="team").update(public=False)
    assert client.get("/portal/billing/plans/confirm/?plan=team").status_code == 404
    assert (
        client.post("/portal/billing/plans/confirm/?plan=team", {"when": "now"}).status_code == 404
    )
    assert client.get("/portal/billing/plans/confirm/?plan=platinum").status_code == 404
    assert _subscription(legacy).plan_version.plan.code == "basic"


def test_an_upgrade_is_confirmed_with_its_proration_and_records_what_was_shown(
    client_owner: Client, acme: Customer
) -> None:
    subscription = _subscription(acme)
    preview = subscription_change_plan_preview(subscription=subscription, plan=plan("team"))
    assert preview.proration == Money("123.21", "USD")  # (199 - 49) x 23 / 28
    assert preview.extra_included_credits == Decimal("65714.285714")  # 80,000 x 23 / 28

    html = _html(client_owner, "/portal/billing/plans/confirm/?plan=team")
    assert "Upgrade to Team" in html
    assert "Charged today: <strong>$123.21</strong>" in html
    assert "<strong>65,714.29</strong> extra included credits, usable until 24 Mar 2026" in html
    assert "You pay Team's full price, $199 a month" in html
    assert "Upgrade now and pay $123.21" in html
    assert _subscription(acme).plan_version.plan.code == "pro"  # looking changes nothing

    response = client_owner.post(
        "/portal/billing/plans/confirm/?plan=team",
        {"version": preview.to_version.pk, "when": "now"},
    )
    assert response.status_code == 302 and response["Location"] == "/portal/billing/"
    assert _subscription(acme).plan_version.plan.code == "team"
    change = SubscriptionChange.objects.get(kind=ChangeKind.PLAN_CHANGE)
    assert change.proration == preview.proration
    assert change.extra_included_credits == preview.extra_included_credits
    line = next(
        line for line in upcoming_invoice(customer=acme).lines if line.kind == LineKind.PRORATION
    )
    assert line.amount == preview.proration
    assert "Change from Pro to Team" in line.description
    billing = _html(client_owner, "/portal/billing/")
    assert "Your plan is now Team. $123.21 is added to this period&#x27;s invoice." in billing


def test_a_plan_posted_without_confirmation_leads_to_the_confirmation(
    client_owner: Client, acme: Customer
) -> None:
    response = client_owner.post("/portal/billing/plan/", {"plan": "team"})
    assert response.status_code == 302
    assert response["Location"] == "/portal/billing/plans/confirm/?plan=team"
    assert _subscription(acme).plan_version.plan.code == "pro"
    unknown = client_owner.post("/portal/billing/plan/", {"plan": "platinum"})
    assert unknown.status_code == 200
    assert b"Select a valid choice." in unknown.content


def test_a_confirmation_for_terms_that_changed_since_is_refused(
    client_owner: Client, acme: Customer
) -> None:
    stale = client_owner.post(
        "/portal/billing/plans/confirm/?plan=team", {"version": "1", "when": "now"}
    )
    assert stale.status_code == 302
    assert stale["Location"] == "/portal/billing/plans/confirm/?plan=team"
    assert client_owner.post("/portal/billing/plans/confirm/?plan=team", {}).status_code == 302
    assert _subscription(acme).plan_version.plan.code == "pro"
    assert not SubscriptionChange.objects.exclude(kind=ChangeKind.START).exists()


def test_a_downgrade_is_confirmed_for_the_renewal_and_charges_nothing(
    client_owner: Client, acme: Customer
) -> None:
    html = _html(client_owner, "/portal/billing/plans/confirm/?plan=starter")
    assert "Change to Starter at renewal" in html
    assert "Charged today: <strong>nothing</strong>" in html
    assert "Nothing changes today: you keep Pro" in html
    assert "Your plan becomes <strong>Starter</strong>: $0 a month, 2,000 credits" in html
    gpt4 = re.search(r"Gpt4 access</th><td[^>]*>(\w[\w ]*)</td><td[^>]*>(\w[\w ]*)</td>", html)
    assert gpt4 is not None and gpt4.groups() == ("Included", "Not included")
    version = plan("starter").versions.get()
    client_owner.post(
        "/portal/billing/plans/confirm/?plan=starter", {"version": version.pk, "when": "period_end"}
    )
    subscription = _subscription(acme)
    assert subscription.plan_version.plan.code == "pro"
    assert subscription.pending_plan_version == version
    assert "Changing to <strong>Starter</strong>" in _html(client_owner, "/portal/billing/")

    # Keeping pro drops the scheduled downgrade, through the same confirmation.
    keep = _html(client_owner, "/portal/billing/plans/confirm/?plan=pro")
    assert "Keep Pro" in keep and "You renew on Pro" in keep
    pro = subscription.plan_version
    client_owner.post(
        "/portal/billing/plans/confirm/?plan=pro", {"version": pro.pk, "when": "period_end"}
    )
    assert _subscription(acme).pending_plan_version is None
    assert (
        client_owner.get("/portal/billing/plans/confirm/?plan=pro").status_code == 302
    )  # nothing to do


def test_cancelling_shows_both_ways_and_records_what_was_shown(
    client_owner: Client, acme: Customer
) -> None:
    subscription = _subscription(acme)
    now = subscription_cancel_preview(subscription=subscription, when="now")
    assert now.refund == Money("-40.25", "USD")  # 49 x 23 / 28, given back
    html = _html(client_owner, "/portal/billing/cancel/")
    assert "Your subscription ends on <strong>24 Mar 2026</strong>" in html
    assert "<strong>$40.25</strong> of this period's base fee" in html
    left = f"<strong>{now.credits_written_off:,.0f}</strong> unused included credits expire now"
    assert left in html

    client_owner.post("/portal/billing/cancel/", {"when": "period_end"})
    subscription = _subscription(acme)
    assert subscription.cancel_at_period_end
    assert "Already scheduled" in _html(client_owner, "/portal/billing/cancel/")
    assert "Your subscription ends on <strong>24 Mar 2026</strong>" in _html(
        client_owner, "/portal/billing/"
    )

    client_owner.post("/portal/billing/cancel/", {"when": "now"})
    assert not Subscription.objects.filter(customer=acme, status="active").exists()
    change = SubscriptionChange.objects.get(kind=ChangeKind.CANCEL)
    assert change.proration == now.refund
    assert client_owner.get("/portal/billing/cancel/").status_code == 302


def test_cancel_without_a_choice_changes_nothing(client_owner: Client, acme: Customer) -> None:
    response = client_owner.post("/portal/billing/cancel/", {"when": "tomorrow"})
    assert response["Location"] == "/portal/billing/cancel/"
    assert not _subscription(acme).cancel_at_period_end


def test_a_viewer_compares_plans_but_may_not_change_or_cancel(
    viewer_client: Client, acme: Customer
) -> None:
    html = _html(viewer_client, "/portal/billing/plans/")
    assert "Choose " not in html and "Ask an owner or admin" in html
    billing = _html(viewer_client, "/portal/billing/")
    assert "Cancel subscription" not in billing
    for url in ("/portal/billing/plans/confirm/?plan=team", "/portal/billing/cancel/"):
        assert viewer_client.get(url).status_code == 403
        assert viewer_client.post(url, {"when": "now"}).status_code == 403
    assert viewer_client.post("/portal/billing/plan/", {"plan": "team"}).status_code == 403
    assert _subscription(acme).plan_version.plan.code == "pro"


def test_another_customers_session_changes_only_its_own_subscription(
    client_owner: Client, acme: Customer
) -> None:
    other = subscribed_customer("globex")
    client_owner.post("/portal/billing/cancel/", {"when": "now"})
    assert _subscription(other).status == "active"
