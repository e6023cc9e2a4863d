"""GET /api/v1/customers/{external_id}/events and .../events/{identifier}: stored events
with their status (accepted, rated, unratable, cancelled), their rating or queue state,
and the ledger entries that name them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import pytest
from django.utils import timezone

from ledger.models import LedgerEntry
from ledger.units import rfc3339
from metering import ingest, services
from metering.models import MeterEvent, RatingQueue
from metering.rating import events_rate_pending
from plans.models import Customer
from plans.services import subscription_start
from tests.billing_portal.api.http_support import Api, error_of
from tests.plans.factories import customer, plan

pytestmark = pytest.mark.django_db(transaction=True)


@dataclass(frozen=True)
class History:
    acme: Customer
    now: datetime

    def at(self, hours_ago: float) -> datetime:
        return self.now - timedelta(hours=hours_ago)


def _event(identifier: str, at: datetime, **extra: Any) -> dict[str, Any]:
    return {
        "identifier": identifier,
        "event_name": "llm.tokens",
        "customer": "acme",
        "timestamp": rfc3339(at),
        "value": "1000",
        "dimensions": {"model": "large", "token_type": "output"},
        **extra,
    }


def _ingest(*events: dict[str, Any]) -> None:
    outcome = ingest.events_ingest(events=list(events))
    assert outcome.count("accepted") == len(events), outcome.as_dict()


@pytest.fixture
def history(api: Api) -> History:
    """rated-1 (15 credits), unratable-1 (no rate for model medium), cancelled-1, a
    doc summary, then three events still queued: one new, one failing, one parked."""
    acme = customer("acme")
    h = History(acme=acme, now=timezone.now().replace(microsecond=0))
    subscription_start(customer=acme, plan=plan("pro"), actor="test", start_at=h.at(24))
    customer("globex")
    _ingest(
        _event("rated-1", h.at(6)),
        _event("unratable-1", h.at(5), dimensions={"model": "medium"}),
        _event("cancelled-1", h.at(4)),
        _event("summary-1", h.at(3.5), event_name="doc.summary", dimensions={}),
    )
    events_rate_pending()
    services.event_cancel(customer=acme, identifier="cancelled-1", reason="duplicate", actor="t")
    _ingest(_event("queued-1", h.at(3)), _event("failing-1", h.at(2)), _event("parked-1", h.at(1)))
    RatingQueue.objects.filter(event__identifier="failing-1").update(
        attempts=2, last_error="rate card lookup timed out", next_attempt_at=h.now
    )
    RatingQueue.objects.filter(event__identifier="parked-1").update(
        attempts=5, last_error="no period", parked_at=h.now
    )
    return h


def _identifiers(body: dict[str, Any]) -> list[str]:
    return [event["identifier"] for event in body["data"]]


def test_it_lists_the_events_newest_first_with_their_status(api: Api, history: History) -> None:
    body = api.ok("/customers/acme/events")
    assert body["has_more"] is False
    assert [(e["identifier"], e["status"]) for e in body["data"]] == [
        ("parked-1", "accepted"),
        ("failing-1", "accepted"),
        ("queued-1", "accepted"),
        ("summary-1", "rated"),
        ("cancelled-1", "cancelled"),
        ("unratable-1", "unratable"),
        ("rated-1", "rated"),
    ]
    rated = body["data"][-1]
    stored = MeterEvent.objects.get(identifier="rated-1")
    assert rated["id"] == str(stored.pk)
    assert (rated["customer"], rated["event_name"], rated["meter"]) == (
        "acme",
        "llm.tokens",
        "llm_tokens",
    )
    assert (rated["value"], rated["timestamp"]) == ("1000", rfc3339(history.at(6)))
    assert rated["dimensions"] == {"model": "large", "token_type": "output"}
    assert rated["rating"]["status"] == "rated"
    assert rated["rating"]["credits"] == "15.000000"
    assert rated["rating"]["error"] is None
    assert rated["cancellation"] is None
    assert api.ok("/customers/globex/events") == {"data": [], "has_more": False}


@pytest.mark.parametrize(
    ("status", "identifiers"),
    [
        ("accepted", ["parked-1", "failing-1", "queued-1"]),
        ("rated", ["summary-1", "rated-1"]),
        ("unratable", ["unratable-1"]),
        ("cancelled", ["cancelled-1"]),
    ],
)
def test_it_filters_by_status(
    api: Api, history: History, status: str, identifiers: list[str]
) -> None:
    assert _identifiers(api.ok("/customers/acme/events", status=status)) == identifiers


def test_it_filters_by_time_and_event_name(api: Api, history: History) -> None:
    window = api.ok(
        "/customers/acme/events", start=rfc3339(history.at(5)), end=rfc3339(history.at(2))
    )
    assert _identifiers(window) == ["queued-1", "summary-1", "cancelled-1", "unratable-1"]
    unix = api.ok("/customers/acme/events", start=int(history.at(1.5).timestamp()))
    assert _identifiers(unix) == ["parked-1"]
    named = api.ok("/customers/acme/events", event_name="doc.summary")
    assert _identifiers(named) == ["summary-1"]
    assert _identifiers(api.ok("/customers/acme/events", event_name="nope")) == []


def test_it_pages_with_limit_and_starting_after(api: Api, history: History) -> None:
    pages = api.pages("/customers/acme/events", limit=3)
    assert [[e["identifier"] for e in page] for page in pages] == [
        ["parked-1", "failing-1", "queued-1"],
        ["summary-1", "cancelled-1", "unratable-1"],
        ["rated-1"],
    ]
    # The cursor still works once its event has changed status (rated meanwhile).
    queued = pages[0][2]
    events_rate_pending()
    after = api.ok("/customers/acme/events", status="rated", starting_after=queued["id"])
    assert _identifiers(after) == ["summary-1", "rated-1"]


def test_bad_queries_are_400_naming_the_param(api: Api, history: History) -> None:
    now = rfc3339(history.now)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"status": "pending"}, "status"),
        ({"start": "yesterday"}, "start"),
        ({"start": now, "end": now}, "start"),
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"starting_after": "999999"}, "starting_after"),
        ({"starting_after": "rated-1"}, "starting_after"),
    ]
    for params, param in cases:
        response = api.get("/customers/acme/events", **params)
        code = "resource_missing" if param == "starting_after" else "invalid_request"
        assert error_of(response, 400, code)["param"] == param, params
    theirs = MeterEvent.objects.get(identifier="rated-1").pk
    response = api.get("/customers/globex/events", starting_after=str(theirs))
    error_of(response, 400, "resource_missing")
    error_of(api.get("/customers/nobody/events"), 404, "resource_missing")


def test_one_event_answers_its_rating_and_ledger_entries(api: Api, history: History) -> None:
    body = api.ok("/customers/acme/events/rated-1")
    assert (body["identifier"], body["status"]) == ("rated-1", "rated")
    assert body["rating"]["credits"] == "15.000000"
    event = MeterEvent.objects.get(identifier="rated-1")
    entries = LedgerEntry.objects.filter(cause_type="event", cause_id=str(event.pk))
    assert [e["id"] for e in body["ledger_entries"]] == [str(e.pk) for e in entries.order_by("pk")]
    (consume,) = body["ledger_entries"]
    assert (consume["kind"], consume["credits"], consume["cause_id"]) == (
        "consume",
        "-15.000000",
        body["id"],
    )
    assert consume["operation_kind"] == "consume"


def test_an_unratable_event_answers_its_error(api: Api, history: History) -> None:
    body = api.ok("/customers/acme/events/unratable-1")
    assert (body["status"], body["rating"]["status"]) == ("unratable", "unratable")
    assert body["rating"]["credits"] == "0.000000"
    assert body["rating"]["error"]["code"]
    assert "medium" in body["rating"]["error"]["message"]
    assert body["ledger_entries"] == []


def test_a_cancelled_event_answers_the_cancellation_and_its_reversal(
    api: Api, history: History
) -> None:
    body = api.ok("/customers/acme/events/cancelled-1")
    assert body["status"] == "cancelled"
    assert (body["cancellation"]["reason"], body["cancellation"]["actor"]) == ("duplicate", "t")
    kinds = sorted((e["kind"], e["credits"]) for e in body["ledger_entries"])
    assert kinds == [("consume", "-15.000000"), ("reversal", "15.000000")]


def test_a_queued_event_answers_its_attempts_and_last_error(api: Api, history: History) -> None:
    queued = api.ok("/customers/acme/events/queued-1")["rating"]
    assert (queued["status"], queued["attempts"], queued["error"]) == ("pending", 0, None)
    assert queued["credits"] is None
    failing = api.ok("/customers/acme/events/failing-1")["rating"]
    assert (failing["status"], failing["attempts"]) == ("failing", 2)
    assert failing["error"] == {"code": "rating_failed", "message": "rate card lookup timed out"}
    assert failing["next_attempt_at"] == rfc3339(history.now)
    parked = api.ok("/customers/acme/events/parked-1")["rating"]
    assert (parked["status"], parked["attempts"], parked["parked_at"]) == (
        "parked",
        5,
        rfc3339(history.now),
    )


def test_an_identifier_with_a_slash_is_found(api: Api, history: History) -> None:
    _ingest(_event("req/2026/1", history.at(0.5)))
    assert api.ok("/customers/acme/events/req%2F2026%2F1")["identifier"] == "req/2026/1"
    assert api.ok("/customers/acme/events/req/2026/1")["identifier"] == "req/2026/1"


def test_an_unknown_event_or_customer_is_404(api: Api, history: History) -> None:
    error = error_of(api.get("/customers/acme/events/nope"), 404, "resource_missing")
    assert error["param"] == "identifier"
    error_of(api.get("/customers/globex/events/rated-1"), 404, "resource_missing")
    error_of(api.get("/customers/nobody/events/rated-1"), 404, "resource_missing")


def test_reading_events_needs_the_read_scope(api: Api, history: History) -> None:
    for path in ("/customers/acme/events", "/customers/acme/events/rated-1"):
        assert api.get(path, key=api.read).status_code == 200
        error_of(api.get(path, key=api.ingest), 403, "insufficient_scope")
        error_of(api.get(path, key=""), 401, "api_key_required")
