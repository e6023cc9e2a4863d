"""GET /api/v1/subscriptions (?customer=), GET /api/v1/subscriptions/{id}, and the
proration that change_plan and cancel answer."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

import pytest
from django.utils import timezone

from plans.models import ChangeKind, Customer, Subscription, SubscriptionChange
from plans.money import as_money
from plans.services import subscription_cancel, subscription_start
from tests.billing_portal.api.http_support import Api, error_of
from tests.plans.factories import customer, plan

pytestmark = pytest.mark.django_db(transaction=True)


def _subscribed(external_id: str, plan_code: str = "pro", start_at: datetime | None = None) -> str:
    subscription = subscription_start(
        customer=customer(external_id), plan=plan(plan_code), actor="test", start_at=start_at
    )
    return str(subscription.pk)


def test_it_lists_a_customers_subscriptions_newest_first(api: Api) -> None:
    old = _subscribed("acme")
    subscription_cancel(subscription=Subscription.objects.get(pk=old), when="now", actor="test")
    acme = Customer.objects.get(external_id="acme")
    new = subscription_start(customer=acme, plan=plan("team"), actor="test")
    _subscribed("globex")

    body = api.ok("/subscriptions", customer="acme")
    assert [s["id"] for s in body["data"]] == [str(new.pk), old]
    assert [s["status"] for s in body["data"]] == ["active", "canceled"]
    assert {s["customer"] for s in body["data"]} == {"acme"}
    assert body["has_more"] is False
    active = api.ok("/subscriptions", customer="acme", status="active")["data"]
    assert [s["id"] for s in active] == [str(new.pk)]
    assert len(api.ok("/subscriptions")["data"]) == 3
    assert [len(page) for page in api.pages("/subscriptions", limit=2)] == [2, 1]


def test_an_unknown_customer_filter_is_400_naming_it(api: Api) -> None:
    error = error_of(api.get("/subscriptions", customer="nobody"), 400, "unknown_customer")
    assert error["param"] == "customer"
    assert "nobody" in error["message"]
    error = error_of(api.get("/subscriptions", status="paused"), 400, "invalid_request")
    assert error["param"] == "status"


def test_it_reads_one_subscription_or_404(api: Api) -> None:
    sub_id = _subscribed("acme")
    body = api.ok(f"/subscriptions/{sub_id}")
    assert (body["id"], body["customer"], body["plan"], body["status"]) == (
        sub_id,
        "acme",
        "pro",
        "active",
    )
    assert "proration" not in body
    assert api.get(f"/subscriptions/{sub_id}", key=api.read).status_code == 200
    error_of(api.get(f"/subscriptions/{sub_id}", key=api.ingest), 403, "insufficient_scope")
    for missing in ("999999", "sub_nope"):
        error_of(api.get(f"/subscriptions/{missing}"), 404, "resource_missing")


def test_an_upgrade_now_answers_the_proration_it_wrote(api: Api) -> None:
    sub_id = _subscribed("acme", start_at=timezone.now() - timedelta(days=10))
    response = api.post(f"/subscriptions/{sub_id}/change_plan", {"plan": "team", "when": "now"})
    assert response.status_code == 200, response.text
    proration = response.json()["proration"]
    change = SubscriptionChange.objects.get(kind=ChangeKind.PLAN_CHANGE)
    assert proration == {"amount": str(as_money(change.proration).amount), "currency": "USD"}
    # 150.00 more a month, for the two thirds or so of the period left.
    assert Decimal(80) < Decimal(proration["amount"]) < Decimal(120)
    assert "E" not in proration["amount"]


def test_a_downgrade_now_prorates_a_credit(api: Api) -> None:
    sub_id = _subscribed("acme", plan_code="team")
    response = api.post(f"/subscriptions/{sub_id}/change_plan", {"plan": "pro", "when": "now"})
    assert response.status_code == 200, response.text
    amount = Decimal(response.json()["proration"]["amount"])
    assert Decimal(-150) <= amount < Decimal(-149)


def test_changes_that_prorate_nothing_answer_null(api: Api) -> None:
    sub_id = _subscribed("acme")
    scheduled = api.post(f"/subscriptions/{sub_id}/change_plan", {"plan": "starter"})
    assert scheduled.status_code == 200, scheduled.text
    assert (scheduled.json()["pending_plan"], scheduled.json()["proration"]) == ("starter", None)
    unchanged = api.post(f"/subscriptions/{sub_id}/change_plan", {"plan": "pro"})
    assert unchanged.json()["proration"] is None
    # An earlier change's proration is not mistaken for this call's.
    upgrade = api.post(f"/subscriptions/{sub_id}/change_plan", {"plan": "team", "when": "now"})
    assert upgrade.json()["proration"] is not None
    again = api.post(f"/subscriptions/{sub_id}/change_plan", {"plan": "team"})
    assert again.json()["proration"] is None
    canceled = api.post(f"/subscriptions/{sub_id}/cancel", {"when": "now"})
    assert canceled.status_code == 200, canceled.text
    # Cancelling now gives back the team fee of the time left: almost all of it.
    proration = canceled.json()["proration"]
    assert (canceled.json()["status"], proration["currency"]) == ("canceled", "USD")
    assert Decimal("-199.00") <= Decimal(proration["amount"]) <= Decimal("-198.90")


# --- external_id ----------------------------------------------------------------------


def test_a_subscription_starts_with_its_external_id_and_shows_it(api: Api) -> None:
    customer("acme")
    customer("globex")
    response = api.post(
        "/subscriptions", {"customer": "acme", "plan": "pro", "external_id": "lago-sub_1"}
    )
    assert response.status_code == 201, response.text
    created = response.json()
    assert created["external_id"] == "lago-sub_1"
    assert Subscription.objects.get(pk=created["id"]).external_id == "lago-sub_1"
    assert api.ok(f"/subscriptions/{created['id']}")["external_id"] == "lago-sub_1"
    assert [s["external_id"] for s in api.ok("/subscriptions")["data"]] == ["lago-sub_1"]
    # Without one (or null) it is null.
    plain = api.post("/subscriptions", {"customer": "globex", "plan": "pro", "external_id": None})
    assert plain.status_code == 201, plain.text
    assert plain.json()["external_id"] is None


def test_a_taken_external_id_is_409_and_a_bad_one_400(api: Api) -> None:
    customer("acme")
    customer("globex")
    first = api.post("/subscriptions", {"customer": "acme", "plan": "pro", "external_id": "s-1"})
    assert first.status_code == 201, first.text
    taken = api.post("/subscriptions", {"customer": "globex", "plan": "pro", "external_id": "s-1"})
    error = error_of(taken, 409, "external_id_taken")
    assert error["param"] == "external_id"
    assert "s-1" in error["message"]
    # The customer's own conflict keeps its code.
    again = api.post("/subscriptions", {"customer": "acme", "plan": "pro", "external_id": "s-2"})
    error_of(again, 409, "subscription_exists")
    for bad in ("has space", "", "x" * 256, "caf\u00e9"):
        response = api.post(
            "/subscriptions", {"customer": "globex", "plan": "pro", "external_id": bad}
        )
        assert error_of(response, 400, "invalid_request")["param"] == "external_id", bad
    assert Subscription.objects.filter(customer__external_id="globex").count() == 0
