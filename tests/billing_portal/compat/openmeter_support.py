"""What the OpenMeter-compatible ingest tests share: a catalog whose two meters are fed by
one ``llm.call`` event (input and output tokens read from its properties), a subscribed
customer, and the endpoint's clients (the openmeter SDK, and plain HTTP)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import requests

from plans import catalog

BASE_PATH = "/compat/openmeter"
EVENTS_PATH = BASE_PATH + "/api/v1/events"
INCLUDED = Decimal(20000)
# Credits per 1000 tokens of the model "large".
INPUT_RATE = Decimal(3)
OUTPUT_RATE = Decimal(15)

CATALOG = """
currency: USD
meters:
  - code: llm_input_tokens
    event_name: llm.call
    aggregation: sum
    unit: token
    value_property: input_tokens
    dimension_properties: [model]
    dimensions: [model]
  - code: llm_output_tokens
    event_name: llm.call
    aggregation: sum
    unit: token
    value_property: output_tokens
    dimension_properties: [model]
    dimensions: [model]
rate_cards:
  - code: llm
    effective_from: "2026-01-01T00:00:00Z"
    rates:
      - {meter: llm_input_tokens, match: {model: large}, credits: "3", per: 1000}
      - {meter: llm_output_tokens, match: {model: large}, credits: "15", per: 1000}
plans:
  - code: pro
    name: Pro
    interval: month
    base_fee: "49.00"
    included_credits: "20000"
    rate_card: llm
    overage: {policy: postpaid, price_per_credit: "0.004"}
"""


def load_llm_catalog() -> None:
    catalog.load(CATALOG)


def charge(input_tokens: int, output_tokens: int) -> Decimal:
    """The credits one llm.call of the model "large" costs."""
    return (input_tokens * INPUT_RATE + output_tokens * OUTPUT_RATE) / 1000


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def llm_call(
    event_id: str,
    *,
    subject: str = "acme",
    input_tokens: int = 2000,
    output_tokens: int = 500,
    time: datetime | None = None,
    **attributes: Any,
) -> dict[str, Any]:
    """A structured CloudEvent as a JSON object (the SDK takes it as ``Event(mapping)``)."""
    event: dict[str, Any] = {
        "specversion": "1.0",
        "id": event_id,
        "source": "gateway",
        "type": "llm.call",
        "subject": subject,
        "data": {"model": "large", "input_tokens": input_tokens, "output_tokens": output_tokens},
    }
    if time is not None:
        event["time"] = rfc3339(time)
    event.update(attributes)
    return event


@dataclass
class Http:
    """The live server, with a key holding only the ingest scope and one to read."""

    base_url: str
    ingest_key: str
    read_key: str

    def send(
        self,
        body: bytes,
        content_type: str,
        *,
        key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        sent = {"Content-Type": content_type, **(headers or {})}
        secret = self.ingest_key if key is None else key
        if secret:
            sent["Authorization"] = f"Bearer {secret}"
        return requests.post(self.base_url + EVENTS_PATH, data=body, headers=sent, timeout=60)

    def posted_balance(self, external_id: str = "acme") -> Decimal:
        response = requests.get(
            f"{self.base_url}/api/v1/customers/{external_id}/balance",
            headers={"Authorization": f"Bearer {self.read_key}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        return Decimal(response.json()["posted"])


def problem_of(response: requests.Response, status: int) -> dict[str, Any]:
    """The RFC 7807 body of an error answer, checked for the members every one has."""
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert {"type", "title", "status", "detail", "instance", "code", "param"} <= set(body)
    assert body["status"] == status
    assert body["instance"] == EVENTS_PATH
    assert body["detail"]
    return body
