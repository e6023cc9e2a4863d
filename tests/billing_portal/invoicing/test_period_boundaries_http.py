"""The operator's period-boundary scenario end to end: the API over HTTP, a real Celery
worker rating the events, and period close run by the jobs beat sends.

A customer on "basic" ($10.00 a month, 1,000 included credits, $0.01 per credit of
overage) subscribed with a start 32 days ago sends 1,225 credits of events stamped in its
first period. That period's invoice is $12.25 (1,000 from its own credits, 225 overage),
nothing of it is written off, and the second period's 1,000 credits are untouched.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from typing import Any

import pytest
import requests
from django.core.management import call_command
from django.utils import timezone

from billing_portal.invoicing.models import Invoice
from plans.apikeys import api_key_create
from tests.metering.worker_support import StartWorker, wait_until
from tests.plans.factories import load_catalog_with_basic

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

GRACE_SECONDS = 2


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Api:
    def __init__(self, url: str, key: str) -> None:
        self.url, self.headers = f"{url}/api/v1", {"Authorization": f"Bearer {key}"}

    def post(self, path: str, body: dict[str, Any], status: int) -> Any:
        response = requests.post(self.url + path, json=body, headers=self.headers, timeout=30)
        assert response.status_code == status, response.text
        return response.json()

    def get(self, path: str) -> Any:
        response = requests.get(self.url + path, headers=self.headers, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()


def test_late_events_of_a_backdated_first_period_are_invoiced_on_its_own_credits(
    live_server: Any,
    start_worker: StartWorker,
    monkeypatch: pytest.MonkeyPatch,
    settings: Any,
) -> None:
    # A short grace window, the same in this process and in the worker.
    settings.BILLING_GRACE_PERIOD_SECONDS = GRACE_SECONDS
    monkeypatch.setenv("BILLING_GRACE_PERIOD_SECONDS", str(GRACE_SECONDS))
    load_catalog_with_basic()
    api = Api(live_server.url, api_key_create(name="backend")[1])
    worker = start_worker()

    api.post("/customers", {"external_id": "acme", "name": "Acme", "email": "a@acme.test"}, 201)
    start = timezone.now() - timedelta(days=32)
    subscription = api.post(
        "/subscriptions", {"customer": "acme", "plan": "basic", "start_at": _rfc3339(start)}, 201
    )
    second_start = datetime.fromisoformat(subscription["current_period_start"])
    events = [
        {
            "identifier": f"late-{day}",
            "event_name": "llm.tokens",
            "customer": "acme",
            "timestamp": _rfc3339(start + timedelta(days=day)),
            "value": str(credits * 2000),  # small model: 0.5 credits per 1,000 tokens
            "dimensions": {"model": "small", "token_type": "input"},
        }
        for day, credits in ((1, 400), (10, 400), (20, 400), (29, 25))
    ]
    assert api.post("/events", {"events": events}, 202)["accepted"] == 4
    assert worker.rate_once() == 4

    # What beat sends: period close, once the grace window (counted from the close, here
    # the subscription's start) has passed; the job sends one close task per due period.
    assert worker.wait_for_task(worker.broker.send_beat_job("close-periods")) == 0
    time.sleep(GRACE_SECONDS + 0.5)
    assert worker.wait_for_task(worker.broker.send_beat_job("close-periods")) == 1
    wait_until(lambda: Invoice.objects.exists(), timeout=30, what="the period's invoice")

    (invoice,) = api.get("/customers/acme/invoices")["data"]
    assert (invoice["total"], invoice["currency"]) == ("12.25", "USD")
    lines = {line["kind"]: line for line in invoice["lines"]}
    assert {k: (v["amount"], v["currency"]) for k, v in lines.items()} == {
        "base_fee": ("10.00", "USD"),
        "included_usage": ("0.00", "USD"),
        "overage": ("2.25", "USD"),
    }
    assert (lines["overage"]["quantity"], lines["overage"]["unit_amount"]) == (
        "225.000000",
        "0.01",
    )
    assert lines["base_fee"]["unit_amount"] == "10"  # a plain decimal, never "1E+1"
    assert lines["included_usage"]["credits"] == "1000.000000"
    assert datetime.fromisoformat(lines["overage"]["service_period"]["end"]) == second_start

    balance = api.get("/customers/acme/balance")
    (included,) = [g for g in balance["grants"] if g["category"] == "included"]
    assert Decimal(included["remaining"]) == Decimal(1000)  # period 2's credits, intact
    assert Decimal(balance["posted"]) == Decimal(1000)

    out = StringIO()
    call_command("reconcile", stdout=out)
    assert out.getvalue().startswith("OK: all ")
