"""Every staff write goes through the one-time token: blank or missing is refused, and a
form submitted twice applies once, in every workflow."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.contrib.auth.models import User
from django.test import Client

from billing_portal.staff import services
from billing_portal.staff.models import AuditLog
from billing_portal.staff.services import RELOAD_FORM_MESSAGE, Reason, StaffError
from tests.billing_portal.staff.test_permissions import WORKFLOWS, World, _snapshot

# The permission tests' fixture, imported so that pytest finds it in this module too.
from tests.billing_portal.staff.test_permissions import world as world

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(staff_user: Callable[[str], User]) -> Client:
    # A plain Client: it posts exactly the data each test gives, token or not.
    client = Client()
    client.force_login(staff_user("Billing admin"))
    return client


@pytest.mark.parametrize("workflow", sorted(WORKFLOWS))
@pytest.mark.parametrize("token", ["", "   ", None], ids=["blank", "spaces", "missing"])
def test_it_refuses_a_form_without_a_token_and_changes_nothing(
    world: World, admin_client: Client, workflow: str, token: str | None
) -> None:
    url_of, data_of, _ = WORKFLOWS[workflow]
    data = {**data_of(world), "confirm": "1"}
    if token is not None:
        data["request_token"] = token
    before = _snapshot(world)
    response = admin_client.post(url_of(world), data)
    assert response.status_code == 200
    assert RELOAD_FORM_MESSAGE in response.content.decode()
    assert RELOAD_FORM_MESSAGE in str(response.context["form"].non_field_errors())
    assert _snapshot(world) == before


@pytest.mark.parametrize("workflow", sorted(WORKFLOWS))
def test_the_same_token_twice_applies_once(
    world: World, admin_client: Client, workflow: str
) -> None:
    url_of, data_of, _ = WORKFLOWS[workflow]
    data = {**data_of(world), "confirm": "1", "request_token": "once-only"}
    first = admin_client.post(url_of(world), data)
    assert first.status_code in (200, 302)
    assert AuditLog.objects.get().request_token == "once-only"
    after_first = _snapshot(world)
    again = admin_client.post(url_of(world), data)
    assert _snapshot(world) == after_first
    # The same catalog loaded again changes nothing, so there is nothing to refuse.
    if workflow != "edit_catalog":
        assert again.context["form"].non_field_errors()


def test_the_form_page_renders_a_fresh_token_each_time(world: World, admin_client: Client) -> None:
    url_of, _, _ = WORKFLOWS["grant"]
    tokens = {
        admin_client.get(url_of(world)).context["form"]["request_token"].value() for _ in range(2)
    }
    assert len(tokens) == 2
    assert all(len(token) == 32 for token in tokens)


def test_the_service_refuses_a_blank_token_too(
    world: World, staff_user: Callable[[str], User]
) -> None:
    # The form already refuses it; this is for a caller that skips the form.
    before = _snapshot(world)
    with pytest.raises(StaffError, match="no one-time token"):
        services.staff_grant_close(
            operator=staff_user("Support"),
            grant=world.grant,
            reason=Reason(code="fraud", token=""),
        )
    assert _snapshot(world) == before
