"""GET /api/v1/customers/{external_id}/usage: group_by names only meters' dimensions."""

from __future__ import annotations

import pytest

from tests.billing_portal.api.http_support import Api, error_of
from tests.plans.factories import customer

pytestmark = pytest.mark.django_db(transaction=True)


def test_an_unknown_group_by_key_is_400_naming_the_known_ones(api: Api) -> None:
    customer("acme")
    for group_by in ("colour", "model,colour", "model, token_type ,region"):
        error = error_of(
            api.get("/customers/acme/usage", group_by=group_by), 400, "invalid_request"
        )
        assert error["param"] == "group_by"
        assert "model, token_type" in error["message"], error
    assert (
        "colour"
        in error_of(api.get("/customers/acme/usage", group_by="colour"), 400, "invalid_request")[
            "message"
        ]
    )


def test_known_keys_are_accepted_even_for_a_meter_without_them(api: Api) -> None:
    customer("acme")
    assert api.ok("/customers/acme/usage", group_by="model,token_type") == {"data": []}
    assert api.ok("/customers/acme/usage", group_by="model", meter="doc_summaries") == {"data": []}
