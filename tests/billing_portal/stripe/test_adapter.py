"""The Stripe adapter: errors, amounts and configuration, against the stateful fake."""

from __future__ import annotations

import socket
from typing import Any

import pytest
from djmoney.money import Money

from billing_portal.invoicing.models import SyncState
from billing_portal.stripe import adapter as stripe_adapter
from billing_portal.stripe import sync
from billing_portal.stripe.adapter import (
    StripeAdapterError,
    StripeGateway,
    StripeTemporaryError,
    minor_units,
)
from plans.models import Customer
from tests.billing_portal.stripe import fake_stripe
from tests.billing_portal.stripe.factories import period_invoice
from tests.billing_portal.stripe.fake_stripe import FakeStripe

# --- errors, amounts, configuration -----------------------------------------------------


def test_errors_reach_staff_as_one_readable_type(acme: Customer, fake: FakeStripe) -> None:
    gateway = StripeGateway(fake_stripe.client(fake))
    fake.fail("connection", path="/v1/customers")
    with pytest.raises(StripeTemporaryError, match="could not be reached"):
        gateway.customer_ensure(customer=acme)
    fake.fail("rate_limit", path="/v1/customers")
    with pytest.raises(StripeTemporaryError):
        gateway.customer_ensure(customer=acme)

    wrong_key = StripeGateway(
        stripe_client_with_key(fake, "rk_live_wrong"),
    )
    with pytest.raises(StripeAdapterError, match="STRIPE_API_KEY") as refused:
        wrong_key.customer_ensure(customer=acme)
    assert not refused.value.retryable

    gateway.customer_ensure(customer=acme)
    acme.name = "Acme Renamed"  # same key, other parameters
    with pytest.raises(StripeAdapterError, match="changed since the first attempt") as reused:
        gateway.customer_ensure(customer=acme)
    assert reused.value.code == "idempotency_error"


def stripe_client_with_key(fake: FakeStripe, key: str) -> Any:
    import stripe

    return stripe.StripeClient(api_key=key, http_client=fake)


def test_amounts_go_in_the_currencys_minor_unit() -> None:
    assert minor_units(Money("49.00", "USD")) == 4900
    assert minor_units(Money("-0.35", "EUR")) == -35
    assert minor_units(Money("1200", "JPY")) == 1200
    with pytest.raises(StripeAdapterError, match="more decimal places"):
        minor_units(Money("0.005", "USD"))


def test_the_gateway_comes_from_settings(settings: Any) -> None:
    settings.STRIPE_API_KEY = ""
    assert stripe_adapter.gateway_from_settings() is None
    settings.STRIPE_API_KEY = "sk_test_configured"
    assert isinstance(stripe_adapter.gateway_from_settings(), StripeGateway)


def test_the_fake_never_opens_a_socket(
    acme: Customer, fake: FakeStripe, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("a socket was opened")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    invoice = sync.invoice_sync(invoice=period_invoice(acme))
    assert invoice.sync_state == SyncState.SYNCED
