"""Plan change, Stripe sync retry, API keys and the catalog editor."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.test import Client
from django.urls import reverse

from billing_portal.invoicing.models import Invoice, SyncState
from billing_portal.staff.models import AuditLog
from plans import catalog
from plans.apikeys import api_key_authenticate
from plans.models import ApiKey, Customer, Plan, PlanVersion
from tests.plans.factories import DEMO_CATALOG

pytestmark = pytest.mark.django_db


def test_changing_the_plan_upgrades_now_and_audits(
    acme: Customer, client_as: Callable[[str], Client]
) -> None:
    url = reverse("admin:plans_customer_change_plan", args=[acme.pk])
    client = client_as("Billing admin")
    assert client.get(url).status_code == 200
    data = {"plan": "team", "when": "", "reason": "customer_request"}
    review = client.post(url, data)
    assert review.context["stage"] == "confirm"
    assert acme.subscriptions.get().plan_version.plan.code == "pro"
    assert client.post(url, {**data, "confirm": "1"}).status_code == 302
    assert acme.subscriptions.get().plan_version.plan.code == "team"
    audit = AuditLog.objects.get()
    assert (audit.action, audit.details["to_plan"]) == ("plan_change", "team")


def test_changing_to_an_unknown_plan_is_a_validation_error(
    acme: Customer, client_as: Callable[[str], Client]
) -> None:
    url = reverse("admin:plans_customer_change_plan", args=[acme.pk])
    response = client_as("Billing admin").post(
        url, {"plan": "nope", "reason": "customer_request", "confirm": "1"}
    )
    assert "plan" in response.context["form"].errors
    assert AuditLog.objects.count() == 0


def test_retrying_a_failed_sync_is_audited(
    paid_invoice: Invoice, client_as: Callable[[str], Client]
) -> None:
    Invoice.objects.filter(pk=paid_invoice.pk).update(
        sync_state=SyncState.FAILED, sync_error="timeout"
    )
    url = reverse("admin:invoicing_invoice_retry_sync", args=[paid_invoice.pk])
    client = client_as("Finance")
    review = client.post(url, {"reason": "other", "memo": "stripe was down"})
    assert dict(review.context["summary"])["Last error"] == "timeout"
    assert client.post(url, {"reason": "other", "memo": "x", "confirm": "1"}).status_code == 302
    audit = AuditLog.objects.get()
    assert (audit.action, audit.target_type) == ("sync_retry", "invoicing.invoice")


def test_an_api_key_is_shown_once_on_creation_and_can_be_revoked(
    db: None, client_as: Callable[[str], Client]
) -> None:
    client = client_as("Billing admin")
    url = reverse("admin:plans_apikey_add")
    assert client.get(url).status_code == 200
    data = {"name": "backend", "scopes": ["ingest"], "reason": "customer_request"}
    missing = client.post(url, {**data, "name": "", "confirm": "1"})
    assert "name" in missing.context["form"].errors
    created = client.post(url, {**data, "confirm": "1"})
    secret = created.context["secret"]
    assert secret.encode() in created.content
    assert "no-store" in created["Cache-Control"]
    api_key = ApiKey.objects.get()
    assert api_key_authenticate(secret=secret) == api_key
    page = client.get(reverse("admin:plans_apikey_change", args=[api_key.pk]))
    assert secret.encode() not in page.content
    assert secret not in str(AuditLog.objects.get().details)

    revoke = reverse("admin:plans_apikey_revoke", args=[api_key.pk])
    client.post(revoke, {"reason": "fraud", "confirm": "1"})
    assert api_key_authenticate(secret=secret) is None
    assert [a.action for a in AuditLog.objects.order_by("pk")] == [
        "api_key_create",
        "api_key_revoke",
    ]


def test_editing_a_plan_in_use_creates_a_new_version(
    acme: Customer, client_as: Callable[[str], Client]
) -> None:
    url = reverse("admin:plans_plan_catalog")
    client = client_as("Billing admin")
    form = client.get(url).context["form"]
    assert "pro" in form.initial["text"]
    text = DEMO_CATALOG.read_text().replace(
        'included_credits: "20000"', 'included_credits: "25000"'
    )
    data = {"text": text, "reason": "other", "memo": "more included credits"}
    assert client.post(url, data).context["stage"] == "confirm"
    assert client.post(url, {**data, "confirm": "1"}).status_code == 302
    pro = Plan.objects.get(code="pro")
    versions = list(PlanVersion.objects.filter(plan=pro).order_by("version"))
    assert [v.included_credits for v in versions] == [20000, 25000]
    assert acme.subscriptions.get().plan_version == versions[0]
    assert AuditLog.objects.get().action == "catalog_load"


def test_an_invalid_catalog_is_refused_and_changes_nothing(
    acme: Customer, client_as: Callable[[str], Client]
) -> None:
    before = catalog.dump()
    response = client_as("Billing admin").post(
        reverse("admin:plans_plan_catalog"),
        {"text": "plans: 3", "reason": "other", "memo": "x", "confirm": "1"},
    )
    assert response.context["form"].non_field_errors()
    assert catalog.dump() == before
    assert AuditLog.objects.count() == 0
