from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal

import pytest
import time_machine
from django.test import Client
from django.urls import reverse

from billing_portal.invoicing.period_close import periods_close_due
from billing_portal.staff.models import AuditLog
from ledger.models import LedgerEntry
from ledger.reconcile import run_checks
from ledger.selectors import account_balance
from metering.models import EventCancellation, EventRating, MeterEvent
from plans.models import Customer, SubscriptionPeriod
from plans.services import subscriptions_renew_due
from tests.billing_portal.portal.factories import member
from tests.billing_portal.staff.conftest import make_event

pytestmark = pytest.mark.django_db

REASON = {"reason": "duplicate_usage", "memo": "sent twice"}


def _clean() -> None:
    assert [f for f in run_checks() if f.problems] == []


def test_cancel_confirms_then_reverses_the_debit_and_audits(
    acme: Customer, event: MeterEvent, client_as: Callable[[str], Client]
) -> None:
    before = account_balance(account=acme.account).posted
    url = reverse("admin:metering_meterevent_cancel", args=[event.pk])
    client = client_as("Support")
    assert client.get(url).status_code == 200
    review = client.post(url, REASON)
    assert dict(review.context["summary"])["Credits charged (given back)"] == "30 credits"
    assert not EventCancellation.objects.exists()

    assert client.post(url, {**REASON, "confirm": "1"}).status_code == 302
    assert EventCancellation.objects.get(event=event).reason == "duplicate_usage"
    reversals = LedgerEntry.objects.filter(kind="reversal", cause_id=str(event.pk))
    assert sum(e.credits for e in reversals) == Decimal(30)
    assert account_balance(account=acme.account).posted == before + 30
    audit = AuditLog.objects.get()
    assert (audit.action, audit.target_id, audit.operator_name) == (
        "event_cancel",
        str(event.pk),
        "support",
    )
    _clean()


def test_correct_cancels_and_ingests_a_replacement_with_a_new_identifier(
    acme: Customer, event: MeterEvent, client_as: Callable[[str], Client]
) -> None:
    url = reverse("admin:metering_meterevent_correct", args=[event.pk])
    client = client_as("Billing admin")
    form = client.get(url).context["form"]
    assert form.initial["identifier"] == "evt-1-corrected"
    data = {
        **REASON,
        "identifier": "evt-1-v2",
        "value": "1000",
        "dimensions": '{"model": "large", "token_type": "output"}',
    }
    review = client.post(url, data)
    assert dict(review.context["summary"])["Replacement value"] == "1,000"
    assert client.post(url, {**data, "confirm": "1"}).status_code == 302

    assert EventCancellation.objects.filter(event=event).exists()
    replacement = MeterEvent.objects.get(customer=acme, identifier="evt-1-v2")
    assert EventRating.objects.get(event=replacement).credits == Decimal(15)
    assert account_balance(account=acme.account).posted == Decimal(20000 - 15)
    audit = AuditLog.objects.get()
    assert (audit.action, audit.details["replacement"]) == ("event_correct", "evt-1-v2")
    _clean()


def test_correct_reports_bad_dimensions(
    event: MeterEvent, client_as: Callable[[str], Client]
) -> None:
    url = reverse("admin:metering_meterevent_correct", args=[event.pk])
    data = {**REASON, "identifier": "x", "value": "1", "dimensions": "not json", "confirm": "1"}
    response = client_as("Billing admin").post(url, data)
    assert "dimensions" in response.context["form"].errors
    assert not EventCancellation.objects.exists()


def test_a_refused_replacement_undoes_the_cancellation(
    acme: Customer, event: MeterEvent, client_as: Callable[[str], Client]
) -> None:
    make_event(acme, "taken")
    url = reverse("admin:metering_meterevent_correct", args=[event.pk])
    data = {**REASON, "identifier": "taken", "value": "5", "dimensions": "{}", "confirm": "1"}
    response = client_as("Billing admin").post(url, data)
    assert "replacement event was refused" in str(response.context["form"].non_field_errors())
    assert not EventCancellation.objects.exists()
    assert not LedgerEntry.objects.filter(kind="reversal").exists()
    assert AuditLog.objects.count() == 0


def test_an_event_in_an_invoiced_period_is_refused_and_nothing_changes(
    acme: Customer, event: MeterEvent, client_as: Callable[[str], Client]
) -> None:
    period = SubscriptionPeriod.objects.get(subscription__customer=acme)
    with time_machine.travel(period.end, tick=False) as clock:
        subscriptions_renew_due()
        clock.shift(timedelta(hours=2))
        assert periods_close_due() == 1
        client = client_as("Support")
        url = reverse("admin:metering_meterevent_cancel", args=[event.pk])
        response = client.post(url, {**REASON, "confirm": "1"})
    assert "credit note" in str(response.context["form"].non_field_errors())
    assert not EventCancellation.objects.exists()
    assert AuditLog.objects.count() == 0


def test_a_cancelled_events_returned_credits_read_the_customer_sentence_not_the_memo(
    acme: Customer, event: MeterEvent, client_as: Callable[[str], Client]
) -> None:
    url = reverse("admin:metering_meterevent_cancel", args=[event.pk])
    memo = "double send from their retry loop, see ticket 88"
    posted = client_as("Support").post(
        url,
        {**REASON, "memo": memo, "description": "Usage sent twice, given back", "confirm": "1"},
    )
    assert posted.status_code == 302
    portal = Client()
    portal.force_login(member(acme))
    body = portal.get(reverse("portal:activity")).content.decode()
    assert "Usage sent twice, given back (30 credits)" in body
    assert "ticket 88" not in body
    _clean()
