"""Staff write a memo for each other and a sentence for the customer: the portal shows the
sentence (or the action's default) and never the memo."""

from __future__ import annotations

from collections.abc import Callable

from django.test import Client
from django.urls import reverse

from billing_portal.invoicing.models import CreditNote, Invoice
from billing_portal.portal.models import PortalMembership
from billing_portal.staff.models import AuditLog
from ledger.models import CreditGrant, LedgerOperation
from plans.apikeys import api_key_create
from plans.models import Customer
from tests.billing_portal.portal.factories import member

MEMO = "VIP, CEO complained on the phone, do not tell them about the outage"


def _portal(customer: Customer) -> Client:
    client = Client()
    client.force_login(member(customer))
    return client


def _grant(client: Client, acme: Customer, **extra: str) -> CreditGrant:
    data = {"amount": "1500", "category": "promotional", "priority": "50", "reason": "goodwill"}
    response = client.post(
        reverse("admin:plans_customer_grant", args=[acme.pk]),
        {**data, "memo": MEMO, "confirm": "1", **extra},
    )
    assert response.status_code == 302, response.content
    return CreditGrant.objects.get(account=acme.account, memo=MEMO)


def test_it_shows_the_customer_the_grant_description_and_never_the_memo(
    acme: Customer, client_as: Callable[[str], Client]
) -> None:
    grant = _grant(client_as("Billing admin"), acme, description="Sorry for Tuesday's slowdown")
    assert grant.description == "Sorry for Tuesday's slowdown"
    body = _portal(acme).get(reverse("portal:activity")).content.decode()
    assert "Sorry for Tuesday&#x27;s slowdown (1,500 credits)" in body
    assert "VIP" not in body and "goodwill" not in body


def test_it_uses_a_default_sentence_per_action_when_staff_leave_it_blank(
    acme: Customer, client_as: Callable[[str], Client]
) -> None:
    staff = client_as("Billing admin")
    grant = _grant(staff, acme)
    void = staff.post(
        reverse("admin:ledger_creditgrant_void", args=[grant.pk]),
        {"reason": "service_outage", "memo": MEMO, "confirm": "1"},
    )
    assert void.status_code == 302
    operations = LedgerOperation.objects.filter(account=acme.account, memo=MEMO)
    assert sorted(operations.values_list("description", flat=True)) == [
        "Credits added to your account",
        "Credits removed: Service outage",
    ]
    body = _portal(acme).get(reverse("portal:activity")).content.decode()
    assert "Credits added to your account (1,500 credits)" in body
    assert "Credits removed: Service outage (1,500 credits)" in body
    assert "VIP" not in body and "service_outage" not in body
    audit = AuditLog.objects.get(action="grant_void")
    assert audit.memo == MEMO and audit.details["description"] == "Credits removed: Service outage"


def test_a_voided_reason_other_reads_neutrally_to_the_customer(
    acme: Customer, client_as: Callable[[str], Client]
) -> None:
    staff = client_as("Billing admin")
    grant = _grant(staff, acme)
    staff.post(
        reverse("admin:ledger_creditgrant_expire", args=[grant.pk]),
        {"reason": "other", "memo": MEMO, "confirm": "1"},
    )
    operation = LedgerOperation.objects.get(account=acme.account, kind="expire")
    assert operation.description == "Credits expired early: Account adjustment"


def test_the_credit_note_shows_its_description_and_not_the_memo(
    acme: Customer, paid_invoice: Invoice, client_as: Callable[[str], Client]
) -> None:
    url = reverse("admin:invoicing_invoice_credit_note", args=[paid_invoice.pk])
    data = {"reason": "order_change", "method": "customer_credit", "amount": "5", "memo": MEMO}
    client_as("Finance").post(url, {**data, "confirm": "1"})
    note = CreditNote.objects.get()
    assert note.description == f"Credit for {paid_invoice.number}"
    page = _portal(acme).get(reverse("portal:credit_note", args=[note.pk])).content.decode()
    assert f"Credit for {paid_invoice.number}" in page
    assert "VIP" not in page


def test_a_written_credit_note_description_reaches_the_customer(
    acme: Customer, paid_invoice: Invoice, client_as: Callable[[str], Client]
) -> None:
    url = reverse("admin:invoicing_invoice_credit_note", args=[paid_invoice.pk])
    data = {"reason": "duplicate", "method": "out_of_band", "amount": "5", "memo": MEMO}
    words = "Refund of the duplicate charge on 3 March"
    client_as("Finance").post(url, {**data, "description": words, "confirm": "1"})
    note = CreditNote.objects.get()
    page = _portal(acme).get(reverse("portal:credit_note", args=[note.pk])).content.decode()
    assert words in page and "VIP" not in page


def test_the_api_takes_an_optional_description_and_defaults_it(acme: Customer) -> None:
    _, secret = api_key_create(name="backend", scopes=["read", "write"])
    api_client = Client(HTTP_AUTHORIZATION=f"Bearer {secret}")
    url = f"/api/v1/customers/{acme.external_id}/credit_grants"
    created = api_client.post(
        url,
        {"amount": "10", "category": "promotional", "memo": MEMO},
        content_type="application/json",
    )
    assert created.status_code == 201, created.content
    grant = CreditGrant.objects.get(pk=created.json()["id"])
    assert grant.description == "Credits added to your account"
    assert "memo" not in created.json()
    voided = api_client.post(
        f"/api/v1/credit_grants/{created.json()['id']}/void",
        {"reason": "billing_error", "memo": MEMO, "description": "Duplicate grant removed"},
        content_type="application/json",
    )
    assert voided.status_code == 200, voided.content
    operation = LedgerOperation.objects.get(account=acme.account, kind="void")
    assert (operation.description, operation.memo) == ("Duplicate grant removed", MEMO)


def test_portal_members_are_listed_on_the_customer_page(
    acme: Customer, client_as: Callable[[str], Client]
) -> None:
    member(acme, email="ops@acme.test")
    assert PortalMembership.objects.filter(customer=acme).exists()
    body = client_as("Support").get(reverse("admin:plans_customer_change", args=[acme.pk]))
    page = body.content.decode()
    assert "ops@acme.test" in page
    for listing in ("invoicing/invoice", "plans/subscription", "alerts/alert"):
        assert f"/admin/{listing}/?customer__id__exact={acme.pk}" in page
