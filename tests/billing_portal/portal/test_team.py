from __future__ import annotations

import re

from django.contrib.auth.models import User
from django.core import mail
from django.test import Client

from billing_portal.portal.models import PortalMembership
from plans.models import Customer
from tests.billing_portal.portal.conftest import HTMX
from tests.billing_portal.portal.factories import member


def test_it_lists_members(client_owner: Client, owner: User) -> None:
    html = client_owner.get("/portal/team/").content.decode()
    assert owner.email in html
    assert "Invite a member" in html


def test_it_invites_a_member_by_e_mail(
    client_owner: Client, acme: Customer, django_capture_on_commit_callbacks: object
) -> None:
    with django_capture_on_commit_callbacks(execute=True):  # type: ignore[operator]
        response = client_owner.post(
            "/portal/team/invite/", {"email": "New@Acme.test", "role": "admin"}
        )
    assert response.status_code == 302
    membership = PortalMembership.objects.get(user__email="new@acme.test")
    assert membership.customer == acme
    assert membership.role == "admin"
    [message] = mail.outbox
    assert message.to == ["new@acme.test"]
    link = re.search(r"http://testserver(/portal/reset/\S+/)", str(message.body))
    assert link is not None
    form = Client().get(link.group(1), follow=True)
    assert b"new_password1" in form.content


def test_it_answers_an_htmx_invite_with_a_client_redirect(client_owner: Client) -> None:
    response = client_owner.post(
        "/portal/team/invite/", {"email": "x@acme.test", "role": "viewer"}, **HTMX
    )
    assert response["HX-Redirect"] == "/portal/team/"


def test_it_shows_invite_errors_in_the_partial(client_owner: Client, owner: User) -> None:
    response = client_owner.post(
        "/portal/team/invite/", {"email": owner.email, "role": "boss"}, **HTMX
    )
    html = response.content.decode()
    assert html.lstrip().startswith('<section class="card" id="invite"')
    assert "This address already has a portal account." in html
    assert "Select a valid choice." in html


def test_only_an_owner_invites_or_removes(acme: Customer, owner: User) -> None:
    client = Client()
    client.force_login(member(acme, "admin"))
    assert (
        client.post("/portal/team/invite/", {"email": "a@b.test", "role": "viewer"}).status_code
        == 403
    )
    target = PortalMembership.objects.get(user=owner)
    assert client.post(f"/portal/team/{target.pk}/remove/").status_code == 403


def test_it_removes_a_member(client_owner: Client, acme: Customer) -> None:
    viewer = member(acme, "viewer")
    membership = PortalMembership.objects.get(user=viewer)
    response = client_owner.post(f"/portal/team/{membership.pk}/remove/")
    assert response.status_code == 302
    assert not PortalMembership.objects.filter(pk=membership.pk).exists()
    viewer.refresh_from_db()
    assert not viewer.is_active


def test_an_owner_cannot_remove_themselves(client_owner: Client, owner: User) -> None:
    membership = PortalMembership.objects.get(user=owner)
    client_owner.post(f"/portal/team/{membership.pk}/remove/")
    assert PortalMembership.objects.filter(pk=membership.pk).exists()


def test_an_invitee_who_lost_the_e_mail_can_reset(client_owner: Client) -> None:
    client_owner.post("/portal/team/invite/", {"email": "late@acme.test", "role": "viewer"})
    Client().post("/portal/password-reset/", {"email": "late@acme.test"})
    assert [m.to for m in mail.outbox][-1] == ["late@acme.test"]
