"""Rating at the service level: periods, late events, max meters, unratable events."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import time_machine
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from billing_portal.invoicing.period_close import periods_close_due
from ledger.models import LedgerEntry
from ledger.reconcile import run_checks
from ledger.selectors import account_balance
from ledger.sql import execute_binary
from metering import tasks
from metering.ingest import events_ingest
from metering.models import EventRating, PeriodUsage, RatingQueue, UsageRollup
from metering.rating import (
    _CLAIM_SQL,
    _QUEUED_CUSTOMERS_SQL,
    _RATER_LOCK_SPACE,
    events_rate_for_customer,
    events_rate_pending,
)
from plans import catalog
from plans.models import Customer, Meter, PeriodStatus, SubscriptionPeriod
from plans.services import subscription_start, subscriptions_renew_due
from tests.dburl import database_url_for_subprocess
from tests.plans.factories import (
    DEMO_CATALOG,
    customer,
    load_demo_catalog,
    plan,
    subscription_recent,
)

pytestmark = pytest.mark.django_db

START = datetime(2026, 10, 1, tzinfo=UTC)
LARGE_OUT = {"model": "large", "token_type": "output"}


def _event(identifier: str, at: datetime, value: str = "1000", **extra: Any) -> dict[str, Any]:
    return {
        "identifier": identifier,
        "event_name": "llm.tokens",
        "customer": "acme",
        "timestamp": at.isoformat(),
        "value": value,
        "dimensions": LARGE_OUT,
        **extra,
    }


def _clean() -> None:
    assert [f for f in run_checks() if f.problems] == []


def test_a_late_event_for_an_invoiced_period_is_charged_in_the_open_one(
    clock: time_machine.Traveller,
) -> None:
    load_demo_catalog()
    acme = customer()
    subscription_start(customer=acme, plan=plan("pro"), actor="t")
    first = SubscriptionPeriod.objects.get()
    clock.move_to(first.end)
    subscriptions_renew_due()
    clock.shift(timedelta(hours=2))
    assert periods_close_due() == 1
    second = SubscriptionPeriod.objects.get(status=PeriodStatus.OPEN)

    late_at = first.end - timedelta(minutes=5)
    assert events_ingest(events=[_event("late", late_at)]).count("accepted") == 1
    assert events_ingest(events=[_event("on-time", datetime.now(UTC))]).count("accepted") == 1
    events_rate_pending()

    late = EventRating.objects.get(event__identifier="late")
    assert (late.period_id, late.prior_period_adjustment, late.credits) == (
        second.pk,
        True,
        Decimal(15),
    )
    on_time = EventRating.objects.get(event__identifier="on-time")
    assert (on_time.period_id, on_time.prior_period_adjustment) == (second.pk, False)
    assert PeriodUsage.objects.get(period=second).credits == Decimal(30)
    _clean()


def test_rates_follow_the_version_in_effect_at_the_event_timestamp(
    clock: time_machine.Traveller,
) -> None:
    load_demo_catalog()
    acme = customer()
    subscription_start(customer=acme, plan=plan("pro"), actor="t")
    clock.move_to(START + timedelta(days=10))
    catalog.load(
        DEMO_CATALOG.read_text().replace('credits: "15",  per: 1000', 'credits: "20",  per: 1000')
    )
    events_ingest(
        events=[
            _event("before-change", START + timedelta(days=9)),
            _event("after-change", START + timedelta(days=10, minutes=1)),
        ]
    )
    clock.shift(timedelta(minutes=2))
    events_rate_pending()
    credits = dict(EventRating.objects.values_list("event__identifier", "credits"))
    assert credits == {"before-change": Decimal(15), "after-change": Decimal(20)}
    assert account_balance(account=acme.account).posted == Decimal(20000 - 35)


def test_an_event_without_a_subscription_is_unratable_and_charges_nothing(
    clock: time_machine.Traveller,
) -> None:
    load_demo_catalog()
    acme = customer()
    events_ingest(events=[_event("orphan", START - timedelta(hours=1))])
    assert events_rate_pending() == 1
    rating = EventRating.objects.get()
    assert (rating.status, rating.error_code, rating.credits) == (
        "unratable",
        "no_active_subscription",
        0,
    )
    assert not LedgerEntry.objects.filter(account=acme.account, cause_type="event").exists()
    assert not RatingQueue.objects.exists()
    _clean()


def test_an_event_no_rate_matches_is_unratable(clock: time_machine.Traveller) -> None:
    load_demo_catalog()
    subscription_start(customer=customer(), plan=plan("pro"), actor="t")
    events_ingest(events=[{**_event("medium", START), "dimensions": {"model": "medium"}}])
    events_rate_pending()
    rating = EventRating.objects.get()
    assert (rating.status, rating.error_code) == ("unratable", "no_matching_rate")
    _clean()


def test_usage_beyond_the_grants_is_overage_and_counted_in_the_period(
    clock: time_machine.Traveller,
) -> None:
    load_demo_catalog()
    acme = customer()
    subscription_start(customer=acme, plan=plan("starter"), actor="t")  # 2,000 included
    events_ingest(
        events=[_event(f"big-{i}", START, value="100000") for i in range(2)]
    )  # 1,500 each
    events_rate_pending()
    usage = PeriodUsage.objects.get()
    assert (usage.credits, usage.overage, usage.events) == (Decimal(3000), Decimal(1000), 2)
    rollup = UsageRollup.objects.get()
    assert (rollup.value, rollup.events, rollup.credits) == (Decimal(200000), 2, Decimal(3000))
    assert account_balance(account=acme.account).posted == 0
    _clean()


def test_a_max_meter_charges_only_new_peaks_within_a_period(clock: time_machine.Traveller) -> None:
    text = (
        DEMO_CATALOG.read_text()
        .replace(
            "  - code: doc_summaries\n",
            "  - code: seats\n    event_name: seats.active\n    aggregation: max\n    unit: seats\n"
            "  - code: doc_summaries\n",
        )
        .replace(
            "      - {meter: doc_summaries,",
            '      - {meter: seats, credits: "100", per: 1}\n      - {meter: doc_summaries,',
        )
    )
    catalog.load(text)
    acme = customer()
    subscription_start(customer=acme, plan=plan("pro"), actor="t")
    seats = [("s1", "3"), ("s2", "2"), ("s3", "5"), ("s4", "5")]
    events_ingest(
        events=[
            {
                "identifier": i,
                "event_name": "seats.active",
                "customer": "acme",
                "timestamp": START.isoformat(),
                "value": v,
            }
            for i, v in seats
        ]
    )
    events_rate_pending()
    credits = dict(EventRating.objects.values_list("event__identifier", "credits"))
    assert credits == {"s1": Decimal(300), "s2": Decimal(0), "s3": Decimal(200), "s4": Decimal(0)}
    assert UsageRollup.objects.get().value == Decimal(5)
    _clean()


def test_a_queue_row_without_its_event_is_reported_and_left_queued(
    clock: time_machine.Traveller,
) -> None:
    load_demo_catalog()
    acme = customer()
    subscription_start(customer=acme, plan=plan("pro"), actor="t")
    events_ingest(events=[_event("real", START)])
    # The queue's reference to its event is not a foreign key: nothing stops this row.
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO metering_ratingqueue (event_id, customer_id, enqueued_at) "
            "VALUES (987654321, %s, now())",
            [acme.pk],
        )

    assert events_rate_pending() == 1

    assert EventRating.objects.get().event.identifier == "real"
    assert list(RatingQueue.objects.values_list("event_id", flat=True)) == [987654321]
    # Parked with what is wrong, so no later claim takes it again and staff see it.
    orphan = RatingQueue.objects.get()
    assert orphan.parked_at is not None and orphan.attempts == 1
    assert orphan.last_error == "its event is missing: the queue row names no stored event"
    problems = {f.check: f.problems for f in run_checks() if f.problems}
    assert problems == {
        "rating_queue_rows_have_events": [
            f"queued event 987654321 (customer {acme.pk}): no such event"
        ]
    }


def test_a_round_finds_every_customer_with_queued_events() -> None:
    # One index probe per customer (a recursive walk of the queue's customer index), not
    # a DISTINCT over the whole queue: it must still find each customer exactly once.
    load_demo_catalog()
    now = datetime.now(UTC)
    names = ["acme", "globex", "initech"]
    for name in names:
        subscription_recent(name)
    events_ingest(
        events=[_event(f"{n}-{i}", now, customer=n) for n in names[::2] for i in range(3)]
    )
    with connection.cursor() as cursor:
        cursor.execute(_QUEUED_CUSTOMERS_SQL)
        found = [row[0] for row in cursor.fetchall()]
    assert found == sorted(
        Customer.objects.filter(external_id__in=names[::2]).values_list("pk", flat=True)
    )
    assert events_rate_pending() == 6
    with connection.cursor() as cursor:
        cursor.execute(_QUEUED_CUSTOMERS_SQL)
        assert cursor.fetchall() == []


def test_a_batch_of_only_missing_events_parks_them_and_rates_nothing() -> None:
    load_demo_catalog()
    acme = subscription_recent("acme").customer
    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO metering_ratingqueue (event_id, customer_id, enqueued_at) "
            "VALUES (987654321, %s, now()), (987654322, %s, now())",
            [acme.pk, acme.pk],
        )

    assert events_rate_for_customer(customer_id=acme.pk) == 0

    parked = RatingQueue.objects.order_by("event_id")
    assert [(q.event_id, q.attempts, q.parked_at is not None) for q in parked] == [
        (987654321, 1, True),
        (987654322, 1, True),
    ]
    assert events_rate_for_customer(customer_id=acme.pk) == 0  # not claimed again
    assert LedgerEntry.objects.filter(kind="consume").count() == 0


@pytest.fixture
def shared_flag(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[Any, ...]]]:
    """The scheduled flag as with a cache every process shares (this process's cache
    plays it), and the tasks sent, recorded instead of reaching a broker."""
    sent: list[tuple[Any, ...]] = []
    monkeypatch.setattr(tasks, "scheduled_flag_shared", lambda: True)
    monkeypatch.setattr(
        tasks.events_rate_pending,
        "apply_async",
        lambda args=None, kwargs=None, **options: sent.append((args, kwargs)),
    )
    cache.delete(tasks.SCHEDULED_KEY)
    yield sent
    cache.delete(tasks.SCHEDULED_KEY)


def test_ingest_sends_no_rating_task_while_one_is_waiting_and_all_is_rated(
    clock: time_machine.Traveller,
    shared_flag: list[tuple[Any, ...]],
    django_capture_on_commit_callbacks: Any,
) -> None:
    load_demo_catalog()
    subscription_start(customer=customer(), plan=plan("pro"), actor="t")
    for batch in range(3):
        with django_capture_on_commit_callbacks(execute=True):
            events_ingest(events=[_event(f"e-{batch}", START)])
            tasks.events_rate_pending.delay_on_commit()
    assert len(shared_flag) == 1  # the first batch sent it; the others found it waiting

    assert tasks.events_rate_pending() == 3  # the task, run: it rates all three batches

    with django_capture_on_commit_callbacks(execute=True):
        events_ingest(events=[_event("after", START)])
        tasks.events_rate_pending.delay_on_commit()
    assert len(shared_flag) == 2  # the task cleared the flag before claiming
    assert tasks.events_rate_pending() == 1
    assert EventRating.objects.count() == 4
    _clean()


def test_without_a_shared_cache_every_batch_sends_its_rating_task(
    clock: time_machine.Traveller, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[object] = []
    monkeypatch.setattr(
        tasks.events_rate_pending, "apply_async", lambda *args, **kwargs: sent.append(1)
    )
    assert not tasks.scheduled_flag_shared()  # the tests' cache is per process
    for _ in range(2):
        tasks.events_rate_pending._send_unless_scheduled()
    assert sent == [1, 1]


def test_an_event_after_the_period_end_waits_for_the_renewal_instead_of_going_unratable(
    clock: time_machine.Traveller,
) -> None:
    load_demo_catalog()
    subscription_start(customer=customer(), plan=plan("pro"), actor="t")
    first = SubscriptionPeriod.objects.get()
    clock.move_to(first.end + timedelta(seconds=30))  # the renewal job has not run yet
    assert (
        events_ingest(events=[_event("just-after", first.end + timedelta(seconds=10))]).count(
            "accepted"
        )
        == 1
    )

    events_rate_pending()

    # Rating put it back and asked for the renewal, so the next run charges it in the
    # period it belongs to.
    assert not EventRating.objects.exists()
    assert RatingQueue.objects.get().attempts == 0
    second = SubscriptionPeriod.objects.get(start=first.end)
    clock.shift(timedelta(seconds=5))
    events_rate_pending()
    rating = EventRating.objects.get()
    assert (rating.status, rating.period_id, rating.credits) == ("rated", second.pk, Decimal(15))
    _clean()


def test_an_event_stamped_in_the_second_the_subscription_started_is_charged(
    clock: time_machine.Traveller,
) -> None:
    load_demo_catalog()
    clock.move_to(START + timedelta(milliseconds=707))
    subscription_start(customer=customer(), plan=plan("pro"), actor="t")
    # Second precision, as many senders stamp events: 00:00:00, before .707.
    assert events_ingest(events=[_event("same-second", START)]).count("accepted") == 1
    events_rate_pending()
    rating = EventRating.objects.get()
    assert (rating.status, rating.credits) == ("rated", Decimal(15))


def test_reconcile_names_a_period_whose_usage_counters_disagree_with_its_charges(
    clock: time_machine.Traveller,
) -> None:
    load_demo_catalog()
    acme = customer()
    subscription_start(customer=acme, plan=plan("pro"), actor="t")
    clock.move_to(START + timedelta(days=1))
    # 1,600,000 large output tokens: 24,000 credits, 4,000 beyond the 20,000 included.
    events_ingest(events=[_event("big", START + timedelta(hours=1), value="1600000")])
    events_ingest(events=[_event("small", START + timedelta(hours=2))])
    events_rate_pending()
    period = SubscriptionPeriod.objects.get()
    usage = PeriodUsage.objects.get(period=period)
    assert (usage.credits, usage.overage) == (Decimal(24015), Decimal(4015))
    _clean()

    PeriodUsage.objects.filter(pk=usage.pk).update(overage=Decimal(4000))  # a lost update
    problems = {f.check: f.problems for f in run_checks() if f.problems}
    assert problems == {
        "period_usage_equals_its_charges": [
            f"period {period.pk}: counted 24015.000000 credits used and 4000.000000 overage; "
            "its events and true-ups charged 24015.000000 and 4015.000000"
        ]
    }


@pytest.mark.django_db(transaction=True)  # rating's transaction is its own, as in a worker
@pytest.mark.parametrize("size", [5, 200])
def test_a_batch_costs_the_same_statements_whatever_its_size(size: int) -> None:
    # The fixed cost of a batch is what rating pays per customer: count it, and keep
    # per-event statements and extra savepoints out (the alerts receiver has its own).
    load_demo_catalog()
    acme = subscription_recent("acme").customer
    now = datetime.now(UTC)
    events_ingest(events=[_event(f"e{i}", now - timedelta(seconds=i)) for i in range(size)])

    with CaptureQueriesContext(connection) as queries:
        assert events_rate_for_customer(customer_id=acme.pk) == size

    sql = [q["sql"] for q in queries.captured_queries]
    assert sum(s.startswith("SAVEPOINT") for s in sql) == 1, "\n".join(sql)
    # Through Django's cursors. Beside them go four pipelined round trips: the claim, the
    # ledger's lock, operation and grants, its writes, and rating's own writes.
    assert len(sql) <= 17, "\n".join(sql)  # BEGIN and COMMIT included
    assert EventRating.objects.count() == size


_QUEUE_MANY = """
WITH rows AS MATERIALIZED (
    SELECT metering_event_id(now()) AS id, i FROM generate_series(1, %(count)s) AS i
), keys AS (
    INSERT INTO metering_eventkey (customer_id, identifier, event_id)
    SELECT %(customer)s, 'bulk-' || i, id FROM rows
), events AS (
    INSERT INTO metering_meterevent (id, customer_id, identifier, event_name, meter_id,
        timestamp, value, dimensions, content_hash, received_at)
    SELECT id, %(customer)s, 'bulk-' || i, 'llm.tokens', %(meter)s, now(), 1,
           '{"model": "large", "token_type": "output"}', md5(i::text), now()
    FROM rows
    RETURNING id
)
INSERT INTO metering_ratingqueue (event_id, customer_id, enqueued_at)
SELECT id, %(customer)s, now() FROM events
"""


def test_a_claim_reads_the_customers_queue_not_the_events_of_every_row_in_it() -> None:
    # A hot customer can have hundreds of thousands of events waiting, while the planner's
    # statistics are from when the queue was short. The claim reads the queue alone, in
    # (customer, event) order (metering 0013): at worst it sorts the customer's rows. It
    # used to probe the events table for every one of them before taking the first n.
    load_demo_catalog()
    acme = customer("acme")
    meter = Meter.objects.get(code="llm_tokens")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE metering_ratingqueue")  # while empty
        cursor.execute(_QUEUE_MANY, {"count": 30_000, "customer": acme.pk, "meter": meter.pk})
    (plan,) = execute_binary(
        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + _CLAIM_SQL.replace(")s", ")b"),
        {"customer": acme.pk, "now": timezone.now(), "event": None, "limit": 10},
    )[0]
    statement = plan[0]["Plan"]
    assert statement["Actual Rows"] == 10
    # The queue's 30,000 rows fill about 220 pages; an events probe per row is 4 pages
    # each, 120,000 in all.
    assert statement["Shared Hit Blocks"] + statement["Shared Read Blocks"] < 1_000, plan


def _queued_for(*names: str) -> dict[str, Customer]:
    """Three events queued for each named customer; the customers."""
    now = datetime.now(UTC)
    customers = {}
    for name in names:
        customers[name] = subscription_recent(name).customer
        events = [_event(f"{name}-{i}", now, customer=name) for i in range(3)]
        assert events_ingest(events=events).count("accepted") == 3
    return customers


def _queued(name: str) -> int:
    return RatingQueue.objects.filter(customer_id=Customer.objects.get(external_id=name).pk).count()


def _held(sql: str, params: list[Any]) -> psycopg.Connection[Any]:
    """Another connection holding what ``sql`` locks, until it is closed."""
    holder = psycopg.connect(database_url_for_subprocess())
    holder.execute(sql, params)
    return holder


def _rated_elsewhere(customer: Customer) -> psycopg.Connection[Any]:
    """Another worker rating the customer: its rater lock held."""
    key = [_RATER_LOCK_SPACE, customer.pk]
    return _held("SELECT pg_advisory_xact_lock(%s, %s)", key)


def _account_locked(customer: Customer) -> psycopg.Connection[Any]:
    """The customer's account row lock held, as an authorization holds it a moment."""
    return _held("SELECT 1 FROM ledger_account WHERE id = %s FOR UPDATE", [customer.account_id])


