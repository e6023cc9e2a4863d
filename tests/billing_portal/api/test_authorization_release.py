"""POST /api/v1/authorizations/{id}/release names the authorization, not its hold."""

from __future__ import annotations

from decimal import Decimal

import pytest

from ledger import services as ledger
from metering import services
from plans.services import subscription_start
from tests.billing_portal.api.http_support import Api, error_of
from tests.plans.factories import customer, plan

pytestmark = pytest.mark.django_db(transaction=True)


def test_releasing_a_captured_authorization_says_so_by_its_id(api: Api) -> None:
    acme = customer("acme")
    subscription_start(customer=acme, plan=plan("pro"), actor="test")
    authorization = services.authorization_create(
        customer=acme,
        request=services.AuthorizationRequest(identifier="call-1", credits=Decimal(30)),
        actor="test",
    )
    assert authorization.hold is not None
    ledger.hold_capture(
        hold=authorization.hold, amount="10", cause=ledger.Cause("event", "1"), actor="test"
    )
    error = error_of(
        api.post(f"/authorizations/{authorization.pk}/release"), 409, "authorization_captured"
    )
    assert error["message"] == (
        f"authorization {authorization.pk} is already captured; nothing to release"
    )
    assert "hold" not in error["message"]
