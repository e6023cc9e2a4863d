"""The admin pages: every model is viewable, nothing is added, edited or deleted there."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from django.contrib import admin
from django.contrib.auth.models import Group
from django.db import IntegrityError, InternalError, transaction
from django.db.models import Model
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from billing_portal.staff.models import AuditLog
from ledger.models import CreditGrant, GrantCategory, LedgerEntry, LedgerOperation
from ledger.services import credit_grant_create
from metering.models import MeterEvent
from plans.models import Customer
from tests.billing_portal.portal.factories import usage
from tests.plans.factories import load_demo_catalog, subscribed

pytestmark = pytest.mark.django_db

PAGES = [
    "plans_customer",
    "ledger_creditgrant",
    "ledger_ledgerentry",
    "ledger_ledgeroperation",
    "metering_meterevent",
    "metering_rejectedevent",
    "invoicing_invoice",
    "invoicing_invoiceline",
    "invoicing_creditnote",
    "plans_plan",
    "plans_ratecard",
    "plans_ratecardversion",
    "plans_subscription",
    "plans_apikey",
    "staff_auditlog",
]


@pytest.mark.parametrize("page", PAGES)
def test_support_can_view_every_list(
    acme: Customer, event: MeterEvent, client_as: Callable[[str], Client], page: str
) -> None:
    assert client_as("Support").get(reverse(f"admin:{page}_changelist")).status_code == 200


def test_the_customer_page_shows_balance_subscription_grants_and_events(
    acme: Customer, event: MeterEvent, client_as: Callable[[str], Client]
) -> None:
    response = client_as("Support").get(reverse("admin:plans_customer_change", args=[acme.pk]))
    body = response.content.decode()
    assert "available 19,970 (posted 19,970, held 0)" in body
    assert "(pro v1): Active, period" in body
    assert "Included" in body
    assert "evt-1" in body
    assert reverse("admin:plans_customer_grant", args=[acme.pk]) in body


def test_the_customer_page_shows_the_plans_features(
    acme: Customer, client_as: Callable[[str], Client]
) -> None:
    body = client_as("Support").get(reverse("admin:plans_customer_change", args=[acme.pk]))
    html = body.content.decode()
    assert "Plan features (this period)" in html
    row = (
        '<tr><td>gpt4_access</td><td>yes</td><td class="num">—</td><td class="num">—</td>'
        '<td class="num">—</td><td>—</td></tr>'
    )
    assert row in html


def test_the_customer_page_shows_a_limited_features_use(
    client_as: Callable[[str], Client],
) -> None:
    load_demo_catalog()
    starter = subscribed("starter-co", plan_code="starter")
    usage(starter, "summary-1", event_name="doc.summary", value="1")
    body = client_as("Support").get(reverse("admin:plans_customer_change", args=[starter.pk]))
    assert (
        '<tr><td>doc_summaries</td><td>yes</td><td class="num">500</td><td class="num">1</td>'
        '<td class="num">499</td><td>summaries</td></tr>'
    ) in body.content.decode()


def test_grants_filter_by_category_status_and_expiring_soon(
    acme: Customer, client_as: Callable[[str], Client]
) -> None:
    now = timezone.now()
    expiring = {
        days: credit_grant_create(
            account=acme.account,
            amount="10",
            category=GrantCategory.PROMOTIONAL,
            actor="t",
            expires_at=now + timedelta(days=days),
        ).pk
        for days in (5, 20, 45)
    }
    client = client_as("Support")
    url = reverse("admin:ledger_creditgrant_changelist")
    for query in ("category__exact=included", "status__exact=active", "expiring=7"):
        assert client.get(f"{url}?{query}").status_code == 200

    def listed(query: str) -> set[int]:
        return {g.pk for g in client.get(f"{url}?{query}").context["cl"].queryset}

    assert listed("category__exact=promotional&expiring=7") == {expiring[5]}
    assert listed("category__exact=promotional&expiring=30") == {expiring[5], expiring[20]}
    assert expiring[45] in listed("category__exact=promotional")


def test_events_are_searchable_by_identifier_and_customer(
    acme: Customer, event: MeterEvent, client_as: Callable[[str], Client]
) -> None:
    url = reverse("admin:metering_meterevent_changelist")
    client = client_as("Support")
    assert list(client.get(f"{url}?q=evt-1").context["cl"].queryset) == [event]
    assert list(client.get(f"{url}?q=acme").context["cl"].queryset) == [event]
    assert list(client.get(f"{url}?q=nobody").context["cl"].queryset) == []


@pytest.mark.parametrize("model", [LedgerEntry, LedgerOperation, CreditGrant, AuditLog])
def test_no_role_may_add_change_or_delete_ledger_grants_or_audit_rows(
    model: type[Model], client_as: Callable[[str], Client], acme: Customer
) -> None:
    model_admin = admin.site._registry[model]
    request = client_as("Billing admin").get(reverse("admin:index")).wsgi_request
    assert not model_admin.has_add_permission(request)
    assert not model_admin.has_change_permission(request)
    assert not model_admin.has_delete_permission(request)
    meta = model._meta
    response = client_as("Support").get(reverse(f"admin:{meta.app_label}_{meta.model_name}_add"))
    assert response.status_code == 403


def test_no_group_holds_a_write_permission_on_the_ledger() -> None:
    for group in Group.objects.all():
        codenames = set(group.permissions.values_list("codename", flat=True))
        assert not {c for c in codenames if c.endswith("ledgerentry") and not c.startswith("view")}


def test_the_roles_hold_their_workflow_permissions() -> None:
    def workflow(name: str) -> set[str]:
        perms = Group.objects.get(name=name).permissions.filter(content_type__app_label="staff")
        return set(perms.exclude(codename__startswith="view_").values_list("codename", flat=True))

    assert workflow("Support") == {"grant_promotional_credits", "void_grant", "correct_usage"}
    assert workflow("Finance") == {"issue_credit_note", "retry_sync", "read_reports"}
    assert len(workflow("Billing admin")) == 11
    assert "exceed_grant_daily_limit" in workflow("Billing admin")


def test_audit_rows_are_append_only_in_the_database(
    acme: Customer, client_as: Callable[[str], Client], promo_grant: CreditGrant
) -> None:
    client_as("Support").post(
        reverse("admin:ledger_creditgrant_void", args=[promo_grant.pk]),
        {"reason": "fraud", "confirm": "1"},
    )
    audit = AuditLog.objects.get()
    with pytest.raises(ValueError, match="append-only"):
        audit.save()
    for change in (
        lambda: AuditLog.objects.filter(pk=audit.pk).update(memo="edited"),
        lambda: AuditLog.objects.filter(pk=audit.pk).delete(),
    ):
        with pytest.raises((IntegrityError, InternalError)), transaction.atomic():
            change()
    assert AuditLog.objects.get().memo == ""


def test_the_audit_log_lists_the_reports(client_as: Callable[[str], Client]) -> None:
    body = client_as("Finance").get(reverse("admin:staff_auditlog_changelist")).content.decode()
    assert reverse("admin:staff_auditlog_report_reconciliation") in body


def test_the_index_links_the_reports_for_finance_only(client_as: Callable[[str], Client]) -> None:
    report = reverse("admin:staff_auditlog_report_reconciliation")
    assert report in client_as("Finance").get(reverse("admin:index")).content.decode()
    assert report not in client_as("Support").get(reverse("admin:index")).content.decode()
