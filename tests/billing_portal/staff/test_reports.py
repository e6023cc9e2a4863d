from __future__ import annotations

from collections.abc import Callable

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from billing_portal.invoicing.models import Invoice
from billing_portal.invoicing.revenue import revenue_recognize_all
from metering.ingest import events_ingest
from metering.models import MeterEvent
from plans.models import Customer

pytestmark = pytest.mark.django_db


def test_reconciliation_runs_the_checks(
    event: MeterEvent, client_as: Callable[[str], Client]
) -> None:
    response = client_as("Finance").get(reverse("admin:staff_auditlog_report_reconciliation"))
    assert response.context["findings"]
    assert response.context["failing"] == []
    assert b"invariant checks hold" in response.content


def test_unmatched_events_are_grouped_by_code_and_customer(
    acme: Customer, client_as: Callable[[str], Client]
) -> None:
    bad = {"event_name": "llm.tokens", "timestamp": timezone.now().isoformat(), "value": "1"}
    events_ingest(
        events=[
            {**bad, "identifier": "a", "customer": "ghost"},
            {**bad, "identifier": "b", "customer": "ghost"},
            {**bad, "identifier": "c", "customer": "acme", "event_name": "nope"},
        ]
    )
    response = client_as("Finance").get(reverse("admin:staff_auditlog_report_unmatched"))
    rows = {(r["code"], r["customer_external_id"]): r["count"] for r in response.context["rows"]}
    assert rows == {("unknown_customer", "ghost"): 2, ("unknown_event_name", "acme"): 1}


def test_revenue_report_by_month(paid_invoice: Invoice, client_as: Callable[[str], Client]) -> None:
    revenue_recognize_all()
    month = timezone.now().strftime("%Y-%m")
    url = reverse("admin:staff_auditlog_report_revenue")
    response = client_as("Finance").get(f"{url}?month={month}")
    assert response.status_code == 200
    assert response.context["report"].month.strftime("%Y-%m") == month


def test_lineage_of_an_invoice_line(
    paid_invoice: Invoice, client_as: Callable[[str], Client]
) -> None:
    line = paid_invoice.lines.get()
    url = reverse("admin:invoicing_invoiceline_lineage", args=[line.pk])
    response = client_as("Finance").get(url)
    assert response.status_code == 200
    assert response.context["lineage"].line == line
    assert paid_invoice.number.encode() in response.content
