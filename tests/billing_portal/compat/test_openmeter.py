"""POST /compat/openmeter/api/v1/events over real HTTP, with the callers' own SDKs: the
openmeter client (one event, a batch, application/json) and the cloudevents package
(structured, batch and binary modes, sent with requests).

One llm.call event feeds two meters (input and output tokens, read from its data) and is
charged exactly the rate card's credits for both; a resent source + id is charged once;
rejections (unknown subject, a missing attribute or property) and refusals (bad key,
missing scope, rate limit, bad bodies) are problem+json the SDK raises as its own errors.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from cloudevents.conversion import to_binary, to_dict, to_structured
from cloudevents.http import CloudEvent
from corehttp.exceptions import ClientAuthenticationError, HttpResponseError
from django.core.cache import cache
from django.utils import timezone
from openmeter import Client
from openmeter.models import Event

from billing_portal.api.compat.openmeter import event_identifier
from billing_portal.celery import app as celery_app
from metering.models import MeterEvent, RejectedEvent
from plans.apikeys import api_key_create
from tests.billing_portal.api.http_support import assert_reconciled
from tests.billing_portal.compat.openmeter_support import (
    BASE_PATH,
    INCLUDED,
    Http,
    charge,
    llm_call,
    load_llm_catalog,
    problem_of,
    rfc3339,
)
from tests.plans.factories import subscribed

pytestmark = pytest.mark.django_db(transaction=True)

BATCH = "application/cloudevents-batch+json"


@pytest.fixture
def http(live_server: Any) -> Iterator[Http]:
    """The live server with the llm catalog; Celery tasks run in place (no broker in
    tests), so the rating the ingest enqueues is done when the request returns."""
    eager = {"task_always_eager": True, "task_eager_propagates": True}
    saved = {name: celery_app.conf.get(name) for name in eager}
    celery_app.conf.update(eager)
    cache.clear()
    load_llm_catalog()
    yield Http(
        live_server.url,
        ingest_key=api_key_create(name="gateway", scopes=["ingest"])[1],
        read_key=api_key_create(name="dashboard", scopes=["read"])[1],
    )
    cache.clear()
    celery_app.conf.update(saved)
    # An SDK error raised in a test keeps its response, and so its kept-alive connection,
    # in a reference cycle: collected now, the live server's thread serving it ends and
    # closes its database connection before the test database is dropped.
    gc.collect()


@pytest.fixture
def client(http: Http) -> Iterator[Client]:
    """The openmeter SDK as its users configure it: our URL and one of our API keys."""
    with sdk_client(http, http.ingest_key) as sdk:
        yield sdk


def sdk_client(http: Http, key: str) -> Client:
    return Client(endpoint=http.base_url + BASE_PATH, token=key)


@pytest.fixture
def now() -> datetime:
    return timezone.now().replace(microsecond=0) - timedelta(minutes=1)


def cloudevent(event_id: str, at: datetime, **data: Any) -> CloudEvent:
    attributes = {
        "id": event_id,
        "source": "worker",
        "type": "llm.call",
        "subject": "acme",
        "time": rfc3339(at),
    }
    tokens = {"model": "large", "input_tokens": 1000, "output_tokens": 1000, **data}
    return CloudEvent(attributes, tokens)


def problem_model(error: HttpResponseError) -> Any:
    """The problem the SDK read from the body (its ProblemResponse model; None if it
    could not read one)."""
    assert error.model is not None, str(error)
    return error.model


def stored_parts() -> list[tuple[str, str | None, Decimal]]:
    return sorted(MeterEvent.objects.values_list("identifier", "parent_identifier", "value"))


# --- accepted -------------------------------------------------------------------------


def test_the_sdk_ingests_one_event_charged_for_both_meters_it_feeds(
    http: Http, client: Client, now: datetime
) -> None:
    subscribed()
    assert client.events.ingest_event(Event(llm_call("evt-1", time=now))) is None

    assert http.posted_balance() == INCLUDED - charge(2000, 500)
    assert stored_parts() == [
        ("gateway/evt-1#llm_input_tokens", "gateway/evt-1", Decimal(2000)),
        ("gateway/evt-1#llm_output_tokens", "gateway/evt-1", Decimal(500)),
    ]
    # The SDK's typed model, its time a datetime, is the same request.
    typed = Event(
        id="evt-2",
        source="gateway",
        specversion="1.0",
        type="llm.call",
        subject="acme",
        time=now,
        data={"model": "large", "input_tokens": 4000, "output_tokens": 0},
    )
    assert client.events.ingest_event(typed) is None
    assert http.posted_balance() == INCLUDED - charge(2000, 500) - charge(4000, 0)
    assert_reconciled()


def test_batches_from_the_sdk_and_from_cloudevents_are_charged(
    http: Http, client: Client, now: datetime
) -> None:
    subscribed()
    client.events.ingest_events(
        [Event(llm_call("b-1", time=now)), Event(llm_call("b-2", time=now))]
    )
    # ingest_events_json: application/json, a list or one event.
    client.events.ingest_events_json([Event(llm_call("j-1", time=now))])
    client.events.ingest_events_json(Event(llm_call("j-2", time=now)))
    expected = INCLUDED - 4 * charge(2000, 500)
    assert http.posted_balance() == expected

    # The cloudevents package: a batch is a JSON array of its structured events.
    batch = [to_dict(cloudevent(f"ce-{n}", now)) for n in range(3)]
    response = http.send(json.dumps(batch).encode(), BATCH)
    assert (response.status_code, response.content) == (204, b""), response.text
    headers, body = to_structured(cloudevent("ce-structured", now))
    assert headers["content-type"] == "application/cloudevents+json"
    response = http.send(body, headers["content-type"])
    assert response.status_code == 204, response.text
    # Binary mode: the attributes in ce-* headers, the data as the JSON body.
    headers, body = to_binary(cloudevent("ce-binary", now, output_tokens=2000))
    response = http.send(body, "application/json", headers=headers)
    assert response.status_code == 204, response.text

    expected -= 4 * charge(1000, 1000) + charge(1000, 2000)
    assert http.posted_balance() == expected
    parents = set(MeterEvent.objects.values_list("parent_identifier", flat=True))
    assert {"worker/ce-0", "worker/ce-structured", "worker/ce-binary"} <= parents
    assert_reconciled()


def test_a_resent_source_and_id_is_charged_once(http: Http, client: Client) -> None:
    subscribed()
    # Without time each send is stamped on arrival: a resend still is the same event.
    for _ in range(2):
        client.events.ingest_event(Event(llm_call("once")))
    client.events.ingest_events([Event(llm_call("once")), Event(llm_call("once"))])
    assert http.posted_balance() == INCLUDED - charge(2000, 500)
    # The same id from another source is another event.
    client.events.ingest_event(Event(llm_call("once", source="other-gateway")))
    assert http.posted_balance() == INCLUDED - 2 * charge(2000, 500)
    assert MeterEvent.objects.count() == 4


def test_a_resent_id_with_other_data_is_a_conflict_charged_nothing(
    http: Http, client: Client
) -> None:
    subscribed()
    client.events.ingest_event(Event(llm_call("changed")))  # no time: stamped on arrival
    with pytest.raises(HttpResponseError) as refused:
        client.events.ingest_event(Event(llm_call("changed", output_tokens=501)))
    body = refused.value.model
    assert body is not None
    assert (body["code"], body["param"]) == ("identifier_conflict", "id")
    assert http.posted_balance() == INCLUDED - charge(2000, 500)


# --- rejected events ------------------------------------------------------------------


def test_an_unknown_subject_is_the_sdks_own_error_with_a_readable_message(
    http: Http, client: Client, now: datetime
) -> None:
    subscribed()
    with pytest.raises(HttpResponseError) as raised:
        client.events.ingest_event(Event(llm_call("lost", subject="ghost", time=now)))
    error = raised.value
    assert not isinstance(error, ClientAuthenticationError)
    assert error.status_code == 400
    assert "no customer with external_id 'ghost'" in str(error)
    model = problem_model(error)
    assert "ghost" in model.detail
    assert (model["code"], model["param"]) == ("unknown_customer", "subject")
    assert model["events"][0]["id"] == "lost"
    assert MeterEvent.objects.count() == 0


def test_a_missing_required_attribute_is_named(http: Http, now: datetime) -> None:
    subscribed()
    for attribute in ("specversion", "id", "source", "type", "subject"):
        event = llm_call(f"no-{attribute}", time=now)
        del event[attribute]
        response = http.send(json.dumps(event).encode(), "application/cloudevents+json")
        body = problem_of(response, 400)
        assert (body["code"], body["param"]) == ("missing_attribute", attribute), body
        assert repr(attribute) in body["detail"]
    assert MeterEvent.objects.count() == 0


def test_a_batch_stores_its_valid_events_and_lists_the_rejected_ones(
    http: Http, now: datetime
) -> None:
    subscribed()
    untyped = llm_call("untyped", time=now)
    del untyped["type"]
    no_output = llm_call("no-output", time=now)
    del no_output["data"]["output_tokens"]
    batch = [llm_call("fine", time=now), untyped, no_output, "not an event"]

    body = problem_of(http.send(json.dumps(batch).encode(), BATCH), 400)
    assert body["detail"].startswith("3 of 4 event(s) rejected; the others were stored: ")
    assert (body["code"], body["param"]) == ("missing_attribute", "type")
    rejected = [(e["index"], e["id"], e["code"], e["param"]) for e in body["events"]]
    assert rejected == [
        (1, "untyped", "missing_attribute", "type"),
        (2, "no-output", "missing_property", "data.output_tokens"),
        (3, None, "invalid_event", None),
    ]
    assert all(e["message"] and e["source"] in {"gateway", None} for e in body["events"])
    assert http.posted_balance() == INCLUDED - charge(2000, 500)
    # Every refusal is in the unmatched-events report, those refused in translation too.
    kept = RejectedEvent.objects.order_by("pk").values_list("identifier", "code", "event_name")
    assert list(kept) == [
        ("untyped", "missing_attribute", ""),
        ("", "invalid_event", ""),
        ("gateway/no-output", "missing_property", "llm.call"),
    ]


def test_a_missing_value_property_is_missing_property(
    http: Http, client: Client, now: datetime
) -> None:
    subscribed()
    event = llm_call("half", time=now)
    del event["data"]["input_tokens"]
    with pytest.raises(HttpResponseError) as raised:
        client.events.ingest_event(Event(event))
    model = problem_model(raised.value)
    assert raised.value.status_code == 400
    assert (model["code"], model["param"]) == ("missing_property", "data.input_tokens")
    assert "input_tokens" in model.detail
    # Neither part is stored: the event is refused whole.
    assert MeterEvent.objects.count() == 0


# --- refused requests -----------------------------------------------------------------


def test_a_bad_key_is_the_sdks_authentication_error(http: Http, now: datetime) -> None:
    with (
        sdk_client(http, "sk_nope_not-a-key") as bad,
        pytest.raises(ClientAuthenticationError) as raised,
    ):
        bad.events.ingest_event(Event(llm_call("e", time=now)))
    assert raised.value.status_code == 401
    assert problem_model(raised.value)["code"] == "invalid_api_key"
    response: Any = raised.value.response
    assert response.headers["WWW-Authenticate"].startswith("Bearer")

    no_key = problem_of(http.send(b"{}", "application/cloudevents+json", key=""), 401)
    assert no_key["code"] == "api_key_required"
    # A key without the ingest scope.
    with (
        sdk_client(http, http.read_key) as read_only,
        pytest.raises(HttpResponseError) as forbidden,
    ):
        read_only.events.ingest_event(Event(llm_call("e", time=now)))
    assert forbidden.value.status_code == 403
    assert problem_model(forbidden.value)["code"] == "insufficient_scope"


def test_the_rate_limit_answers_problem_json_with_retry_after(
    http: Http, settings: Any, now: datetime
) -> None:
    subscribed()
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"api_key": "2/hour"},
    }
    body = json.dumps(llm_call("limited", time=now)).encode()
    statuses = [http.send(body, "application/cloudevents+json").status_code for _ in range(2)]
    assert statuses == [204, 204]
    limited = http.send(body, "application/cloudevents+json")
    assert problem_of(limited, 429)["code"] == "rate_limited"
    assert int(limited.headers["Retry-After"]) >= 1


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"{not json", "application/cloudevents+json", 400, "invalid_json"),
        (b"[" * 100 + b"]" * 100, BATCH, 400, "invalid_json"),
        (b"[" + b",".join([b"{}"] * 1001) + b"]", BATCH, 400, "too_many_events"),
        (b"id=1", "text/plain", 415, "unsupported_media_type"),
    ],
)
def test_a_body_refused_whole_is_problem_json(
    http: Http, body: bytes, content_type: str, status: int, code: str
) -> None:
    assert problem_of(http.send(body, content_type), status)["code"] == code


def test_the_empty_batch_is_accepted(http: Http) -> None:
    assert http.send(b"[]", BATCH).status_code == 204


# --- identifiers ----------------------------------------------------------------------


def test_the_identifier_is_source_and_id_or_a_stable_hash() -> None:
    assert event_identifier("gateway", "evt-1") == "gateway/evt-1"
    assert event_identifier("https://api.example/v1", "7") == "https://api.example/v1/7"
    hashed = [
        event_identifier("gateway", "has space"),
        event_identifier("s" * 250, "evt-1"),
        event_identifier("a", "b/c"),  # would read as source "a/b", id "c"
        event_identifier("gateway", "é"),
        event_identifier("gateway", "evt-1\n"),
    ]
    for identifier in hashed:
        assert identifier.startswith("sha256:") and len(identifier) == 71
        assert "/" not in identifier
    assert len(set(hashed)) == len(hashed)
    assert event_identifier("gateway", "has space") == hashed[0]
