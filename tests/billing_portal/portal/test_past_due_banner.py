"""The banner every portal page shows while an invoice's payment failed, and the invoice
page's payment status."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.utils import timezone

from billing_portal.invoicing.collection import (
    PaymentFailure,
    invoice_paid_record,
    invoice_payment_failure_record,
)
from billing_portal.invoicing.models import Invoice
from plans.models import Customer, PlanVersion, Subscription
from tests.billing_portal.stripe.factories import period_invoice

HOSTED = "https://invoice.stripe.com/i/acct_1/test_past_due"
PAGES = ("/portal/", "/portal/controls/", "/portal/billing/", "/portal/activity/", "/portal/team/")


@pytest.fixture
def failed(acme: Customer) -> Invoice:
    invoice = period_invoice(acme)
    return invoice_payment_failure_record(
        invoice=invoice,
        failure=PaymentFailure(
            failed_at=timezone.now() - timedelta(hours=2),
            attempts=1,
            error="Your card was declined.",
            next_attempt_at=timezone.now() + timedelta(days=2),
            hosted_invoice_url=HOSTED,
        ),
    )


def _deny_after(acme: Customer, days: int | None) -> None:
    version = Subscription.objects.get(customer=acme).plan_version
    PlanVersion.objects.filter(pk=version.pk).update(past_due_deny_after_days=days)


def test_no_banner_while_nothing_failed(client_owner: Client, acme: Customer) -> None:
    period_invoice(acme)
    assert 'id="past-due-banner"' not in client_owner.get("/portal/").content.decode()


def test_every_page_shows_the_banner_with_the_link_to_pay(
    client_owner: Client, failed: Invoice
) -> None:
    for page in PAGES:
        html = client_owner.get(page).content.decode()
        assert 'id="past-due-banner"' in html, page
        assert f'<a href="{HOSTED}" rel="noopener" id="past-due-pay">Pay now</a>' in html, page
        assert "your payment of $65.00 for invoice <a href=" in html, page
        assert failed.number in html
        assert "Your service continues meanwhile." in html  # the demo "pro" plan allows


def test_it_says_when_requests_will_be_refused(
    client_owner: Client, acme: Customer, failed: Invoice
) -> None:
    _deny_after(acme, 3)
    paused_at = failed.payment_failed_at + timedelta(days=3)  # type: ignore[operator]
    html = client_owner.get("/portal/billing/").content.decode()
    assert f"New requests will be refused from {paused_at:%-d %b %Y %H:%M} UTC" in html

    _deny_after(acme, 0)
    html = client_owner.get("/portal/billing/").content.decode()
    assert "New requests are refused until it is paid." in html


def test_viewers_see_it_too(viewer_client: Client, failed: Invoice) -> None:
    assert 'id="past-due-banner"' in viewer_client.get("/portal/").content.decode()


def test_the_invoice_page_shows_the_attempts_and_the_list_marks_it(
    client_owner: Client, failed: Invoice
) -> None:
    detail = client_owner.get(f"/portal/billing/invoices/{failed.pk}/").content.decode()
    assert "Payment: 1 failed attempt, the first on" in detail
    assert "(Your card was declined.)" in detail and "Next attempt:" in detail
    listing = client_owner.get("/portal/billing/").content.decode()
    assert "(payment failed)" in listing


def test_paid_the_banner_is_gone(client_owner: Client, failed: Invoice) -> None:
    invoice_paid_record(invoice=failed)
    assert 'id="past-due-banner"' not in client_owner.get("/portal/").content.decode()
    detail = client_owner.get(f"/portal/billing/invoices/{failed.pk}/").content.decode()
    assert "Payment: 1 failed attempt" in detail and "Paid on" in detail
    assert "(payment failed)" not in client_owner.get("/portal/billing/").content.decode()


def test_signed_out_pages_show_no_banner(client: Client, failed: Invoice) -> None:
    html = client.get("/portal/login/").content.decode()
    assert 'id="past-due-banner"' not in html
