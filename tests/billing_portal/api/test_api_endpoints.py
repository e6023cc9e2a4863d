"""The customers, subscriptions and credit grants endpoints over real HTTP.

Each of these endpoints (billing_portal/api) is driven through a live server with
``requests``: its success answer and status, the values behind it, 401 and 403, 404 in
the error envelope, its 409 conflicts, 400 validation errors naming ``param``, and
Idempotency-Key replays.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import requests
from django.core.cache import cache
from django.utils import timezone

from billing_portal.api.models import IdempotencyRecord
from ledger import services as ledger
from ledger.models import CreditGrant, GrantStatus, LedgerEntry, LedgerOperation
from plans.apikeys import api_key_create
from plans.models import Customer, Subscription, SubscriptionChange, SubscriptionStatus
from plans.periods import add_months
from plans.services import subscription_start
from tests.plans.factories import customer, load_demo_catalog, plan

# The flush after each test empties every table: the API writes audit rows, outbound
# events and alerts besides the ledger, plans and metering (a flush of those three apps
# alone left the others' rows to the next tests on the same database).
pytestmark = pytest.mark.django_db(transaction=True)

API = "/api/v1"
CUSTOMER_KEYS = {
    "id",
    "external_id",
    "name",
    "email",
    "currency",
    "spend_limit_credits",
    "metadata",
    "created_at",
}
SUBSCRIPTION_KEYS = {
    "id",
    "external_id",
    "customer",
    "status",
    "past_due_since",
    "plan",
    "plan_version",
    "current_period_start",
    "current_period_end",
    "cancel_at_period_end",
    "pending_plan",
    "canceled_at",
}
GRANT_KEYS = {
    "id",
    "customer",
    "category",
    "status",
    "amount",
    "remaining",
    "priority",
    "effective_at",
    "expires_at",
    "applies_to",
    "workspace",
    "cost_basis",
    "currency",
    "reason",
    "voided_at",
    "expired_at",
    "closed_reason",
    "closed_by",
    "voided_reason",
    "created_at",
}


# --- helpers --------------------------------------------------------------------------


@dataclass
class Api:
    """Calls the live server; ``key`` is the secret to send ("" sends no Authorization)."""

    base_url: str
    write: str
    read: str
    ingest: str

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        idempotency_key: str | None = None,
    ) -> requests.Response:
        headers = {}
        secret = self.write if key is None else key
        if secret:
            headers["Authorization"] = f"Bearer {secret}"
        if idempotency_key is not None:
            headers["Idempotency-Key"] = idempotency_key
        return requests.request(
            method, self.base_url + API + path, json=body, headers=headers, timeout=15
        )

    def post(
        self,
        path: str,
        body: Any = None,
        *,
        key: str | None = None,
        idempotency_key: str | None = None,
    ) -> requests.Response:
        return self.request("POST", path, body, key=key, idempotency_key=idempotency_key)

    def get(self, path: str, *, key: str | None = None) -> requests.Response:
        return self.request("GET", path, key=key)

    def grants(self, external_id: str) -> list[dict[str, Any]]:
        response = self.get(f"/customers/{external_id}/credit_grants")
        assert response.status_code == 200, response.text
        data: list[dict[str, Any]] = response.json()["data"]
        return data


@pytest.fixture(autouse=True)
def _fresh_rate_limits() -> Iterator[None]:
    cache.clear()
    yield
    cache.clear()


@pytest.fixture(autouse=True)
def _catalog() -> None:
    load_demo_catalog()


@pytest.fixture
def api(live_server: Any) -> Api:
    return Api(
        base_url=live_server.url,
        write=api_key_create(name="backend")[1],
        read=api_key_create(name="dashboard", scopes=["read"])[1],
        ingest=api_key_create(name="gateway", scopes=["ingest"])[1],
    )


def _error(
    response: requests.Response, status: int, code: str, where: object = None
) -> dict[str, Any]:
    """The envelope's error, after checking the status, the envelope and the code."""
    assert response.status_code == status, (where, response.text)
    body = response.json()
    assert set(body) == {"error"}, where
    error: dict[str, Any] = body["error"]
    assert set(error) == {"type", "code", "message", "param"}, where
    assert error["code"] == code, (where, error)
    assert error["message"]
    return error


