"""POST /api/v1/events/cancel reverses charges: it needs the write scope, not ingest."""

from __future__ import annotations

from datetime import UTC, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests
from django.utils import timezone

from metering.models import EventCancellation
from metering.rating import events_rate_pending
from plans.apikeys import api_key_create
from plans.services import subscription_start
from tests.billing_portal.api.http_support import assert_reconciled
from tests.plans.factories import customer, plan

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("http_api_environment"),
]

CANCEL = {"customer": "acme", "identifier": "charged", "reason": "duplicate_usage"}


def _post(base_url: str, path: str, key: str, body: Any) -> requests.Response:
    headers = {"Authorization": f"Bearer {key}"}
    return requests.post(f"{base_url}/api/v1{path}", json=body, headers=headers, timeout=60)


def _posted(base_url: str, key: str) -> Decimal:
    headers = {"Authorization": f"Bearer {key}"}
    response = requests.get(
        f"{base_url}/api/v1/customers/acme/balance", headers=headers, timeout=30
    )
    assert response.status_code == 200, response.text
    return Decimal(response.json()["posted"])


def test_an_ingest_key_cannot_cancel_and_a_write_key_can(api_server: tuple[str, str]) -> None:
    base_url, everything = api_server
    subscription_start(
        customer=customer("acme"),
        plan=plan("pro"),
        actor="test",
        start_at=timezone.now() - timedelta(days=20),
    )
    _, ingester = api_key_create(name="ingester", scopes=["ingest"])
    _, writer = api_key_create(name="writer", scopes=["write"])
    at = (timezone.now() - timedelta(minutes=1)).astimezone(UTC).isoformat()
    event = {
        "identifier": "charged",
        "event_name": "llm.tokens",
        "customer": "acme",
        "timestamp": at,
        "value": "2000",
        "dimensions": {"model": "large", "token_type": "output"},
    }
    assert _post(base_url, "/events", ingester, event).status_code == 202
    events_rate_pending()
    charged = _posted(base_url, everything)

    refused = _post(base_url, "/events/cancel", ingester, CANCEL)

    assert refused.status_code == 403, refused.text
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("permission_error", "insufficient_scope")
    assert "'write' scope" in error["message"]
    assert not EventCancellation.objects.exists()
    assert _posted(base_url, everything) == charged

    done = _post(base_url, "/events/cancel", writer, CANCEL)

    assert done.status_code == 200, done.text
    assert done.json()["status"] == "canceled"
    assert _posted(base_url, everything) == charged + 30
    assert EventCancellation.objects.count() == 1
    assert_reconciled()
