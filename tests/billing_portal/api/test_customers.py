"""GET /api/v1/customers (a page, filters) and PATCH /api/v1/customers/{external_id}."""

from __future__ import annotations

from decimal import Decimal

import pytest

from plans.models import Customer
from tests.billing_portal.api.http_support import Api, error_of
from tests.plans.factories import customer

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_lists_customers_newest_first_in_pages(api: Api) -> None:
    for name in ("a", "b", "c", "d", "e"):
        customer(name)
    pages = api.pages("/customers", limit=2)
    assert [[c["id"] for c in page] for page in pages] == [["e", "d"], ["c", "b"], ["a"]]
    first = pages[0][0]
    assert first["external_id"] == "e"
    assert first["metadata"] == {}
    assert api.ok("/customers")["has_more"] is False
    assert len(api.ok("/customers")["data"]) == 5


def test_it_filters_by_email_and_external_id(api: Api) -> None:
    customer("acme")
    customer("globex")
    Customer.objects.filter(external_id="globex").update(email="shared@example.test")
    customer("initech")
    Customer.objects.filter(external_id="initech").update(email="shared@example.test")
    by_email = api.ok("/customers", email="shared@example.test")["data"]
    assert [c["id"] for c in by_email] == ["initech", "globex"]
    assert [c["id"] for c in api.ok("/customers", external_id="acme")["data"]] == ["acme"]
    assert api.ok("/customers", external_id="nobody") == {"data": [], "has_more": False}


def test_it_needs_the_read_scope_to_list(api: Api) -> None:
    assert api.get("/customers", key=api.read).status_code == 200
    error = error_of(api.get("/customers", key=api.ingest), 403, "insufficient_scope")
    assert "'read' scope" in error["message"]
    error_of(api.get("/customers", key=""), 401, "api_key_required")


def test_patch_changes_only_the_fields_sent(api: Api) -> None:
    customer("acme")
    response = api.patch("/customers/acme", {"name": "Acme Corp", "spend_limit_credits": "1500.5"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["name"], body["email"]) == ("Acme Corp", "billing@acme.test")
    assert body["spend_limit_credits"] == "1500.500000"
    stored = Customer.objects.get()
    assert (stored.name, stored.spend_limit_credits) == ("Acme Corp", Decimal("1500.5"))

    response = api.patch("/customers/acme", {"email": "ap@acme.test", "spend_limit_credits": None})
    assert response.status_code == 200, response.text
    assert (response.json()["email"], response.json()["spend_limit_credits"]) == (
        "ap@acme.test",
        None,
    )
    assert api.ok("/customers/acme") == response.json()


def test_patch_merges_metadata_and_null_removes(api: Api) -> None:
    customer("acme")
    first = api.patch("/customers/acme", {"metadata": {"crm_id": "42", "tier": "gold"}})
    assert first.json()["metadata"] == {"crm_id": "42", "tier": "gold"}
    merged = api.patch("/customers/acme", {"metadata": {"tier": None, "region": "eu", "x": ""}})
    assert merged.json()["metadata"] == {"crm_id": "42", "region": "eu"}
    assert Customer.objects.get().metadata == {"crm_id": "42", "region": "eu"}
    cleared = api.patch("/customers/acme", {"metadata": None})
    assert cleared.json()["metadata"] == {}


def test_patch_refuses_more_than_50_metadata_keys_counting_the_stored_ones(api: Api) -> None:
    customer("acme")
    keys = {f"k{i}": "v" for i in range(50)}
    assert api.patch("/customers/acme", {"metadata": keys}).status_code == 200
    error = error_of(
        api.patch("/customers/acme", {"metadata": {"one_more": "v"}}), 400, "metadata_too_many_keys"
    )
    assert error["param"] == "metadata"
    assert "at most 50" in error["message"]
    swap = api.patch("/customers/acme", {"metadata": {"k0": None, "one_more": "v"}})
    assert swap.status_code == 200, swap.text
    assert len(Customer.objects.get().metadata) == 50


@pytest.mark.parametrize(
    ("body", "param", "code"),
    [
        ({"email": "not-an-email"}, "email", "invalid_request"),
        ({"name": ""}, "name", "invalid_request"),
        ({"name": "x" * 201}, "name", "invalid_request"),
        ({"spend_limit_credits": "-1"}, "spend_limit_credits", "invalid_request"),
        ({"spend_limit_credits": "lots"}, "spend_limit_credits", "invalid_request"),
        ({"metadata": ["a"]}, "metadata", "invalid_request"),
        ({"metadata": {"n": 5}}, "metadata", "invalid_request"),
        ({"metadata": {"k" * 41: "v"}}, "metadata", "invalid_request"),
        ({"metadata": {"k": "v" * 501}}, "metadata", "invalid_request"),
        ({"metadata": {"k": "nul\u0000"}}, "metadata", "invalid_request"),
        ({"currency": "EUR"}, "currency", "currency_cannot_change"),
        ({"currency": "EURO"}, "currency", "invalid_request"),
        ({"nmae": "typo"}, "nmae", "parameter_unknown"),
        ({"external_id": "other"}, "external_id", "parameter_unknown"),
    ],
)
def test_patch_refuses_bad_fields_naming_them(
    api: Api, body: dict[str, object], param: str, code: str
) -> None:
    customer("acme")
    before = Customer.objects.values().get()
    error = error_of(api.patch("/customers/acme", body), 400, code)
    assert error["param"] == param
    assert param in error["message"] or code == "currency_cannot_change"
    assert Customer.objects.values().get() == before


def test_patch_accepts_the_customers_own_currency(api: Api) -> None:
    customer("acme")
    response = api.patch("/customers/acme", {"currency": "usd", "name": "Same"})
    assert response.status_code == 200, response.text
    assert response.json()["currency"] == "USD"
    error = error_of(
        api.patch("/customers/acme", {"currency": "EUR"}), 400, "currency_cannot_change"
    )
    assert "USD" in error["message"]


def test_patch_needs_the_write_scope_and_an_existing_customer(api: Api) -> None:
    customer("acme")
    error = error_of(
        api.patch("/customers/acme", {"name": "X"}, key=api.read), 403, "insufficient_scope"
    )
    assert "'write' scope" in error["message"]
    error_of(api.patch("/customers/nobody", {"name": "X"}), 404, "resource_missing")
    assert api.patch("/customers/acme", {"name": "X"}, key=api.write).status_code == 200
    assert Customer.objects.get().name == "X"
