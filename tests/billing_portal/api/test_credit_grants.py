"""GET /api/v1/customers/{external_id}/credit_grants in pages with status and category
filters, and the reason and actor of a void or expiry on every grant answered."""

from __future__ import annotations

import pytest

from ledger import services as ledger
from ledger.models import CreditGrant, LedgerOperation
from plans.models import Customer
from tests.billing_portal.api.http_support import Api, error_of
from tests.plans.factories import customer

pytestmark = pytest.mark.django_db(transaction=True)


def _grants(acme: Customer) -> list[CreditGrant]:
    return [
        ledger.credit_grant_create(
            account=acme.account, amount=str(amount), category=category, actor="test"
        )
        for amount, category in [(10, "promotional"), (20, "paid"), (30, "promotional")]
    ]


def test_it_pages_newest_first_and_keeps_the_item_shape(api: Api) -> None:
    first, second, third = _grants(customer("acme"))
    pages = api.pages("/customers/acme/credit_grants", limit=2)
    assert [[g["id"] for g in page] for page in pages] == [
        [str(third.pk), str(second.pk)],
        [str(first.pk)],
    ]
    grant = pages[0][0]
    assert (grant["amount"], grant["remaining"], grant["customer"]) == (
        "30.000000",
        "30.000000",
        "acme",
    )
    assert (grant["closed_reason"], grant["closed_by"], grant["voided_reason"]) == (None,) * 3
    assert api.ok("/customers/acme/credit_grants")["has_more"] is False


def test_it_filters_by_status_and_category(api: Api) -> None:
    first, _, third = _grants(customer("acme"))
    ledger.credit_grant_void(grant=third, actor="test", reason="mistake")
    promotional = api.ok("/customers/acme/credit_grants", category="promotional")["data"]
    assert [g["id"] for g in promotional] == [str(third.pk), str(first.pk)]
    active = api.ok("/customers/acme/credit_grants", status="active", category="promotional")
    assert [g["id"] for g in active["data"]] == [str(first.pk)]
    for params, param in [({"status": "gone"}, "status"), ({"category": "gift"}, "category")]:
        response = api.get("/customers/acme/credit_grants", **params)
        assert error_of(response, 400, "invalid_request")["param"] == param


def test_void_and_expire_over_the_api_answer_who_closed_it_and_why(api: Api) -> None:
    first, second, _ = _grants(customer("acme"))
    voided = api.post(f"/credit_grants/{first.pk}/void", {"reason": "fraud", "memo": "ticket 9"})
    assert voided.status_code == 200, voided.text
    body = voided.json()
    assert (body["status"], body["voided_reason"], body["closed_reason"]) == (
        "voided",
        "fraud",
        "fraud",
    )
    assert body["closed_by"] == "api:backend"
    operation = LedgerOperation.objects.get(kind="void")
    assert (operation.actor, operation.reason, operation.memo) == (
        "api:backend",
        "fraud",
        "ticket 9",
    )

    expired = api.post(f"/credit_grants/{second.pk}/expire", {"reason": "promo_over"}).json()
    assert (expired["status"], expired["closed_reason"], expired["voided_reason"]) == (
        "expired",
        "promo_over",
        None,
    )
    assert expired["closed_by"] == "api:backend"
    listed = {g["id"]: g for g in api.ok("/customers/acme/credit_grants")["data"]}
    assert listed[str(first.pk)]["closed_reason"] == "fraud"
    assert listed[str(second.pk)]["closed_by"] == "api:backend"


def test_a_grant_closed_with_nothing_left_answers_no_reason(api: Api) -> None:
    # Nothing was written off, so no entry names the grant: its operation cannot be found.
    acme = customer("acme")
    grant = ledger.credit_grant_create(account=acme.account, amount="5", category="paid", actor="t")
    ledger.credits_consume(
        account=acme.account, amount="5", cause=ledger.Cause("event", "1"), actor="t"
    )
    body = api.post(f"/credit_grants/{grant.pk}/void", {"reason": "fraud"}).json()
    assert (body["status"], body["closed_reason"], body["closed_by"]) == ("voided", None, None)
