from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from django.test import Client

from billing_portal.invoicing.models import (
    CreditNote,
    CreditNoteMethod,
    CreditNoteReason,
    CreditPackPurchase,
    PurchaseStatus,
)
from billing_portal.invoicing.purchases import purchase_create
from ledger.selectors import account_balance
from plans.models import CreditPack, Customer, Subscription


def _purchase(customer: Customer) -> CreditPackPurchase:
    pack = CreditPack.objects.get(code="pack_10k")
    return purchase_create(customer=customer, pack=pack, actor="test")


def test_it_shows_the_plan_and_next_renewal(client_owner: Client, acme: Customer) -> None:
    subscription = Subscription.objects.get(customer=acme)
    html = client_owner.get("/portal/billing/").content.decode()
    assert "<strong>Pro</strong>" in html
    assert f"{subscription.current_period_end:%-d %b %Y}" in html
    assert "No invoices yet." in html


def test_it_lists_invoices_with_the_stripe_link(client_owner: Client, acme: Customer) -> None:
    purchase = _purchase(acme)
    invoice = purchase.invoice
    invoice.hosted_invoice_url = "https://invoice.stripe.com/i/acct_1/test_1"
    invoice.save(update_fields=["hosted_invoice_url"])
    html = client_owner.get("/portal/billing/").content.decode()
    assert invoice.number in html
    assert 'href="https://invoice.stripe.com/i/acct_1/test_1"' in html
    detail = client_owner.get(f"/portal/billing/invoices/{invoice.pk}/")
    assert detail.status_code == 200
    assert invoice.number in detail.content.decode()


def test_it_lists_credit_notes(client_owner: Client, acme: Customer) -> None:
    invoice = _purchase(acme).invoice
    note = CreditNote.objects.create(
        invoice=invoice,
        number="CN-0001",
        reason=CreditNoteReason.DUPLICATE,
        method=CreditNoteMethod.OUT_OF_BAND,
        total=Decimal("5.00"),
        actor="staff",
    )
    assert "CN-0001" in client_owner.get("/portal/billing/").content.decode()
    detail = client_owner.get(f"/portal/billing/credit-notes/{note.pk}/")
    assert detail.status_code == 200
    assert "Duplicate" in detail.content.decode()


def test_a_plan_change_goes_through_its_confirmation(client_owner: Client, acme: Customer) -> None:
    """Upgrades, downgrades and cancelling are confirmed first: test_plan_change.py."""
    response = client_owner.post("/portal/billing/plan/", {"plan": "team"})
    assert response.status_code == 302
    assert response["Location"] == "/portal/billing/plans/confirm/?plan=team"
    subscription = Subscription.objects.get(customer=acme, status="active")
    assert subscription.plan_version.plan.code == "pro"
    html = client_owner.get("/portal/billing/").content.decode()
    assert 'href="/portal/billing/plans/"' in html
    assert 'href="/portal/billing/cancel/"' in html


def test_it_shows_an_unknown_plan_as_a_field_error(client_owner: Client) -> None:
    response = client_owner.post("/portal/billing/plan/", {"plan": "platinum"})
    assert response.status_code == 200
    assert b"Select a valid choice." in response.content


def test_it_buys_a_pack_through_the_demo_checkout(client_owner: Client, acme: Customer) -> None:
    before = account_balance(account=acme.account).available
    response = client_owner.post("/portal/billing/packs/", {"pack": "pack_10k"})
    purchase = CreditPackPurchase.objects.get(customer=acme)
    assert response.status_code == 302
    assert response["Location"] == f"/portal/billing/checkout/{purchase.pk}/"
    page = client_owner.get(response["Location"])
    assert b"Pay $35.00" in page.content
    paid = client_owner.post(response["Location"])
    assert paid["Location"] == "/portal/"
    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.PAID
    assert account_balance(account=acme.account).available == before + Decimal(10000)
    # Paying again (a reload) changes nothing.
    client_owner.post(response["Location"])
    assert account_balance(account=acme.account).available == before + Decimal(10000)
    assert (
        b"This purchase is <strong>paid</strong>" in client_owner.get(response["Location"]).content
    )


def test_it_shows_an_unknown_pack_as_a_field_error(client_owner: Client) -> None:
    response = client_owner.post("/portal/billing/packs/", {"pack": "pack_nope"})
    assert response.status_code == 200
    assert b"Select a valid choice." in response.content


def test_it_has_no_demo_checkout_when_stripe_is_configured(
    client_owner: Client, acme: Customer, settings: Any
) -> None:
    purchase = _purchase(acme)
    settings.STRIPE_API_KEY = "sk_test_configured"
    assert client_owner.get(f"/portal/billing/checkout/{purchase.pk}/").status_code == 404


def test_it_refuses_the_demo_checkout_when_demo_payments_are_off(
    client_owner: Client, acme: Customer, settings: Any
) -> None:
    settings.STRIPE_API_KEY = ""
    settings.BILLING_DEMO_PAYMENTS = False
    before = account_balance(account=acme.account).available

    bought = client_owner.post("/portal/billing/packs/", {"pack": "pack_10k"}, follow=True)
    assert b"payments are not configured" in bought.content
    purchase = CreditPackPurchase.objects.get(customer=acme)
    paid = client_owner.post(f"/portal/billing/checkout/{purchase.pk}/", follow=True)
    assert b"payments are not configured" in paid.content

    purchase.refresh_from_db()
    assert purchase.status == PurchaseStatus.PENDING
    assert account_balance(account=acme.account).available == before


@pytest.mark.parametrize("url", ["/portal/billing/plan/", "/portal/billing/packs/"])
def test_it_refuses_billing_changes_from_a_viewer(viewer_client: Client, url: str) -> None:
    assert viewer_client.get("/portal/billing/").status_code == 200
    assert viewer_client.post(url, {"plan": "team", "pack": "pack_10k"}).status_code == 403


def test_a_viewer_cannot_pay(viewer_client: Client, acme: Customer) -> None:
    purchase = _purchase(acme)
    assert viewer_client.post(f"/portal/billing/checkout/{purchase.pk}/").status_code == 403


@pytest.mark.django_db(transaction=True)
def test_it_sends_the_buyer_to_stripe_checkout_when_stripe_is_configured(
    client_owner: Client, acme: Customer, monkeypatch: pytest.MonkeyPatch, settings: Any
) -> None:
    from tests.billing_portal.stripe import fake_stripe

    fake = fake_stripe.install(monkeypatch, settings)
    response = client_owner.post("/portal/billing/packs/", {"pack": "pack_50k"})
    purchase = CreditPackPurchase.objects.get(customer=acme)
    assert response.status_code == 302
    assert response["Location"] == purchase.checkout_url
    assert response["Location"].startswith("https://checkout.stripe.com/")
    session = fake.checkout_sessions[purchase.stripe_checkout_session_id]
    assert session["success_url"] == "http://testserver/portal/billing/?paid=1"
