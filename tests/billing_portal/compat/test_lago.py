"""POST /compat/lago/api/v1/events and /events/batch, called by Lago's own Python SDK
(``lago_python_client``) against the live server, as a team already sending usage to Lago
would: the balance moves by exactly the rate card's credits, a resent transaction_id is
charged once, ``code`` names a meter or an event name, subscriptions and customers are
found by their external ids, and every refusal is a ``LagoApiError`` saying what is wrong.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests
from django.core.cache import cache
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator
from lago_python_client.exceptions import LagoApiError, LagoRateLimitError
from lago_python_client.models.event import BatchEvent, Event
from lago_python_client.services import request as lago_request
from rest_framework.settings import api_settings

from billing_portal.api.compat.lago import _Lookups
from billing_portal.celery import app as celery_app
from metering.models import MeterEvent, RejectedEvent
from plans.apikeys import api_key_create
from tests.billing_portal.api.http_support import assert_reconciled
from tests.billing_portal.compat.lago_support import (
    PLAIN_RATE,
    Lago,
    llm_charge,
    load_lago_catalog,
    subscribed,
)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def lago(live_server: Any) -> Iterator[Lago]:
    """The Lago catalog, Celery tasks run in place (rating happens before the answer), an
    empty cache, and keys: ingest for the SDK, read for the balance."""
    eager = {"task_always_eager": True, "task_eager_propagates": True}
    saved = {name: celery_app.conf.get(name) for name in eager}
    celery_app.conf.update(eager)
    cache.clear()
    load_lago_catalog()
    yield Lago(
        base_url=live_server.url,
        ingest_key=api_key_create(name="gateway", scopes=["ingest"])[1],
        read_key=api_key_create(name="dashboard", scopes=["read"])[1],
    )
    cache.clear()
    celery_app.conf.update(saved)


def unix(moment: datetime) -> int:
    return int(moment.timestamp())


@pytest.fixture
def now() -> datetime:
    return timezone.now().replace(microsecond=0) - timedelta(minutes=1)


def llm_call(
    transaction_id: str,
    at: datetime | None,
    *,
    subscription: str = "sub-acme",
    code: str = "llm.call",
    model: str = "large",
    input_tokens: Any = 2000,
    output_tokens: Any = 500,
) -> Event:
    return Event(
        precise_total_amount_cents=None,
        transaction_id=transaction_id,
        external_subscription_id=subscription,
        code=code,
        timestamp=unix(at) if at else None,
        properties={"model": model, "input_tokens": input_tokens, "output_tokens": output_tokens},
    )


def refusal(excinfo: pytest.ExceptionInfo[LagoApiError], status: int) -> dict[str, Any]:
    error = excinfo.value
    assert error.status_code == status, error.response
    body: dict[str, Any] = error.response
    assert body["status"] == status
    assert body["message"]
    return body


# --- charging ---------------------------------------------------------------------------


def test_one_event_from_the_sdk_moves_the_balance_by_its_rate(lago: Lago, now: datetime) -> None:
    subscription = subscribed()
    answer = lago.client().events.create(llm_call("call-1", now))

    assert answer is not None
    assert (answer.transaction_id, answer.code) == ("call-1", "llm.call")
    assert answer.external_subscription_id == "sub-acme"
    assert answer.lago_subscription_id == str(subscription.pk)
    assert answer.lago_customer_id == str(subscription.customer_id)
    assert answer.timestamp == now.astimezone(UTC).isoformat().replace("+00:00", "Z")
    assert answer.properties == {"model": "large", "input_tokens": 2000, "output_tokens": 500}
    # 2000 input tokens at 3 and 500 output tokens at 12 per 1000: 6 + 6 credits.
    assert lago.used() == llm_charge("large", 2000, 500) == Decimal(12)
    parts = MeterEvent.objects.filter(parent_identifier="call-1")
    assert sorted(parts.values_list("meter__code", flat=True)) == ["llm_input", "llm_output"]
    assert_reconciled()


def test_a_batch_from_the_sdk_charges_every_event(lago: Lago, now: datetime) -> None:
    subscribed()
    plain = Event(
        precise_total_amount_cents=None,
        transaction_id="req-1",
        external_subscription_id="sub-acme",
        code="api.request",
        timestamp=str(unix(now)),
        properties={"value": 2000},
    )
    events = [
        llm_call("b-1", now),
        llm_call("b-2", now, model="small", input_tokens=10000, output_tokens=1000),
        plain,
    ]
    lago.client().events.batch_create(BatchEvent(events=events))

    expected = llm_charge("large", 2000, 500) + llm_charge("small", 10000, 1000)
    assert lago.used() == expected + 2 * PLAIN_RATE
    # The answer is Lago's: {"events": [...]}, one per event, in order.
    again = lago.post("events/batch", {"events": [e.dict() for e in events]})
    assert again.status_code == 200, again.text
    assert [e["transaction_id"] for e in again.json()["events"]] == ["b-1", "b-2", "req-1"]
    assert lago.used() == expected + 2 * PLAIN_RATE  # resent: duplicates, charged once


def test_decimal_timestamps_and_values_are_never_floats(lago: Lago, now: datetime) -> None:
    subscribed()
    stamp = f"{unix(now)}.25"
    event = {
        "transaction_id": "exact-1",
        "external_subscription_id": "sub-acme",
        "code": "llm.call",
        "timestamp": stamp,
        "properties": {"model": "large", "input_tokens": 1000.1, "output_tokens": 0.5},
    }
    response = lago.post("events", {"event": event})
    assert response.status_code == 200, response.text
    body = response.json()["event"]
    assert body["timestamp"].endswith(".250000Z")
    # Echoed as sent: numbers stay numbers, with their digits.
    assert '"input_tokens":1000.1' in response.text
    assert lago.used() == (Decimal("1000.1") * 3 + Decimal("0.5") * 12) / 1000
    stored = MeterEvent.objects.get(identifier="exact-1#llm_input")
    assert stored.value == Decimal("1000.1")


def test_a_resent_transaction_id_is_charged_once(lago: Lago, now: datetime) -> None:
    subscribed()
    client = lago.client()
    first = client.events.create(llm_call("again-1", now))
    second = client.events.create(llm_call("again-1", now))
    assert first is not None and second is not None
    assert second.transaction_id == "again-1"
    # Without a timestamp (the SDK's default), a retry is still the same event.
    client.events.create(llm_call("no-time", None))
    client.events.create(llm_call("no-time", None))
    assert lago.used() == 2 * llm_charge("large", 2000, 500)
    assert MeterEvent.objects.filter(parent_identifier="no-time").count() == 2

    with pytest.raises(LagoApiError) as excinfo:
        client.events.create(llm_call("again-1", now, output_tokens=501))
    body = refusal(excinfo, 422)
    assert body["code"] == "validation_errors"
    assert body["error_details"]["transaction_id"][0] == "identifier_conflict"
    assert lago.used() == 2 * llm_charge("large", 2000, 500)


def test_a_meter_code_feeds_only_that_meter(lago: Lago, now: datetime) -> None:
    subscribed()
    answer = lago.client().events.create(llm_call("out-only", now, code="llm_output"))
    assert answer is not None and answer.code == "llm_output"
    assert lago.used() == llm_charge("large", 0, 500) == Decimal(6)
    stored = MeterEvent.objects.get(identifier="out-only")
    assert stored.meter.code == "llm_output"
    # An unknown code names neither a meter nor an event name.
    with pytest.raises(LagoApiError) as excinfo:
        lago.client().events.create(llm_call("nope", now, code="llm.nope"))
    assert set(refusal(excinfo, 422)["error_details"]) == {"code"}


# --- whose usage ------------------------------------------------------------------------


def test_subscriptions_and_customers_are_found_by_their_external_ids(
    lago: Lago, now: datetime
) -> None:
    subscribed("acme", "lago-sub-1")
    subscribed("globex")
    lago.client().events.create(llm_call("g-1", now, subscription="sub-globex"))
    assert (lago.used("acme"), lago.used("globex")) == (0, 12)

    by_customer = {
        "transaction_id": "c-1",
        "external_customer_id": "acme",
        "code": "llm.call",
        "timestamp": unix(now),
        "properties": {"model": "large", "input_tokens": 1000, "output_tokens": 0},
    }
    response = lago.post("events", {"event": by_customer})
    assert response.status_code == 200, response.text
    assert response.json()["event"]["external_customer_id"] == "acme"
    assert lago.used("acme") == 3
    mismatch = {**by_customer, "transaction_id": "c-2", "external_subscription_id": "sub-globex"}
    refused = lago.post("events", {"event": mismatch})
    assert refused.status_code == 422, refused.text
    assert refused.json()["error_details"]["external_customer_id"][0] == "customer_mismatch"


def test_an_unknown_subscription_is_a_readable_404(lago: Lago, now: datetime) -> None:
    subscribed()
    with pytest.raises(LagoApiError) as excinfo:
        lago.client().events.create(llm_call("lost-1", now, subscription="sub-ghost"))
    body = refusal(excinfo, 404)
    assert (body["error"], body["code"]) == ("Not Found", "subscription_not_found")
    assert "sub-ghost" in body["message"] and "sub-ghost" in str(excinfo.value)

    ghost_customer = lago.post(
        "events",
        {"event": {"transaction_id": "x", "external_customer_id": "ghost", "code": "llm.call"}},
    )
    assert ghost_customer.status_code == 404
    assert ghost_customer.json()["code"] == "customer_not_found"


def test_a_batch_stores_the_valid_events_and_lists_the_refused_by_index(
    lago: Lago, now: datetime
) -> None:
    subscribed()
    events = [
        llm_call("ok-1", now),
        llm_call("ghost-1", now, subscription="sub-ghost"),
        Event(
            precise_total_amount_cents=None,
            transaction_id="no-output",
            external_subscription_id="sub-acme",
            code="llm.call",
            timestamp=unix(now),
            properties={"model": "large", "input_tokens": 10},
        ),
    ]
    with pytest.raises(LagoApiError) as excinfo:
        lago.client().events.batch_create(BatchEvent(events=events))
    body = refusal(excinfo, 422)
    details = body["error_details"]
    assert set(details) == {"1", "2"}
    assert details["1"]["external_subscription_id"][0] == "subscription_not_found"
    assert details["2"]["properties.output_tokens"][0] == "missing_property"
    assert "1 were stored" in body["message"]
    assert lago.used() == 12  # ok-1 alone
    # Both refusals are in the unmatched-events report, the one refused in translation too.
    kept = RejectedEvent.objects.order_by("pk").values_list(
        "identifier", "code", "customer_external_id"
    )
    assert list(kept) == [
        ("ghost-1", "subscription_not_found", "sub-ghost"),
        ("no-output", "missing_property", "acme"),
    ]


# --- refusals ---------------------------------------------------------------------------


def test_a_missing_value_property_is_422_naming_it(lago: Lago, now: datetime) -> None:
    subscribed()
    event = llm_call("half-1", now)
    event.properties = {"model": "large", "input_tokens": 100}
    with pytest.raises(LagoApiError) as excinfo:
        lago.client().events.create(event)
    body = refusal(excinfo, 422)
    assert body["error_details"]["properties.output_tokens"][0] == "missing_property"
    assert "output_tokens" in str(excinfo.value)
    assert lago.used() == 0


def test_bad_keys_and_scopes_are_lagos_401_and_403(lago: Lago, now: datetime) -> None:
    subscribed()
    with pytest.raises(LagoApiError) as excinfo:
        lago.client(api_key="sk_nope").events.create(llm_call("k-1", now))
    assert refusal(excinfo, 401)["error"] == "Unauthorized"
    anonymous = requests.post(
        f"{lago.base_url}/compat/lago/api/v1/events/batch",
        json={"events": [llm_call("k-2", now).dict()]},
        timeout=30,
    )
    assert anonymous.status_code == 401
    assert anonymous.json()["error"] == "Unauthorized"
    with pytest.raises(LagoApiError) as excinfo:
        lago.client(api_key=lago.read_key).events.create(llm_call("k-3", now))
    assert refusal(excinfo, 403)["code"] == "insufficient_scope"
    assert lago.used() == 0


def test_malformed_requests_answer_in_lagos_shape(lago: Lago, now: datetime) -> None:
    subscribed()
    cases: list[tuple[str, Any, int, str]] = [
        ("events", {"nothing": 1}, 400, "bad_request"),
        ("events/batch", {"events": []}, 400, "bad_request"),
        ("events/batch", {"events": [{}] * 1001}, 422, "validation_errors"),
        (
            "events",
            {"event": {**llm_call("p-1", now).dict(), "precise_total_amount_cents": "12"}},
            422,
            "validation_errors",
        ),
        (
            "events",
            {"event": {**llm_call("t-1", now).dict(), "timestamp": "soon"}},
            422,
            "validation_errors",
        ),
    ]
    for path, body, status, code in cases:
        response = lago.post(path, body)
        assert response.status_code == status, (body, response.text)
        answer = response.json()
        assert (answer["status"], answer["code"]) == (status, code), answer
        assert answer["error"] and answer["message"]
    assert lago.used() == 0


# --- how it is built ----------------------------------------------------------------------


def test_a_request_looks_up_subscriptions_customers_and_meters_once(
    lago: Lago, django_assert_num_queries: Any
) -> None:
    events = [
        {"external_subscription_id": f"sub-{i}", "external_customer_id": "ignored"}
        for i in range(50)
    ] + [{"external_customer_id": f"c-{i}"} for i in range(50)]
    with django_assert_num_queries(3):  # subscriptions, customers, meters
        _Lookups(events)


def test_the_schema_documents_both_operations_under_compat() -> None:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    for path, operation_id in (
        ("/compat/lago/api/v1/events", "compat_lago_events_create"),
        ("/compat/lago/api/v1/events/batch", "compat_lago_events_batch_create"),
    ):
        operation = schema["paths"][path]["post"]
        assert operation["operationId"] == operation_id
        assert operation["tags"] == ["compat"]


def test_rate_limiting_is_lagos_429_with_the_wait_the_sdk_reads(
    lago: Lago, now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    subscribed()
    monkeypatch.setitem(api_settings.DEFAULT_THROTTLE_RATES, "api_key", "2/day")
    waits: list[float] = []
    # The SDK retries a 429 three times, waiting x-ratelimit-reset seconds (at most 20).
    monkeypatch.setattr(lago_request, "wait_for_retry", waits.append)
    client = lago.client()
    client.events.create(llm_call("r-1", now))
    client.events.create(llm_call("r-2", now))
    with pytest.raises(LagoRateLimitError) as excinfo:
        client.events.create(llm_call("r-3", now))
    assert excinfo.value.status_code == 429
    assert excinfo.value.reset is not None and excinfo.value.reset > 0
    assert waits == [20.0] * 3
    limited = lago.post("events", {"event": llm_call("r-4", now).dict()})
    assert limited.status_code == 429
    body = limited.json()
    assert (body["status"], body["error"], body["code"]) == (
        429,
        "Too Many Requests",
        "rate_limited",
    )
    assert limited.headers["Retry-After"] == limited.headers["x-ratelimit-reset"]
    assert lago.used() == 2 * llm_charge("large", 2000, 500)
