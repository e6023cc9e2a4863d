"""Team management that is safe to use: pending invitations can be resent or revoked,
removing asks first and says what it does, and the roles are explained."""

from __future__ import annotations

import re

from django.contrib.auth.models import User
from django.core import mail
from django.test import Client
from django.utils import timezone

from billing_portal.portal.models import PortalMembership
from plans.models import Customer
from tests.billing_portal.portal.factories import member


def _invite(client: Client, email: str, captured: object) -> PortalMembership:
    with captured(execute=True):  # type: ignore[operator]
        client.post("/portal/team/invite/", {"email": email, "role": "admin"})
    return PortalMembership.objects.get(user__email=email)


def _row(html: str, email: str) -> str:
    match = re.search(rf"<tr>\s*<td>{re.escape(email)}.*?</tr>", html, re.S)
    assert match, f"no row for {email}"
    return match.group(0)


def test_an_invitee_is_pending_until_they_sign_in(
    client_owner: Client, owner: User, django_capture_on_commit_callbacks: object
) -> None:
    invited = _invite(client_owner, "new@acme.test", django_capture_on_commit_callbacks)
    html = client_owner.get("/portal/team/").content.decode()
    assert "Invitation pending, sent" in _row(html, "new@acme.test")
    assert "Resend invitation" in _row(html, "new@acme.test")
    assert "Revoke invitation" in _row(html, "new@acme.test")
    assert "Active" in _row(html, owner.email)
    invited.user.last_login = timezone.now()  # they signed in
    invited.user.save(update_fields=["last_login"])
    html = client_owner.get("/portal/team/").content.decode()
    assert "Active" in _row(html, "new@acme.test")
    assert "Resend invitation" not in _row(html, "new@acme.test")


def test_resending_sends_a_fresh_link_and_only_to_a_pending_member(
    client_owner: Client, django_capture_on_commit_callbacks: object
) -> None:
    invited = _invite(client_owner, "new@acme.test", django_capture_on_commit_callbacks)
    with django_capture_on_commit_callbacks(execute=True):  # type: ignore[operator]
        response = client_owner.post(f"/portal/team/{invited.pk}/resend/", follow=True)
    assert "Invitation sent again to new@acme.test." in response.content.decode()
    assert [m.to for m in mail.outbox] == [["new@acme.test"], ["new@acme.test"]]
    assert "/portal/reset/" in str(mail.outbox[-1].body)

    invited.user.last_login = timezone.now()
    invited.user.save(update_fields=["last_login"])
    response = client_owner.post(f"/portal/team/{invited.pk}/resend/", follow=True)
    assert "has already signed in" in response.content.decode()
    assert len(mail.outbox) == 2


def test_removing_asks_first_and_says_what_happens(client_owner: Client, acme: Customer) -> None:
    viewer = member(acme, "viewer")
    viewer.last_login = timezone.now()
    viewer.save(update_fields=["last_login"])
    membership = PortalMembership.objects.get(user=viewer)
    page = client_owner.get(f"/portal/team/{membership.pk}/remove/")
    assert page.status_code == 200
    text = page.content.decode()
    assert f"Remove {viewer.email}?" in text
    assert "loses access to this billing portal at once" in text
    assert PortalMembership.objects.filter(pk=membership.pk).exists()  # asking removes nothing
    done = client_owner.post(f"/portal/team/{membership.pk}/remove/", follow=True)
    assert f"{viewer.email} removed." in done.content.decode()
    assert not PortalMembership.objects.filter(pk=membership.pk).exists()


def test_revoking_a_pending_invitation_stops_its_link(
    client_owner: Client, django_capture_on_commit_callbacks: object
) -> None:
    invited = _invite(client_owner, "new@acme.test", django_capture_on_commit_callbacks)
    link = re.search(r"http://testserver(/portal/reset/\S+/)", str(mail.outbox[0].body))
    assert link
    text = client_owner.get(f"/portal/team/{invited.pk}/remove/").content.decode()
    assert "Revoke the invitation to new@acme.test?" in text
    done = client_owner.post(f"/portal/team/{invited.pk}/remove/", follow=True)
    assert "The invitation to new@acme.test is revoked." in done.content.decode()
    form = Client().get(link.group(1), follow=True)
    assert b"new_password1" not in form.content  # the link no longer sets a password


def test_the_roles_are_explained_and_viewers_see_no_actions(acme: Customer, owner: User) -> None:
    viewer = Client()
    viewer.force_login(member(acme, "viewer"))
    html = viewer.get("/portal/team/").content.decode()
    assert "What each role can do" in html
    assert "changes nothing" in html
    assert "invites and removes team members" in html
    assert "Remove" not in html and "Invite a member" not in html
    membership = PortalMembership.objects.get(user=owner)
    assert viewer.get(f"/portal/team/{membership.pk}/remove/").status_code == 403
