"""What the Stripe tests share: the fake Stripe, a subscribed customer, the webhook
secret. A module that needs another customer (one without a subscription) defines its
own ``acme``."""

from __future__ import annotations

from typing import Any

import pytest

from plans.models import Customer
from plans.services import subscription_start
from tests.billing_portal.stripe import fake_stripe
from tests.billing_portal.stripe.fake_stripe import WEBHOOK_SECRET, FakeStripe
from tests.plans.factories import customer, load_demo_catalog, plan


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch, settings: Any) -> FakeStripe:
    return fake_stripe.install(monkeypatch, settings)


@pytest.fixture
def acme(db: None) -> Customer:
    load_demo_catalog()
    acme = customer()
    subscription_start(customer=acme, plan=plan("pro"), actor="t")
    return acme


@pytest.fixture
def webhook_secret(settings: Any) -> str:
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    return WEBHOOK_SECRET
