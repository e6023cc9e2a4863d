"""Staff see a failed payment: the invoice admin shows the attempts, the customer page
marks the subscription past due."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from billing_portal.invoicing.collection import (
    PaymentFailure,
    invoice_paid_record,
    invoice_payment_failure_record,
)
from billing_portal.invoicing.models import Invoice
from plans.models import Customer
from tests.billing_portal.stripe.factories import period_invoice

pytestmark = pytest.mark.django_db


@pytest.fixture
def failed(acme: Customer) -> Invoice:
    return invoice_payment_failure_record(
        invoice=period_invoice(acme),
        failure=PaymentFailure(
            failed_at=timezone.now() - timedelta(hours=1),
            attempts=2,
            error="Your card was declined.",
            next_attempt_at=timezone.now() + timedelta(days=1),
        ),
    )


def test_the_invoice_list_shows_the_failed_attempts_and_filters_them(
    client_as: Callable[[str], Client], failed: Invoice, acme: Customer
) -> None:
    other = period_invoice(acme)
    client = client_as("Support")
    page = client.get(reverse("admin:invoicing_invoice_changelist")).content.decode()
    assert "2 failed attempts, first" in page and "Your card was declined." in page
    assert "next attempt" in page

    unpaid = client.get(
        reverse("admin:invoicing_invoice_changelist"), {"payment": "failed_unpaid"}
    ).content.decode()
    assert failed.number in unpaid and other.number not in unpaid


def test_the_invoice_page_shows_the_payment(
    client_as: Callable[[str], Client], failed: Invoice
) -> None:
    page = client_as("Support").get(reverse("admin:invoicing_invoice_change", args=[failed.pk]))
    assert "2 failed attempts, first" in page.content.decode()


def test_the_customer_page_marks_the_subscription_past_due_until_paid(
    client_as: Callable[[str], Client], failed: Invoice, acme: Customer
) -> None:
    client = client_as("Support")
    url = reverse("admin:plans_customer_change", args=[acme.pk])
    page = client.get(url).content.decode()
    assert "Past due, period" in page and "PAST DUE since" in page
    assert f"$65.00 unpaid on {failed.number}" in page
    assert "usage allowed meanwhile (plan)" in page

    invoice_paid_record(invoice=failed)
    page = client.get(url).content.decode()
    assert "Active, period" in page and "PAST DUE" not in page