@pytest.fixture
def lock_timeout() -> Iterator[None]:
    """A lock wait fails the test within 5 s instead of hanging it."""
    with connection.cursor() as cursor:
        cursor.execute("SET lock_timeout = '5s'")
    yield
    with connection.cursor() as cursor:
        cursor.execute("RESET lock_timeout")


@pytest.mark.django_db(transaction=True)  # the lock is another connection's
def test_a_worker_rates_other_customers_while_one_is_being_rated_elsewhere(
    lock_timeout: None,
) -> None:
    # Workers walk the queued customers in the same order. One that met a customer another
    # worker was rating used to claim the rest of that queue and wait behind the other's
    # batch; now it moves on, and the customer is rated in a later round.
    load_demo_catalog()
    customers = _queued_for("acme", "globex")
    holder = _rated_elsewhere(customers["acme"])
    try:
        assert events_rate_pending(rounds=1) == 3
        assert (_queued("acme"), _queued("globex")) == (3, 0)
    finally:
        holder.close()
    assert events_rate_pending() == 3
    assert RatingQueue.objects.count() == 0
    _clean()


@pytest.mark.django_db(transaction=True)
def test_a_worker_with_nothing_else_to_rate_waits_for_the_busy_customer() -> None:
    load_demo_catalog()
    customers = _queued_for("acme")
    holder = _rated_elsewhere(customers["acme"])
    release = threading.Timer(0.5, holder.close)
    release.start()
    try:
        started = time.monotonic()
        assert events_rate_pending(rounds=1) == 3
        assert time.monotonic() - started >= 0.4  # it waited for the lock, then rated
    finally:
        release.join()
        holder.close()
    assert RatingQueue.objects.count() == 0
    _clean()


