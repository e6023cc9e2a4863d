"""The cursor pagination every list shares (billing_portal/api/pagination.py), through
GET /api/v1/customers: default and maximum limit, cursors, ties, refusals."""

from __future__ import annotations

import pytest
from django.utils import timezone

from plans.models import Customer
from tests.billing_portal.api.http_support import Api, error_of
from tests.plans.factories import customer

pytestmark = pytest.mark.django_db(transaction=True)


def test_it_answers_20_by_default_and_at_most_100(api: Api) -> None:
    for number in range(25):
        customer(f"c{number:02d}")
    first = api.ok("/customers")
    assert (len(first["data"]), first["has_more"]) == (20, True)
    assert first["data"][0]["id"] == "c24"
    rest = api.ok("/customers", starting_after=first["data"][-1]["id"])
    assert (len(rest["data"]), rest["has_more"]) == (5, False)
    assert [c["id"] for c in first["data"] + rest["data"]] == [
        f"c{n:02d}" for n in range(24, -1, -1)
    ]
    everything = api.ok("/customers", limit=100)
    assert (len(everything["data"]), everything["has_more"]) == (25, False)
    exact = api.ok("/customers", limit=25)
    assert exact["has_more"] is False


def test_items_created_at_the_same_moment_are_each_answered_once(api: Api) -> None:
    for number in range(7):
        customer(f"c{number}")
    Customer.objects.update(created_at=timezone.now())
    pages = api.pages("/customers", limit=3)
    ids = [c["id"] for page in pages for c in page]
    assert sorted(ids) == [f"c{n}" for n in range(7)]
    assert len(pages) == 3


@pytest.mark.parametrize("limit", ["0", "-1", "101", "ten", "1.5"])
def test_a_limit_out_of_range_is_400_naming_limit(api: Api, limit: str) -> None:
    error = error_of(api.get("/customers", limit=limit), 400, "invalid_request")
    assert error["param"] == "limit"
    assert "'limit'" in error["message"]


def test_an_unknown_cursor_is_400_naming_starting_after(api: Api) -> None:
    customer("acme")
    for cursor in ("nobody", "x" * 256, "acme\u0000"):
        error = error_of(api.get("/customers", starting_after=cursor), 400, error_code(cursor))
        assert error["param"] == "starting_after"
    error = error_of(api.get("/customers", starting_after="nobody"), 400, "resource_missing")
    assert "'nobody'" in error["message"]
    assert "leave starting_after out" in error["message"]


def error_code(cursor: str) -> str:
    # Too long or holding U+0000: the field refuses it before any lookup.
    return "resource_missing" if cursor == "nobody" else "invalid_request"
