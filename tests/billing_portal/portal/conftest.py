from __future__ import annotations

from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client

from plans.models import Customer
from tests.billing_portal.portal.factories import member, subscribed_customer, usage
from tests.plans.factories import load_demo_catalog


@pytest.fixture(autouse=True)
def _demo_mode(settings: Any) -> None:
    settings.STRIPE_API_KEY = ""


@pytest.fixture
def acme(db: None) -> Customer:
    load_demo_catalog()
    customer = subscribed_customer("acme")
    usage(customer, "evt-1")
    return customer


@pytest.fixture
def owner(acme: Customer) -> User:
    return member(acme)


@pytest.fixture
def client_owner(owner: User) -> Client:
    client = Client()
    client.force_login(owner)
    return client


@pytest.fixture
def viewer_client(acme: Customer) -> Client:
    client = Client()
    client.force_login(member(acme, "viewer"))
    return client


HTMX: dict[str, Any] = {"HTTP_HX_REQUEST": "true"}
