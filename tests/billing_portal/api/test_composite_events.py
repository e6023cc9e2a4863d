"""One LLM call as one event: ``properties`` feed every meter of its ``event_name``
(the demo catalog's llm_input_tokens, llm_output_tokens and llm_cached_tokens), each
part charged exactly once, and the event accepted, refused, found duplicate, read and
cancelled as one."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from django.utils import timezone

from ledger.models import EntryKind, LedgerEntry
from metering.models import EventCancellation, EventRating, MeterEvent, RejectedEvent
from plans import catalog
from tests.billing_portal.api.test_events_api import Api, rfc3339
from tests.plans.factories import subscribed

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("http_api_environment"),
]

TOKENS = {"input_tokens": 812, "output_tokens": 120, "cached_tokens": 300}
# Hand-computed from docs/examples/catalog.yaml (model large, credits per 1000 tokens):
# input 812 x 2.5 + output 120 x 15 + cached 300 x 0.25 = 2.03 + 1.8 + 0.075.
CALL_CREDITS = Decimal("3.905")
PARTS = ["llm_cached_tokens", "llm_input_tokens", "llm_output_tokens"]


@pytest.fixture
def api(api_server: tuple[str, str]) -> Api:
    return Api(*api_server)


# One time for every send: a resend must carry the same content, whatever second it is.
SENT_AT = rfc3339(timezone.now().replace(microsecond=0) - timedelta(minutes=5))


def call(identifier: str, *, model: str = "large", **tokens: Any) -> dict[str, Any]:
    return {
        "identifier": identifier,
        "event_name": "llm.call",
        "customer": "acme",
        "timestamp": SENT_AT,
        "properties": {"model": model, **(tokens or TOKENS)},
    }


def used(api: Api) -> Decimal:
    return Decimal(api.balance()["period"]["used"])


def test_one_call_is_charged_once_per_meter_and_a_resend_is_a_duplicate(api: Api) -> None:
    subscribed()
    sent = api.post("/events", call("r1"))
    assert sent.status_code == 202, sent.text
    assert sent.json()["results"] == [
        {"index": 0, "identifier": "r1", "status": "accepted", "meters": PARTS}
    ]
    assert used(api) == CALL_CREDITS

    parts = MeterEvent.objects.filter(parent_identifier="r1").order_by("identifier")
    assert [p.identifier for p in parts] == [f"r1#{code}" for code in PARTS]
    assert [p.value for p in parts] == [Decimal(300), Decimal(812), Decimal(120)]
    assert {p.dimensions["model"] for p in parts} == {"large"}
    assert EventRating.objects.filter(event__in=parts).count() == 3

    again = api.post("/events", {"events": [call("r1"), call("r1")]})
    assert [r["status"] for r in again.json()["results"]] == ["duplicate", "duplicate"]
    assert MeterEvent.objects.filter(parent_identifier="r1").count() == 3
    consumed = LedgerEntry.objects.filter(kind=EntryKind.CONSUME, cause_type="event")
    assert consumed.count() == 3
    assert used(api) == CALL_CREDITS


def test_a_resend_with_other_tokens_is_a_conflict_and_charges_nothing_more(api: Api) -> None:
    subscribed()
    api.post("/events", call("r1"))
    changed = api.post(
        "/events", call("r1", input_tokens=812, output_tokens=121, cached_tokens=300)
    )
    result = changed.json()["results"][0]
    assert result["status"] == "rejected"
    assert result["error"]["code"] == "identifier_conflict"
    assert used(api) == CALL_CREDITS


def test_a_missing_value_property_refuses_the_whole_event_naming_it(api: Api) -> None:
    subscribed()
    sent = api.post("/events", call("r2", input_tokens=812, output_tokens=120))
    result = sent.json()["results"][0]
    assert result["status"] == "rejected"
    assert result["error"]["code"] == "missing_property"
    assert result["error"]["param"] == "cached_tokens"
    assert "cached_tokens" in result["error"]["message"]
    assert not MeterEvent.objects.filter(parent_identifier="r2").exists()
    assert RejectedEvent.objects.get(identifier="r2").code == "missing_property"

    bad = api.post("/events", call("r3", input_tokens="lots", output_tokens=1, cached_tokens=0))
    error = bad.json()["results"][0]["error"]
    assert (error["code"], error["param"]) == ("invalid_value", "input_tokens")


def test_naming_a_meter_feeds_only_it_under_the_identifier_sent(api: Api) -> None:
    subscribed()
    one = {**call("r4"), "meter": "llm_output_tokens"}
    del one["event_name"]
    sent = api.post("/events", one)
    assert sent.json()["results"][0]["meters"] == ["llm_output_tokens"]
    event = MeterEvent.objects.get(identifier="r4")
    assert event.parent_identifier is None and event.value == 120
    assert used(api) == Decimal("1.8")

    unknown = api.post("/events", {**one, "identifier": "r5", "meter": "nope"})
    assert unknown.json()["results"][0]["error"]["code"] == "unknown_meter"


def test_the_call_reads_as_one_event_with_its_parts_and_cancels_whole(api: Api) -> None:
    subscribed()
    api.post("/events", call("r6"))
    read = api.get("/customers/acme/events/r6")
    assert read.status_code == 200, read.text
    body = read.json()
    assert (body["identifier"], body["status"], body["credits"]) == ("r6", "rated", "3.905000")
    assert [p["meter"] for p in body["parts"]] == PARTS
    assert {p["parent_identifier"] for p in body["parts"]} == {"r6"}
    assert all(p["ledger_entries"] for p in body["parts"])

    cancelled = api.post(
        "/events/cancel", {"customer": "acme", "identifier": "r6", "reason": "test"}
    )
    assert cancelled.status_code == 200, cancelled.text
    assert EventCancellation.objects.filter(event__parent_identifier="r6").count() == 3
    assert used(api) == 0
    assert api.get("/customers/acme/events/r6").json()["status"] == "cancelled"


def test_plain_value_events_still_feed_their_single_meter_unchanged(api: Api) -> None:
    subscribed()
    plain = {
        "identifier": "p1",
        "event_name": "llm.tokens",
        "customer": "acme",
        "timestamp": call("x")["timestamp"],
        "properties": {"value": "1000", "model": "large", "token_type": "output"},
    }
    sent = api.post("/events", plain)
    assert sent.json()["results"][0]["meters"] == ["llm_tokens"]
    assert MeterEvent.objects.get(identifier="p1").dimensions == {
        "model": "large",
        "token_type": "output",
    }
    assert used(api) == Decimal(15)


def test_a_dotted_value_property_reads_nested_properties(api: Api) -> None:
    text = catalog.dump().replace(
        "value_property: output_tokens", "value_property: usage.completion_tokens"
    )
    catalog.load(text)
    subscribed()
    nested = call("r7")
    nested["properties"] = {
        "model": "large",
        "input_tokens": 0,
        "cached_tokens": 0,
        "usage": {"completion_tokens": 1000},
    }
    sent = api.post("/events", nested)
    assert sent.json()["results"][0]["status"] == "accepted", sent.text
    assert used(api) == Decimal(15)
