"""Helpers of the Stripe-compatible ingest tests: stripe-python's own client pointed at the
live server, subscribed customers holding a Stripe customer id, and balance reads."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import requests
import stripe

from plans.models import Customer
from tests.plans import factories

COMPAT = "/compat/stripe"
METER_EVENTS = COMPAT + "/v1/billing/meter_events"
PRO_INCLUDED = Decimal(20000)


def stripe_client(base_url: str, key: str) -> stripe.StripeClient:
    """What an integration builds, with our key and our base address: nothing else."""
    return stripe.StripeClient(key, base_addresses={"api": base_url + COMPAT})


def stripe_client_close(client: stripe.StripeClient) -> None:
    """Close the client's kept-alive HTTP connection: the live server's thread serving
    it would otherwise hold its database connection open past the test."""
    http = client._requestor._client  # StripeClient has no public close
    if http is not None:
        http.close()


def subscribed(external_id: str, stripe_customer_id: str = "") -> Customer:
    """A customer on "pro" (see ``subscription_recent``), with a Stripe customer id when
    given."""
    subscriber = factories.subscribed(external_id)
    if stripe_customer_id:
        Customer.objects.filter(pk=subscriber.pk).update(stripe_customer_id=stripe_customer_id)
    return subscriber


def posted_balance(base_url: str, read_key: str, external_id: str) -> Decimal:
    """The customer's posted credits, as the native API reports them."""
    response = requests.get(
        f"{base_url}/api/v1/customers/{external_id}/balance",
        headers={"Authorization": f"Bearer {read_key}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return Decimal(response.json()["posted"])


def post_raw(
    base_url: str,
    key: str,
    body: bytes | str,
    content_type: str = "application/x-www-form-urlencoded",
) -> requests.Response:
    """A request stripe-python would never send: for the body parser's edge cases."""
    return requests.post(
        base_url + METER_EVENTS,
        data=body,
        headers={"Authorization": f"Bearer {key}", "Content-Type": content_type},
        timeout=30,
    )


def stripe_error(response: requests.Response, status: int) -> dict[str, Any]:
    """Stripe's error object, after checking the status and the shape."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"type", "code", "message", "param"}, error
    assert error["message"]
    return error