def _time(text: str) -> datetime:
    """An RFC 3339 time as the API writes it: UTC, with a Z."""
    assert text.endswith("Z"), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _without_nones(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


def _now_seconds() -> int:
    return int(timezone.now().timestamp())


def _create_customer(api: Api, external_id: str = "acme") -> dict[str, Any]:
    body = {"external_id": external_id, "name": "Acme", "email": "billing@acme.test"}
    response = api.post("/customers", body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def _subscribe(api: Api, plan_code: str, external_id: str = "acme") -> dict[str, Any]:
    response = api.post("/subscriptions", {"customer": external_id, "plan": plan_code})
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def _grant(api: Api, external_id: str = "acme", **body: Any) -> dict[str, Any]:
    response = api.post(
        f"/customers/{external_id}/credit_grants",
        {"amount": "1500", "category": "promotional", **body},
    )
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


@dataclass(frozen=True)
class World:
    """One customer on pro (with its included grant) and a promotional grant."""

    customer: Customer
    subscription: Subscription
    grant: CreditGrant

    def path(self, template: str) -> str:
        return template.format(
            customer=self.customer.external_id, sub=self.subscription.pk, grant=self.grant.pk
        )


@pytest.fixture
def world() -> World:
    acme = customer("acme")
    subscription = subscription_start(customer=acme, plan=plan("pro"), actor="test")
    grant = ledger.credit_grant_create(
        account=acme.account, amount="500", category="promotional", actor="test"
    )
    return World(customer=acme, subscription=subscription, grant=grant)


def _counts() -> dict[str, int]:
    return {
        "customers": Customer.objects.count(),
        "subscriptions": Subscription.objects.count(),
        "changes": SubscriptionChange.objects.count(),
        "grants": CreditGrant.objects.count(),
        "operations": LedgerOperation.objects.count(),
        "entries": LedgerEntry.objects.count(),
    }


def _state() -> list[tuple[Any, ...]]:
    """What a refused request must leave as it was."""
    return [
        *Subscription.objects.order_by("pk").values_list(
            "pk", "status", "plan_version", "pending_plan_version", "cancel_at_period_end"
        ),
        *CreditGrant.objects.order_by("pk").values_list("pk", "status", "remaining"),
        tuple(_counts().values()),
    ]


# --- auth and scopes, for every endpoint ------------------------------------------------

ENDPOINTS = [
    ("POST", "/customers", {"external_id": "new", "name": "New", "email": "a@new.test"}),
    ("GET", "/customers/{customer}", None),
    ("POST", "/subscriptions", {"customer": "acme", "plan": "team"}),
    ("POST", "/subscriptions/{sub}/change_plan", {"plan": "team"}),
    ("POST", "/subscriptions/{sub}/cancel", {"when": "now"}),
    ("POST", "/customers/{customer}/credit_grants", {"amount": "5", "category": "paid"}),
    ("GET", "/customers/{customer}/credit_grants", None),
    ("POST", "/credit_grants/{grant}/void", {"reason": "test"}),
    ("POST", "/credit_grants/{grant}/expire", {"reason": "test"}),
]


def test_every_endpoint_requires_a_key_with_its_scope(api: Api, world: World) -> None:
    before = _state()
    for method, template, body in ENDPOINTS:
        path = world.path(template)
        where = f"{method} {path}"
        error = _error(api.request(method, path, body, key=""), 401, "api_key_required", where)
        assert error["type"] == "authentication_error"
        bad_key = api.request(method, path, body, key="sk_000000000000_nope")
        assert _error(bad_key, 401, "invalid_api_key", where)["type"] == "authentication_error"

        wrong_scopes = [api.read, api.ingest] if method == "POST" else [api.ingest]
        needed = "write" if method == "POST" else "read"
        for key in wrong_scopes:
            refused = api.request(method, path, body, key=key, idempotency_key="k-1")
            error = _error(refused, 403, "insufficient_scope", where)
            assert error["type"] == "permission_error"
            assert f"'{needed}' scope" in error["message"]
        if method == "GET":
            assert api.request(method, path, key=api.read).status_code == 200, where

    assert _state() == before
    assert not IdempotencyRecord.objects.exists()


# --- customers ------------------------------------------------------------------------


class TestCustomers:
    def test_create_answers_201_with_the_customer(self, api: Api) -> None:
        before = timezone.now().replace(microsecond=0)
        response = api.post(
            "/customers",
            {"external_id": "acme", "name": "Acme Inc.", "email": "billing@acme.test"},
        )
        assert response.status_code == 201
        body = response.json()
        assert set(body) == CUSTOMER_KEYS
        assert body["id"] == body["external_id"] == "acme"
        assert (body["name"], body["email"], body["currency"]) == (
            "Acme Inc.",
            "billing@acme.test",
            "USD",
        )
        assert body["spend_limit_credits"] is None
        assert before <= _time(body["created_at"]) <= timezone.now()
        stored = Customer.objects.get()
        assert (stored.external_id, stored.currency) == ("acme", "USD")

    def test_get_answers_the_customer_or_404(self, api: Api) -> None:
        body = {
            "external_id": "acme.eu:1@x",
            "name": "Euro",
            "email": "a@eu.test",
            "currency": "eur",
        }
        created = api.post("/customers", body)
        assert created.status_code == 201, created.text
        assert created.json()["currency"] == "EUR"
        response = api.get("/customers/acme.eu:1@x", key=api.read)
        assert response.status_code == 200
        assert response.json() == created.json()
        error = _error(api.get("/customers/nobody"), 404, "resource_missing")
        assert error["type"] == "invalid_request_error"

    def test_a_taken_external_id_is_409_customer_exists(self, api: Api) -> None:
        _create_customer(api)
        response = api.post(
            "/customers", {"external_id": "acme", "name": "Other", "email": "x@other.test"}
        )
        error = _error(response, 409, "customer_exists")
        assert error["param"] == "external_id"
        assert Customer.objects.count() == 1
        assert Customer.objects.get().name == "Acme"

    def test_an_unsupported_currency_is_400_naming_the_supported_ones(self, api: Api) -> None:
        body = {"external_id": "acme", "name": "Acme", "email": "a@acme.test", "currency": "JPY"}
        error = _error(api.post("/customers", body), 400, "unsupported_currency")
        assert error["param"] == "currency"
        assert "USD" in error["message"]
        assert not Customer.objects.exists()

    def test_invalid_fields_are_400_naming_the_param(self, api: Api) -> None:
        cases: list[tuple[dict[str, Any], str, str]] = [
            ({"external_id": None}, "external_id", "missing_field"),
            ({"external_id": "has space"}, "external_id", "invalid_request"),
            ({"external_id": "x" * 129}, "external_id", "invalid_request"),
            ({"name": None}, "name", "missing_field"),
            ({"email": None}, "email", "missing_field"),
            ({"email": "not-an-email"}, "email", "invalid_request"),
            ({"currency": "EURO"}, "currency", "invalid_request"),
        ]
        for change, param, code in cases:
            body = _without_nones(
                {"external_id": "acme", "name": "Acme", "email": "billing@acme.test", **change}
            )
            error = _error(api.post("/customers", body), 400, code, change)
            assert error["param"] == param, (change, error)
            assert error["type"] == "invalid_request_error"
            assert param in error["message"]
        assert not Customer.objects.exists()


# --- subscriptions --------------------------------------------------------------------


class TestSubscriptionCreate:
    def test_it_answers_201_and_grants_the_included_credits(self, api: Api) -> None:
        _create_customer(api)
        before = timezone.now().replace(microsecond=0)
        response = api.post("/subscriptions", {"customer": "acme", "plan": "pro"})
        assert response.status_code == 201, response.text
        body = response.json()
        assert set(body) == SUBSCRIPTION_KEYS
        assert body["id"] == str(Subscription.objects.get().pk)
        assert (body["customer"], body["status"], body["plan"]) == ("acme", "active", "pro")
        assert body["cancel_at_period_end"] is False
        assert body["pending_plan"] is None
        assert body["canceled_at"] is None
        start, end = _time(body["current_period_start"]), _time(body["current_period_end"])
        assert before <= start <= timezone.now()
        assert end == add_months(start, 1)

        [included] = api.grants("acme")
        assert included["category"] == "included"
        assert included["status"] == "active"
        assert included["amount"] == included["remaining"] == "20000.000000"
        assert included["effective_at"] == body["current_period_start"]
        assert included["expires_at"] == body["current_period_end"]
        assert included["customer"] == "acme"

    def test_start_at_as_unix_seconds_or_rfc3339(self, api: Api) -> None:
        _create_customer(api)
        _create_customer(api, "globex")
        start_at = _now_seconds() - 86400
        response = api.post(
            "/subscriptions", {"customer": "acme", "plan": "starter", "start_at": start_at}
        )
        assert response.status_code == 201, response.text
        body = response.json()
        start = datetime.fromtimestamp(start_at, tz=UTC)
        assert body["current_period_start"] == _rfc3339(start)
        assert body["current_period_end"] == _rfc3339(add_months(start, 1))
        [included] = api.grants("acme")
        assert (included["amount"], included["remaining"]) == ("2000.000000", "2000.000000")
        assert included["effective_at"] == body["current_period_start"]

        later = start + timedelta(hours=3)
        given = later.astimezone(timezone.get_fixed_timezone(120)).isoformat()
        assert given.endswith("+02:00")
        response = api.post(
            "/subscriptions", {"customer": "globex", "plan": "pro", "start_at": given}
        )
        assert response.status_code == 201, response.text
        assert response.json()["current_period_start"] == _rfc3339(later)

    def test_a_second_subscription_is_409(self, api: Api) -> None:
        _create_customer(api)
        _subscribe(api, "pro")
        response = api.post("/subscriptions", {"customer": "acme", "plan": "team"})
        error = _error(response, 409, "subscription_exists")
        assert error["param"] == "customer"
        assert Subscription.objects.count() == 1
        assert [g["amount"] for g in api.grants("acme")] == ["20000.000000"]

    def test_an_unknown_plan_or_customer_is_400(self, api: Api) -> None:
        _create_customer(api)
        response = api.post("/subscriptions", {"customer": "acme", "plan": "enterprise"})
        error = _error(response, 400, "unknown_plan")
        assert error["param"] == "plan"
        assert "enterprise" in error["message"]
        response = api.post("/subscriptions", {"customer": "nobody", "plan": "pro"})
        assert _error(response, 400, "unknown_customer")["param"] == "customer"
        assert not Subscription.objects.exists()
        assert not CreditGrant.objects.exists()

    def test_invalid_fields_are_400_naming_the_param(self, api: Api) -> None:
        _create_customer(api)
        cases: list[tuple[dict[str, Any], str, str]] = [
            ({"plan": "pro"}, "customer", "missing_field"),
            ({"customer": "acme"}, "plan", "missing_field"),
            ({"start_at": "yesterday"}, "start_at", "invalid_request"),
            ({"start_at": "2026-11-20T10:00:00"}, "start_at", "invalid_request"),
            ({"start_at": True}, "start_at", "invalid_request"),
        ]
        for body, param, code in cases:
            if "start_at" in body:
                body = {"customer": "acme", "plan": "pro", **body}
            error = _error(api.post("/subscriptions", body), 400, code, body)
            assert error["param"] == param, (body, error)
        assert not Subscription.objects.exists()
        assert not CreditGrant.objects.exists()


class TestChangePlan:
    def test_an_upgrade_without_when_applies_now(self, api: Api) -> None:
        _create_customer(api)
        sub = _subscribe(api, "pro")
        response = api.post(f"/subscriptions/{sub['id']}/change_plan", {"plan": "team"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == SUBSCRIPTION_KEYS | {"proration"}
        assert (body["id"], body["status"], body["plan"]) == (sub["id"], "active", "team")
        assert body["pending_plan"] is None
        assert body["current_period_start"] == sub["current_period_start"]
        assert body["current_period_end"] == sub["current_period_end"]
        # The rest of the period's extra included credits, prorated: nearly all of 80000.
        extra, first = api.grants("acme")
        assert first["amount"] == "20000.000000"
        assert extra["category"] == "included"
        assert Decimal("79000") < Decimal(extra["amount"]) <= Decimal("80000")
        assert extra["remaining"] == extra["amount"]
        assert extra["expires_at"] == sub["current_period_end"]

    def test_a_downgrade_without_when_waits_for_period_end(self, api: Api) -> None:
        _create_customer(api)
        sub = _subscribe(api, "team")
        response = api.post(f"/subscriptions/{sub['id']}/change_plan", {"plan": "starter"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["plan"], body["pending_plan"], body["status"]) == ("team", "starter", "active")
        assert body["current_period_end"] == sub["current_period_end"]
        [included] = api.grants("acme")
        assert included["remaining"] == "100000.000000"

    def test_when_overrides_the_default(self, api: Api) -> None:
        _create_customer(api)
        sub = _subscribe(api, "pro")
        later = api.post(
            f"/subscriptions/{sub['id']}/change_plan", {"plan": "team", "when": "period_end"}
        )
        assert later.status_code == 200, later.text
        assert (later.json()["plan"], later.json()["pending_plan"]) == ("pro", "team")
        now = api.post(
            f"/subscriptions/{sub['id']}/change_plan", {"plan": "starter", "when": "now"}
        )
        assert now.status_code == 200, now.text
        assert (now.json()["plan"], now.json()["pending_plan"]) == ("starter", None)
        assert len(api.grants("acme")) == 1  # a downgrade grants nothing extra

    def test_bad_input_is_400_naming_the_param_and_an_unknown_id_404(self, api: Api) -> None:
        _create_customer(api)
        sub = _subscribe(api, "pro")
        path = f"/subscriptions/{sub['id']}/change_plan"
        error = _error(api.post(path, {"plan": "gold"}), 400, "unknown_plan")
        assert error["param"] == "plan"
        assert "gold" in error["message"]
        assert _error(api.post(path, {}), 400, "missing_field")["param"] == "plan"
        error = _error(api.post(path, {"plan": "team", "when": "tomorrow"}), 400, "invalid_request")
        assert error["param"] == "when"
        stored = Subscription.objects.get()
        assert (stored.plan_version.plan.code, stored.pending_plan_version) == ("pro", None)
        assert [g["amount"] for g in api.grants("acme")] == ["20000.000000"]
        for subscription_id in ["999999", "sub_nope"]:
            response = api.post(f"/subscriptions/{subscription_id}/change_plan", {"plan": "team"})
            _error(response, 404, "resource_missing", subscription_id)


class TestCancel:
    def test_now_cancels_and_ends_the_included_credits(self, api: Api) -> None:
        _create_customer(api)
        response = api.post(
            "/subscriptions",
            {"customer": "acme", "plan": "pro", "start_at": _now_seconds() - 3600},
        )
        assert response.status_code == 201, response.text
        sub = response.json()
        before = timezone.now()
        response = api.post(f"/subscriptions/{sub['id']}/cancel", {"when": "now"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == SUBSCRIPTION_KEYS | {"proration"}
        assert (body["id"], body["status"], body["plan"]) == (sub["id"], "canceled", "pro")
        canceled_at = _time(body["canceled_at"])
        assert before <= canceled_at <= timezone.now()
        assert body["current_period_end"] == body["canceled_at"]
        assert body["current_period_start"] == sub["current_period_start"]
        assert Subscription.objects.get().status == SubscriptionStatus.CANCELED
        [included] = api.grants("acme")
        assert (included["status"], included["remaining"]) == ("expired", "0.000000")

    def test_without_when_it_cancels_at_period_end(self, api: Api) -> None:
        _create_customer(api)
        sub = _subscribe(api, "pro")
        response = api.post(f"/subscriptions/{sub['id']}/cancel")
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["status"], body["cancel_at_period_end"]) == ("active", True)
        assert body["canceled_at"] is None
        assert body["current_period_end"] == sub["current_period_end"]
        [included] = api.grants("acme")
        assert included["remaining"] == "20000.000000"

    def test_a_canceled_subscription_is_409_for_cancel_and_change_plan(self, api: Api) -> None:
        _create_customer(api)
        sub = _subscribe(api, "pro")
        assert api.post(f"/subscriptions/{sub['id']}/cancel", {"when": "now"}).status_code == 200
        before = _state()
        for body in [{"when": "now"}, {"when": "period_end"}, None]:
            response = api.post(f"/subscriptions/{sub['id']}/cancel", body)
            error = _error(response, 409, "subscription_canceled")
            assert sub["id"] in error["message"]
        response = api.post(f"/subscriptions/{sub['id']}/change_plan", {"plan": "team"})
        _error(response, 409, "subscription_canceled")
        assert _state() == before
        # The customer may start again.
        again = _subscribe(api, "starter")
        assert (again["status"], again["plan"]) == ("active", "starter")
        assert again["id"] != sub["id"]

    def test_a_bad_when_is_400_and_an_unknown_id_404(self, api: Api) -> None:
        _create_customer(api)
        sub = _subscribe(api, "pro")
        response = api.post(f"/subscriptions/{sub['id']}/cancel", {"when": "soon"})
        assert _error(response, 400, "invalid_request")["param"] == "when"
        stored = Subscription.objects.get()
        assert (stored.status, stored.cancel_at_period_end) == (SubscriptionStatus.ACTIVE, False)
        for subscription_id in ["424242", "abc"]:
            response = api.post(f"/subscriptions/{subscription_id}/cancel", {"when": "now"})
            _error(response, 404, "resource_missing", subscription_id)


# --- credit grants --------------------------------------------------------------------


class TestCreditGrantCreate:
    def test_it_answers_201_with_the_grant(self, api: Api) -> None:
        _create_customer(api)
        before = timezone.now().replace(microsecond=0)
        response = api.post(
            "/customers/acme/credit_grants",
            {"amount": "1500", "category": "promotional", "reason": "welcome"},
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert set(body) == GRANT_KEYS
        stored = CreditGrant.objects.get()
        assert body["id"] == str(stored.pk)
        assert body["customer"] == "acme"
        assert (body["category"], body["status"]) == ("promotional", "active")
        assert body["amount"] == body["remaining"] == "1500.000000"
        assert body["priority"] == 50
        assert before <= _time(body["effective_at"]) <= timezone.now()
        assert body["expires_at"] is None
        assert body["applies_to"] == []
        assert body["workspace"] is None
        assert (body["cost_basis"], body["currency"]) == ("0", "USD")
        assert body["reason"] == "welcome"
        assert body["voided_at"] is None
        assert body["expired_at"] is None
        assert stored.remaining == Decimal("1500")

    def test_it_takes_every_optional_field_and_both_time_forms(self, api: Api) -> None:
        _create_customer(api)
        effective = _now_seconds() - 60
        expires = effective + 30 * 86400
        response = api.post(
            "/customers/acme/credit_grants",
            {
                "amount": "10000.5",
                "category": "paid",
                "priority": 10,
                "effective_at": effective,
                "expires_at": expires,
                "applies_to": ["llm_tokens"],
                "cost_basis": "35.00",
                "reason": "pack_10k",
            },
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert (body["category"], body["priority"]) == ("paid", 10)
        assert body["amount"] == body["remaining"] == "10000.500000"
        assert body["effective_at"] == _rfc3339(datetime.fromtimestamp(effective, tz=UTC))
        assert body["expires_at"] == _rfc3339(datetime.fromtimestamp(expires, tz=UTC))
        assert body["applies_to"] == ["llm_tokens"]
        assert (body["cost_basis"], body["currency"]) == ("35", "USD")

        response = api.post(
            "/customers/acme/credit_grants",
            {
                "amount": "1",
                "category": "promotional",
                "effective_at": "2026-01-01T00:00:00Z",
                "expires_at": "2099-01-01T02:00:00+02:00",
            },
        )
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["effective_at"] == "2026-01-01T00:00:00Z"
        assert body["expires_at"] == "2099-01-01T00:00:00Z"

    def test_invalid_fields_are_400_naming_the_param_and_an_unknown_customer_404(
        self, api: Api
    ) -> None:
        _create_customer(api)
        cases: list[tuple[dict[str, Any], str]] = [
            ({"amount": "1.0000001"}, "amount"),
            ({"amount": "0"}, "amount"),
            ({"amount": "-5"}, "amount"),
            ({"amount": "lots"}, "amount"),
            ({"amount": None}, "amount"),
            ({"category": "included"}, "category"),
            ({"category": "rollover"}, "category"),
            ({"category": None}, "category"),
            ({"priority": 101}, "priority"),
            ({"applies_to": ["llm_tokens", "no_such_meter"]}, "applies_to"),
            ({"cost_basis": "-1"}, "cost_basis"),
            # 1893456000 is 2030-01-01T00:00:00Z: a day before effective_at.
            ({"effective_at": "2030-01-02T00:00:00Z", "expires_at": 1893456000}, "expires_at"),
            ({"effective_at": 1893456000, "expires_at": 1893456000}, "expires_at"),
            ({"expires_at": "2020-01-01T00:00:00Z"}, "expires_at"),
            ({"effective_at": "next week"}, "effective_at"),
        ]
        for change, param in cases:
            body = _without_nones({"amount": "100", "category": "promotional", **change})
            response = api.post("/customers/acme/credit_grants", body)
            assert response.status_code == 400, (change, response.text)
            error = _error(response, 400, response.json()["error"]["code"], change)
            assert error["param"] == param, (change, error)
            assert error["type"] == "invalid_request_error"
            if param not in body:
                assert error["code"] == "missing_field"
        assert not CreditGrant.objects.exists()
        response = api.post(
            "/customers/nobody/credit_grants", {"amount": "5", "category": "promotional"}
        )
        _error(response, 404, "resource_missing")
        assert not CreditGrant.objects.exists()


class TestCreditGrantList:
    def test_it_lists_every_grant_with_its_remaining(self, api: Api, world: World) -> None:
        ledger.credits_consume(
            account=world.customer.account,
            amount="1234.5",
            cause=ledger.Cause("event", "1"),
            actor="test",
        )
        response = api.get("/customers/acme/credit_grants", key=api.read)
        assert response.status_code == 200
        data = response.json()["data"]
        assert all(set(grant) == GRANT_KEYS for grant in data)
        by_category = {g["category"]: g for g in data}
        assert set(by_category) == {"included", "promotional"}
        assert by_category["promotional"]["id"] == str(world.grant.pk)
        # Promotional credits with no expiry go after included ones that expire.
        assert by_category["included"]["amount"] == "20000.000000"
        assert by_category["included"]["remaining"] == "18765.500000"
        assert by_category["promotional"]["remaining"] == "500.000000"

        _create_customer(api, "other")
        _grant(api, "other", amount="7")
        [theirs] = api.grants("other")
        assert (theirs["customer"], theirs["amount"]) == ("other", "7.000000")
        assert {g["customer"] for g in api.grants("acme")} == {"acme"}

    def test_it_is_empty_for_a_customer_without_grants(self, api: Api) -> None:
        _create_customer(api)
        response = api.get("/customers/acme/credit_grants")
        assert response.status_code == 200
        assert response.json() == {"data": [], "has_more": False}
        _error(api.get("/customers/nobody/credit_grants"), 404, "resource_missing")


class TestVoidAndExpire:
    def test_void_answers_the_grant_with_voided_at(self, api: Api, world: World) -> None:
        before = timezone.now().replace(microsecond=0)
        response = api.post(f"/credit_grants/{world.grant.pk}/void", {"reason": "fraud"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == GRANT_KEYS
        assert (body["id"], body["status"]) == (str(world.grant.pk), "voided")
        assert before <= _time(body["voided_at"]) <= timezone.now()
        assert body["expired_at"] is None
        assert (body["amount"], body["remaining"]) == ("500.000000", "0.000000")
        assert body["customer"] == "acme"
        listed = {g["id"]: g for g in api.grants("acme")}
        assert listed[str(world.grant.pk)]["remaining"] == "0.000000"
        assert listed[str(world.grant.pk)]["voided_at"] == body["voided_at"]
        included = next(g for g in listed.values() if g["category"] == "included")
        assert included["remaining"] == "20000.000000"

    def test_void_after_partial_use_writes_off_only_the_rest(self, api: Api) -> None:
        _create_customer(api)
        grant = _grant(api, amount="100", priority=0)
        ledger.credits_consume(
            account=Customer.objects.get().account,
            amount="30",
            cause=ledger.Cause("event", "1"),
            actor="test",
        )
        assert api.grants("acme")[0]["remaining"] == "70.000000"
        response = api.post(f"/credit_grants/{grant['id']}/void", {"reason": "refund"})
        assert response.status_code == 200, response.text
        assert (response.json()["amount"], response.json()["remaining"]) == (
            "100.000000",
            "0.000000",
        )
        entries = LedgerEntry.objects.filter(grant_id=grant["id"], kind="void")
        assert [e.credits for e in entries] == [Decimal("-70")]

    def test_expire_answers_the_grant_expired(self, api: Api, world: World) -> None:
        response = api.post(f"/credit_grants/{world.grant.pk}/expire", {"reason": "cleanup"})
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == GRANT_KEYS
        assert (body["status"], body["remaining"], body["amount"]) == (
            "expired",
            "0.000000",
            "500.000000",
        )
        assert body["expired_at"] is not None
        assert body["voided_at"] is None
        world.grant.refresh_from_db()
        assert world.grant.status == GrantStatus.EXPIRED

    def test_closing_a_closed_grant_the_other_way_is_409_grant_not_active(
        self, api: Api, world: World
    ) -> None:
        other = ledger.credit_grant_create(
            account=world.customer.account, amount="80", category="paid", actor="test"
        )
        assert api.post(f"/credit_grants/{world.grant.pk}/expire", {"reason": "x"}).ok
        assert api.post(f"/credit_grants/{other.pk}/void", {"reason": "x"}).ok
        before = _state()

        response = api.post(f"/credit_grants/{world.grant.pk}/void", {"reason": "fraud"})
        assert "expired" in _error(response, 409, "grant_not_active")["message"]
        response = api.post(f"/credit_grants/{other.pk}/expire", {"reason": "late"})
        assert "voided" in _error(response, 409, "grant_not_active")["message"]

        assert _state() == before
        listed = {g["id"]: g for g in api.grants("acme")}
        assert listed[str(world.grant.pk)]["status"] == "expired"
        assert listed[str(other.pk)]["status"] == "voided"
        assert listed[str(other.pk)]["remaining"] == "0.000000"

    def test_the_reason_is_required_and_an_unknown_grant_404(self, api: Api, world: World) -> None:
        for action in ["void", "expire"]:
            response = api.post(f"/credit_grants/{world.grant.pk}/{action}", {})
            assert _error(response, 400, "missing_field", action)["param"] == "reason"
        world.grant.refresh_from_db()
        assert world.grant.status == GrantStatus.ACTIVE
        for action in ["void", "expire"]:
            for grant_id in ["987654", "grant_x"]:
                response = api.post(f"/credit_grants/{grant_id}/{action}", {"reason": "x"})
                error = _error(response, 404, "resource_missing", (action, grant_id))
                assert error["type"] == "invalid_request_error"


# --- input the API must refuse as a client error, not a server error ----------------------


def test_an_id_of_non_ascii_digits_is_404(api: Api, world: World) -> None:
    # "²" passes str.isdigit() but is no integer id.
    before = _state()
    for path, body in [
        ("/subscriptions/²/change_plan", {"plan": "team"}),
        ("/subscriptions/²/cancel", {"when": "now"}),
        ("/credit_grants/²/void", {"reason": "x"}),
        ("/credit_grants/²/expire", {"reason": "x"}),
    ]:
        _error(api.post(path, body), 404, "resource_missing", path)
    assert _state() == before


def test_a_start_at_beyond_the_calendar_is_400(api: Api) -> None:
    # The first period of a subscription starting in December 9999 would end in year 10000.
    _create_customer(api)
    for start_at in ["9999-12-31T00:00:00Z", 253402300000]:
        response = api.post(
            "/subscriptions", {"customer": "acme", "plan": "pro", "start_at": start_at}
        )
        assert response.status_code == 400, (start_at, response.text)
        assert _error(response, 400, response.json()["error"]["code"])["param"] == "start_at"
    assert not Subscription.objects.exists()


# --- Idempotency-Key, for every POST -----------------------------------------------------

# Each: the path, a body, another body, and what a new key with the first body gets now
# (None: not checked here).
POSTS: list[tuple[str, dict[str, Any], dict[str, Any], tuple[int, str | None] | None]] = [
    (
        "/customers",
        {"external_id": "new", "name": "New", "email": "a@new.test"},
        {"external_id": "new", "name": "Renamed", "email": "a@new.test"},
        (409, "customer_exists"),
    ),
    (
        "/subscriptions",
        {"customer": "other", "plan": "pro"},
        {"customer": "other", "plan": "team"},
        (409, "subscription_exists"),
    ),
    ("/subscriptions/{sub}/change_plan", {"plan": "team"}, {"plan": "starter"}, (200, None)),
    (
        "/subscriptions/{sub}/cancel",
        {"when": "now"},
        {"when": "period_end"},
        (409, "subscription_canceled"),
    ),
    (
        "/customers/{customer}/credit_grants",
        {"amount": "250", "category": "paid"},
        {"amount": "251", "category": "paid"},
        (201, None),
    ),
    ("/credit_grants/{grant}/void", {"reason": "fraud"}, {"reason": "refund"}, None),
    ("/credit_grants/{grant}/expire", {"reason": "cleanup"}, {"reason": "other"}, None),
]


@pytest.mark.parametrize(
    ("template", "body", "other_body", "fresh"), POSTS, ids=[post[0] for post in POSTS]
)
def test_a_replayed_idempotency_key_returns_the_first_answer(
    api: Api,
    world: World,
    template: str,
    body: dict[str, Any],
    other_body: dict[str, Any],
    fresh: tuple[int, str | None] | None,
) -> None:
    customer("other")
    path = world.path(template)
    first = api.post(path, body, idempotency_key="retry-1")
    assert first.status_code in {200, 201}, first.text
    assert "Idempotent-Replayed" not in first.headers
    after_first = _state()

    replay = api.post(path, body, idempotency_key="retry-1")
    assert replay.status_code == first.status_code
    assert replay.json() == first.json()
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert _state() == after_first

    reused = api.post(path, other_body, idempotency_key="retry-1")
    error = _error(reused, 409, "idempotency_key_reused")
    assert error["type"] == "idempotency_error"
    assert _state() == after_first

    # A new key is a new request: it runs against the state the first one left.
    again = api.post(path, body, idempotency_key="retry-2")
    assert "Idempotent-Replayed" not in again.headers
    if fresh is not None:
        status, code = fresh
        if code is None:
            assert again.status_code == status, again.text
        else:
            _error(again, status, code)


def test_a_replayed_grant_create_makes_one_grant(api: Api) -> None:
    _create_customer(api)
    body = {"amount": "42.123456", "category": "promotional"}
    responses = [
        api.post("/customers/acme/credit_grants", body, idempotency_key="g-1") for _ in range(3)
    ]
    assert {r.status_code for r in responses} == {201}
    assert {r.json()["id"] for r in responses} == {str(CreditGrant.objects.get().pk)}
    assert [g["amount"] for g in api.grants("acme")] == ["42.123456"]
    without_key = api.post("/customers/acme/credit_grants", body)
    assert without_key.status_code == 201
    assert CreditGrant.objects.count() == 2
