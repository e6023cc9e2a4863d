"""Two grants submitted at once by one staff user: the daily limit still holds."""

from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any
from unittest import mock

import pytest
from django.contrib.auth.models import Permission, User
from django.db import connection
from django.test import override_settings
from django.urls import reverse

from billing_portal.staff import services
from ledger.models import CreditGrant
from plans.models import Customer
from tests.billing_portal.staff.conftest import StaffClient

# Real transactions in two threads: each request commits, so each can see the other's.
pytestmark = pytest.mark.django_db(transaction=True)

FORM = {"amount": "1000", "category": "promotional", "priority": "50", "reason": "goodwill"}


def _support_user() -> User:
    # Permissions, not the Support group: a flush by an earlier transactional test
    # removes the groups the migrations made.
    user = User.objects.create_user("support_race", password="pw", is_staff=True)
    user.user_permissions.add(Permission.objects.get(codename="grant_promotional_credits"))
    return user


@override_settings(STAFF_GRANT_DAILY_LIMIT_CREDITS=Decimal("1500"))
def test_two_grants_submitted_at_once_cannot_pass_the_limit_together(acme: Customer) -> None:
    user = _support_user()
    url = reverse("admin:plans_customer_grant", args=[acme.pk])
    both_summed = threading.Barrier(2)
    real_sum = services.granted_in_window

    def sum_then_wait(operator: Any) -> Decimal:
        # Holds each request between reading the total and granting, so without a lock
        # both would read 0 and both grant; with it, the second cannot read until the
        # first commits, and the barrier gives up waiting for it.
        total = real_sum(operator)
        with contextlib.suppress(threading.BrokenBarrierError):
            both_summed.wait(timeout=2)
        return total

    def submit(token: str) -> int:
        client = StaffClient()
        client.force_login(user)
        try:
            return client.post(url, {**FORM, "confirm": "1", "request_token": token}).status_code
        finally:
            connection.close()

    with (
        mock.patch.object(services, "granted_in_window", sum_then_wait),
        ThreadPoolExecutor(max_workers=2) as pool,
    ):
        statuses = sorted(pool.map(submit, ["first", "second"]))
    assert statuses == [200, 302]
    grants = CreditGrant.objects.filter(account=acme.account, source_type="staff")
    assert [g.amount for g in grants] == [Decimal("1000")]
