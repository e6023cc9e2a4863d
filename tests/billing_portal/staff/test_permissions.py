"""Each role tries each workflow: what it may not do is refused and changes nothing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import pytest
from django.contrib.auth.models import User
from django.test import Client
from django.urls import reverse

from billing_portal.invoicing.credit_notes import credit_note_issue
from billing_portal.invoicing.models import CreditNote, Invoice
from billing_portal.staff.models import AuditLog
from ledger.models import CreditGrant, LedgerEntry
from metering.models import EventCancellation, MeterEvent
from plans.apikeys import api_key_create
from plans.models import ApiKey, Customer, PlanVersion, Subscription
from tests.billing_portal.staff.conftest import ROLES
from tests.plans.factories import DEMO_CATALOG

pytestmark = pytest.mark.django_db


@dataclass
class World:
    acme: Customer
    event: MeterEvent
    grant: CreditGrant
    invoice: Invoice
    note: CreditNote
    api_key: ApiKey


@pytest.fixture
def world(
    acme: Customer, event: MeterEvent, promo_grant: CreditGrant, paid_invoice: Invoice
) -> World:
    note = credit_note_issue(
        invoice=paid_invoice, reason="duplicate", method="out_of_band", actor="t", amount=Decimal(1)
    )
    api_key, _ = api_key_create(name="existing")
    return World(acme, event, promo_grant, paid_invoice, note, api_key)


REASON = {"reason": "other", "memo": "permission test", "confirm": "1"}

# name -> (url, POST data, roles allowed)
Workflow = tuple[Callable[[World], str], Callable[[World], dict[str, Any]], set[str]]
WORKFLOWS: dict[str, Workflow] = {
    "grant": (
        lambda w: reverse("admin:plans_customer_grant", args=[w.acme.pk]),
        lambda w: {"amount": "10", "category": "promotional", "priority": "50", **REASON},
        {"Billing admin", "Support"},
    ),
    "void_grant": (
        lambda w: reverse("admin:ledger_creditgrant_void", args=[w.grant.pk]),
        lambda w: REASON,
        {"Billing admin", "Support"},
    ),
    "expire_grant": (
        lambda w: reverse("admin:ledger_creditgrant_expire", args=[w.grant.pk]),
        lambda w: REASON,
        {"Billing admin", "Support"},
    ),
    "cancel_event": (
        lambda w: reverse("admin:metering_meterevent_cancel", args=[w.event.pk]),
        lambda w: REASON,
        {"Billing admin", "Support"},
    ),
    "correct_event": (
        lambda w: reverse("admin:metering_meterevent_correct", args=[w.event.pk]),
        lambda w: {"identifier": "evt-1-v2", "value": "1", "dimensions": "{}", **REASON},
        {"Billing admin", "Support"},
    ),
    "issue_credit_note": (
        lambda w: reverse("admin:invoicing_invoice_credit_note", args=[w.invoice.pk]),
        lambda w: {"reason": "duplicate", "method": "out_of_band", "amount": "2", "confirm": "1"},
        {"Billing admin", "Finance"},
    ),
    "void_credit_note": (
        lambda w: reverse("admin:invoicing_creditnote_void", args=[w.note.pk]),
        lambda w: REASON,
        {"Billing admin", "Finance"},
    ),
    "change_plan": (
        lambda w: reverse("admin:plans_customer_change_plan", args=[w.acme.pk]),
        lambda w: {"plan": "team", **REASON},
        {"Billing admin"},
    ),
    "retry_sync": (
        lambda w: reverse("admin:invoicing_invoice_retry_sync", args=[w.invoice.pk]),
        lambda w: REASON,
        {"Billing admin", "Finance"},
    ),
    "create_api_key": (
        lambda w: reverse("admin:plans_apikey_add"),
        lambda w: {"name": "new", "scopes": ["read"], **REASON},
        {"Billing admin"},
    ),
    "revoke_api_key": (
        lambda w: reverse("admin:plans_apikey_revoke", args=[w.api_key.pk]),
        lambda w: REASON,
        {"Billing admin"},
    ),
    "edit_catalog": (
        lambda w: reverse("admin:plans_plan_catalog"),
        lambda w: {
            "text": DEMO_CATALOG.read_text().replace('"20000"', '"30000"'),
            **REASON,
        },
        {"Billing admin"},
    ),
}


def _snapshot(w: World) -> dict[str, Any]:
    grant = CreditGrant.objects.get(pk=w.grant.pk)
    return {
        "audit": AuditLog.objects.count(),
        "entries": LedgerEntry.objects.count(),
        "grants": CreditGrant.objects.count(),
        "grant": (grant.status, grant.remaining),
        "cancellations": EventCancellation.objects.count(),
        "events": MeterEvent.objects.count(),
        "notes": list(CreditNote.objects.values_list("pk", "status")),
        "plan": Subscription.objects.get(customer=w.acme).plan_version_id,
        "plan_versions": PlanVersion.objects.count(),
        "keys": list(ApiKey.objects.values_list("pk", "revoked_at")),
    }


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("workflow", sorted(WORKFLOWS))
def test_each_role_may_do_only_its_workflows(
    world: World, client_as: Callable[[str], Client], role: str, workflow: str
) -> None:
    url_of, data_of, allowed = WORKFLOWS[workflow]
    client = client_as(role)
    url, data = url_of(world), data_of(world)
    before = _snapshot(world)
    if role in allowed:
        assert client.get(url).status_code == 200
        response = client.post(url, data)
        assert response.status_code in (200, 302), response.content[:500]
        assert AuditLog.objects.count() == 1, response.context and response.context["form"].errors
    else:
        assert client.get(url).status_code == 403
        assert client.post(url, data).status_code == 403
        assert _snapshot(world) == before


@pytest.mark.parametrize("workflow", sorted(WORKFLOWS))
def test_staff_without_a_role_may_do_nothing(world: World, workflow: str) -> None:
    url_of, data_of, _ = WORKFLOWS[workflow]
    user = User.objects.create_user("norole", password="pw", is_staff=True)
    client = Client()
    client.force_login(user)
    before = _snapshot(world)
    assert client.post(url_of(world), data_of(world)).status_code == 403
    assert _snapshot(world) == before


def test_anonymous_visitors_are_sent_to_the_login_page(world: World) -> None:
    url_of, data_of, _ = WORKFLOWS["grant"]
    response = Client().post(url_of(world), data_of(world))
    assert response.status_code == 302
    assert "/admin/login/" in response["Location"]
    assert AuditLog.objects.count() == 0


REPORTS = {
    "revenue": lambda w: reverse("admin:staff_auditlog_report_revenue"),
    "reconciliation": lambda w: reverse("admin:staff_auditlog_report_reconciliation"),
    "unmatched": lambda w: reverse("admin:staff_auditlog_report_unmatched"),
    "lineage": lambda w: reverse(
        "admin:invoicing_invoiceline_lineage", args=[w.invoice.lines.get().pk]
    ),
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("report", sorted(REPORTS))
def test_reports_are_for_finance_and_billing_admins(
    world: World, client_as: Callable[[str], Client], role: str, report: str
) -> None:
    expected = 403 if role == "Support" else 200
    assert client_as(role).get(REPORTS[report](world)).status_code == expected
