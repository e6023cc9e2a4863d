"""POST /api/v1/authorizations and /authorizations/{id}/release over real HTTP.

Pricing from an event estimate, holds that reduce ``available`` at once, the deny
reasons, dry runs, one answer per identifier, capture by a meter event, release, expiry,
validation, and concurrent requests that never reserve more than the plan allows.
"""

from __future__ import annotations

import threading
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from ledger import services as ledger
from ledger.models import CreditGrant, GrantCategory, Hold, HoldStatus
from metering.models import Authorization, EventRating, MeterEvent
from metering.rating import events_rate_pending
from plans.apikeys import api_key_create
from plans.models import Customer
from plans.services import subscription_start
from tests.billing_portal.api.http_support import assert_reconciled
from tests.plans.factories import customer, plan

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("http_api_environment"),
]

API = "/api/v1"
PRO_INCLUDED = Decimal(20000)
STARTER_INCLUDED = Decimal(2000)
AUTH_KEYS = {
    "id",
    "identifier",
    "decision",
    "reason",
    "credits",
    "available",
    "expires_at",
    "status",
    "dry_run",
    "estimate_money",
}
LARGE_OUTPUT = {"model": "large", "token_type": "output"}


# --- helpers --------------------------------------------------------------------------


@dataclass
class Api:
    base_url: str
    secret: str

    def post(self, path: str, body: Any = None, *, key: str | None = None) -> requests.Response:
        secret = self.secret if key is None else key
        headers = {"Authorization": f"Bearer {secret}"} if secret else {}
        return requests.post(self.base_url + API + path, json=body, headers=headers, timeout=60)

    def authorize(self, identifier: str, customer: str = "acme", **fields: Any) -> dict[str, Any]:
        """An authorization that must be answered 200 (allow or deny)."""
        if "credits" not in fields:
            fields = {
                "event_name": "llm.tokens",
                "value": "4000",
                "dimensions": LARGE_OUTPUT,
                **fields,
            }
        response = self.post(
            "/authorizations", {"customer": customer, "identifier": identifier, **fields}
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        assert set(body) == AUTH_KEYS
        return body

    def balance(self, external_id: str = "acme") -> dict[str, Any]:
        response = requests.get(
            f"{self.base_url}{API}/customers/{external_id}/balance",
            headers={"Authorization": f"Bearer {self.secret}"},
            timeout=30,
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def subscribed(external_id: str = "acme", plan_code: str = "pro") -> Customer:
    subscriber = customer(external_id)
    subscription_start(
        customer=subscriber,
        plan=plan(plan_code),
        actor="test",
        start_at=timezone.now() - timedelta(days=20),
    )
    return subscriber


def usage_event(identifier: str, value: str, **extra: Any) -> dict[str, Any]:
    return {
        "identifier": identifier,
        "event_name": "llm.tokens",
        "customer": "acme",
        "timestamp": rfc3339(timezone.now() - timedelta(minutes=1)),
        "value": value,
        "dimensions": LARGE_OUTPUT,
        **extra,
    }


def error_of(response: requests.Response) -> dict[str, Any]:
    error: dict[str, Any] = response.json()["error"]
    assert set(error) == {"type", "code", "message", "param"}
    return error


def credits(balance: dict[str, Any]) -> tuple[Decimal, Decimal, Decimal]:
    return Decimal(balance["posted"]), Decimal(balance["held"]), Decimal(balance["available"])


@pytest.fixture
def api(api_server: tuple[str, str]) -> Api:
    return Api(*api_server)


# --- allow, and what a hold does to the balance ------------------------------------------


def test_allow_prices_the_estimate_and_holds_it(api: Api) -> None:
    subscribed()
    before = timezone.now()
    allowed = api.authorize("req-1", ttl_seconds=300)
    assert allowed["decision"] == "allow"
    assert allowed["reason"] is None
    assert allowed["credits"] == "60.000000"  # 4000 large output tokens at 15 per 1000
    assert allowed["available"] == "19940.000000"
    assert allowed["status"] == "open"
    assert allowed["dry_run"] is False
    assert allowed["identifier"] == "req-1"
    expires_at = parse(allowed["expires_at"])
    assert before + timedelta(seconds=299) <= expires_at <= timezone.now() + timedelta(seconds=301)

    balance = api.balance()
    assert credits(balance) == (PRO_INCLUDED, Decimal(60), PRO_INCLUDED - 60)
    assert (balance["posted"], balance["held"], balance["available"]) == (
        "20000.000000",
        "60.000000",
        "19940.000000",
    )

    # Credits may be given instead of an estimate.
    direct = api.authorize("req-2", credits="100.5")
    assert (direct["decision"], direct["credits"]) == ("allow", "100.500000")
    assert direct["available"] == "19839.500000"
    small = api.authorize(
        "req-3", value="1000", dimensions={"model": "small", "token_type": "input"}
    )
    assert small["credits"] == "0.500000"
    assert credits(api.balance())[1] == Decimal("161")


def test_the_same_identifier_returns_the_same_authorization(api: Api) -> None:
    subscribed()
    first = api.authorize("once")
    again = api.authorize("once")
    assert again == first
    other_body = api.authorize("once", credits="5")
    assert other_body["id"] == first["id"]
    assert other_body["credits"] == "60.000000"
    assert credits(api.balance())[1] == 60
    assert Hold.objects.count() == 1
    assert Authorization.objects.count() == 1


# --- deny reasons ---------------------------------------------------------------------


def test_hard_stop_denies_beyond_the_available_credits(api: Api) -> None:
    subscribed(plan_code="starter")
    denied = api.authorize("too-much", credits="2000.000001")
    assert denied["decision"] == "deny"
    assert denied["reason"] == "insufficient_credits"
    assert denied["available"] == "2000.000000"
    assert denied["status"] is None
    assert denied["expires_at"] is None
    assert credits(api.balance()) == (STARTER_INCLUDED, Decimal(0), STARTER_INCLUDED)

    assert api.authorize("all-of-it", credits="2000")["decision"] == "allow"
    last = api.authorize("one-more", value="1", dimensions={"model": "small"})
    assert (last["decision"], last["reason"]) == ("deny", "insufficient_credits")
    assert last["available"] == "0.000000"
    assert credits(api.balance()) == (STARTER_INCLUDED, STARTER_INCLUDED, Decimal(0))
    assert Hold.objects.count() == 1


def test_soft_limit_allows_up_to_its_share_beyond_the_balance(api: Api) -> None:
    subscribed(plan_code="team")  # 100000 included, 10% beyond: 10000 more
    denied = api.authorize("over", credits="110000.000001")
    assert (denied["decision"], denied["reason"]) == ("deny", "insufficient_credits")
    allowed = api.authorize("up-to", credits="110000")
    assert allowed["decision"] == "allow"
    assert Decimal(allowed["available"]) == -10000
    assert api.authorize("beyond", credits="1")["decision"] == "deny"


def test_the_customers_spend_limit_is_a_hard_cap(api: Api) -> None:
    subscriber = subscribed()  # postpaid: never denied for balance
    subscriber.spend_limit_credits = Decimal(100)
    subscriber.save(update_fields=["spend_limit_credits"])
    assert api.authorize("first")["decision"] == "allow"  # 60 of 100
    denied = api.authorize("second")  # 60 held + 60 more > 100
    assert (denied["decision"], denied["reason"]) == ("deny", "spend_limit_reached")
    dry = api.authorize("second-dry", hold=False)
    assert (dry["decision"], dry["reason"]) == ("deny", "spend_limit_reached")
    assert api.authorize("fits", credits="40")["decision"] == "allow"
    balance = api.balance()
    assert credits(balance)[1] == 100
    assert balance["limits"]["spend_limit"] == "100.000000"
    assert balance["limits"]["spend_limit_reached"] is True


def test_without_an_active_subscription_it_denies(api: Api) -> None:
    customer("acme")
    denied = api.authorize("no-sub")
    assert (denied["decision"], denied["reason"]) == ("deny", "no_active_subscription")
    assert denied["status"] is None
    assert not Hold.objects.exists()


# --- dry runs -------------------------------------------------------------------------


def test_a_dry_run_checks_and_reserves_nothing(api: Api) -> None:
    subscribed(plan_code="starter")
    allowed = api.authorize("dry", hold=False)
    assert allowed["decision"] == "allow"
    assert allowed["dry_run"] is True
    assert allowed["status"] is None
    assert allowed["credits"] == "60.000000"
    denied = api.authorize("dry-big", credits="2001", hold=False)
    assert (denied["decision"], denied["reason"]) == ("deny", "insufficient_credits")
    assert credits(api.balance()) == (STARTER_INCLUDED, Decimal(0), STARTER_INCLUDED)
    assert not Hold.objects.exists()
    # A dry run holds nothing to capture: an event naming it is refused.
    response = api.post("/events", usage_event("uses-dry", "1000", authorization=allowed["id"]))
    result = response.json()["results"][0]
    assert result["error"]["code"] == "unknown_authorization"


def test_a_dry_run_says_what_the_usage_would_be_billed(api: Api) -> None:
    subscribed()  # pro: 20,000 included, postpaid overage at 0.004 USD per credit
    covered = api.authorize("covered", credits="20000", hold=False)
    assert covered["estimate_money"] == {"amount": "0.00", "currency": "USD"}
    # 5,000 credits beyond the 20,000 available, at 0.004: 20.00.
    beyond = api.authorize("beyond", credits="25000", hold=False)
    assert (beyond["decision"], beyond["available"]) == ("allow", "20000.000000")
    assert beyond["estimate_money"] == {"amount": "20.00", "currency": "USD"}
    # Half a cent rounds up: 1 credit beyond is 0.004, shown as 0.00; 2 are 0.008 -> 0.01.
    assert api.authorize("two", credits="20002", hold=False)["estimate_money"]["amount"] == "0.01"


def test_the_estimate_is_the_same_when_the_answer_is_read_back(api: Api) -> None:
    subscribed()  # pro: 20,000 included, postpaid overage at 0.004 USD per credit
    # Held, not a dry run: postpaid overage allows it, 5,000 credits beyond: 20.00. The
    # answer's available is after the hold (-5,000); the 5,000 are not counted twice.
    first = api.authorize("held-beyond", credits="25000")
    assert (first["decision"], first["status"], first["available"]) == (
        "allow",
        "open",
        "-5000.000000",
    )
    assert first["estimate_money"] == {"amount": "20.00", "currency": "USD"}
    # A second hold, wholly beyond what is left: all of its 1,000 credits, 4.00.
    second = api.authorize("held-beyond-2", credits="1000")
    assert second["estimate_money"] == {"amount": "4.00", "currency": "USD"}
    # The same identifier again is read back, and priced from the plan in force.
    again = api.authorize("held-beyond", credits="25000")
    assert (again["id"], again["estimate_money"]) == (first["id"], first["estimate_money"])


def test_without_a_plan_the_estimate_is_zero_in_the_customers_currency(api: Api) -> None:
    Customer.objects.filter(pk=customer("acme").pk).update(currency="EUR")
    denied = api.authorize("no-plan", credits="10")
    assert (denied["decision"], denied["reason"]) == ("deny", "no_active_subscription")
    assert denied["estimate_money"] == {"amount": "0.00", "currency": "EUR"}
    assert api.authorize("no-plan", credits="10")["estimate_money"] == denied["estimate_money"]


def test_a_new_answer_is_rendered_without_reading_the_plan_again() -> None:
    """The decision read the plan in force already: its answer carries the estimate, so
    the response runs no query of its own (it read the period and the customer again,
    a third of an authorization's time)."""
    from billing_portal.api.authorizations import AuthorizationOutSerializer
    from metering.services import AuthorizationRequest, authorization_create_for

    subscribed()
    for hold in (False, True):  # a dry run holds nothing: both see 20,000 available
        answer = authorization_create_for(
            external_id="acme",
            request=AuthorizationRequest(
                identifier=f"fresh-{hold}", credits=Decimal("25000"), hold=hold
            ),
            actor="test",
        )
        with CaptureQueriesContext(connection) as queries:
            body = AuthorizationOutSerializer(answer).data
        assert [q["sql"] for q in queries.captured_queries] == []
        assert body["estimate_money"] == {"amount": "20.00", "currency": "USD"}


def test_plans_without_an_overage_price_estimate_nothing(api: Api) -> None:
    subscribed(plan_code="team")  # soft limit, no price per credit
    beyond = api.authorize("beyond", credits="105000", hold=False)
    assert beyond["decision"] == "allow"
    assert beyond["estimate_money"] == {"amount": "0.00", "currency": "USD"}


# --- capture, release, expiry ---------------------------------------------------------


def test_an_event_naming_the_authorization_captures_it(api: Api) -> None:
    subscribed()
    held = api.authorize("cap-1")  # 60 held
    response = api.post("/events", usage_event("use-1", "2000", authorization=held["id"]))
    assert response.status_code == 202
    assert response.json()["accepted"] == 1
    events_rate_pending()

    # 30 charged (2000 tokens), the other 30 released.
    assert credits(api.balance()) == (PRO_INCLUDED - 30, Decimal(0), PRO_INCLUDED - 30)
    hold = Hold.objects.get(authorization__pk=held["id"])
    assert (hold.status, hold.captured_credits) == (HoldStatus.CAPTURED, Decimal(30))
    assert api.authorize("cap-1")["status"] == "captured"
    assert EventRating.objects.get(event__identifier="use-1").credits == 30
    released = api.post(f"/authorizations/{held['id']}/release")
    assert released.status_code == 409
    assert error_of(released)["code"] == "authorization_captured"

    # Usage above the estimate is charged in full.
    small = api.authorize("cap-2", value="1000")  # 15 held
    api.post("/events", usage_event("use-2", "3000", authorization=small["id"]))
    events_rate_pending()
    assert credits(api.balance()) == (PRO_INCLUDED - 75, Decimal(0), PRO_INCLUDED - 75)
    assert_reconciled()


def test_events_may_only_name_an_open_hold_of_their_customer(api: Api) -> None:
    subscribed()
    subscribed("globex")
    theirs = api.authorize("theirs", customer="globex")
    own = api.authorize("own")
    customer("nosub")
    denied = api.authorize("denied", customer="nosub")
    response = api.post(
        "/events",
        {
            "events": [
                usage_event("u-theirs", "10", authorization=theirs["id"]),
                {
                    **usage_event("u-denied", "10", authorization=denied["id"]),
                    "customer": "nosub",
                },
                usage_event("u-junk", "10", authorization="abc"),
                usage_event("u-int", "10", authorization=int(own["id"])),
            ]
        },
    )
    codes = [r.get("error", {}).get("code", r["status"]) for r in response.json()["results"]]
    assert codes == [
        "unknown_authorization",
        "unknown_authorization",
        "unknown_authorization",
        "accepted",
    ]


def test_release_frees_the_hold_at_once(api: Api) -> None:
    subscribed()
    held = api.authorize("rel")
    assert credits(api.balance())[1] == 60
    response = api.post(f"/authorizations/{held['id']}/release")
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == AUTH_KEYS
    assert (body["id"], body["status"]) == (held["id"], "released")
    assert credits(api.balance()) == (PRO_INCLUDED, Decimal(0), PRO_INCLUDED)
    again = api.post(f"/authorizations/{held['id']}/release")
    assert again.status_code == 200
    assert again.json()["status"] == "released"
    assert credits(api.balance())[1] == 0

    for missing in ("999999", "abc"):
        response = api.post(f"/authorizations/{missing}/release")
        assert response.status_code == 404
        assert error_of(response)["code"] == "resource_missing"
    dry = api.authorize("dry", hold=False)
    response = api.post(f"/authorizations/{dry['id']}/release")
    assert response.status_code == 409
    assert error_of(response)["code"] == "authorization_has_no_hold"

    # A usage event after the release is charged plainly.
    api.post("/events", usage_event("after-release", "1000", authorization=held["id"]))
    events_rate_pending()
    assert credits(api.balance()) == (PRO_INCLUDED - 15, Decimal(0), PRO_INCLUDED - 15)
    assert_reconciled()


def test_an_expired_hold_is_released(api: Api) -> None:
    subscribed()
    short = api.authorize("short", ttl_seconds=1)
    api.authorize("long", ttl_seconds=3600)
    assert credits(api.balance())[1] == 120
    assert ledger.holds_expire(now=timezone.now() + timedelta(seconds=5)) == 1
    assert credits(api.balance()) == (PRO_INCLUDED, Decimal(60), PRO_INCLUDED - 60)
    assert api.authorize("short")["status"] == "expired"
    assert api.authorize("long")["status"] == "open"
    assert ledger.holds_expire(now=timezone.now() + timedelta(seconds=5)) == 0
    assert Hold.objects.get(authorization__pk=short["id"]).status == HoldStatus.EXPIRED
    assert_reconciled()


# --- validation -----------------------------------------------------------------------


def test_invalid_authorization_requests_are_400_with_the_param(api: Api) -> None:
    subscribed()
    base = {"customer": "acme", "identifier": "v"}
    cases: list[tuple[dict[str, Any], int, str, str | None]] = [
        ({**base, "credits": "5", "event_name": "llm.tokens", "value": "1"}, 400, "", "credits"),
        (base, 400, "", "credits"),
        ({**base, "event_name": "llm.tokens"}, 400, "", "value"),
        ({**base, "value": "10"}, 400, "", "event_name"),
        ({**base, "credits": "-1"}, 400, "", "credits"),
        ({**base, "credits": "5", "ttl_seconds": 0}, 400, "", "ttl_seconds"),
        ({**base, "identifier": "has space", "credits": "5"}, 400, "", "identifier"),
        ({"identifier": "v", "credits": "5"}, 400, "missing_field", "customer"),
        (
            {**base, "event_name": "llm.nope", "value": "1"},
            400,
            "unknown_event_name",
            "event_name",
        ),
        (
            {**base, "event_name": "llm.tokens", "value": "1", "dimensions": {"model": "huge"}},
            400,
            "",
            "dimensions",
        ),
        ({**base, "customer": "ghost", "credits": "5"}, 404, "unknown_customer", "customer"),
    ]
    for body, status, code, param in cases:
        response = api.post("/authorizations", body)
        assert response.status_code == status, (body, response.text)
        error = error_of(response)
        assert error["param"] == param, (body, error)
        if code:
            assert error["code"] == code, (body, error)
        assert error["message"]
    assert not Authorization.objects.exists()

    _, reader = api_key_create(name="reader", scopes=["read"])
    response = api.post("/authorizations", {**base, "credits": "5"}, key=reader)
    assert response.status_code == 403
    assert not Authorization.objects.exists()


# --- concurrency ----------------------------------------------------------------------


def _concurrently(count: int, call: Any) -> list[dict[str, Any]]:
    start = threading.Barrier(count)

    def run(index: int) -> dict[str, Any]:
        start.wait(timeout=30)
        result: dict[str, Any] = call(index)
        return result

    with ThreadPoolExecutor(max_workers=count) as pool:
        futures = [pool.submit(run, i) for i in range(count)]
        return [f.result(timeout=120) for f in futures]


def test_concurrent_requests_never_hold_more_than_is_available(api: Api) -> None:
    subscriber = subscribed(plan_code="starter")
    included = CreditGrant.objects.get(account_id=subscriber.account_id)
    ledger.credit_grant_void(grant=included, actor="test", reason="test")
    ledger.credit_grant_create(
        account=subscriber.account,
        amount="600",
        category=GrantCategory.PROMOTIONAL,
        actor="test",
    )
    assert credits(api.balance()) == (Decimal(600), Decimal(0), Decimal(600))

    answers = _concurrently(32, lambda i: api.authorize(f"race-{i}"))
    decisions = Counter((a["decision"], a["reason"]) for a in answers)
    assert decisions == {("allow", None): 10, ("deny", "insufficient_credits"): 22}
    assert credits(api.balance()) == (Decimal(600), Decimal(600), Decimal(0))
    assert Hold.objects.filter(status=HoldStatus.OPEN).count() == 10
    assert len({a["id"] for a in answers}) == 32

    # One identifier sent by eight clients at once is decided once.
    first = next(a for a in answers if a["decision"] == "allow")
    assert api.post(f"/authorizations/{first['id']}/release").status_code == 200
    same = _concurrently(8, lambda i: api.authorize("same-one"))
    assert len({a["id"] for a in same}) == 1
    assert {a["decision"] for a in same} == {"allow"}
    assert credits(api.balance()) == (Decimal(600), Decimal(600), Decimal(0))
    assert Hold.objects.filter(status=HoldStatus.OPEN).count() == 10
    assert not MeterEvent.objects.exists()
    assert_reconciled()
