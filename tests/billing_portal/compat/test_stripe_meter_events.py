"""POST /compat/stripe/v1/billing/meter_events with stripe-python's own client over real HTTP.

The calls integrations already make, unchanged but for the key and base address: an
event accepted and charged at the rate card, a resend charged once, an identifier reused
for other content, an unknown customer, keys without the right to ingest, rate limits,
dimensions from payload keys reaching rating, customers found by our external_id, and the
form body's bracket notation at its edges. Each error must reach the caller as stripe-python's
own exception class, with Stripe's code and param.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests
import stripe
from django.utils import timezone
from drf_spectacular.generators import SchemaGenerator

from billing_portal.api.compat.stripe_meter_events import form_params
from billing_portal.api.errors import ApiError
from billing_portal.api.models import IdempotencyRecord
from ledger.models import EntryKind, LedgerEntry
from metering.models import MeterEvent, RejectedEvent
from metering.rating import events_rate_pending
from plans.apikeys import api_key_create
from plans.models import Customer
from tests.billing_portal.api.conftest import http_api_environment  # noqa: F401 (fixture)
from tests.billing_portal.api.http_support import assert_reconciled
from tests.billing_portal.compat.stripe_support import (
    METER_EVENTS,
    PRO_INCLUDED,
    post_raw,
    posted_balance,
    stripe_client,
    stripe_client_close,
    stripe_error,
    subscribed,
)

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("http_api_environment"),
]

# The demo catalog's rate for llm.tokens with model=large, token_type=output.
LARGE_OUTPUT_CREDITS_PER_1000 = Decimal(15)
SMALL_CREDITS_PER_1000 = Decimal("0.5")


@dataclass
class Stripe:
    """stripe-python clients on the live server: one per kind of key."""

    base_url: str
    ingest_key: str
    read_key: str
    clients: list[stripe.StripeClient] = field(default_factory=list)

    def client(self, key: str) -> stripe.StripeClient:
        built = stripe_client(self.base_url, key)
        self.clients.append(built)
        return built

    def create(self, params: dict[str, Any], key: str = "", **options: Any) -> Any:
        """``meter_events.create`` as integrations call it, with the ingest key if not
        told another one."""
        client = self.client(key or self.ingest_key)
        return client.v1.billing.meter_events.create(params, options or None)  # type: ignore[arg-type]

    def balance(self, external_id: str = "acme") -> Decimal:
        return posted_balance(self.base_url, self.read_key, external_id)


@pytest.fixture
def api(live_server: Any) -> Iterator[Stripe]:
    _, ingest_key = api_key_create(name="gateway", scopes=["ingest"])
    _, read_key = api_key_create(name="dashboard", scopes=["read"])
    built = Stripe(live_server.url, ingest_key, read_key)
    yield built
    for client in built.clients:
        stripe_client_close(client)


@pytest.fixture
def now() -> int:
    return int((timezone.now() - timedelta(minutes=1)).timestamp())


def tokens(
    identifier: str | None,
    at: int,
    value: str = "5",
    customer: str = "cus_acme",
    **dimensions: str,
) -> dict[str, Any]:
    """A Stripe meter event for llm.tokens; large output tokens unless told otherwise."""
    payload = {"stripe_customer_id": customer, "value": value}
    payload.update(dimensions or {"model": "large", "token_type": "output"})
    params: dict[str, Any] = {"event_name": "llm.tokens", "payload": payload, "timestamp": at}
    if identifier is not None:
        params["identifier"] = identifier
    return params


def consume_entries(subscriber: Customer) -> int:
    return LedgerEntry.objects.filter(
        account_id=subscriber.account_id, kind=EntryKind.CONSUME, cause_type="event"
    ).count()


# --- accepted, and charged ------------------------------------------------------------


def test_an_event_is_answered_as_stripe_does_and_charged_at_the_rate_card(
    api: Stripe, now: int
) -> None:
    subscriber = subscribed("acme", "cus_acme")
    event = api.create(tokens("req-1", now))

    assert event.object == "billing.meter_event"
    assert (event.identifier, event.event_name, event.timestamp) == ("req-1", "llm.tokens", now)
    assert event.livemode is False
    assert abs(event.created - time.time()) < 60
    assert event.payload.to_dict() == {
        "stripe_customer_id": "cus_acme",
        "value": "5",
        "model": "large",
        "token_type": "output",
    }
    stored = MeterEvent.objects.get(customer=subscriber, identifier="req-1")
    assert stored.value == 5
    assert stored.dimensions == {"model": "large", "token_type": "output"}
    assert stored.timestamp == datetime.fromtimestamp(now, tz=UTC)

    events_rate_pending()
    charged = Decimal(5) * LARGE_OUTPUT_CREDITS_PER_1000 / 1000
    assert charged == Decimal("0.075")
    assert api.balance() == PRO_INCLUDED - charged
    assert_reconciled()


def test_an_identifier_and_timestamp_are_made_up_when_absent(api: Stripe) -> None:
    subscriber = subscribed("acme", "cus_acme")
    before = int(time.time())
    params = tokens(None, 0)
    del params["timestamp"]
    event = api.create(params)
    assert event.identifier.startswith("mev_")
    assert len(event.identifier) == len("mev_") + 32
    assert before <= event.timestamp <= time.time()
    assert MeterEvent.objects.filter(customer=subscriber, identifier=event.identifier).exists()


def test_a_resend_is_refused_as_stripe_does_and_charged_once(api: Stripe, now: int) -> None:
    subscriber = subscribed("acme", "cus_acme")
    api.create(tokens("req-1", now))
    with pytest.raises(stripe.InvalidRequestError) as resent:
        api.create(tokens("req-1", now))
    error = resent.value
    assert error.http_status == 400
    # Stripe's own words: integrations match them to count the event as delivered.
    assert error.user_message == "An event already exists with identifier req-1."
    assert (error.code, error.param) == ("resource_already_exists", "identifier")
    assert error.headers is not None and error.headers["Stripe-Should-Retry"] == "false"

    events_rate_pending()
    assert MeterEvent.objects.filter(customer=subscriber).count() == 1
    assert consume_entries(subscriber) == 1
    assert api.balance() == PRO_INCLUDED - Decimal("0.075")


def test_a_resend_without_timestamp_is_the_same_event_not_a_conflict(api: Stripe) -> None:
    subscriber = subscribed("acme", "cus_acme")
    params = tokens("req-2", 0)
    del params["timestamp"]
    first = api.create(params)
    time.sleep(1.1)  # stamped on arrival: the retry arrives in another second
    with pytest.raises(stripe.InvalidRequestError) as resent:
        api.create(params)
    assert resent.value.code == "resource_already_exists"
    assert MeterEvent.objects.get(customer=subscriber).timestamp.timestamp() == first.timestamp


def test_a_retry_with_the_same_idempotency_key_gets_the_first_answer(api: Stripe, now: int) -> None:
    subscriber = subscribed("acme", "cus_acme")
    first = api.create(tokens("req-1", now), idempotency_key="call-1")
    again = api.create(tokens("req-1", now), idempotency_key="call-1")
    assert again.to_dict() == first.to_dict()
    assert again.last_response.headers["Idempotent-Replayed"] == "true"
    # The same key for another event: Stripe's IdempotencyError, not a retried conflict.
    with pytest.raises(stripe.IdempotencyError) as reused:
        api.create(tokens("req-2", now), idempotency_key="call-1")
    assert reused.value.http_status == 400
    assert reused.value.error is not None
    assert reused.value.error.code == "idempotency_key_reused"
    assert MeterEvent.objects.filter(customer=subscriber).count() == 1


def test_stripe_pythons_automatic_idempotency_keys_are_one_per_call(api: Stripe, now: int) -> None:
    subscribed("acme", "cus_acme")
    for number in range(3):
        api.create(tokens(f"req-{number}", now))
    keys = set(IdempotencyRecord.objects.values_list("key", flat=True))
    assert len(keys) == 3
    assert IdempotencyRecord.objects.filter(status_code=200).count() == 3


def test_the_same_identifier_with_other_content_is_a_conflict(api: Stripe, now: int) -> None:
    subscriber = subscribed("acme", "cus_acme")
    api.create(tokens("req-1", now))
    with pytest.raises(stripe.InvalidRequestError) as conflict:
        api.create(tokens("req-1", now, value="6"))
    assert conflict.value.http_status == 400
    assert (conflict.value.code, conflict.value.param) == ("identifier_conflict", "identifier")
    assert MeterEvent.objects.get(customer=subscriber).value == 5


# --- customers ------------------------------------------------------------------------


def test_an_unknown_customer_is_named_in_stripes_error(api: Stripe, now: int) -> None:
    subscribed("acme", "cus_acme")
    with pytest.raises(stripe.InvalidRequestError) as unknown:
        api.create(tokens("req-1", now, customer="cus_ghost"))
    error = unknown.value
    assert error.http_status == 404
    assert (error.code, error.param) == ("unknown_customer", "payload[stripe_customer_id]")
    assert "cus_ghost" in str(error.user_message)
    assert "payload[stripe_customer_id]" in str(error.user_message)
    assert not MeterEvent.objects.exists()
    # Refused by the native ingest, so recorded as any refused event is.
    refused = RejectedEvent.objects.get()
    assert (refused.code, refused.customer_external_id) == ("unknown_customer", "cus_ghost")


def test_a_customer_without_a_stripe_id_is_found_by_its_external_id(api: Stripe, now: int) -> None:
    subscribed("acme", "cus_acme")
    globex = subscribed("globex")
    api.create(tokens("req-1", now, customer="globex"))
    assert MeterEvent.objects.get(identifier="req-1").customer == globex


def test_a_stripe_customer_id_wins_over_another_customers_external_id(
    api: Stripe, now: int
) -> None:
    acme = subscribed("acme", "cus_shared")
    subscribed("cus_shared")
    api.create(tokens("req-1", now, customer="cus_shared"))
    assert MeterEvent.objects.get(identifier="req-1").customer == acme


# --- dimensions -----------------------------------------------------------------------


def test_payload_keys_other_than_customer_and_value_are_dimensions_rating_matches(
    api: Stripe, now: int
) -> None:
    subscriber = subscribed("acme", "cus_acme")
    api.create(tokens("small-1", now, value="1000", model="small"))
    events_rate_pending()
    assert MeterEvent.objects.get(customer=subscriber).dimensions == {"model": "small"}
    assert api.balance() == PRO_INCLUDED - SMALL_CREDITS_PER_1000

    with pytest.raises(stripe.InvalidRequestError) as unknown:
        api.create(tokens("color-1", now, color="red"))
    assert (unknown.value.code, unknown.value.param) == ("invalid_dimensions", "payload")
    assert "color" in str(unknown.value.user_message)


# --- other refusals -------------------------------------------------------------------


def test_native_rejections_name_the_stripe_parameter(api: Stripe, now: int) -> None:
    subscribed("acme", "cus_acme")
    old = now - 400 * 24 * 3600
    cases: list[tuple[dict[str, Any], str, str]] = [
        (tokens("v-1", now, value="-1"), "invalid_value", "payload[value]"),
        (tokens("v-2", now, value="1.1234567"), "invalid_value", "payload[value]"),
        (tokens("v-3", now, value="2000000000"), "value_out_of_range", "payload[value]"),
        (tokens("t-1", old), "timestamp_too_far_in_past", "timestamp"),
        (tokens("t-2", now + 3600), "timestamp_in_future", "timestamp"),
        (tokens("has space", now), "invalid_identifier", "identifier"),
        ({**tokens("n-1", now), "event_name": "llm.nope"}, "unknown_event_name", "event_name"),
    ]
    for params, code, param in cases:
        with pytest.raises(stripe.InvalidRequestError) as refused:
            api.create(params)
        assert refused.value.http_status == 400
        assert (refused.value.code, refused.value.param) == (code, param), params

    no_value = tokens("m-1", now)
    del no_value["payload"]["value"]
    with pytest.raises(stripe.InvalidRequestError) as missing:
        api.create(no_value)
    assert (missing.value.code, missing.value.param) == ("missing_field", "payload[value]")
    assert missing.value.user_message == "Missing required param: payload[value]."
    assert not MeterEvent.objects.exists()


def test_a_bad_key_is_stripes_authentication_error(api: Stripe, now: int) -> None:
    subscribed("acme", "cus_acme")
    with pytest.raises(stripe.AuthenticationError) as refused:
        api.create(tokens("req-1", now), key="sk_test_not_ours")
    assert refused.value.http_status == 401
    assert refused.value.error is not None
    assert refused.value.error.type == "invalid_request_error"
    assert not MeterEvent.objects.exists()


def test_a_key_without_the_ingest_scope_is_stripes_permission_error(api: Stripe, now: int) -> None:
    subscribed("acme", "cus_acme")
    with pytest.raises(stripe.PermissionError) as refused:
        api.create(tokens("req-1", now), key=api.read_key)
    assert refused.value.http_status == 403
    assert "ingest" in str(refused.value.user_message)
    assert not MeterEvent.objects.exists()


def test_a_rate_limited_key_is_stripes_rate_limit_error(
    api: Stripe, now: int, settings: Any
) -> None:
    subscribed("acme", "cus_acme")
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"api_key": "2/hour"},
    }
    left = 3600 - time.time() % 3600
    if left < 30:  # three calls straddling two windows could all pass
        time.sleep(left + 0.5)
    api.create(tokens("req-1", now))
    api.create(tokens("req-2", now))
    with pytest.raises(stripe.RateLimitError) as limited:
        api.create(tokens("req-3", now))
    assert limited.value.http_status == 429
    assert limited.value.headers is not None and int(limited.value.headers["Retry-After"]) >= 1
    assert MeterEvent.objects.count() == 2


# --- the form body --------------------------------------------------------------------


def test_bracket_notation_nests_and_percent_encoded_brackets_are_brackets() -> None:
    body = b"event_name=e&payload%5Bvalue%5D=5&payload[stripe_customer_id]=cus_1&expand[0]=x"
    assert form_params(body) == {
        "event_name": "e",
        "payload": {"value": "5", "stripe_customer_id": "cus_1"},
        "expand": {"0": "x"},
    }
    assert form_params(b"payload[a][b]=1") == {"payload": {"a": {"b": "1"}}}
    assert form_params(b"identifier=&payload[k]=a%26b%3Dc") == {
        "identifier": "",
        "payload": {"k": "a&b=c"},
    }


@pytest.mark.parametrize(
    ("body", "param"),
    [
        (b"payload[value]=5&payload[value]=500", "payload[value]"),
        (b"payload=x&payload[value]=1", "payload[value]"),
        (b"payload[value]=1&payload=x", "payload"),
        (b"payload[]=x", "payload[]"),
        (b"payload[a=x", "payload[a"),
        (b"payload]a[=x", "payload]a["),
        (b"payload[a][b][c]=x", "payload[a][b][c]"),
        (b"\xff=1", None),
    ],
)
def test_ambiguous_or_malformed_form_bodies_are_refused(body: bytes, param: str | None) -> None:
    with pytest.raises(ApiError) as refused:
        form_params(body)
    assert (refused.value.status_code, refused.value.code) == (400, "invalid_request")
    assert refused.value.param == param


def test_form_bodies_at_their_edges_over_http(api: Stripe, now: int) -> None:
    subscribed("acme", "cus_acme")
    cases: list[tuple[str, int, str, str | None]] = [
        # (body, status, code, param)
        (f"event_name=llm.tokens&payload[stripe_customer_id]=cus_acme&payload[value]=5"
         f"&payload[model][x]=large&timestamp={now}", 400, "invalid_request", "payload[model]"),
        ("event_name=llm.tokens&colour=red", 400, "invalid_request", "colour"),
        ("event_name=llm.tokens&payload=cus_acme", 400, "invalid_request", "payload"),
        ("event_name=llm.tokens&payload[value]=1&payload[value]=9", 400, "invalid_request",
         "payload[value]"),
        (f"event_name=llm.tokens&payload[stripe_customer_id]=cus_acme&payload[value]=5"
         f"&timestamp={now}.5", 400, "invalid_timestamp", "timestamp"),
        # The identifier is made up: the customer is the first thing missing.
        ("", 400, "missing_field", "payload[stripe_customer_id]"),
    ]  # fmt: skip
    for body, status, code, param in cases:
        error = stripe_error(post_raw(api.base_url, api.ingest_key, body), status)
        assert (error["type"], error["code"], error["param"]) == (
            "invalid_request_error",
            code,
            param,
        ), body
    unsupported = post_raw(api.base_url, api.ingest_key, "x", content_type="text/plain")
    assert stripe_error(unsupported, 415)["code"] == "unsupported_media_type"
    assert not MeterEvent.objects.exists()


def test_a_json_body_is_accepted_too(api: Stripe, now: int) -> None:
    subscriber = subscribed("acme", "cus_acme")
    body = json.dumps(
        {
            "event_name": "llm.tokens",
            "identifier": "json-1",
            "timestamp": now,
            "payload": {"stripe_customer_id": "cus_acme", "value": 5.5, "model": "small"},
        }
    )
    response = post_raw(api.base_url, api.ingest_key, body, content_type="application/json")
    assert response.status_code == 200, response.text
    assert response.json()["payload"]["value"] == "5.5"
    assert MeterEvent.objects.get(customer=subscriber).value == Decimal("5.5")
    broken = post_raw(api.base_url, api.ingest_key, "{", content_type="application/json")
    assert stripe_error(broken, 400)["code"] == "invalid_json"


def test_get_is_not_allowed_in_stripes_shape(api: Stripe) -> None:
    answer = requests.get(
        api.base_url + METER_EVENTS,
        headers={"Authorization": f"Bearer {api.ingest_key}"},
        timeout=30,
    )
    error = stripe_error(answer, 405)
    assert (error["type"], error["code"]) == ("invalid_request_error", "method_not_allowed")


# --- OpenAPI --------------------------------------------------------------------------


def test_the_operation_is_documented_under_the_compat_tag() -> None:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    operation = schema["paths"]["/compat/stripe/v1/billing/meter_events"]["post"]
    assert operation["tags"] == ["compat"]
    assert operation["operationId"] == "compat_stripe_v1_billing_meter_events_create"
    assert "application/x-www-form-urlencoded" in operation["requestBody"]["content"]
    assert {"200", "400", "401", "403", "404", "429"} <= set(operation["responses"])
