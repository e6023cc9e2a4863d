"""Signed in as one customer's owner, every portal URL that names an object answers 404
for another customer's object, whatever the method."""

from __future__ import annotations

from decimal import Decimal

from django.test import Client
from django.urls import reverse

from billing_portal.alerts.models import Alert
from billing_portal.invoicing.models import CreditNote, CreditNoteMethod, CreditNoteReason
from billing_portal.invoicing.purchases import purchase_create
from billing_portal.portal import urls as portal_urls
from billing_portal.portal.models import PortalMembership
from plans.models import CreditPack, Customer
from tests.billing_portal.portal.factories import member, subscribed_customer


def test_another_customers_objects_are_404(client_owner: Client, acme: Customer) -> None:
    other = subscribed_customer("globex")
    other_member = PortalMembership.objects.get(user=member(other))
    purchase = purchase_create(
        customer=other, pack=CreditPack.objects.get(code="pack_10k"), actor="t"
    )
    note = CreditNote.objects.create(
        invoice=purchase.invoice,
        number="CN-OTHER",
        reason=CreditNoteReason.DUPLICATE,
        method=CreditNoteMethod.OUT_OF_BAND,
        total=Decimal("1.00"),
        actor="staff",
    )
    alert = Alert.objects.create(
        customer=other, kind="low_balance", threshold="100", message="Low balance"
    )
    urls = {
        "portal:checkout": (purchase.pk, ["get", "post"]),
        "portal:invoice": (purchase.invoice_id, ["get"]),
        "portal:credit_note": (note.pk, ["get"]),
        "portal:member_remove": (other_member.pk, ["get", "post"]),
        "portal:member_resend": (other_member.pk, ["post"]),
        "portal:notification_read": (alert.pk, ["post"]),
    }
    named = {f"portal:{p.name}" for p in portal_urls.urlpatterns if "<" in str(p.pattern)}
    named.discard("portal:password_reset_confirm")  # names a user by signed token, not id
    assert named == set(urls), "every URL with an object id is checked here"
    for name, (pk, methods) in urls.items():
        url = reverse(name, kwargs={"pk": pk})
        for method in methods:
            assert getattr(client_owner, method)(url).status_code == 404, (method, url)
            htmx = getattr(client_owner, method)(url, HTTP_HX_REQUEST="true")
            assert htmx.status_code == 404, (method, url)
    # The list pages show only the signed-in customer's rows.
    assert purchase.invoice.number not in client_owner.get("/portal/billing/").content.decode()
    assert "CN-OTHER" not in client_owner.get("/portal/billing/").content.decode()
    assert other_member.user.email not in client_owner.get("/portal/team/").content.decode()
    # Nothing changed on the other side.
    purchase.refresh_from_db()
    assert purchase.status == "pending"
    assert PortalMembership.objects.filter(pk=other_member.pk).exists()
    alert.refresh_from_db()
    assert alert.read_at is None


def test_get_and_post_each_return_404_not_405(client_owner: Client, acme: Customer) -> None:
    other = subscribed_customer("initech")
    purchase = purchase_create(
        customer=other, pack=CreditPack.objects.get(code="pack_10k"), actor="t"
    )
    assert client_owner.get(f"/portal/billing/checkout/{purchase.pk}/").status_code == 404
    assert client_owner.post(f"/portal/billing/checkout/{purchase.pk}/").status_code == 404
    assert client_owner.get(f"/portal/billing/invoices/{purchase.invoice_id}/").status_code == 404
    member_pk = PortalMembership.objects.get(user=member(other)).pk
    assert client_owner.post(f"/portal/team/{member_pk}/remove/").status_code == 404
