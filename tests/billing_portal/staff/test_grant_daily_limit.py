"""The daily grant limit: what one staff user may grant in a rolling 24 hours, in total."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.contrib.auth.models import Group, Permission, User
from django.test import Client, override_settings
from django.urls import reverse
from django.utils import timezone

from billing_portal.staff.models import AuditLog
from ledger.models import CreditGrant
from plans.models import Customer
from tests.billing_portal.staff.conftest import StaffClient

pytestmark = pytest.mark.django_db

FORM = {
    "category": "promotional",
    "priority": "50",
    "reason": "goodwill",
    "confirm": "1",
}


def _grant(client: Client, acme: Customer, amount: str, **extra: str) -> Any:
    url = reverse("admin:plans_customer_grant", args=[acme.pk])
    return client.post(url, {**FORM, "amount": amount, **extra})


def _granted(acme: Customer) -> list[Decimal]:
    grants = CreditGrant.objects.filter(account=acme.account, source_type="staff")
    return [g.amount for g in grants.order_by("pk")]


def _error(response: Any) -> str:
    return str(response.context["form"].non_field_errors())


def _client_for(user: User) -> Client:
    client = StaffClient()
    client.force_login(user)
    return client


def _support(username: str) -> User:
    user = User.objects.create_user(username, password="pw", is_staff=True)
    user.groups.add(Group.objects.get(name="Support"))
    return user


@override_settings(STAFF_GRANT_DAILY_LIMIT_CREDITS=Decimal("2500"))
def test_support_is_refused_past_the_daily_total_and_nothing_changes(
    acme: Customer, client_as: Callable[[str], Client]
) -> None:
    client = client_as("Support")
    assert _grant(client, acme, "1000").status_code == 302
    assert _grant(client, acme, "1000").status_code == 302
    refused = _grant(client, acme, "1000")
    assert refused.status_code == 200
    message = _error(refused)
    assert "you may grant 500 more credits today" in message
    assert "your limit is 2,500 credits per 24 hours" in message
    assert "Grant at most 500, or ask a Billing admin or a superuser" in message
    assert _granted(acme) == [Decimal("1000"), Decimal("1000")]
    assert AuditLog.objects.count() == 2
    assert _grant(client, acme, "500").status_code == 302
    assert "you may grant 0 more credits today" in _error(_grant(client, acme, "0.000001"))
    assert sum(_granted(acme)) == Decimal("2500")


def test_the_default_limit_is_ten_thousand_credits(
    acme: Customer, client_as: Callable[[str], Client], settings: Any
) -> None:
    assert Decimal(10000) == settings.STAFF_GRANT_DAILY_LIMIT_CREDITS  # unset in the env
    client = client_as("Support")
    # The per-grant cap (1,000 for Support) still holds; ten of them fill the day.
    assert "at most 1000 credits at once" in _error(_grant(client, acme, "1000.5"))
    for _ in range(10):
        assert _grant(client, acme, "1000").status_code == 302
    refused = _grant(client, acme, "1")
    assert "you may grant 0 more credits today: your limit is 10,000" in _error(refused)
    assert len(_granted(acme)) == 10


@override_settings(STAFF_GRANT_DAILY_LIMIT_CREDITS=Decimal("1000"))
def test_the_window_rolls_over_24_hours(acme: Customer, client_as: Callable[[str], Client]) -> None:
    client = client_as("Support")
    with time_machine.travel(timezone.now(), tick=False) as clock:
        assert _grant(client, acme, "600").status_code == 302
        clock.shift(timedelta(hours=12))
        assert _grant(client, acme, "400").status_code == 302
        clock.shift(timedelta(hours=11, minutes=59))
        assert "you may grant 0 more" in _error(_grant(client, acme, "1"))
        clock.shift(timedelta(minutes=2))
        # The first grant left the window; the second still counts.
        assert "you may grant 600 more" in _error(_grant(client, acme, "601"))
        assert _grant(client, acme, "600").status_code == 302
    assert _granted(acme) == [Decimal("600"), Decimal("400"), Decimal("600")]


@override_settings(STAFF_GRANT_DAILY_LIMIT_CREDITS=Decimal("1000"))
def test_each_staff_user_has_their_own_total(acme: Customer) -> None:
    first, second = _client_for(_support("support_a")), _client_for(_support("support_b"))
    assert _grant(first, acme, "1000").status_code == 302
    assert "you may grant 0 more" in _error(_grant(first, acme, "1"))
    assert _grant(second, acme, "1000").status_code == 302


@override_settings(STAFF_GRANT_DAILY_LIMIT_CREDITS=Decimal("1000"))
def test_the_review_step_and_the_form_page_show_what_is_left(
    acme: Customer, client_as: Callable[[str], Client]
) -> None:
    client = client_as("Support")
    url = reverse("admin:plans_customer_grant", args=[acme.pk])
    assert _grant(client, acme, "250.5").status_code == 302
    assert "You may grant 749.5 more credits today." in client.get(url).content.decode()
    review = {key: value for key, value in FORM.items() if key != "confirm"}
    response = client.post(url, {**review, "amount": "800"})
    assert response.context["stage"] == "form"
    assert "you may grant 749.5 more credits today" in _error(response)
    assert len(_granted(acme)) == 1


@override_settings(STAFF_GRANT_DAILY_LIMIT_CREDITS=Decimal("100"))
@pytest.mark.parametrize("who", ["Billing admin", "superuser", "Support with the permission"])
def test_exempt_staff_have_no_daily_limit(
    acme: Customer, client_as: Callable[[str], Client], who: str
) -> None:
    if who == "Billing admin":
        client = client_as("Billing admin")
    elif who == "superuser":
        client = _client_for(User.objects.create_superuser("root", password="pw"))
    else:
        user = _support("trusted_support")
        user.user_permissions.add(Permission.objects.get(codename="exceed_grant_daily_limit"))
        client = _client_for(user)
    for _ in range(3):
        assert _grant(client, acme, "1000").status_code == 302
    page = client.get(reverse("admin:plans_customer_grant", args=[acme.pk]))
    assert "more credits today" not in page.content.decode()
    assert len(_granted(acme)) == 3
