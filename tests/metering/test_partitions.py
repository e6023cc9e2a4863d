"""Events and ratings partitioned by month (metering.partitions, migration 0012): each
lands in its month's partition, an identifier stays unique across months (also between
concurrent batches), a month without a partition waits in the DEFAULT one and moves when
its partition is made, retention drops whole months, and the migration keeps every row
stored before it."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
import time_machine
from django.db import connection, transaction
from django.db.migrations.executor import MigrationExecutor
from django.db.utils import IntegrityError, OperationalError
from django.test import Client
from django.utils import timezone

from billing_portal.celery import app
from ledger.reconcile import run_checks
from metering.ingest import IngestOutcome, events_ingest
from metering.models import EventKey, EventRating, MeterEvent, RawEventsRemoval
from metering.partitions import (
    AHEAD,
    EVENTS,
    RATINGS,
    SEQUENCE_BITS,
    event_id,
    month_index,
    partition_name,
    partitions_ensure,
    partitions_status,
)
from metering.rating import events_rate_pending
from metering.retention import raw_events_remove
from metering.selectors import event_for
from tests.dburl import database_url_for_subprocess
from tests.plans.factories import customer, load_demo_catalog, subscription_recent

pytestmark = pytest.mark.django_db

LARGE_OUT = {"model": "large", "token_type": "output"}
LATER = datetime(2031, 5, 10, 12, tzinfo=UTC)  # far from the months the migration made


def _event(identifier: str, at: datetime) -> dict[str, Any]:
    return {
        "identifier": identifier,
        "event_name": "llm.tokens",
        "customer": "acme",
        "timestamp": at.isoformat(),
        "value": "1000",
        "dimensions": LARGE_OUT,
    }


def _where(table: str) -> dict[int, str]:
    """Each row's partition, by its id (events) or event id (ratings)."""
    column = "id" if table == EVENTS else "event_id"
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {column}, tableoid::regclass::text FROM {table}")
        return dict(cursor.fetchall())


def _exists(table: str) -> bool:
    with connection.cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [table])
        return bool(cursor.fetchone()[0])


def _statuses(outcome: IngestOutcome) -> list[tuple[str, str | None]]:
    return [(r.status, r.error.code if r.error else None) for r in outcome.results]


def test_an_event_and_its_rating_sit_in_the_partitions_of_the_month_it_is_stamped_in() -> None:
    load_demo_catalog()
    subscription_recent()
    now = timezone.now()
    earlier = now - timedelta(days=32)  # always another month, still accepted
    outcome = events_ingest(events=[_event("now", now), _event("earlier", earlier)])
    assert outcome.count("accepted") == 2
    events_rate_pending()

    events, ratings = _where(EVENTS), _where(RATINGS)
    for identifier, stamped in (("now", now), ("earlier", earlier)):
        event = MeterEvent.objects.get(identifier=identifier)
        month = month_index(stamped)
        assert event.pk >> SEQUENCE_BITS == month
        assert events[event.pk] == partition_name(EVENTS, month)
        assert ratings[event.pk] == partition_name(RATINGS, month)
    assert month_index(now) != month_index(earlier)
    assert [f.problems for f in run_checks() if f.problems] == []


def test_an_identifier_used_again_in_another_month_is_a_conflict_not_a_second_event() -> None:
    load_demo_catalog()
    customer("acme")
    now = timezone.now()
    assert _statuses(events_ingest(events=[_event("once", now)])) == [("accepted", None)]

    again = events_ingest(events=[_event("once", now - timedelta(days=32))])

    assert _statuses(again) == [("rejected", "identifier_conflict")]
    assert _statuses(events_ingest(events=[_event("once", now)])) == [("duplicate", None)]
    assert MeterEvent.objects.count() == EventKey.objects.count() == 1


@pytest.mark.django_db(transaction=True)
def test_two_batches_racing_with_one_identifier_in_two_months_store_it_once() -> None:
    load_demo_catalog()
    customer("acme")
    now = timezone.now()
    stored = threading.Event()
    release = threading.Event()
    outcomes: dict[str, IngestOutcome] = {}

    def first() -> None:
        try:
            with transaction.atomic():
                outcomes["first"] = events_ingest(events=[_event("race", now)])
                stored.set()
                release.wait(10)  # uncommitted while the second batch tries
        finally:
            connection.close()

    def second() -> None:
        try:
            stored.wait(10)
            outcomes["second"] = events_ingest(events=[_event("race", now - timedelta(days=32))])
        finally:
            connection.close()

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    stored.wait(10)
    threads[1].join(0.5)
    assert threads[1].is_alive()  # waiting on the first batch's key, not storing its own
    release.set()
    for thread in threads:
        thread.join(10)

    assert _statuses(outcomes["first"]) == [("accepted", None)]
    assert _statuses(outcomes["second"]) == [("rejected", "identifier_conflict")]
    assert MeterEvent.objects.count() == 1


