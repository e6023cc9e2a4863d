"""An event's customer and meter are not foreign keys in the database (migration 0008):
ingest refuses a customer or meter that does not exist and stores nothing for it, a
customer deleted while its batch is being stored is refused rather than left dangling,
the ORM refuses to delete a customer or meter that events name, and the reconcile reports
an event whose customer or meter row was deleted in raw SQL. A rating's event, rate and
period are not foreign keys either (migration 0010): the ORM refuses to delete what a
rating names, and the reconcile reports a rating whose row was deleted in raw SQL."""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from django.db import connection
from django.db.models import ProtectedError
from django.utils import timezone

from ledger.reconcile import run_checks
from metering import ingest
from metering.checks import (
    events_have_customers_and_meters,
    ratings_name_their_event_rate_and_period,
)
from metering.ingest import Known, events_ingest
from metering.models import EventRating, MeterEvent, RatingQueue, RejectedEvent
from metering.rating import events_rate_pending
from plans.models import Aggregation, Customer, Meter, Rate, SubscriptionPeriod
from tests.dburl import database_url_for_subprocess
from tests.plans.factories import customer, load_demo_catalog, subscription_recent

pytestmark = pytest.mark.django_db

LARGE_OUT = {"model": "large", "token_type": "output"}


def _event(identifier: str, external_id: str = "acme", **fields: Any) -> dict[str, Any]:
    return {
        "identifier": identifier,
        "event_name": "llm.tokens",
        "customer": external_id,
        "timestamp": timezone.now().isoformat(),
        "value": "812",
        "dimensions": LARGE_OUT,
        **fields,
    }


def _errors(outcome: ingest.IngestOutcome) -> list[tuple[str, str | None, str | None]]:
    return [
        (r.status, r.error.code if r.error else None, r.error.param if r.error else None)
        for r in outcome.results
    ]


def _delete_in_raw_sql(table: str, pk: int) -> None:
    with connection.cursor() as cursor:
        # Immediate: a foreign key left on the events table would refuse the delete now.
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
        cursor.execute(f"DELETE FROM {table} WHERE id = %s", [pk])


def _problems() -> dict[str, list[str]]:
    return {f.check: f.problems for f in run_checks() if f.problems}


def test_the_events_table_has_no_foreign_key_to_customers_or_meters() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT confrelid::regclass::text FROM pg_constraint "
            "WHERE conrelid = 'metering_meterevent'::regclass AND contype = 'f'"
        )
        references = sorted(row[0] for row in cursor.fetchall())
    assert references == ["metering_authorization"]


