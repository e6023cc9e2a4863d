"""Every balance-changing action over the API is in the audit log, with its actor (the
API key) and reason, like the admin's workflows."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from billing_portal.staff.models import AuditAction, AuditLog
from metering.rating import events_rate_pending
from plans.services import subscription_start
from tests.billing_portal.api.http_support import Api
from tests.plans.factories import customer, plan

pytestmark = pytest.mark.django_db(transaction=True)


def _audited() -> list[tuple[str, str | None, str, str]]:
    return [
        (
            row.action,
            None if row.operator_id is None else str(row.operator_id),
            row.operator_name,
            row.reason_code,
        )
        for row in AuditLog.objects.order_by("pk")
    ]


def test_grants_made_voided_and_expired_over_the_api_are_audited(api: Api) -> None:
    customer("acme")
    made = api.post("/customers/acme/credit_grants", {"amount": "50", "category": "promotional"})
    assert made.status_code == 201, made.text
    other = api.post("/customers/acme/credit_grants", {"amount": "5", "category": "promotional"})
    grant, second = made.json()["id"], other.json()["id"]
    assert api.post(f"/credit_grants/{grant}/void", {"reason": "fraud"}).status_code == 200
    assert api.post(f"/credit_grants/{second}/expire", {"reason": "promo_over"}).status_code == 200

    assert _audited() == [
        (AuditAction.GRANT_CREATE, None, "api:backend", "api"),
        (AuditAction.GRANT_CREATE, None, "api:backend", "api"),
        (AuditAction.GRANT_VOID, None, "api:backend", "fraud"),
        (AuditAction.GRANT_EXPIRE, None, "api:backend", "promo_over"),
    ]
    assert AuditLog.objects.filter(target_id=grant, target_type="ledger.creditgrant").count() == 2


def test_an_event_cancelled_over_the_api_is_audited(api: Api) -> None:
    subscription_start(customer=customer("acme"), plan=plan("pro"), actor="t")
    event = {
        "identifier": "e-1",
        "event_name": "llm.tokens",
        "customer": "acme",
        "timestamp": datetime.now(UTC).isoformat(),
        "value": "1000",
        "dimensions": {"model": "large", "token_type": "output"},
    }
    assert api.post("/events", event).status_code == 202
    events_rate_pending()
    body = {"customer": "acme", "identifier": "e-1", "reason": "duplicate"}
    assert api.post("/events/cancel", body).status_code == 200
    (row,) = AuditLog.objects.all()
    assert (row.action, row.operator_name, row.reason_code, row.details) == (
        AuditAction.EVENT_CANCEL,
        "api:backend",
        "duplicate",
        {"identifier": "e-1"},
    )
