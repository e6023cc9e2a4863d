"""Events that fail to rate, as staff see them: listed with their error, retried from the
admin (audited), and counted in the unmatched-events report."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from billing_portal.staff.models import AuditAction, AuditLog
from metering.models import EventRating, MeterEvent, RatingQueue, RatingStatus
from metering.rating import events_rate_pending
from plans.models import Customer, Meter
from tests.billing_portal.staff.conftest import make_event

pytestmark = pytest.mark.django_db


def _parked(acme: Customer, settings: Any) -> MeterEvent:
    """An event whose credits overflow the ledger, stored before ingest bounded values."""
    settings.RATING_MAX_ATTEMPTS = 1
    now = timezone.now()
    event = MeterEvent.objects.create(
        customer=acme,
        identifier="poison",
        event_name="llm.tokens",
        meter=Meter.objects.get(event_name="llm.tokens"),
        timestamp=now,
        value=Decimal("7000000000000000"),
        dimensions={"model": "large", "token_type": "output"},
        content_hash="poison",
        received_at=now,
    )
    RatingQueue.objects.create(event=event, customer_id=acme.pk)
    events_rate_pending()
    return event


def test_parked_events_are_listed_with_their_error(
    acme: Customer, client_as: Callable[[str], Client], settings: Any
) -> None:
    _parked(acme, settings)
    url = reverse("admin:metering_ratingqueue_changelist")
    support = client_as("Support")
    page = support.get(f"{url}?state=parked")
    assert page.status_code == 200
    body = page.content.decode()
    assert "poison" in body
    assert "numeric field overflow" in body
    assert "poison" not in support.get(f"{url}?state=waiting").content.decode()


def test_support_retries_a_parked_event_and_the_retry_is_audited(
    acme: Customer, client_as: Callable[[str], Client], settings: Any
) -> None:
    poison = _parked(acme, settings)
    url = reverse("admin:metering_ratingqueue_changelist")
    response = client_as("Support").post(
        url, {"action": "retry_rating", "_selected_action": [poison.pk]}, follow=True
    )
    assert "1 event(s) will be rated again" in response.content.decode()
    row = RatingQueue.objects.get(event=poison)
    assert (row.attempts, row.parked_at, row.last_error) == (0, None, "")
    (audit,) = AuditLog.objects.filter(action=AuditAction.RATING_RETRY)
    assert (audit.operator_name, audit.target_id) == ("support", str(poison.pk))
    assert "overflow" in audit.details["last_error"]


def test_finance_may_not_retry_rating(
    acme: Customer, client_as: Callable[[str], Client], settings: Any
) -> None:
    poison = _parked(acme, settings)
    url = reverse("admin:metering_ratingqueue_changelist")
    response = client_as("Finance").post(
        url, {"action": "retry_rating", "_selected_action": [poison.pk]}, follow=True
    )
    assert "correct_usage" in response.content.decode()
    assert RatingQueue.objects.get(event=poison).parked_at is not None
    assert not AuditLog.objects.filter(action=AuditAction.RATING_RETRY).exists()


def test_the_unmatched_report_counts_unratable_and_failing_events(
    acme: Customer, client_as: Callable[[str], Client], settings: Any
) -> None:
    _parked(acme, settings)
    unknown = make_event(acme, "no-rate")
    EventRating.objects.filter(event=unknown).update(
        status=RatingStatus.UNRATABLE, error_code="no_rate_matches"
    )
    page = client_as("Billing admin").get(reverse("admin:staff_auditlog_report_unmatched"))
    body = page.content.decode()
    assert "Accepted but not charged" in body
    assert "No rate matches" in body
    assert "<td>acme</td><td><a href=" in body and ">no-rate</a>" in body  # each one, named
    assert "Failing to rate" in body
    assert "<td>acme</td><td>1</td><td>1</td>" in body  # one failing, one of them parked


def test_the_event_list_shows_and_filters_what_rating_made_of_each_event(
    acme: Customer, client_as: Callable[[str], Client]
) -> None:
    charged = make_event(acme, "charged")
    unknown = make_event(acme, "no-rate")
    EventRating.objects.filter(event=unknown).update(
        status=RatingStatus.UNRATABLE,
        error_code="no_rate_matches",
        error_message="no rate matches model=tiny",
    )
    url = reverse("admin:metering_meterevent_changelist")
    support = client_as("Support")
    body = support.get(f"{url}?rating=unratable").content.decode()
    assert "Unratable: No rate matches (no rate matches model=tiny)" in body
    assert ">charged<" not in body
    assert charged.identifier in support.get(f"{url}?rating=rated").content.decode()
