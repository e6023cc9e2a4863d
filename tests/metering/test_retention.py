"""Retention of raw events (metering.retention): whole months, only once invoiced; what
they charged stays, and the reconcile and lineage say where the stored events stop."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
import time_machine
from django.contrib.auth import get_user_model
from django.core.exceptions import ImproperlyConfigured
from django.test import Client, override_settings
from django.urls import reverse

from billing_portal.checks import raw_event_retention
from billing_portal.invoicing.models import Invoice, LineKind
from billing_portal.invoicing.period_close import periods_close_due
from billing_portal.invoicing.selectors import invoice_line_lineage
from ledger.models import LedgerEntry
from ledger.reconcile import run_checks
from metering.ingest import events_ingest
from metering.models import (
    EventRating,
    MeterEvent,
    PeriodUsage,
    RatingQueue,
    RawEventsRemoval,
    UsageRollup,
)
from metering.partitions import partitions_ensure
from metering.rating import events_rate_pending
from metering.retention import raw_events_remove, retention_cutoff
from plans.models import PeriodStatus, SubscriptionPeriod
from plans.services import subscription_start, subscriptions_renew_due
from tests.plans.factories import customer, load_demo_catalog, plan

pytestmark = pytest.mark.django_db

START = datetime(2026, 10, 1, tzinfo=UTC)
OCT, NOV, DEC = START, datetime(2026, 11, 1, tzinfo=UTC), datetime(2026, 12, 1, tzinfo=UTC)
JAN, FEB = datetime(2027, 1, 1, tzinfo=UTC), datetime(2027, 2, 1, tzinfo=UTC)


def _event(identifier: str, at: datetime) -> dict[str, Any]:
    return {
        "identifier": identifier,
        "event_name": "llm.tokens",
        "customer": "acme",
        "timestamp": at.isoformat(),
        "value": "1000",  # 15 credits
        "dimensions": {"model": "large", "token_type": "output"},
    }


def _ingest(clock: time_machine.Traveller, at: datetime, *identifiers: str) -> None:
    clock.move_to(at)
    partitions_ensure()  # beat's daily job: the months ingest accepts have partitions
    result = events_ingest(events=[_event(i, at) for i in identifiers])
    assert result.count("accepted") == len(identifiers)


def _invoice_up_to(clock: time_machine.Traveller, month: datetime) -> None:
    """Renew into ``month`` and close the period before it (its grace window passed)."""
    clock.move_to(month + timedelta(hours=1))
    subscriptions_renew_due()
    clock.shift(timedelta(hours=3))
    periods_close_due()


def _period(start: datetime) -> SubscriptionPeriod:
    return SubscriptionPeriod.objects.get(start=start)


def _clean() -> None:
    assert [(f.check, f.problems) for f in run_checks() if f.problems] == []


@pytest.fixture
def acme(clock: time_machine.Traveller) -> None:
    load_demo_catalog()
    subscription_start(customer=customer(), plan=plan("pro"), actor="t")


@pytest.mark.usefixtures("acme")
def test_an_invoiced_month_is_removed_and_what_it_charged_stays(
    clock: time_machine.Traveller,
) -> None:
    _ingest(clock, OCT + timedelta(days=9), "oct-1", "oct-2", "oct-3")
    events_rate_pending()
    removed_ids = [str(pk) for pk in MeterEvent.objects.values_list("pk", flat=True)]
    _invoice_up_to(clock, NOV)
    _ingest(clock, NOV + timedelta(days=9), "nov-1", "nov-2")
    events_rate_pending()
    _invoice_up_to(clock, DEC)
    _invoice_up_to(clock, JAN)
    entries_before = LedgerEntry.objects.count()
    rollups_before = list(
        UsageRollup.objects.order_by("pk").values_list("pk", "value", "events", "credits")
    )

    removal = raw_events_remove(months=2)  # Jan: everything before Nov 1 may go

    assert (removal.wanted, removal.before, removal.held_back) == (NOV, NOV, None)
    assert (removal.events, removal.ratings) == (3, 3)
    assert sorted(MeterEvent.objects.values_list("identifier", flat=True)) == ["nov-1", "nov-2"]
    assert EventRating.objects.count() == 2
    # What they charged stays: every entry (naming the removed events), every rollup.
    assert LedgerEntry.objects.count() == entries_before
    assert LedgerEntry.objects.filter(cause_type="event", cause_id__in=removed_ids).count() == 3
    assert (
        list(UsageRollup.objects.order_by("pk").values_list("pk", "value", "events", "credits"))
        == rollups_before
    )
    # The period that lost events is marked, the one that did not is not; usage unchanged.
    october, november = (
        PeriodUsage.objects.get(period=_period(OCT)),
        PeriodUsage.objects.get(period=_period(NOV)),
    )
    assert (october.raw_removed_at, october.credits) == (JAN + timedelta(hours=4), Decimal(45))
    assert november.raw_removed_at is None
    assert list(RawEventsRemoval.objects.values_list("before", "events", "ratings")) == [
        (NOV, 3, 3)
    ]
    _clean()

    # October's invoice line now says where its lineage stops.
    line = Invoice.objects.get(period=_period(OCT)).lines.get(kind=LineKind.INCLUDED_USAGE)
    lineage = invoice_line_lineage(line=line)
    assert (lineage.events, lineage.events_removed) == ([], 3)
    assert lineage.removal is not None and lineage.removal.before == NOV
    assert len(lineage.entries) == 3
    staff = Client()
    staff.force_login(get_user_model().objects.create_superuser("finance", "f@x.test", "pw"))
    page = staff.get(reverse("admin:invoicing_invoiceline_lineage", args=[line.pk]))
    assert page.status_code == 200
    text = " ".join(page.content.decode().split())
    assert "3 events these entries charged were removed by retention" in text
    assert "stamped before 2026-11-01" in text

    # Nothing more to do until another month is invoiced.
    again = raw_events_remove(months=2)
    assert (again.events, RawEventsRemoval.objects.count()) == (0, 1)


@pytest.mark.usefixtures("acme")
def test_a_removed_event_sent_again_is_refused_not_charged_twice(
    clock: time_machine.Traveller,
) -> None:
    _ingest(clock, OCT + timedelta(days=9), "oct-1")
    events_rate_pending()
    _invoice_up_to(clock, NOV)
    _invoice_up_to(clock, DEC)
    assert raw_events_remove(months=2).events == 0  # Dec: the cutoff is Oct 1
    _invoice_up_to(clock, JAN)
    assert raw_events_remove(months=2).events == 1
    entries = LedgerEntry.objects.count()

    again = events_ingest(events=[_event("oct-1", OCT + timedelta(days=9))])

    assert [r.error.code for r in again.results if r.error] == ["timestamp_too_far_in_past"]
    assert not MeterEvent.objects.exists()
    assert LedgerEntry.objects.count() == entries


@pytest.mark.usefixtures("acme")
def test_a_month_waits_for_its_events_to_be_rated_and_charged_periods_invoiced(
    clock: time_machine.Traveller,
) -> None:
    _ingest(clock, OCT + timedelta(days=9), "oct-1")
    events_rate_pending()
    _invoice_up_to(clock, NOV)
    # Stamped in October, which is invoiced, and left unrated for now.
    late_at = NOV - timedelta(hours=1)
    clock.move_to(NOV + timedelta(days=2))
    assert events_ingest(events=[_event("oct-late", late_at)]).count("accepted") == 1
    _ingest(clock, NOV + timedelta(days=9), "nov-1")
    late = MeterEvent.objects.get(identifier="oct-late")
    RatingQueue.objects.filter(event=late).update(next_attempt_at=FEB)  # not rated until Feb
    events_rate_pending()
    _invoice_up_to(clock, DEC)
    _invoice_up_to(clock, JAN)

    waiting = raw_events_remove(months=2)

    assert (waiting.wanted, waiting.before, waiting.events) == (NOV, OCT, 0)
    assert waiting.held_back is not None
    assert f"event {late.pk} (oct-late" in waiting.held_back
    assert "still waiting for rating" in waiting.held_back

    # Rated now: late, so charged in January's open period, which holds October back.
    RatingQueue.objects.filter(event=late).update(next_attempt_at=None)
    assert events_rate_pending() == 1
    january = _period(JAN)
    assert EventRating.objects.get(event=late).period_id == january.pk
    charged_later = raw_events_remove(months=2)
    assert (charged_later.before, charged_later.events) == (OCT, 0)
    assert f"period {january.pk}, which it was charged to, is open" in str(charged_later.held_back)

    _invoice_up_to(clock, FEB)
    assert _period(JAN).status == PeriodStatus.INVOICING
    done = raw_events_remove(months=2)  # Feb: before Dec 1, the late event included

    assert (done.before, done.events, done.held_back) == (DEC, 3, None)
    assert not MeterEvent.objects.exists()
    marked = set(
        PeriodUsage.objects.filter(raw_removed_at__isnull=False).values_list(
            "period__start", flat=True
        )
    )
    assert marked == {OCT, NOV, JAN}  # January lost the late event's rating
    _clean()


def test_the_cutoff_is_the_first_of_a_month_so_many_months_back() -> None:
    assert retention_cutoff(datetime(2027, 1, 15, 13, tzinfo=UTC), 2) == NOV
    assert retention_cutoff(datetime(2026, 12, 7, tzinfo=UTC), 0) == DEC
    assert retention_cutoff(datetime(2026, 2, 28, tzinfo=UTC), 3) == datetime(
        2025, 11, 1, tzinfo=UTC
    )


def test_retention_shorter_than_the_accepted_event_age_is_refused() -> None:
    with override_settings(METERING_RAW_RETENTION_MONTHS=1, METERING_MAX_EVENT_AGE_DAYS=35):
        [error] = raw_event_retention()
        assert error.id == "billing.E002"
        assert "charged twice" in error.msg and "at least 2" in error.msg
        with pytest.raises(ImproperlyConfigured, match="at least 2"):
            raw_events_remove()
    with override_settings(METERING_RAW_RETENTION_MONTHS=2, METERING_MAX_EVENT_AGE_DAYS=35):
        assert raw_event_retention() == []
    with override_settings(METERING_RAW_RETENTION_MONTHS=None):
        assert raw_event_retention() == []
        assert raw_events_remove().wanted is None  # keep everything: nothing is read