@pytest.mark.django_db(transaction=True)
def test_a_worker_waits_for_an_account_held_by_something_else_than_rating() -> None:
    # An authorization holds the account for a moment, often, on a busy customer. Moving
    # on whenever it did would leave that customer's events for later rounds, again and
    # again; rating waits for the account and rates the customer in this round.
    load_demo_catalog()
    customers = _queued_for("acme", "globex")
    holder = _account_locked(customers["acme"])
    release = threading.Timer(0.5, holder.close)
    release.start()
    try:
        assert events_rate_pending(rounds=1) == 6
    finally:
        release.join()
        holder.close()
    assert RatingQueue.objects.count() == 0
    _clean()


@pytest.mark.django_db(transaction=True)  # dead queue rows are dead only once committed
def test_the_claim_walks_the_queue_index_in_order_past_dead_rows() -> None:
    # The queue is deleted from as fast as it is written. A bitmap scan (what the planner
    # picks with statistics from a shorter queue) visits every index entry of the
    # customer, dead ones included, and every heap page they name, claim after claim; an
    # index scan in (customer, event) order stops at the limit and marks the dead
    # entries it passes. Seen in the plan of the claim rating actually runs.
    load_demo_catalog()
    acme = subscription_recent("acme").customer
    meter = Meter.objects.get(code="llm_tokens")
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE metering_ratingqueue")  # while empty
        cursor.execute(_QUEUE_MANY, {"count": 20_000, "customer": acme.pk, "meter": meter.pk})
        cursor.execute("DELETE FROM metering_ratingqueue")  # as rating would, committed
    now = datetime.now(UTC)
    events_ingest(events=[_event(f"live-{i}", now) for i in range(5)])

    plans = _plans_of(
        lambda: events_rate_for_customer(customer_id=acme.pk), "metering_ratingqueue c"
    )

    (plan,) = plans
    assert "Bitmap" not in plan, plan
    assert "Index Scan using metering_queue_customer" in plan, plan
    assert RatingQueue.objects.count() == 0


def _plans_of(run: Any, marker: str) -> list[str]:
    """The plans (auto_explain's, sent back as notices) of the statements ``run`` makes
    whose text names ``marker``."""
    connection.ensure_connection()
    notices: list[str] = []
    pg = connection.connection

    def handler(diagnostic: psycopg.errors.Diagnostic) -> None:
        notices.append(diagnostic.message_primary or "")

    pg.add_notice_handler(handler)
    with connection.cursor() as cursor:
        cursor.execute("LOAD 'auto_explain'")
        for setting, value in (
            ("auto_explain.log_min_duration", "0"),
            ("auto_explain.log_level", "notice"),
            ("client_min_messages", "notice"),
        ):
            cursor.execute("SELECT set_config(%s, %s, false)", [setting, value])
    try:
        run()
    finally:
        pg.remove_notice_handler(handler)
        with connection.cursor() as cursor:
            cursor.execute("RESET auto_explain.log_min_duration")
            cursor.execute("RESET client_min_messages")
    return [n for n in notices if marker in n]
