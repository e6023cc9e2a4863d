"""One event that cannot be rated never stops the others: it is retried a bounded number
of times, then parked for staff; reconcile names it; it can still be cancelled."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine

from ledger.models import LedgerEntry
from ledger.reconcile import run_checks
from ledger.selectors import account_balance
from metering.ingest import events_ingest
from metering.models import EventRating, MeterEvent, RatingQueue, RatingStatus
from metering.rating import events_rate_pending, rating_retry
from metering.services import event_cancel
from plans.models import Customer, Meter
from plans.services import subscription_start
from tests.plans.factories import customer, load_demo_catalog, plan

pytestmark = pytest.mark.django_db

START = datetime(2026, 10, 1, tzinfo=UTC)
LARGE_OUT = {"model": "large", "token_type": "output"}
# 7e15 large output tokens are 1.05e14 credits: past the ledger's numeric(20,6).
POISON_VALUE = Decimal("7000000000000000")


@pytest.fixture
def acme(clock: time_machine.Traveller) -> Customer:
    load_demo_catalog()
    acme = customer()
    subscription_start(customer=acme, plan=plan("pro"), actor="t")
    return acme


def _event(identifier: str, value: str = "1000") -> dict[str, Any]:
    return {
        "identifier": identifier,
        "event_name": "llm.tokens",
        "customer": "acme",
        "timestamp": datetime.now(UTC).isoformat(),
        "value": value,
        "dimensions": LARGE_OUT,
    }


def _stored_poison(acme: Customer) -> MeterEvent:
    """An event stored before ingest bounded values (ingest refuses such a value now)."""
    now = datetime.now(UTC)
    event = MeterEvent.objects.create(
        customer=acme,
        identifier="poison",
        event_name="llm.tokens",
        meter=Meter.objects.get(event_name="llm.tokens"),
        timestamp=now,
        value=POISON_VALUE,
        dimensions=LARGE_OUT,
        content_hash="poison",
        received_at=now,
    )
    RatingQueue.objects.create(event=event, customer_id=acme.pk)
    return event


def _charged(identifier: str) -> Decimal:
    event = MeterEvent.objects.get(identifier=identifier)
    entries = LedgerEntry.objects.filter(cause_type="event", cause_id=str(event.pk))
    return -sum((e.credits for e in entries), Decimal(0))


def _failures() -> list[str]:
    return [p for f in run_checks() if f.problems for p in f.problems]


def test_a_poison_event_is_retried_then_parked_while_the_rest_are_charged(
    acme: Customer, clock: time_machine.Traveller, settings: Any
) -> None:
    settings.RATING_MAX_ATTEMPTS, settings.RATING_RETRY_SECONDS = 3, 10
    events_ingest(events=[_event("before")])
    poison = _stored_poison(acme)
    events_ingest(events=[_event("after")])

    assert events_rate_pending() == 2
    assert (_charged("before"), _charged("after")) == (Decimal(15), Decimal(15))
    queued = RatingQueue.objects.get(event=poison)
    assert queued.attempts == 1
    assert "overflow" in queued.last_error
    assert queued.parked_at is None

    # Inside its back-off the event is left alone; later events are still charged.
    events_ingest(events=[_event("later")])
    assert events_rate_pending() == 1
    assert RatingQueue.objects.get(event=poison).attempts == 1

    for attempt, wait in ((2, 10), (3, 20)):
        clock.shift(timedelta(seconds=wait))
        assert events_rate_pending() == 0
        assert RatingQueue.objects.get(event=poison).attempts == attempt
    parked = RatingQueue.objects.get(event=poison)
    assert parked.parked_at == datetime.now(UTC)

    clock.shift(timedelta(hours=1))
    events_rate_pending()
    assert RatingQueue.objects.get(event=poison).attempts == 3  # parked: not tried again
    assert account_balance(account=acme.account).posted == Decimal(20000) - 45


def test_reconcile_names_the_customer_and_oldest_event_waiting_too_long(
    acme: Customer, clock: time_machine.Traveller, settings: Any
) -> None:
    settings.RECONCILE_MAX_RATING_WAIT_SECONDS = 300
    poison = _stored_poison(acme)
    events_rate_pending()
    assert _failures() == []  # failing, but not waiting long yet

    RatingQueue.objects.filter(event=poison).update(
        enqueued_at=datetime.now(UTC) - timedelta(minutes=6)
    )
    (problem,) = _failures()
    assert problem.startswith("customer acme: 1 event(s) waiting to be rated for over 300 s")
    assert f"event {poison.pk} (poison)" in problem
    assert "still failing after 1 attempt(s)" in problem


def test_a_parked_event_can_be_cancelled_and_reconcile_is_clean_again(
    acme: Customer, clock: time_machine.Traveller, settings: Any
) -> None:
    settings.RATING_MAX_ATTEMPTS = 1
    poison = _stored_poison(acme)
    events_rate_pending()
    assert RatingQueue.objects.get(event=poison).parked_at is not None

    cancellation = event_cancel(customer=acme, identifier="poison", reason="bad", actor="staff:x")
    assert cancellation.event_id == poison.pk
    rating = EventRating.objects.get(event=poison)
    assert (rating.status, rating.credits) == (RatingStatus.CANCELED, Decimal(0))
    assert "overflow" in rating.error_message
    assert not RatingQueue.objects.filter(event=poison).exists()
    assert _failures() == []
    # Cancelling again answers the same cancellation.
    again = event_cancel(customer=acme, identifier="poison", reason="bad", actor="staff:x")
    assert again.pk == cancellation.pk


def test_staff_retry_puts_a_parked_event_back_in_line(
    acme: Customer, clock: time_machine.Traveller, settings: Any
) -> None:
    settings.RATING_MAX_ATTEMPTS = 1
    poison = _stored_poison(acme)
    events_rate_pending()
    assert rating_retry(event_ids=[poison.pk]) == 1
    retried = RatingQueue.objects.get(event=poison)
    assert (retried.attempts, retried.parked_at, retried.next_attempt_at) == (0, None, None)
    events_rate_pending()
    assert RatingQueue.objects.get(event=poison).attempts == 1  # tried again (and failed)
