from __future__ import annotations

from io import StringIO

import pytest
from django.core import mail
from django.core.management import CommandError, call_command

from billing_portal.portal.models import PortalMembership
from plans.models import Customer


def test_it_invites_a_first_owner_from_the_command_line(
    acme: Customer, django_capture_on_commit_callbacks: object
) -> None:
    out = StringIO()
    with django_capture_on_commit_callbacks(execute=True):  # type: ignore[operator]
        call_command(
            "portal_invite", "acme", "boss@acme.test", "--site-url=https://b.test", stdout=out
        )
    membership = PortalMembership.objects.get(user__email="boss@acme.test")
    assert membership.role == "owner"
    assert membership.customer == acme
    [message] = mail.outbox
    assert "https://b.test/portal/reset/" in str(message.body)
    assert "invited boss@acme.test as owner" in out.getvalue()


def test_it_refuses_an_unknown_customer_or_a_taken_address(acme: Customer) -> None:
    with pytest.raises(CommandError, match="no customer"):
        call_command("portal_invite", "nobody", "x@y.test")
    call_command("portal_invite", "acme", "x@y.test", stdout=StringIO())
    with pytest.raises(CommandError, match="already has a portal account"):
        call_command("portal_invite", "acme", "x@y.test")
