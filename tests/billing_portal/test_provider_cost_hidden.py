"""Customers never see what the provider charges: with a rate that carries a cost, no page
of the portal and no answer of the events, usage or ledger API shows the cost or a key
naming it. The event's cost (1,000 tokens at 1.23456789 per 1,000) is recorded all the
same, for the staff margin report."""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from metering.models import EventRating
from plans import catalog
from plans.apikeys import api_key_create
from plans.models import Customer
from tests.billing_portal.portal.factories import member, subscribed_customer, usage

pytestmark = pytest.mark.django_db

COST = "1.23456789"
# The cost as written or as any rounding of it to two places or more would show: a number
# that starts with 1.23. Not a match inside another number, such as a timestamp's
# seconds "11.236881".
FIGURE = re.compile(r"(?<![\d.])1\.23")
CATALOG = f"""
currency: USD
meters:
  - {{code: llm_tokens, event_name: llm.tokens, aggregation: sum, unit: tokens,
     dimensions: [model, token_type]}}
rate_cards:
  - code: standard
    effective_from: "2026-01-01T00:00:00Z"
    rates:
      - {{meter: llm_tokens, credits: "15", per: 1000, cost: "{COST}"}}
plans:
  - code: pro
    name: Pro
    interval: month
    base_fee: "49.00"
    included_credits: "20000"
    rate_card: standard
    overage: {{policy: postpaid, price_per_credit: "0.004"}}
credit_packs:
  - {{code: pack_10k, name: "10,000 credits", credits: "10000", price: "35.00"}}
"""


@pytest.fixture
def acme(settings: Any) -> Customer:
    settings.STRIPE_API_KEY = ""
    catalog.load(CATALOG)
    acme = subscribed_customer("acme")
    usage(acme, "evt-1", value="1000")
    assert EventRating.objects.get(event__identifier="evt-1").cost == Decimal(COST)
    return acme


def _keys(value: Any) -> set[str]:
    if isinstance(value, dict):
        return set(value) | {k for v in value.values() for k in _keys(v)}
    if isinstance(value, list):
        return {k for v in value for k in _keys(v)}
    return set()


def _assert_no_cost(body: str) -> None:
    assert not FIGURE.search(body), body


def test_the_cost_check_finds_the_cost_and_its_roundings_only() -> None:
    for shown in (COST, "1.2345", "1.235", "1.23", '"cost": "1.23"'):
        with pytest.raises(AssertionError):
            _assert_no_cost(shown)
    _assert_no_cost('"received_at": "2026-12-07T20:39:11.236913Z", "credits": "21.23"')


@pytest.mark.parametrize(
    "path",
    [
        "customers/acme/events/evt-1",
        "customers/acme/events",
        "customers/acme/usage?group_by=model",
        "customers/acme/ledger_entries",
        "customers/acme/balance",
    ],
)
def test_the_api_answers_no_cost(acme: Customer, path: str) -> None:
    _, secret = api_key_create(name="dashboard", scopes=["read"])
    response = Client().get(f"/api/v1/{path}", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 200, response.content
    assert not {k for k in _keys(response.json()) if "cost" in k.lower()}
    _assert_no_cost(json.dumps(response.json()))


@pytest.mark.parametrize("page", ["portal:dashboard", "portal:activity"])
def test_the_portal_pages_show_no_cost(acme: Customer, page: str) -> None:
    client = Client()
    client.force_login(member(acme))
    response = client.get(reverse(page))
    assert response.status_code == 200
    _assert_no_cost(response.content.decode())


def test_the_usage_export_has_no_cost_column(acme: Customer) -> None:
    client = Client()
    client.force_login(member(acme))
    today = timezone.now().date().isoformat()
    response = client.get(reverse("portal:usage_export"), {"start": today, "end": today})
    assert response.status_code == 200
    text = b"".join(response.streaming_content).decode()  # type: ignore[attr-defined]
    header, *rows = text.splitlines()
    assert "cost" not in header.lower()
    assert rows and "evt-1" in rows[0]
    _assert_no_cost(text)
