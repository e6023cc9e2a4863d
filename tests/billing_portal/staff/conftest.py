from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from django.test import Client
from django.utils import timezone

from billing_portal.invoicing.models import Invoice
from billing_portal.invoicing.purchases import purchase_create, purchase_demo_pay
from ledger import services as ledger
from ledger.models import CreditGrant
from metering.ingest import events_ingest
from metering.models import MeterEvent
from metering.rating import events_rate_pending
from plans.models import CreditPack, Customer
from plans.services import subscription_start
from tests.plans.factories import customer, load_demo_catalog, plan

ROLES = ("Billing admin", "Support", "Finance")


@pytest.fixture
def staff_user(db: None) -> Callable[[str], User]:
    def make(role: str) -> User:
        username = role.lower().replace(" ", "_")
        user = User.objects.create_user(username, password="pw", is_staff=True)
        user.groups.add(Group.objects.get(name=role))
        return user

    return make


class StaffClient(Client):
    """Posts a fresh one-time token unless the test gives one, as a browser posts the token
    each form page renders. Tests of a blank or missing token use a plain Client."""

    def post(self, path: Any, data: Any = None, *args: Any, **kwargs: Any) -> Any:
        if isinstance(data, dict) and "request_token" not in data:
            data = {**data, "request_token": uuid.uuid4().hex}
        return super().post(path, data, *args, **kwargs)


@pytest.fixture
def client_as(staff_user: Callable[[str], User]) -> Callable[[str], Client]:
    def make(role: str) -> Client:
        client = StaffClient()
        client.force_login(staff_user(role))
        return client

    return make


@pytest.fixture
def acme(db: None) -> Customer:
    load_demo_catalog()
    acme = customer()
    subscription_start(
        customer=acme, plan=plan("pro"), actor="t", start_at=timezone.now() - timedelta(hours=1)
    )
    return acme


def make_event(acme: Customer, identifier: str = "evt-1", value: str = "2000") -> MeterEvent:
    events_ingest(
        events=[
            {
                "identifier": identifier,
                "event_name": "llm.tokens",
                "customer": acme.external_id,
                "timestamp": (timezone.now() - timedelta(minutes=1)).isoformat(),
                "value": value,
                "dimensions": {"model": "large", "token_type": "output"},
            }
        ]
    )
    events_rate_pending()
    return MeterEvent.objects.get(customer=acme, identifier=identifier)


@pytest.fixture
def event(acme: Customer) -> MeterEvent:
    return make_event(acme)


@pytest.fixture
def promo_grant(acme: Customer) -> CreditGrant:
    return ledger.credit_grant_create(
        account=acme.account, amount=Decimal("500"), category="promotional", actor="t"
    )


@pytest.fixture
def paid_invoice(acme: Customer) -> Invoice:
    purchase = purchase_create(
        customer=acme, pack=CreditPack.objects.get(code="pack_10k"), actor="t"
    )
    purchase_demo_pay(purchase=purchase, actor="t")
    purchase.refresh_from_db()
    return purchase.invoice
