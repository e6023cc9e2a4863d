"""What the Lago-compatible ingest tests share: a catalog whose two meters are fed by one
``llm.call`` event (input and output tokens read from its properties, rated by model) plus
a plain meter, subscribed customers, and the endpoint's clients (Lago's own SDK pointed at
the live server, and plain HTTP for what the SDK cannot send)."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import requests
from lago_python_client.client import Client

from plans import catalog
from plans.models import Subscription
from tests.plans.factories import subscription_recent

BASE_PATH = "/compat/lago"
INCLUDED = Decimal(20000)
# Credits per 1000 tokens, by meter and model.
RATES = {
    ("llm_input", "large"): Decimal(3),
    ("llm_output", "large"): Decimal(12),
    ("llm_input", "small"): Decimal("0.5"),
    ("llm_output", "small"): Decimal(2),
}
PLAIN_RATE = Decimal(15)  # credits per 1000 units of the plain meter "api_calls"

CATALOG = """
currency: USD
meters:
  - code: llm_input
    event_name: llm.call
    aggregation: sum
    unit: token
    value_property: input_tokens
    dimension_properties: [model]
    dimensions: [model]
  - code: llm_output
    event_name: llm.call
    aggregation: sum
    unit: token
    value_property: output_tokens
    dimension_properties: [model]
    dimensions: [model]
  - code: api_calls
    event_name: api.request
    aggregation: sum
    unit: request
rate_cards:
  - code: llm
    effective_from: "2026-01-01T00:00:00Z"
    rates:
      - {meter: llm_input, match: {model: large}, credits: "3", per: 1000}
      - {meter: llm_output, match: {model: large}, credits: "12", per: 1000}
      - {meter: llm_input, match: {model: small}, credits: "0.5", per: 1000}
      - {meter: llm_output, match: {model: small}, credits: "2", per: 1000}
      - {meter: api_calls, credits: "15", per: 1000}
plans:
  - code: pro
    name: Pro
    interval: month
    base_fee: "49.00"
    included_credits: "20000"
    rate_card: llm
    overage: {policy: postpaid, price_per_credit: "0.004"}
"""


def load_lago_catalog() -> None:
    catalog.load(CATALOG)


def subscribed(external_id: str = "acme", subscription_id: str | None = None) -> Subscription:
    """``external_id`` on "pro", its subscription's own external_id ``subscription_id``
    (default ``sub-<customer>``)."""
    return subscription_recent(external_id, subscription_id=subscription_id or f"sub-{external_id}")


def llm_charge(model: str, input_tokens: Decimal | int, output_tokens: Decimal | int) -> Decimal:
    """The credits one llm.call costs."""
    return (
        Decimal(input_tokens) * RATES[("llm_input", model)]
        + Decimal(output_tokens) * RATES[("llm_output", model)]
    ) / 1000


@dataclass
class Lago:
    """The live server, seen by Lago's SDK (``client``) and by plain HTTP."""

    base_url: str
    ingest_key: str
    read_key: str

    def client(self, api_key: str | None = None) -> Client:
        # Lago's SDK joins "api/v1/" onto api_url: the base URL ends with a slash.
        return Client(
            api_key=self.ingest_key if api_key is None else api_key,
            api_url=f"{self.base_url}{BASE_PATH}/",
            max_retries=0,
        )

    def post(self, path: str, body: Any, *, key: str | None = None) -> requests.Response:
        return requests.post(
            f"{self.base_url}{BASE_PATH}/api/v1/{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.ingest_key if key is None else key}"},
            timeout=30,
        )

    def balance(self, external_id: str = "acme") -> dict[str, Any]:
        response = requests.get(
            f"{self.base_url}/api/v1/customers/{external_id}/balance",
            headers={"Authorization": f"Bearer {self.read_key}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def used(self, external_id: str = "acme") -> Decimal:
        """Credits drawn so far: the included credits less what the balance has posted."""
        return INCLUDED - Decimal(self.balance(external_id)["posted"])
