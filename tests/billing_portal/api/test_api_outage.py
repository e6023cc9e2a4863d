"""While PostgreSQL is unreachable the API answers 503 service_unavailable with
Retry-After, never 500, and nothing about the failed requests is remembered: once the
database is back the same requests (and Idempotency-Keys) work.

gunicorn serves the product in a subprocess whose database connection runs through a
relay the test cuts, as an outage or a network partition would.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import requests
from django.db import InterfaceError, OperationalError
from django.utils import timezone

from billing_portal.api.models import IdempotencyRecord
from billing_portal.web import UNAVAILABLE_RETRY_AFTER_SECONDS
from metering.models import MeterEvent
from plans.apikeys import api_key_create
from plans.services import subscription_start
from tests.billing_portal.api.server_support import DatabaseRelay, Server, gunicorn
from tests.plans.factories import customer, load_demo_catalog, plan

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def relay() -> Iterator[DatabaseRelay]:
    relay = DatabaseRelay()
    relay.restore()
    yield relay
    relay.cut()


@pytest.fixture
def server(tmp_path: Path, relay: DatabaseRelay) -> Iterator[Server]:
    with gunicorn(tmp_path, database_url=relay.database_url(), workers=1) as server:
        yield server


def _event() -> dict[str, Any]:
    return {
        "identifier": "during-outage",
        "event_name": "llm.tokens",
        "customer": "acme",
        "timestamp": (timezone.now() - timedelta(minutes=1)).astimezone(UTC).isoformat(),
        "value": "812",
        "dimensions": {"model": "large", "token_type": "output"},
    }


def _assert_unavailable(response: requests.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"] == str(UNAVAILABLE_RETRY_AFTER_SECONDS)
    error = response.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "api_error",
        "service_unavailable",
        None,
    )
    assert f"retry in {UNAVAILABLE_RETRY_AFTER_SECONDS} seconds" in error["message"]


def test_the_api_answers_503_while_the_database_is_down(
    server: Server, relay: DatabaseRelay
) -> None:
    load_demo_catalog()
    subscription_start(customer=customer("acme"), plan=plan("pro"), actor="test")
    _, secret = api_key_create(name="backend")
    auth = {"Authorization": f"Bearer {secret}"}
    idempotent = {**auth, "Idempotency-Key": "outage-1"}
    api = f"{server.url}/api/v1"
    assert requests.get(f"{api}/customers/acme", headers=auth, timeout=30).status_code == 200

    relay.cut()

    # Authentication is the first query of each request: it fails there.
    _assert_unavailable(requests.get(f"{api}/customers/acme", headers=auth, timeout=30))
    _assert_unavailable(
        requests.post(f"{api}/events", json=_event(), headers=idempotent, timeout=30)
    )
    authorization = {"customer": "acme", "identifier": "a-1", "credits": "5"}
    _assert_unavailable(
        requests.post(f"{api}/authorizations", json=authorization, headers=auth, timeout=30)
    )
    health = requests.get(f"{server.url}/healthz", timeout=30)
    assert health.status_code == 503
    assert health.json()["checks"]["database"].startswith("OperationalError")

    relay.restore()

    assert requests.get(f"{api}/customers/acme", headers=auth, timeout=30).status_code == 200
    retried = requests.post(f"{api}/events", json=_event(), headers=idempotent, timeout=30)
    assert retried.status_code == 202, retried.text
    assert "Idempotent-Replayed" not in retried.headers
    assert MeterEvent.objects.filter(identifier="during-outage").count() == 1
    assert IdempotencyRecord.objects.get(key="outage-1").status_code == 202


# --- each place a request meets the database, in process ------------------------------


@pytest.fixture
def live_api(live_server: Any) -> tuple[str, dict[str, str]]:
    load_demo_catalog()
    customer("acme")
    _, secret = api_key_create(name="backend")
    return f"{live_server.url}/api/v1", {"Authorization": f"Bearer {secret}"}


def _raise(error: Exception) -> Any:
    def fail(*args: Any, **kwargs: Any) -> Any:
        raise error

    return fail


@pytest.mark.parametrize(
    ("target", "error"),
    [
        (
            "billing_portal.api.auth.api_key_authenticate",
            InterfaceError("connection already closed"),
        ),
        (
            "billing_portal.api.auth.api_key_window_count",
            OperationalError("server closed the connection"),
        ),
    ],
    ids=["authentication", "throttling"],
)
def test_a_database_error_before_the_view_is_503(
    live_api: tuple[str, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    error: Exception,
) -> None:
    api, auth = live_api
    monkeypatch.setattr(target, _raise(error))

    _assert_unavailable(requests.get(f"{api}/customers/acme", headers=auth, timeout=30))


def test_a_503_from_the_view_is_not_kept_for_its_idempotency_key(
    live_api: tuple[str, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    api, auth = live_api
    headers = {**auth, "Idempotency-Key": "ingest-1"}
    # The ingest's bulk insert runs on the raw psycopg connection: psycopg's own error.
    monkeypatch.setattr(
        "metering.ingest.events_ingest", _raise(psycopg.OperationalError("terminating connection"))
    )

    _assert_unavailable(requests.post(f"{api}/events", json=_event(), headers=headers, timeout=30))
    assert not IdempotencyRecord.objects.exists()

    monkeypatch.undo()
    retried = requests.post(f"{api}/events", json=_event(), headers=headers, timeout=30)
    assert retried.status_code == 202, retried.text
    assert "Idempotent-Replayed" not in retried.headers