def _indexes(table: str) -> list[tuple[tuple[str, ...], str | None]]:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT array_agg(a.attname ORDER BY k.n), pg_get_expr(i.indpred, i.indrelid)
            FROM pg_index i
            CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, n)
            JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
            WHERE i.indrelid = %s::regclass
            GROUP BY i.indexrelid, i.indpred, i.indrelid
            """,
            [table],
        )
        return sorted((tuple(columns), predicate) for columns, predicate in cursor.fetchall())


def test_every_index_ingest_maintains_on_events_is_one_something_reads() -> None:
    assert _indexes("metering_meterevent") == [
        # Events naming an authorization only: the PROTECT check of its delete.
        (("authorization_id",), "(authorization_id IS NOT NULL)"),
        (("customer_id", "parent_identifier"), "(parent_identifier IS NOT NULL)"),
        (("customer_id", "timestamp"), None),  # every listing by customer
        (("id",), None),
        (("meter_id",), None),  # the PROTECT check of a meter's delete
    ]
    # ON CONFLICT, and every look-up by identifier: one index, on the keys' table.
    assert _indexes("metering_eventkey") == [(("customer_id", "identifier"), None)]


def test_it_refuses_an_unknown_customer_or_meter_per_event_and_stores_nothing_for_it() -> None:
    load_demo_catalog()
    customer("acme")

    outcome = events_ingest(
        events=[
            _event("ok"),
            _event("no-customer", "ghost"),
            {**_event("no-meter"), "meter": "ghost_meter", "event_name": None},
            _event("no-event-name", event_name="ghost.calls"),
        ]
    )

    assert _errors(outcome) == [
        ("accepted", None, None),
        ("rejected", "unknown_customer", "customer"),
        ("rejected", "unknown_meter", "meter"),
        ("rejected", "unknown_event_name", "event_name"),
    ]
    assert list(MeterEvent.objects.values_list("identifier", flat=True)) == ["ok"]
    assert RatingQueue.objects.count() == 1
    assert sorted(RejectedEvent.objects.values_list("identifier", "code")) == [
        ("no-customer", "unknown_customer"),
        ("no-event-name", "unknown_event_name"),
        ("no-meter", "unknown_meter"),
    ]
    assert _problems() == {}


def test_a_customer_or_meter_handed_in_that_does_not_exist_is_refused_not_stored() -> None:
    load_demo_catalog()
    acme = customer("acme")
    gone_customer = Customer(pk=987654321, external_id="gone")
    gone_meter = Meter(
        pk=987654322, code="gone_calls", event_name="gone.calls", aggregation=Aggregation.SUM
    )
    known = Known(
        customers={"acme": acme, "gone": gone_customer},
        meters=[*Meter.objects.all(), gone_meter],
    )

    outcome = events_ingest(
        events=[
            _event("ok"),
            _event("stale-customer", "gone"),
            _event("stale-meter", event_name="gone.calls", dimensions=None),
        ],
        known=known,
    )

    # Validated again against what exists: only the real customer and meter get through.
    assert _errors(outcome) == [
        ("accepted", None, None),
        ("rejected", "unknown_customer", "customer"),
        ("rejected", "unknown_event_name", "event_name"),
    ]
    assert list(MeterEvent.objects.values_list("identifier", "customer_id")) == [("ok", acme.pk)]
    assert events_have_customers_and_meters() == []


def test_a_customer_deleted_after_the_look_up_is_refused_not_left_dangling(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    load_demo_catalog()
    customer("acme")
    brief = customer("brief")

    class DeletedAfterTheLookUp(ingest._Lookups):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            if Customer.objects.filter(pk=brief.pk).exists():
                _delete_in_raw_sql("plans_customer", brief.pk)

    monkeypatch.setattr(ingest, "_Lookups", DeletedAfterTheLookUp)

    outcome = events_ingest(events=[_event("kept"), _event("orphan", "brief")])

    assert _errors(outcome) == [
        ("accepted", None, None),
        ("rejected", "unknown_customer", "customer"),
    ]
    assert list(MeterEvent.objects.values_list("identifier", flat=True)) == ["kept"]
    assert RatingQueue.objects.count() == 1
    assert events_have_customers_and_meters() == []


@pytest.mark.django_db(transaction=True)
def test_ingest_waits_for_a_delete_in_flight_and_then_refuses_its_customer() -> None:
    load_demo_catalog()
    customer("acme")
    brief = customer("brief")
    deleter, watcher = _connect(), _connect(autocommit=True)
    deleter.execute("DELETE FROM plans_customer WHERE id = %s", [brief.pk])  # not committed
    outcomes: list[ingest.IngestOutcome | BaseException] = []

    def send() -> None:
        try:
            outcomes.append(events_ingest(events=[_event("kept"), _event("orphan", "brief")]))
        except BaseException as exc:
            outcomes.append(exc)
        finally:
            connection.close()

    sender = threading.Thread(target=send)
    sender.start()
    try:
        # The look-up still sees the customer; the lock waits for the delete's outcome.
        assert _waits_for_a_row_lock(watcher), "ingest never waited for the customer's row"
        deleter.commit()
    finally:
        deleter.close()
        watcher.close()
        sender.join(timeout=30)

    assert isinstance(outcomes[0], ingest.IngestOutcome), outcomes
    assert _errors(outcomes[0]) == [
        ("accepted", None, None),
        ("rejected", "unknown_customer", "customer"),
    ]
    assert list(MeterEvent.objects.values_list("identifier", flat=True)) == ["kept"]
    assert events_have_customers_and_meters() == []


def _connect(*, autocommit: bool = False) -> psycopg.Connection[Any]:
    # The test database's URL: the embedded server is reached by its socket folder.
    return psycopg.connect(database_url_for_subprocess(), autocommit=autocommit)


def _waits_for_a_row_lock(watcher: psycopg.Connection[Any]) -> bool:
    for _ in range(200):
        waiting = watcher.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE datname = current_database() AND wait_event_type = 'Lock' "
            "AND query LIKE %s",
            ["%FOR KEY SHARE%"],
        ).fetchone()
        if waiting and waiting[0]:
            return True
        time.sleep(0.05)
    return False


def test_a_customer_or_meter_with_events_cannot_be_deleted_through_the_orm() -> None:
    load_demo_catalog()
    acme = customer("acme")
    assert events_ingest(events=[_event("e-1")]).count("accepted") == 1
    event = MeterEvent.objects.get()

    with pytest.raises(ProtectedError) as customer_refused:
        acme.delete()
    with pytest.raises(ProtectedError) as meter_refused:
        event.meter.delete()

    assert event in customer_refused.value.protected_objects
    assert event in meter_refused.value.protected_objects
    assert Customer.objects.filter(pk=acme.pk).exists()
    assert Meter.objects.filter(pk=event.meter_id).exists()
    assert _problems() == {}


def test_the_reconcile_reports_an_event_whose_customer_was_deleted_in_raw_sql() -> None:
    load_demo_catalog()
    customer("acme")
    solo = customer("solo")
    events_ingest(events=[_event("e-1"), _event("e-2", "solo")])
    assert events_have_customers_and_meters() == []

    _delete_in_raw_sql("plans_customer", solo.pk)

    orphan = MeterEvent.objects.get(identifier="e-2")
    assert _problems() == {
        "events_have_customers_and_meters": [f"event {orphan.pk} (e-2): no such customer {solo.pk}"]
    }


def test_the_reconcile_reports_an_event_whose_meter_was_deleted_in_raw_sql() -> None:
    load_demo_catalog()
    customer("acme")
    probe = Meter.objects.create(
        code="probe_calls", event_name="probe.calls", aggregation=Aggregation.COUNT, unit="call"
    )
    events_ingest(events=[_event("e-1"), _event("e-2", event_name="probe.calls", dimensions=None)])
    assert events_have_customers_and_meters() == []

    _delete_in_raw_sql("plans_meter", probe.pk)

    orphan = MeterEvent.objects.get(identifier="e-2")
    assert _problems() == {
        "events_have_customers_and_meters": [f"event {orphan.pk} (e-2): no such meter {probe.pk}"]
    }


def test_the_ratings_table_has_no_foreign_keys() -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT conname FROM pg_constraint "
            "WHERE conrelid = 'metering_eventrating'::regclass AND contype = 'f'"
        )
        assert cursor.fetchall() == []


def _rated(*identifiers: str) -> list[EventRating]:
    load_demo_catalog()
    subscription_recent("acme")
    events_ingest(events=[_event(identifier) for identifier in identifiers])
    assert events_rate_pending() == len(identifiers)
    return list(EventRating.objects.order_by("event_id"))


def test_what_a_rating_names_cannot_be_deleted_through_the_orm() -> None:
    (rating,) = _rated("e-1")
    assert rating.rate_id is not None and rating.period_id is not None

    for row in (
        MeterEvent.objects.get(pk=rating.event_id),
        Rate.objects.get(pk=rating.rate_id),
        SubscriptionPeriod.objects.get(pk=rating.period_id),
    ):
        with pytest.raises(ProtectedError) as refused:
            row.delete()
        assert rating in refused.value.protected_objects
    assert ratings_name_their_event_rate_and_period() == []
    assert _problems() == {}


def test_the_reconcile_reports_a_rating_whose_event_rate_or_period_is_missing() -> None:
    first, second = _rated("e-1", "e-2")
    assert ratings_name_their_event_rate_and_period() == []
    missing_rate, missing_period = second.rate_id + 1000, second.period_id + 1000  # type: ignore[operator]

    _delete_in_raw_sql("metering_meterevent", first.event_id)
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE metering_eventrating SET rate_id = %s, period_id = %s WHERE event_id = %s",
            [missing_rate, missing_period, second.event_id],
        )

    assert ratings_name_their_event_rate_and_period() == [
        f"rating of event {first.event_id}: no such event",
        f"rating of event {second.event_id}: no such rate {missing_rate}, "
        f"no such period {missing_period}",
    ]
