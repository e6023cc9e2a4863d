"""GET /api/v1/customers/{id}/balance and /usage over real HTTP: the shapes of the
contract, the numbers behind them once rating has caught up, and query validation."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests
from django.utils import timezone

from billing_portal.alerts.models import Alert
from ledger.services import credit_grant_create
from metering.rating import events_rate_pending
from plans.apikeys import api_key_create
from plans.models import Customer, SubscriptionPeriod
from plans.services import subscription_start
from tests.billing_portal.api.http_support import assert_reconciled
from tests.plans.factories import customer, plan

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("http_api_environment"),
]

API = "/api/v1"
SIX_PLACES = re.compile(r"^-?\d+\.\d{6}$")
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


@dataclass
class Api:
    base_url: str
    secret: str

    def post(self, path: str, body: Any) -> requests.Response:
        return requests.post(
            self.base_url + API + path,
            json=body,
            headers={"Authorization": f"Bearer {self.secret}"},
            timeout=60,
        )

    def get(
        self, path: str, params: dict[str, Any] | None = None, *, key: str | None = None
    ) -> requests.Response:
        secret = self.secret if key is None else key
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return requests.get(self.base_url + API + path, params=params, headers=headers, timeout=30)

    def ingest(self, events: list[dict[str, Any]]) -> None:
        response = self.post("/events", {"events": events})
        assert response.status_code == 202, response.text
        assert response.json()["accepted"] == len(events), response.text
        events_rate_pending()

    def usage(self, **params: Any) -> list[dict[str, Any]]:
        response = self.get("/customers/acme/usage", params)
        assert response.status_code == 200, response.text
        rows: list[dict[str, Any]] = response.json()["data"]
        return rows


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def tokens(
    identifier: str, at: datetime, value: str, model: str, token_type: str
) -> dict[str, Any]:
    return {
        "identifier": identifier,
        "event_name": "llm.tokens",
        "customer": "acme",
        "timestamp": rfc3339(at),
        "value": value,
        "dimensions": {"model": model, "token_type": token_type},
    }


def subscribed(plan_code: str = "pro") -> Customer:
    subscriber = customer("acme")
    subscription_start(
        customer=subscriber,
        plan=plan(plan_code),
        actor="test",
        start_at=timezone.now() - timedelta(days=20),
    )
    return subscriber


def error_of(response: requests.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"type", "code", "message", "param"}
    assert error["message"]
    return error


@pytest.fixture
def api(api_server: tuple[str, str]) -> Api:
    return Api(*api_server)


# --- balance --------------------------------------------------------------------------


def test_the_balance_has_the_contracts_shape_and_numbers(api: Api) -> None:
    subscriber = subscribed()
    period = SubscriptionPeriod.objects.get(subscription__customer=subscriber)
    now = timezone.now() - timedelta(minutes=1)
    api.ingest([tokens("b-1", now, "2000", "large", "output")])  # 30 credits
    held = api.post(
        "/authorizations",
        {"customer": "acme", "identifier": "h", "credits": "60"},
    )
    assert held.json()["decision"] == "allow"

    response = api.get("/customers/acme/balance")
    assert response.status_code == 200
    body = response.json()
    assert {"customer", "available", "posted", "held", "grants", "period", "as_of"} <= set(body)
    assert body["customer"] == "acme"
    assert (body["available"], body["posted"], body["held"]) == (
        "19910.000000",
        "19970.000000",
        "60.000000",
    )
    for name in ("available", "posted", "held"):
        assert SIX_PLACES.match(body[name]), body[name]

    [grant] = body["grants"]
    assert {"id", "category", "remaining", "priority", "expires_at"} <= set(grant)
    assert grant["category"] == "included"
    assert grant["remaining"] == "19970.000000"
    assert grant["priority"] == 50
    assert parse(grant["expires_at"]) == period.end

    assert set(body["period"]) >= {"start", "end", "included", "used", "overage"}
    assert parse(body["period"]["start"]) == period.start
    assert parse(body["period"]["end"]) == period.end
    assert Decimal(body["period"]["included"]) == 20000
    assert (body["period"]["used"], body["period"]["overage"]) == ("30.000000", "0.000000")
    for name in ("start", "end"):
        assert RFC3339_UTC.match(body["period"][name]), body["period"][name]
    assert RFC3339_UTC.match(body["as_of"])
    assert abs(parse(body["as_of"]) - timezone.now()) < timedelta(seconds=30)


def test_pooled_and_workspace_credits_are_shown_apart_and_match_authorizations(
    api: Api,
) -> None:
    subscriber = subscribed("starter")  # 2,000 included credits, pooled
    credit_grant_create(
        account=subscriber.account,
        amount="80",
        category="promotional",
        actor="t",
        workspace="ws-a",
    )
    balance = api.get("/customers/acme/balance").json()
    assert (balance["available"], balance["posted"]) == ("2000.000000", "2080.000000")
    assert balance["workspaces"] == [{"workspace": "ws-a", "available": "2080.000000"}]

    def available(**scope: str) -> str:
        body = {"customer": "acme", "credits": "1", "hold": False, **scope}
        identifier = "check-" + "-".join(scope.values())
        answer = api.post("/authorizations", {"identifier": identifier, **body})
        assert answer.status_code == 200, answer.text
        value: str = answer.json()["available"]
        return value

    # The authorization's "available" is the balance's figure for the same scope.
    assert available() == balance["available"]
    assert available(workspace="ws-a") == balance["workspaces"][0]["available"]


def test_the_share_of_included_credits_used_counts_only_included_credits(api: Api) -> None:
    subscriber = subscribed()  # pro: 20,000 included
    credit_grant_create(  # drawn first (priority 0), usable for the whole period
        account=subscriber.account,
        amount="5000",
        category="promotional",
        actor="t",
        priority=0,
        effective_at=timezone.now() - timedelta(days=10),
    )
    now = timezone.now() - timedelta(minutes=1)
    api.ingest([tokens(f"u-{n}", now, "100000", "large", "output") for n in range(8)])  # 12,000

    period = api.get("/customers/acme/balance").json()["period"]
    assert (period["used"], period["included_used"], period["included_left"]) == (
        "12000.000000",
        "7000.000000",
        "13000.000000",
    )
    # 7,000 of 20,000 included credits is 35%: no 50% usage alert (12,000 would be 60%).
    assert not Alert.objects.filter(customer=subscriber, kind="usage_threshold").exists()


def test_hard_stop_usage_beyond_the_grants_is_recorded_as_overage(api: Api) -> None:
    subscribed("starter")
    now = timezone.now() - timedelta(minutes=1)
    # 150000 large output tokens: 2250 credits against 2000 included.
    api.ingest([tokens("big", now, "150000", "large", "output")])
    body = api.get("/customers/acme/balance").json()
    assert (body["posted"], body["held"], body["available"]) == (
        "0.000000",
        "0.000000",
        "0.000000",
    )
    assert (body["period"]["used"], body["period"]["overage"]) == ("2250.000000", "250.000000")
    assert body["grants"] == [] or body["grants"][0]["remaining"] == "0.000000"
    assert_reconciled()


def test_balance_without_a_subscription_and_refusals(api: Api) -> None:
    customer("acme")
    body = api.get("/customers/acme/balance").json()
    assert (body["available"], body["posted"], body["held"]) == ("0.000000",) * 3
    assert body["grants"] == []
    assert body["period"] is None

    response = api.get("/customers/ghost/balance")
    assert response.status_code == 404
    assert error_of(response)["code"] == "resource_missing"
    assert api.get("/customers/acme/balance", key="").status_code == 401
    _, ingest_only = api_key_create(name="ingest", scopes=["ingest"])
    response = api.get("/customers/acme/balance", key=ingest_only)
    assert response.status_code == 403
    assert error_of(response)["type"] == "permission_error"


def test_a_nul_character_in_the_customer_id_is_404(api: Api) -> None:
    # No external_id can hold U+0000 (customers are created with [A-Za-z0-9_.:@-]).
    customer("acme")
    for path in ("/customers/ac%00me", "/customers/ac%00me/balance", "/customers/ac%00me/usage"):
        response = api.get(path)
        assert response.status_code == 404, (path, response.text)
        assert error_of(response)["code"] == "resource_missing"


# --- usage ----------------------------------------------------------------------------


@pytest.fixture
def day_one() -> datetime:
    return (timezone.now() - timedelta(days=3)).replace(hour=0, minute=0, second=0, microsecond=0)


@pytest.fixture
def usage_history(api: Api, day_one: datetime) -> None:
    subscribed()
    day_two = day_one + timedelta(days=1)
    api.ingest(
        [
            tokens("u-1", day_one + timedelta(hours=10, minutes=5), "1000", "large", "output"),
            tokens("u-2", day_one + timedelta(hours=10, minutes=40), "2000", "large", "output"),
            tokens("u-3", day_one + timedelta(hours=11, minutes=10), "4000", "large", "input"),
            tokens("u-4", day_one + timedelta(hours=11, minutes=20), "2000", "small", "output"),
            tokens("u-5", day_two + timedelta(hours=9), "1000", "large", "output"),
            tokens("u-6", day_two + timedelta(hours=9, minutes=30), "1000", "small", "input"),
            {
                "identifier": "s-1",
                "event_name": "doc.summary",
                "customer": "acme",
                "timestamp": rfc3339(day_two + timedelta(hours=12)),
                "value": "1",
            },
        ]
    )


def _rows(rows: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any], Decimal, Decimal]]:
    for row in rows:
        assert {"period_start", "dimensions", "value", "credits"} <= set(row)
        assert SIX_PLACES.match(row["credits"])
        assert RFC3339_UTC.match(row["period_start"])
    return [
        (row["period_start"], row["dimensions"], Decimal(row["value"]), Decimal(row["credits"]))
        for row in rows
    ]


@pytest.mark.usefixtures("usage_history")
def test_usage_by_day_grouped_by_model_and_token_type(api: Api, day_one: datetime) -> None:
    day_two = day_one + timedelta(days=1)
    rows = api.usage(
        start=rfc3339(day_one),
        end=rfc3339(day_one + timedelta(days=3)),
        group_by="model,token_type",
        granularity="day",
    )
    llm = [row for row in rows if row.get("meter", "llm_tokens") == "llm_tokens"]
    got = sorted(_rows(llm), key=lambda r: (r[0], str(r[1])))
    d1, d2 = rfc3339(day_one), rfc3339(day_two)
    assert got == sorted(
        [
            (d1, {"model": "large", "token_type": "input"}, Decimal(4000), Decimal(10)),
            (d1, {"model": "large", "token_type": "output"}, Decimal(3000), Decimal(45)),
            (d1, {"model": "small", "token_type": "output"}, Decimal(2000), Decimal(1)),
            (d2, {"model": "large", "token_type": "output"}, Decimal(1000), Decimal(15)),
            (d2, {"model": "small", "token_type": "input"}, Decimal(1000), Decimal("0.5")),
        ],
        key=lambda r: (r[0], str(r[1])),
    )
    summaries = [row for row in rows if row.get("meter") == "doc_summaries"]
    assert [(r["period_start"], Decimal(r["credits"])) for r in summaries] == [(d2, Decimal(50))]
    assert sum(Decimal(r["credits"]) for r in rows) == Decimal("121.5")

    # The range filters by time; a meter narrows it.
    later = api.usage(start=rfc3339(day_two), end=rfc3339(day_one + timedelta(days=3)))
    assert {r["period_start"] for r in later} == {d2}
    assert sum(Decimal(r["credits"]) for r in later) == Decimal("65.5")
    only = api.usage(start=rfc3339(day_one), meter="doc_summaries", group_by="model")
    assert [Decimal(r["credits"]) for r in only] == [Decimal(50)]
    assert [r["dimensions"] for r in only] == [{"model": None}]


@pytest.mark.usefixtures("usage_history")
def test_usage_takes_unix_seconds_in_the_query(api: Api, day_one: datetime) -> None:
    # "Timestamps ... may be RFC 3339 or Unix seconds in requests" (docs/api.md).
    day_two = day_one + timedelta(days=1)
    later = api.usage(
        start=int(day_two.timestamp()), end=int((day_one + timedelta(days=3)).timestamp())
    )
    assert {r["period_start"] for r in later} == {rfc3339(day_two)}
    assert sum(Decimal(r["credits"]) for r in later) == Decimal("65.5")


@pytest.mark.usefixtures("usage_history")
def test_usage_by_hour(api: Api, day_one: datetime) -> None:
    rows = api.usage(
        start=rfc3339(day_one),
        end=rfc3339(day_one + timedelta(days=1)),
        group_by="model",
        granularity="hour",
    )
    got = sorted(_rows(rows), key=lambda r: (r[0], str(r[1])))
    h10, h11 = (rfc3339(day_one + timedelta(hours=h)) for h in (10, 11))
    assert got == [
        (h10, {"model": "large"}, Decimal(3000), Decimal(45)),
        (h11, {"model": "large"}, Decimal(4000), Decimal(10)),
        (h11, {"model": "small"}, Decimal(2000), Decimal(1)),
    ]
    ungrouped = api.usage(
        start=rfc3339(day_one), end=rfc3339(day_one + timedelta(days=1)), granularity="hour"
    )
    assert [(r["period_start"], r["dimensions"], r["credits"]) for r in ungrouped] == [
        (h10, {}, "45.000000"),
        (h11, {}, "11.000000"),
    ]


def test_bad_usage_queries_are_400_in_the_envelope(api: Api) -> None:
    subscribed()
    now = timezone.now()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"granularity": "week"}, "granularity"),
        ({"start": "yesterday"}, "start"),
        ({"end": "2026-13-01T00:00:00Z"}, "end"),
        ({"start": rfc3339(now), "end": rfc3339(now - timedelta(hours=1))}, "start"),
        ({"start": rfc3339(now - timedelta(days=500)), "end": rfc3339(now)}, "start"),
        ({"group_by": "model;drop table"}, "group_by"),
        ({"start": "2026-11-20T10:00:00"}, "start"),
    ]
    for params, param in cases:
        response = api.get("/customers/acme/usage", params)
        assert response.status_code == 400, (params, response.text)
        error = error_of(response)
        assert error["type"] == "invalid_request_error"
        assert error["code"] == "invalid_request", (params, error)
        assert error["param"] == param, (params, error)
    response = api.get("/customers/ghost/usage")
    assert response.status_code == 404
    assert error_of(response)["code"] == "resource_missing"
    assert api.usage() == []