def test_the_database_refuses_a_second_key_for_an_identifier() -> None:
    load_demo_catalog()
    acme = customer("acme")
    events_ingest(events=[_event("k", timezone.now())])
    with pytest.raises(IntegrityError), transaction.atomic():
        EventKey.objects.create(customer_id=acme.pk, identifier="k", event_id=1)


def test_a_month_without_a_partition_waits_in_default_and_moves_when_it_is_made() -> None:
    load_demo_catalog()
    acme = customer("acme")
    with time_machine.travel(LATER, tick=False):
        assert events_ingest(events=[_event("early", LATER)]).count("accepted") == 1
        event = MeterEvent.objects.get()
        assert _where(EVENTS) == {event.pk: f"{EVENTS}_default"}

        made = partitions_ensure()

        month = partition_name(EVENTS, month_index(LATER))
        assert month in made and partition_name(RATINGS, month_index(LATER)) in made
        assert _where(EVENTS) == {event.pk: month}  # moved, same id
        assert event_for(customer=acme, identifier="early") == event
        assert partitions_ensure() == []  # made once
        events_rate_pending()
        assert _where(RATINGS) == {event.pk: partition_name(RATINGS, month_index(LATER))}


def test_healthz_shows_when_beat_stopped_making_partitions_and_events_wait_in_default(
    client: Client,
) -> None:
    load_demo_catalog()
    customer("acme")
    made_through = partitions_status().made_through
    assert made_through == month_index(timezone.now()) + AHEAD
    with time_machine.travel(LATER, tick=False):
        # Years later with no beat: no month ahead, and accepted events wait in DEFAULT.
        assert events_ingest(events=[_event("waiting", LATER)]).count("accepted") == 1
        response = client.get("/healthz")
        assert response.status_code == 200  # stored and charged: not a reason to fail
        assert response.json()["partitions"] == {
            "made_through": f"{1970 + made_through // 12:04d}-{made_through % 12 + 1:02d}",
            "months_ahead": 0,
            "rows_in_default": 1,
        }

        partitions_ensure()

        assert client.get("/healthz").json()["partitions"] == {
            "made_through": "2031-07",
            "months_ahead": AHEAD,
            "rows_in_default": 0,
        }


def test_making_a_partition_gives_up_soon_when_the_table_is_busy() -> None:
    with psycopg.connect(database_url_for_subprocess()) as other:
        other.execute(f"LOCK TABLE {EVENTS} IN ROW EXCLUSIVE MODE")  # as an open ingest
        started = time.monotonic()
        with pytest.raises(OperationalError, match="lock timeout"):
            partitions_ensure(LATER)
        waited = time.monotonic() - started
    assert waited < 5  # ingest queues behind the wait: not for long
    assert not _exists(partition_name(EVENTS, month_index(LATER)))
    assert partitions_ensure(LATER)  # the next run makes them


def test_retention_drops_a_months_partitions_and_deletes_what_waits_in_default() -> None:
    load_demo_catalog()
    customer("acme")  # no subscription: rated unratable, charged to no period
    june = datetime(2031, 6, 20, tzinfo=UTC)
    with time_machine.travel(LATER, tick=False) as clock:
        events_ingest(events=[_event("may-1", LATER), _event("may-2", LATER)])  # in DEFAULT
        clock.move_to(datetime(2031, 7, 20, tzinfo=UTC))
        partitions_ensure()  # June's partitions on, not May's (too old to accept by now)
        events_ingest(events=[_event("june-1", june)])
        events_rate_pending()
        june_events = partition_name(EVENTS, month_index(june))
        assert sorted(_where(EVENTS).values()) == [f"{EVENTS}_default"] * 2 + [june_events]
        clock.move_to(datetime(2031, 9, 2, tzinfo=UTC))

        removal = raw_events_remove(months=2)  # everything before July 1

    assert (removal.events, removal.ratings, removal.held_back) == (3, 3, None)
    assert not _exists(june_events)
    assert not _exists(partition_name(RATINGS, month_index(june)))
    assert not MeterEvent.objects.exists() and not EventRating.objects.exists()
    assert not EventKey.objects.exists()
    assert sorted(RawEventsRemoval.objects.values_list("before", "events")) == [
        (datetime(2031, 7, 1, tzinfo=UTC), 1),  # June, dropped
        (datetime(2031, 7, 1, tzinfo=UTC), 2),  # May, deleted from DEFAULT
    ]
    assert [f.problems for f in run_checks() if f.problems] == []


