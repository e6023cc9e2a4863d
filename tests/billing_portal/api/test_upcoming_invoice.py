"""GET /api/v1/customers/{external_id}/upcoming_invoice: the invoice the open period
would produce if it closed now, by period close's own calculation, written nowhere."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine

from billing_portal.invoicing.models import (
    Invoice,
    InvoiceLine,
    InvoiceLineEntry,
    InvoiceNumberSequence,
)
from billing_portal.invoicing.period_close import periods_close_due
from ledger.models import LedgerEntry
from metering.ingest import events_ingest
from metering.rating import events_rate_pending
from plans.models import SubscriptionPeriod
from plans.services import subscription_start, subscriptions_renew_due
from tests.billing_portal.api.http_support import Api, error_of
from tests.plans.factories import customer, plan

pytestmark = pytest.mark.django_db(transaction=True)

START = datetime(2026, 10, 1, tzinfo=UTC)


def _use(clock: time_machine.Traveller, identifier: str, tokens: int, at: datetime) -> None:
    # large/output: 15 credits per 1,000 tokens
    clock.move_to(at)
    event = {
        "identifier": identifier,
        "event_name": "llm.tokens",
        "customer": "acme",
        "timestamp": at.isoformat(),
        "value": str(tokens),
        "dimensions": {"model": "large", "token_type": "output"},
    }
    assert events_ingest(events=[event]).count("accepted") == 1
    events_rate_pending()


def _subscribe(plan_code: str) -> None:
    subscription_start(customer=customer("acme"), plan=plan(plan_code), actor="t")


def _lines(body: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    return {
        line["kind"]: (line["quantity"], line["unit_amount"], line["amount"])
        for line in body["lines"]
    }


def test_a_postpaid_period_shows_base_fee_included_usage_and_overage(
    clock: time_machine.Traveller, api: Api
) -> None:
    _subscribe("pro")
    _use(clock, "big", 1_600_000, START + timedelta(days=3))  # 24,000 credits: 4,000 beyond

    body = api.ok("/customers/acme/upcoming_invoice")
    assert (body["id"], body["number"], body["status"], body["kind"]) == (
        None,
        None,
        "upcoming",
        "period",
    )
    assert (body["customer"], body["currency"], body["total"], body["amount_due"]) == (
        "acme",
        "USD",
        "65.00",
        "65.00",
    )
    assert _lines(body) == {
        "base_fee": ("1.000000", "49", "49.00"),
        "included_usage": ("20000.000000", "0", "0.00"),
        "overage": ("4000.000000", "0.004", "16.00"),
    }
    (period,) = SubscriptionPeriod.objects.all()
    assert datetime.fromisoformat(body["period_end"]) == period.end
    assert all(line["id"] is None and line["currency"] == "USD" for line in body["lines"])
    overage = next(line for line in body["lines"] if line["kind"] == "overage")
    assert len(overage["ledger_entry_ids"]) == 1
    assert (body["credit_notes"], body["issued_at"], body["paid_at"]) == ([], None, None)


def test_a_hard_stop_plan_shows_only_what_its_credits_covered(
    clock: time_machine.Traveller, api: Api
) -> None:
    _subscribe("starter")
    _use(clock, "small", 100_000, START + timedelta(days=2))  # 1,500 of 2,000 credits

    body = api.ok("/customers/acme/upcoming_invoice", key=api.read)
    assert _lines(body) == {
        "base_fee": ("1.000000", "0", "0.00"),
        "included_usage": ("1500.000000", "0", "0.00"),
    }
    assert body["total"] == "0.00"


def test_an_upgrade_in_the_period_shows_its_proration(
    clock: time_machine.Traveller, api: Api
) -> None:
    _subscribe("pro")
    clock.move_to(START + timedelta(days=10))
    sub_id = api.ok("/subscriptions", customer="acme")["data"][0]["id"]
    changed = api.post(f"/subscriptions/{sub_id}/change_plan", {"plan": "team", "when": "now"})
    assert changed.status_code == 200, changed.text
    proration = changed.json()["proration"]["amount"]

    body = api.ok("/customers/acme/upcoming_invoice")
    (line,) = [line for line in body["lines"] if line["kind"] == "proration"]
    assert line["amount"] == f"{Decimal(proration):.2f}"
    assert "Pro to Team" in line["description"]
    assert body["total"] == f"{Decimal('49.00') + Decimal(line['amount']):.2f}"


def test_the_upcoming_invoice_is_the_invoice_the_close_then_makes(
    clock: time_machine.Traveller, api: Api
) -> None:
    _subscribe("starter")
    _use(clock, "a", 100_000, START + timedelta(days=3))
    clock.move_to(START + timedelta(days=12))
    sub_id = api.ok("/subscriptions", customer="acme")["data"][0]["id"]
    assert (
        api.post(f"/subscriptions/{sub_id}/change_plan", {"plan": "pro", "when": "now"})
    ).status_code == 200
    _use(clock, "b", 2_000_000, START + timedelta(days=20))  # 30,000 credits: some beyond Pro's
    first = SubscriptionPeriod.objects.get()
    clock.move_to(first.end - timedelta(seconds=1))
    upcoming = api.ok("/customers/acme/upcoming_invoice")

    clock.move_to(first.end)
    subscriptions_renew_due()
    clock.shift(timedelta(hours=1))
    assert periods_close_due() == 1
    invoice = Invoice.objects.get(period=first)
    closed = api.ok(f"/invoices/{invoice.pk}")

    stored_only = {"id", "number", "status", "issued_at", "sync_state"}
    assert {k: v for k, v in upcoming.items() if k not in stored_only | {"lines"}} == {
        k: v for k, v in closed.items() if k not in stored_only | {"lines"}
    }
    assert [{**line, "id": None} for line in closed["lines"]] == upcoming["lines"]
    assert [line["kind"] for line in upcoming["lines"]] == [
        "base_fee",
        "proration",
        "included_usage",
        "overage",
    ]
    assert Decimal(upcoming["lines"][3]["amount"]) > 0
    assert invoice.number == "INV-000001"  # the upcoming invoice consumed no number


def test_reading_it_writes_nothing(clock: time_machine.Traveller, api: Api) -> None:
    _subscribe("pro")
    _use(clock, "big", 1_600_000, START + timedelta(days=3))
    tables = (Invoice, InvoiceLine, InvoiceLineEntry, InvoiceNumberSequence, LedgerEntry)
    before = [model.objects.count() for model in tables]
    for _ in range(2):
        assert api.ok("/customers/acme/upcoming_invoice")["total"] == "65.00"
    assert [model.objects.count() for model in tables] == before
    assert not InvoiceNumberSequence.objects.exists()


def test_it_is_404_without_an_open_period(clock: time_machine.Traveller, api: Api) -> None:
    customer("acme")
    error = error_of(api.get("/customers/acme/upcoming_invoice"), 404, "resource_missing")
    assert "no open billing period" in error["message"]
    assert error["param"] == "external_id"
    error_of(api.get("/customers/nobody/upcoming_invoice"), 404, "resource_missing")
    error_of(api.get("/customers/acme/upcoming_invoice", key=api.ingest), 403, "insufficient_scope")
