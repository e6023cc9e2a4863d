"""POST /api/v1/events and /api/v1/events/cancel over real HTTP.

Each rejection code of the contract, duplicates inside and across batches (stored and
charged once), concurrent clients sending the same events (in the same order and in
opposite orders), whole-body refusals that store nothing, Unix-second timestamps, events
holding U+0000, cancellation (balance restored, idempotent, 404, 409 once the period is
handed to invoicing), Idempotency-Key replays and scopes.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests
from django.db import connection, transaction
from django.utils import timezone

from ledger.models import EntryKind, LedgerEntry
from metering import ingest
from metering.models import (
    EventCancellation,
    EventRating,
    MeterEvent,
    PeriodUsage,
    RatingQueue,
    RejectedEvent,
)
from metering.rating import events_rate_pending
from plans.apikeys import api_key_create
from plans.models import Customer, PeriodStatus, SubscriptionPeriod
from tests.billing_portal.api.http_support import assert_reconciled
from tests.plans.factories import subscribed

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("http_api_environment"),
]

API = "/api/v1"
PRO_INCLUDED = Decimal(20000)


# --- helpers --------------------------------------------------------------------------


@dataclass
class Api:
    base_url: str
    secret: str

    def _headers(self, key: str | None, extra: dict[str, str] | None) -> dict[str, str]:
        headers = dict(extra or {})
        secret = self.secret if key is None else key
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        return headers

    def post(
        self,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        sent = self._headers(key, headers)
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
            return requests.post(self.base_url + API + path, data=data, headers=sent, timeout=60)
        return requests.post(self.base_url + API + path, json=body, headers=sent, timeout=60)

    def get(
        self, path: str, params: dict[str, str] | None = None, *, key: str | None = None
    ) -> requests.Response:
        return requests.get(
            self.base_url + API + path, params=params, headers=self._headers(key, None), timeout=30
        )

    def balance(self, external_id: str = "acme") -> dict[str, Any]:
        response = self.get(f"/customers/{external_id}/balance")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event(
    identifier: str,
    at: datetime,
    *,
    customer: str = "acme",
    value: Any = "1000",
    dimensions: Any = None,
    **extra: Any,
) -> dict[str, Any]:
    """An llm.tokens event; 1000 large output tokens rate at 15 credits."""
    body = {
        "identifier": identifier,
        "event_name": "llm.tokens",
        "customer": customer,
        "timestamp": rfc3339(at),
        "value": value,
        "dimensions": {"model": "large", "token_type": "output"}
        if dimensions is None
        else dimensions,
    }
    body.update(extra)
    return body


def error_of(response: requests.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    assert set(error) == {"type", "code", "message", "param"}
    assert error["message"]
    return error


def consume_entries(subscriber: Customer) -> int:
    return LedgerEntry.objects.filter(
        account_id=subscriber.account_id, kind=EntryKind.CONSUME, cause_type="event"
    ).count()


@pytest.fixture
def api(api_server: tuple[str, str]) -> Api:
    return Api(*api_server)


@pytest.fixture
def now() -> datetime:
    return timezone.now().replace(microsecond=0) - timedelta(minutes=1)


# --- rejections -----------------------------------------------------------------------


def test_each_rejection_has_its_code_and_the_batch_is_still_202(api: Api, now: datetime) -> None:
    subscribed()
    other = subscribed("globex")
    first = api.post("/events", event("pre-1", now, value="10"))
    assert first.status_code == 202, first.text
    assert first.json()["accepted"] == 1

    missing_identifier = event("unused", now)
    del missing_identifier["identifier"]
    missing_value = event("no-value", now)
    del missing_value["value"]
    cases: list[tuple[Any, str, str | None, str | None]] = [
        # (event, status or rejection code, param, identifier echoed)
        (event("ok-1", now), "accepted", None, "ok-1"),
        (missing_identifier, "missing_field", "identifier", None),
        (missing_value, "missing_field", "value", "no-value"),
        (event("has space", now), "invalid_identifier", "identifier", "has space"),
        (event("x" * 256, now), "invalid_identifier", "identifier", "x" * 256),
        (event("new-line\n", now), "invalid_identifier", "identifier", "new-line\n"),
        (event("e-ghost", now, customer="ghost"), "unknown_customer", "customer", "e-ghost"),
        (
            {**event("e-name", now), "event_name": "llm.nope"},
            "unknown_event_name",
            "event_name",
            "e-name",
        ),
        (event("e-neg", now, value="-1"), "invalid_value", "value", "e-neg"),
        (event("e-nan", now, value="abc"), "invalid_value", "value", "e-nan"),
        (event("e-bool", now, value=True), "invalid_value", "value", "e-bool"),
        (event("e-dec", now, value="1.1234567"), "invalid_value", "value", "e-dec"),
        (
            event("e-dim", now, dimensions={"color": "red"}),
            "invalid_dimensions",
            "dimensions",
            "e-dim",
        ),
        (
            event("e-dimtype", now, dimensions={"model": 5}),
            "invalid_dimensions",
            "dimensions",
            "e-dimtype",
        ),
        (
            event("e-old", now - timedelta(days=36)),
            "timestamp_too_far_in_past",
            "timestamp",
            "e-old",
        ),
        (
            event("e-future", now + timedelta(minutes=10)),
            "timestamp_in_future",
            "timestamp",
            "e-future",
        ),
        (
            {**event("e-ts", now), "timestamp": "yesterday"},
            "invalid_timestamp",
            "timestamp",
            "e-ts",
        ),
        (
            {**event("e-naive", now), "timestamp": "2026-11-20T10:00:00"},
            "invalid_timestamp",
            "timestamp",
            "e-naive",
        ),
        (event("pre-1", now, value="11"), "identifier_conflict", "identifier", "pre-1"),
        (
            event("e-auth", now, authorization="999999"),
            "unknown_authorization",
            "authorization",
            "e-auth",
        ),
        (event("ok-1", now, value="2000"), "identifier_conflict", "identifier", "ok-1"),
        (event("ok-1", now), "duplicate", None, "ok-1"),
        ("not an object", "missing_field", None, None),
        # The same identifier under another customer is another event.
        (event("ok-1", now, customer=other.external_id), "accepted", None, "ok-1"),
    ]
    response = api.post("/events", {"events": [case[0] for case in cases]})
    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == {"accepted", "duplicates", "rejected", "results"}
    results = body["results"]
    assert len(results) == len(cases)
    for index, (result, (_, expected, param, identifier)) in enumerate(
        zip(results, cases, strict=True)
    ):
        assert result["index"] == index
        assert result["identifier"] == identifier, result
        if expected in {"accepted", "duplicate"}:
            assert result["status"] == expected, result
            assert "error" not in result
        else:
            assert result["status"] == "rejected", result
            assert set(result["error"]) == {"code", "message", "param"}
            assert result["error"]["code"] == expected, result
            assert result["error"]["param"] == param, result
            assert result["error"]["message"]
    statuses = Counter(
        "rejected" if expected not in {"accepted", "duplicate"} else expected
        for _, expected, _, _ in cases
    )
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (
        statuses["accepted"],
        statuses["duplicate"],
        statuses["rejected"],
    )

    # Rejected events are kept, with their code, for the unmatched-events report.
    kept = Counter(RejectedEvent.objects.values_list("code", flat=True))
    expected_codes = Counter(
        expected for _, expected, _, _ in cases if expected not in {"accepted", "duplicate"}
    )
    assert kept == expected_codes
    negative = RejectedEvent.objects.get(identifier="e-neg")
    assert (negative.code, negative.param) == ("invalid_value", "value")
    assert negative.customer_external_id == "acme"
    sent = next(case[0] for case in cases if case[3] == "e-neg")
    assert negative.payload == json.loads(json.dumps(sent))
    stored = sorted(MeterEvent.objects.values_list("customer__external_id", "identifier"))
    assert stored == [("acme", "ok-1"), ("acme", "pre-1"), ("globex", "ok-1")]
    assert MeterEvent.objects.get(customer__external_id="acme", identifier="pre-1").value == 10


def test_an_event_may_be_sent_alone_with_unix_seconds(api: Api, now: datetime) -> None:
    subscriber = subscribed()
    seconds = int(now.timestamp())
    response = api.post("/events", {**event("unix-int", now), "timestamp": seconds})
    assert response.status_code == 202, response.text
    assert response.json() == {
        "accepted": 1,
        "duplicates": 0,
        "rejected": 0,
        "results": [
            {"index": 0, "identifier": "unix-int", "status": "accepted", "meters": ["llm_tokens"]}
        ],
    }
    fractional = {**event("unix-float", now, value=1000.5), "timestamp": seconds + 0.25}
    assert api.post("/events", fractional).json()["accepted"] == 1
    stored = {e.identifier: e for e in MeterEvent.objects.filter(customer=subscriber)}
    assert stored["unix-int"].timestamp == datetime.fromtimestamp(seconds, tz=UTC)
    assert stored["unix-float"].timestamp == datetime.fromtimestamp(seconds + 0.25, tz=UTC)
    assert stored["unix-float"].value == Decimal("1000.5")
    # The same event again, timestamp now as RFC 3339: same content, so a duplicate.
    again = api.post("/events", event("unix-int", datetime.fromtimestamp(seconds, tz=UTC)))
    assert again.json()["results"][0]["status"] == "duplicate"


# --- duplicates -----------------------------------------------------------------------


def test_duplicates_in_and_across_batches_are_stored_and_charged_once(
    api: Api, now: datetime
) -> None:
    subscriber = subscribed()
    one, two = event("dup-1", now), event("dup-2", now, value="2000")
    first = api.post("/events", {"events": [one, one, two, one]})
    assert first.status_code == 202
    body = first.json()
    assert (body["accepted"], body["duplicates"], body["rejected"]) == (2, 2, 0)
    assert [r["status"] for r in body["results"]] == [
        "accepted",
        "duplicate",
        "accepted",
        "duplicate",
    ]
    # Key order and an equal value written differently are the same content.
    reordered = {key: two[key] for key in reversed(list(two))} | {"value": "2000.000"}
    second = api.post("/events", {"events": [reordered, one]})
    assert second.json()["duplicates"] == 2
    assert second.json()["accepted"] == 0
    events_rate_pending()

    assert MeterEvent.objects.filter(customer=subscriber).count() == 2
    assert EventRating.objects.count() == 2
    assert consume_entries(subscriber) == 2
    balance = api.balance()
    assert Decimal(balance["posted"]) == PRO_INCLUDED - 15 - 30
    assert Decimal(balance["period"]["used"]) == 45
    assert_reconciled()


def _post_all(api: Api, batches: list[list[dict[str, Any]]]) -> list[requests.Response]:
    start = threading.Barrier(len(batches))

    def send(batch: list[dict[str, Any]]) -> requests.Response:
        start.wait(timeout=30)
        return api.post("/events", {"events": batch})

    with ThreadPoolExecutor(max_workers=len(batches)) as pool:
        futures = [pool.submit(send, batch) for batch in batches]
        return [f.result(timeout=120) for f in futures]


def test_the_same_batch_from_eight_clients_at_once_is_stored_once(api: Api, now: datetime) -> None:
    subscriber = subscribed()
    batch = [event(f"c-{i:03d}", now - timedelta(seconds=i)) for i in range(200)]
    responses = _post_all(api, [batch] * 8)

    assert [r.status_code for r in responses] == [202] * 8, [r.text[:300] for r in responses]
    accepted = 0
    for response in responses:
        body = response.json()
        assert {r["status"] for r in body["results"]} <= {"accepted", "duplicate"}
        assert [r["identifier"] for r in body["results"]] == [e["identifier"] for e in batch]
        assert body["accepted"] + body["duplicates"] == 200
        assert body["rejected"] == 0
        accepted += body["accepted"]
    assert accepted == 200
    per_identifier = Counter(
        r["identifier"]
        for response in responses
        for r in response.json()["results"]
        if r["status"] == "accepted"
    )
    assert set(per_identifier.values()) == {1}
    assert MeterEvent.objects.filter(customer=subscriber).count() == 200

    events_rate_pending()
    assert not RatingQueue.objects.exists()
    assert EventRating.objects.count() == 200
    assert consume_entries(subscriber) == 200
    assert Decimal(api.balance()["posted"]) == PRO_INCLUDED - 200 * 15
    assert_reconciled()


def _lock_waiters() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_clear_snapshot()")
        cursor.execute(
            """
            SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE NOT l.granted AND a.datname = current_database()
            """
        )
        row = cursor.fetchone()
    return int(row[0]) if row else 0


def test_overlapping_batches_in_opposite_orders_are_stored_once(api: Api, now: datetime) -> None:
    # Two clients send the same events in opposite orders (a retry need not keep the
    # order). Each event stands alone, so neither request may fail for rows the other
    # is inserting. A row held uncommitted here makes both requests reach the middle of
    # their batch before either goes on, so the interleaving is the same on every run.
    subscriber = subscribed()
    first_half = [event(f"a-{i:02d}", now) for i in range(20)]
    middle = event("m", now)
    second_half = [event(f"b-{i:02d}", now) for i in range(20)]
    with ThreadPoolExecutor(max_workers=2) as pool:
        with transaction.atomic():
            assert ingest.events_ingest(events=[middle]).count("accepted") == 1
            futures = [
                pool.submit(api.post, "/events", {"events": [*first_half, middle, *second_half]}),
                pool.submit(api.post, "/events", {"events": [*second_half, middle, *first_half]}),
            ]
            deadline = time.monotonic() + 20
            while _lock_waiters() < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
        responses = [f.result(timeout=60) for f in futures]

    assert [r.status_code for r in responses] == [202, 202], [r.text[:300] for r in responses]
    for response in responses:
        assert {r["status"] for r in response.json()["results"]} <= {"accepted", "duplicate"}
    assert sum(r.json()["accepted"] for r in responses) == 40
    assert MeterEvent.objects.filter(customer=subscriber).count() == 41
    events_rate_pending()
    assert Decimal(api.balance()["posted"]) == PRO_INCLUDED - 41 * 15
    assert_reconciled()


# --- whole-body refusals --------------------------------------------------------------


def test_a_body_over_1000_events_is_refused_whole(api: Api, now: datetime) -> None:
    subscribed()
    events = [event(f"big-{i}", now) for i in range(1000)] + [event("bad one", now)]
    response = api.post("/events", {"events": events})
    assert response.status_code == 400
    error = error_of(response)
    assert (error["type"], error["code"]) == ("invalid_request_error", "too_many_events")
    assert error["param"] == "events"
    assert not MeterEvent.objects.exists()
    assert not RejectedEvent.objects.exists()
    # 1000 is the limit, not over it.
    response = api.post("/events", {"events": events[:1000]})
    assert response.status_code == 202
    assert response.json()["accepted"] == 1000


def test_a_body_that_is_not_json_or_has_no_events_is_400(api: Api) -> None:
    subscribed()
    for raw, code in [
        (b'{"events": [', "invalid_json"),
        (b"not json", "invalid_json"),
        (b"", "invalid_json"),
        (b'{"events": []}', "events_required"),
        (b"[]", "events_required"),
        (b'{"events": "one"}', "events_required"),
        (b"42", "events_required"),
    ]:
        response = api.post("/events", data=raw)
        assert response.status_code == 400, (raw, response.text)
        error = error_of(response)
        assert (error["type"], error["code"]) == ("invalid_request_error", code), raw
    assert not RejectedEvent.objects.exists()
    assert not MeterEvent.objects.exists()


# --- keys, scopes, Idempotency-Key ----------------------------------------------------


def test_posting_events_needs_the_ingest_scope(api: Api, now: datetime) -> None:
    subscribed()
    _, reader = api_key_create(name="reader", scopes=["read"])
    response = api.post("/events", event("scoped", now), key=reader)
    assert response.status_code == 403
    assert error_of(response)["type"] == "permission_error"
    _, ingester = api_key_create(name="ingester", scopes=["ingest"])
    response = api.post("/events", event("scoped", now), key="")
    assert response.status_code == 401
    assert error_of(response)["type"] == "authentication_error"
    assert not MeterEvent.objects.exists()
    assert not RejectedEvent.objects.exists()
    assert api.post("/events", event("scoped", now), key=ingester).status_code == 202


def test_an_idempotency_key_replays_the_first_answer(api: Api, now: datetime) -> None:
    subscribed()
    body = {"events": [event("idem-1", now), event("idem-bad", now, value="-5")]}
    headers = {"Idempotency-Key": "batch-1"}
    first = api.post("/events", body, headers=headers)
    retry = api.post("/events", body, headers=headers)
    assert first.status_code == retry.status_code == 202
    assert retry.json() == first.json()
    assert retry.headers["Idempotent-Replayed"] == "true"
    assert RejectedEvent.objects.count() == 1
    other = api.post("/events", {"events": [event("idem-2", now)]}, headers=headers)
    assert other.status_code == 409
    assert error_of(other)["code"] == "idempotency_key_reused"
    assert MeterEvent.objects.count() == 1


# --- cancellation ---------------------------------------------------------------------


def test_cancel_reverses_the_debit_once(api: Api, now: datetime) -> None:
    subscriber = subscribed()
    assert api.post("/events", event("to-cancel", now, value="2000")).json()["accepted"] == 1
    assert api.post("/events", event("kept", now)).json()["accepted"] == 1
    events_rate_pending()
    before = api.balance()
    assert Decimal(before["posted"]) == PRO_INCLUDED - 30 - 15
    assert Decimal(before["period"]["used"]) == 45

    body = {"customer": "acme", "identifier": "to-cancel", "reason": "duplicate_usage"}
    response = api.post("/events/cancel", body)
    assert response.status_code == 200, response.text
    canceled = response.json()
    assert canceled["customer"] == "acme"
    assert canceled["identifier"] == "to-cancel"
    assert canceled["status"] == "canceled"
    assert canceled["reason"] == "duplicate_usage"
    assert canceled["canceled_at"].endswith("Z")
    after = api.balance()
    assert Decimal(after["posted"]) == PRO_INCLUDED - 15
    assert Decimal(after["available"]) == PRO_INCLUDED - 15
    assert Decimal(after["period"]["used"]) == 15

    again = api.post("/events/cancel", body)
    assert again.status_code == 200
    assert again.json()["canceled_at"] == canceled["canceled_at"]
    assert Decimal(api.balance()["posted"]) == PRO_INCLUDED - 15
    assert EventCancellation.objects.count() == 1
    reversals = LedgerEntry.objects.filter(
        account_id=subscriber.account_id, kind=EntryKind.REVERSAL
    )
    assert sum(e.credits for e in reversals) == 30
    # The event itself stays as it arrived.
    assert MeterEvent.objects.filter(identifier="to-cancel").count() == 1
    usage = api.get("/customers/acme/usage", {"group_by": "model", "granularity": "day"}).json()
    assert sum(Decimal(row["credits"]) for row in usage["data"]) == 15
    assert_reconciled()


def test_cancel_of_an_event_not_yet_rated_charges_nothing(
    api: Api, now: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    subscribed()

    class NoEnqueue:
        def delay_on_commit(self) -> None:
            return None

    # Stored, not rated: as if the rating worker had not got to it yet.
    monkeypatch.setattr("metering.tasks.events_rate_pending", NoEnqueue())
    assert api.post("/events", event("queued", now)).json()["accepted"] == 1
    assert RatingQueue.objects.count() == 1
    response = api.post(
        "/events/cancel", {"customer": "acme", "identifier": "queued", "reason": "test"}
    )
    assert response.status_code == 200, response.text
    events_rate_pending()
    balance = api.balance()
    assert Decimal(balance["posted"]) == PRO_INCLUDED
    assert Decimal(balance["period"]["used"]) == 0
    assert_reconciled()


def test_cancel_refusals_404_400_and_409_once_the_period_is_invoicing(
    api: Api, now: datetime
) -> None:
    subscriber = subscribed()
    api.post("/events", event("late-fix", now))
    events_rate_pending()
    response = api.post(
        "/events/cancel", {"customer": "acme", "identifier": "nope", "reason": "test"}
    )
    assert response.status_code == 404
    error = error_of(response)
    assert (error["code"], error["param"]) == ("event_not_found", "identifier")
    response = api.post(
        "/events/cancel", {"customer": "ghost", "identifier": "late-fix", "reason": "test"}
    )
    assert response.status_code == 404
    assert error_of(response)["code"] == "unknown_customer"
    response = api.post("/events/cancel", {"customer": "acme", "identifier": "late-fix"})
    assert response.status_code == 400
    assert (error_of(response)["code"], error_of(response)["param"]) == ("missing_field", "reason")

    SubscriptionPeriod.objects.filter(subscription__customer=subscriber).update(
        status=PeriodStatus.INVOICING
    )
    response = api.post(
        "/events/cancel", {"customer": "acme", "identifier": "late-fix", "reason": "test"}
    )
    assert response.status_code == 409
    error = error_of(response)
    assert error["code"] == "period_closed"
    assert not EventCancellation.objects.exists()
    assert Decimal(api.balance()["posted"]) == PRO_INCLUDED - 15
    usage = PeriodUsage.objects.get(customer=subscriber)
    assert usage.credits == 15


def test_nul_characters_in_an_event_do_not_fail_the_batch(api: Api, now: datetime) -> None:
    # PostgreSQL text and jsonb cannot hold U+0000: each such event must still get an
    # answer of its own, and the other events of the batch must be stored.
    subscriber = subscribed()
    cases: list[tuple[dict[str, Any], str | None]] = [
        (event("nul-ok", now), "accepted"),
        (event("nul-customer", now, customer="ac\u0000me"), "unknown_customer"),
        ({**event("nul-name", now), "event_name": "llm\u0000"}, "unknown_event_name"),
        (event("nul-value", now, value="1\u0000"), "invalid_value"),
        ({**event("nul-ts", now), "timestamp": "2026\u0000"}, "invalid_timestamp"),
        (event("nul-auth", now, authorization="1\u0000"), "unknown_authorization"),
        ({**event("nul-field", now), "extra\u0000": 1}, "invalid_request"),
        (event("nul-dims", now, dimensions={"model": "lar\u0000ge"}), None),
        (event("nul-workspace", now, workspace="w\u0000"), None),
    ]
    response = api.post("/events", {"events": [case[0] for case in cases]})
    assert response.status_code == 202, response.text
    results = response.json()["results"]
    for result, (sent, expected) in zip(results, cases, strict=True):
        assert result["identifier"] == sent["identifier"]
        if expected is None:  # refusing or keeping them are both fine
            assert result["status"] in {"accepted", "rejected"}, result
        elif expected == "accepted":
            assert result["status"] == "accepted", result
        else:
            assert result["error"]["code"] == expected, result
    assert MeterEvent.objects.filter(customer=subscriber, identifier="nul-ok").exists()
    assert RejectedEvent.objects.filter(identifier="nul-customer").exists()