def test_beat_makes_the_partitions_ahead_every_day() -> None:
    entry = app.conf.beat_schedule["make-event-partitions"]
    assert entry["task"] == "metering.tasks.partitions_ensure"
    assert entry["schedule"] <= 86400
    for table in (EVENTS, RATINGS):
        for ahead in range(3):
            month = month_index(timezone.now()) + ahead
            assert _exists(partition_name(table, month)), (table, month)


def test_an_id_carries_its_month_as_the_database_computes_it() -> None:
    stamped = datetime(2027, 3, 31, 23, 59, tzinfo=UTC)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT metering_event_id(%s), currval('metering_meterevent_id_seq')", [stamped]
        )
        computed, number = cursor.fetchone()
    assert computed == event_id(stamped, number)
    assert computed >> SEQUENCE_BITS == (2027 - 1970) * 12 + 2


# --- the migration --------------------------------------------------------------------

BEFORE = [("metering", "0011_raw_events_retention")]
NEW_CHECKS = ("cancellations_name_their_event", "event_keys_match_events")


@pytest.fixture
def executor() -> Iterator[MigrationExecutor]:
    executor = MigrationExecutor(connection)
    try:
        yield executor
    finally:
        executor.loader.build_graph()
        executor.migrate(executor.loader.graph.leaf_nodes())


@pytest.mark.django_db(transaction=True)
def test_the_migration_keeps_every_stored_event_rating_and_cancellation(
    executor: MigrationExecutor,
) -> None:
    load_demo_catalog()
    subscription_recent()
    now = timezone.now()
    with connection.cursor() as cursor:  # numbers 1 and 2 of the month, below
        cursor.execute("ALTER SEQUENCE metering_meterevent_id_seq RESTART WITH 1")
    events_ingest(events=[_event("before-1", now), _event("before-2", now)])
    events_rate_pending()
    executor.migrate(BEFORE)  # back to one plain table: the rows are copied back
    old = executor.loader.project_state(BEFORE).apps
    stored = dict(old.get_model("metering", "MeterEvent").objects.values_list("identifier", "pk"))
    old.get_model("metering", "EventCancellation").objects.create(
        event_id=stored["before-1"], reason="test", actor="t"
    )
    plain_id = (
        old.get_model("metering", "MeterEvent")
        .objects.create(
            customer_id=_acme_pk(),
            identifier="plain",
            event_name="llm.tokens",
            meter_id=_meter_pk(),
            timestamp=now,
            value=5,
            dimensions=LARGE_OUT,
            content_hash="x" * 64,
            received_at=now,
        )
        .pk
    )
    assert plain_id < 1 << SEQUENCE_BITS  # numbered as before partitioning

    executor.loader.build_graph()
    executor.migrate(executor.loader.graph.leaf_nodes())

    where = _where(EVENTS)
    assert where[plain_id] == f"{EVENTS}_legacy"
    assert MeterEvent.objects.get(pk=stored["before-1"]).cancellation.reason == "test"
    # The keys came along: the same events sent again are duplicates, not new events.
    again = events_ingest(events=[_event("before-2", now)])
    assert _statuses(again) == [("duplicate", None)]
    assert EventKey.objects.get(identifier="plain").event_id == plain_id
    # A new event is numbered in its month, after the numbers the month holds.
    assert _statuses(events_ingest(events=[_event("after", now)])) == [("accepted", None)]
    after = MeterEvent.objects.get(identifier="after").pk
    assert after >> SEQUENCE_BITS == month_index(now)
    assert after > max(stored.values())  # numbers are not reused (gaps are fine)
    assert not {f.check for f in run_checks() if f.problems} & set(NEW_CHECKS)
    # Not a foreign key any more (events move between partitions): the reconcile reports
    # a cancelled event deleted in raw SQL, and an event whose key is gone.
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {EVENTS} WHERE id = %s", [stored["before-1"]])
        cursor.execute("DELETE FROM metering_eventkey WHERE identifier = 'plain'")
    problems = {f.check: f.problems for f in run_checks() if f.problems}
    assert problems["cancellations_name_their_event"] == [
        f"cancellation of event {stored['before-1']}: no such event"
    ]
    assert f"event {plain_id} (plain): has no key" in problems["event_keys_match_events"]
    assert any("names event" in p for p in problems["event_keys_match_events"])


def _acme_pk() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM plans_customer WHERE external_id = 'acme'")
        return int(cursor.fetchone()[0])


def _meter_pk() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT id FROM plans_meter WHERE event_name = 'llm.tokens' LIMIT 1")
        return int(cursor.fetchone()[0])
