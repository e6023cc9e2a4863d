"""Rating: accepted events -> credits -> ledger debits, exactly once.

A worker claims one customer's queued events with ``FOR UPDATE SKIP LOCKED`` and, in one
transaction, deletes them from the queue and writes their ledger entries, their ratings
and rollups. A worker killed mid-batch rolls back and leaves the events queued for the
next one; two workers never claim the same event.

The batch is handled as rows, not model instances: events are read as tuples by the
statement that dequeues them, and ratings and rollups are written with one array
``INSERT ... SELECT FROM unnest(...)`` each. Loading, building and saving a model
instance per event was more than half of rating's time.
"""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, NamedTuple

from django.conf import settings
from django.db import InterfaceError, OperationalError, connection, transaction
from django.db.models import Q
from django.utils import timezone

from ledger import services as ledger
from ledger.models import ZERO, Account, Hold, HoldStatus
from ledger.sql import (
    Statement,
    bools_array,
    execute_binary,
    model_columns,
    model_instance,
    numbers_array,
    pipelined,
    texts_array,
)
from ledger.units import to_credits
from metering.models import RatingQueue, RatingStatus
from metering.signals import usage_rated
from plans.models import (
    Aggregation,
    Customer,
    PeriodStatus,
    Plan,
    PlanVersion,
    Subscription,
    SubscriptionPeriod,
    SubscriptionStatus,
)
from plans.rating import CATALOG_GENERATION_STATEMENT, Rated, RateTable, RatingError
from plans.services import subscriptions_renew_due
from plans.tiers import counts_period, event_charge

BATCH = 1000
# How long an event stamped past its subscription's current period waits before it is
# tried again; rating asks for the renewal at once (see events_rate_for_customer).
RENEWAL_WAIT = timedelta(seconds=2)

logger = logging.getLogger(__name__)


def events_rate_pending(*, rounds: int | None = None, budget_seconds: float = 10.0) -> int:
    """Rate queued events a batch per customer per round, until the queue is empty, the
    rounds are done or the time budget is spent; return how many were rated.

    Rounds keep one customer's backlog from starving the others; the budget keeps a task
    short so a worker stays responsive (the beat sweep starts the next one).
    """
    deadline = time.monotonic() + budget_seconds
    rated = done = 0
    while rounds is None or done < rounds:
        customers = [row[0] for row in execute_binary(_QUEUED_CUSTOMERS_SQL, ())]
        # Workers walk the customers in the same order. One that finds a customer being
        # rated by another (its rater lock taken) moves on, instead of claiming the rest of
        # that queue and waiting behind the other's batch with nothing to do; it waits
        # only when there is nothing else to rate.
        busy = []
        this_round = 0
        for customer_id in customers:
            count = _rate_customer(customer_id, BATCH, wait=False)
            if count is None:
                busy.append(customer_id)
            else:
                this_round += count
        if not this_round:
            this_round = sum(events_rate_for_customer(customer_id=c) for c in busy)
        rated += this_round
        done += 1
        if this_round == 0 or time.monotonic() > deadline:
            break
    return rated


# The customers with queued events, one index probe each on (customer, event): a
# DISTINCT over the queue reads every row of it: with a million events sent at once,
# that is hundreds of thousands of rows (and the dead ones rating left) for each round.
_QUEUED_CUSTOMERS_SQL = """
WITH RECURSIVE queued (customer_id) AS (
    SELECT min(customer_id) FROM metering_ratingqueue
    UNION ALL
    SELECT (SELECT min(q.customer_id) FROM metering_ratingqueue q
            WHERE q.customer_id > queued.customer_id)
    FROM queued WHERE queued.customer_id IS NOT NULL
)
SELECT customer_id FROM queued WHERE customer_id IS NOT NULL
"""


class _Event(NamedTuple):
    """One claimed event, as ``_CLAIM_SQL`` returns it."""

    id: int
    meter_id: int
    timestamp: datetime
    value: Decimal
    dimensions: str  # the jsonb's text: decoded once per distinct value (see _Dimensions)
    workspace: str | None
    authorization_id: int | None


# The queue rows are locked, deleted and returned with their events in one round trip.
# MATERIALIZED: the locking scan runs exactly once, however the statement joins it. It
# reads the customer's queue in (customer, event) index order and stops at the limit;
# nothing in it looks beyond the queue, so however stale the planner's estimates (the
# queue fills and drains within seconds), the worst plan sorts the customer's queue rows,
# never probes the events of each. A claimed row whose event is missing (the queue's
# reference is not a foreign key: see RatingQueue) is not deleted; then one more row,
# with no event, carries every claimed id, and rating parks the ones that came back
# without an event with that error (``_PARK_MISSING_SQL``): they stay for the
# ``rating_queue_rows_have_events`` check to report, and the customer's other events are
# claimed past them. Finding them so costs no second probe of the events per claimed row,
# nor a join that the planner, estimating one row a side, would run as nested loops.
# Events that failed to rate wait for their next attempt; parked ones wait for staff.
# With an event id, only that event is claimed (see _rate_each).
_CLAIM_SQL = """
WITH claimed AS MATERIALIZED (
    SELECT c.event_id FROM metering_ratingqueue c
    WHERE c.customer_id = %(customer)s
      AND c.parked_at IS NULL
      AND (c.next_attempt_at IS NULL OR c.next_attempt_at <= %(now)s)
      AND (%(event)s::bigint IS NULL OR c.event_id = %(event)s::bigint)
    ORDER BY c.event_id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
), taken AS (
    DELETE FROM metering_ratingqueue q
    USING claimed, metering_meterevent e
    WHERE q.event_id = claimed.event_id AND e.id = q.event_id
    RETURNING e.id, e.meter_id, e.timestamp, e.value, e.dimensions::text AS dimensions,
              e.workspace, e.authorization_id
)
SELECT *, NULL::bigint[] FROM taken
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, array_agg(event_id) FROM claimed
HAVING count(*) > (SELECT count(*) FROM taken)
"""
# Bitmap scans off for the claim alone. With estimates from a shorter queue the planner
# picks a bitmap scan and a sort, which visits every index entry of the customer, dead
# ones included, and every heap page they name: the queue is deleted from as fast as it
# is written, faster than autovacuum cleans it, and in the paced benchmark a claim of
# 287 rows visited 905 pages for 6,221 entries. An index scan in (customer, event) order
# stops at the limit and marks the dead entries it passes, so the next claim skips them.
_CLAIM_PLAN = "SET LOCAL enable_bitmapscan = off"
_CLAIM_PLAN_END = "RESET enable_bitmapscan"
_PARK_MISSING_SQL = """
UPDATE metering_ratingqueue
SET parked_at = %s, attempts = greatest(attempts, 1),
    last_error = 'its event is missing: the queue row names no stored event'
WHERE event_id = ANY(%s::bigint[])
"""


def events_rate_for_customer(*, customer_id: int, limit: int = BATCH) -> int:
    """Rate a batch of one customer's queued events; an event that cannot be rated is
    marked with its error and the others are charged around it."""
    count = _rate_customer(customer_id, limit, wait=True)
    assert count is not None  # a waiting call is never turned away
    return count


def _rate_customer(customer_id: int, limit: int, *, wait: bool) -> int | None:
    """``events_rate_for_customer``; None, having done nothing, when ``wait`` is off and
    another worker is rating the customer."""
    try:
        return _rate_claimed(customer_id, limit, wait=wait)
    except Exception as exc:
        if not _blames_an_event(exc):
            raise
        # One bad event sinks the set-based batch: find it by rating one event at a time.
        logger.warning(
            "rating customer %s as a batch failed (%s); rating one by one", customer_id, exc
        )
        return _rate_each(customer_id, limit)


def _rate_claimed(
    customer_id: int, limit: int, event_id: int | None = None, *, wait: bool = True
) -> int | None:
    with transaction.atomic():
        # Raters of a customer take its rater lock first; one that does not wait learns
        # here, before claiming anything, that another worker is rating the customer.
        if not _rater_lock(customer_id, wait=wait):
            return None
        # Then the account: the debits below take it anyway, and holding it from the
        # start settles the numbers ``usage_rated`` receivers read. An authorization
        # holds it for a moment; rating waits for that, not skips the customer. The
        # claim after it skips locked rows and never waits, so taking the account before
        # the queue rows cannot deadlock with anything that takes the queue rows first
        # (a cancellation does).
        customer = _customer_locked(customer_id)
        rows = _claim(customer_id, limit, event_id)
        if not rows:
            return 0
        events = sorted(_Event._make(row[:-1]) for row in rows if row[0] is not None)
        if len(events) < len(rows):  # some claimed rows name no stored event
            (claimed,) = [row[-1] for row in rows if row[0] is None]
            missing = sorted(set(claimed) - {event.id for event in events})
            execute_binary(_PARK_MISSING_SQL, [timezone.now(), numbers_array(missing)])
            if not events:
                return 0
        rater = _Rater(customer, events)
        rater.run()
    if rater.deferred:
        # In its own transactions, after ours: renewal locks the subscription first.
        subscriptions_renew_due()
    return len(events) - len(rater.deferred)


# A transaction-scoped advisory lock per customer that only rating takes, so that what
# it tells a worker is "another worker is rating this customer", not "something holds
# the account". Keyed (namespace, customer id folded into 31 bits): two customers that
# shared a key would only make a worker move on from one of them for a round.
_RATER_LOCK_SPACE = 0x52415445  # "RATE"


def _rater_lock(customer_id: int, *, wait: bool) -> bool:
    """Take the customer's rater lock, waiting for it or not; whether it was taken."""
    key = [_RATER_LOCK_SPACE, customer_id & 0x7FFFFFFF]
    with connection.cursor() as cursor:
        if wait:
            cursor.execute("SELECT pg_advisory_xact_lock(%s, %s)", key)
            return True
        cursor.execute("SELECT pg_try_advisory_xact_lock(%s, %s)", key)
        (taken,) = cursor.fetchone()
    return bool(taken)


# What ``Customer.objects.select_related("account").select_for_update(of=("account",))``
# reads, written once: compiling that queryset cost more than running it, every batch.
_CUSTOMER_LOCKED_SQL = f"""
SELECT {model_columns(Customer, "c")}, {model_columns(Account, "a")}
FROM {Customer._meta.db_table} c JOIN {Account._meta.db_table} a ON a.id = c.account_id
WHERE c.id = %s
FOR UPDATE OF a
"""


def _customer_locked(customer_id: int) -> Customer:
    """The customer with its account, the account locked."""
    with connection.cursor() as cursor:
        cursor.execute(_CUSTOMER_LOCKED_SQL, [customer_id])
        row = cursor.fetchone()
    if row is None:
        raise Customer.DoesNotExist(f"no customer {customer_id}")
    customer, start = model_instance(Customer, row)
    customer.account, _ = model_instance(Account, row, start)
    return customer


# Every period of a customer with its plan version, plan and subscription, oldest first:
# ``SubscriptionPeriod.objects.filter(subscription__customer=...).select_related(
# "plan_version__plan", "subscription").order_by("start")``, written once.
_PERIODS_SQL = f"""
SELECT {model_columns(SubscriptionPeriod, "p")}, {model_columns(PlanVersion, "v")},
       {model_columns(Plan, "pl")}, {model_columns(Subscription, "s")}
FROM {SubscriptionPeriod._meta.db_table} p
JOIN {Subscription._meta.db_table} s ON s.id = p.subscription_id
JOIN {PlanVersion._meta.db_table} v ON v.id = p.plan_version_id
JOIN {Plan._meta.db_table} pl ON pl.id = v.plan_id
WHERE s.customer_id = %s
ORDER BY p.start
"""


def _periods(rows: list[tuple[Any, ...]]) -> list[SubscriptionPeriod]:
    periods = []
    for row in rows:
        period, start = model_instance(SubscriptionPeriod, row)
        version, start = model_instance(PlanVersion, row, start)
        version.plan, start = model_instance(Plan, row, start)
        period.plan_version = version
        period.subscription, _ = model_instance(Subscription, row, start)
        periods.append(period)
    return periods


def _claim(customer_id: int, limit: int, event_id: int | None) -> list[tuple[Any, ...]]:
    """``_CLAIM_SQL``'s rows, planned without bitmap scans, in one round trip."""
    params = {"customer": customer_id, "now": timezone.now(), "event": event_id, "limit": limit}
    _, rows, _ = pipelined(
        [(_CLAIM_PLAN, ()), (_CLAIM_SQL, params), (_CLAIM_PLAN_END, ())], binary=True
    )
    return rows


def _blames_an_event(exc: Exception) -> bool:
    # A lost connection or a shut-down server is nobody's event: the batch stays queued as
    # it is and the next run retries it, without counting an attempt against any event.
    if isinstance(exc, OperationalError | InterfaceError):
        return False
    return connection.connection is None or not connection.connection.closed


def _rate_each(customer_id: int, limit: int) -> int:
    due = (
        RatingQueue.objects.filter(customer_id=customer_id, parked_at__isnull=True)
        .filter(Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=timezone.now()))
        .order_by("event_id")
        .values_list("event_id", flat=True)[:limit]
    )
    rated = 0
    for event_id in list(due):
        try:
            rated += _rate_claimed(customer_id, 1, event_id) or 0
        except Exception as exc:
            if not _blames_an_event(exc):
                raise
            rating_failure_record(event_id=event_id, error=f"{type(exc).__name__}: {exc}")
    return rated


def rating_failure_record(*, event_id: int, error: str) -> None:
    """Count a failed attempt: retry after a doubling back-off, park after the last one."""
    now = timezone.now()
    with transaction.atomic():
        row = RatingQueue.objects.select_for_update().filter(event_id=event_id).first()
        if row is None:
            return  # rated or cancelled meanwhile
        row.attempts += 1
        row.last_error = error[:2000]
        delay = settings.RATING_RETRY_SECONDS * 2 ** (row.attempts - 1)
        row.next_attempt_at = now + timedelta(seconds=delay)
        if row.attempts >= settings.RATING_MAX_ATTEMPTS:
            row.parked_at = now
        row.save(update_fields=["attempts", "last_error", "next_attempt_at", "parked_at"])
    if row.parked_at is not None:
        logger.error(
            "event %s of customer %s could not be rated after %s attempts and is parked "
            "for staff: %s",
            event_id,
            row.customer_id,
            row.attempts,
            error,
        )
    else:
        logger.warning(
            "event %s of customer %s could not be rated (attempt %s of %s, next at %s): %s",
            event_id,
            row.customer_id,
            row.attempts,
            settings.RATING_MAX_ATTEMPTS,
            row.next_attempt_at.isoformat(),
            error,
        )


def rating_retry(*, event_ids: Sequence[int]) -> int:
    """Staff: try parked or failing events again now, with a fresh count of attempts."""
    return RatingQueue.objects.filter(event_id__in=event_ids).update(
        attempts=0, last_error="", next_attempt_at=None, parked_at=None
    )


class _Dimensions:
    """Each distinct dimensions value of a batch, decoded and keyed once: a batch has
    thousands of events but few distinct combinations."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[dict[str, str], str]] = {}

    def __call__(self, raw: str) -> tuple[dict[str, str], str]:
        found = self._seen.get(raw)
        if found is None:
            value = json.loads(raw)
            found = self._seen[raw] = (value, dimensions_key(value))
        return found


@dataclass(slots=True)
class _Priced:
    event: _Event
    dimensions: dict[str, str]
    dimensions_key: str
    period: SubscriptionPeriod | None
    rated: Rated | None
    credits: Decimal
    late: bool
    error: RatingError | None = None
    overage: Decimal = ZERO


_RENEWAL_DUE_SQL = f"""
SELECT current_period_end FROM {Subscription._meta.db_table}
WHERE customer_id = %(customer)s AND status = %(active)s
ORDER BY id
LIMIT 1
"""


def _renewal_due(customer_id: int) -> Statement:
    return _RENEWAL_DUE_SQL, {"customer": customer_id, "active": SubscriptionStatus.ACTIVE.value}


class _Rater:
    def __init__(self, customer: Customer, events: list[_Event]) -> None:
        self.customer = customer
        self.events = events
        self.now = timezone.now()
        # With the periods, when the active subscription's current period ends: an event
        # at or after it belongs to a period the renewal job has not opened yet. And the
        # catalog's generation, which says whether the rate table this process holds is
        # current. One round trip.
        periods, generation, renewal = pipelined(
            [(_PERIODS_SQL, [customer.pk]), CATALOG_GENERATION_STATEMENT, _renewal_due(customer.pk)]
        )
        self.periods = _periods(periods)
        self.renewal_due_at: datetime | None = renewal[0][0] if renewal else None
        self.table = RateTable.current(
            {p.plan_version.rate_card_id for p in self.periods},
            generation[0][0] if generation else None,
        )
        self.deferred: list[_Event] = []
        self.max_so_far: dict[tuple[int, int, str], Decimal] = {}
        self.dimensions = _Dimensions()
        # Pricing depends only on these inputs; a batch repeats few combinations.
        self._rated: dict[tuple[Any, ...], Rated] = {}
        # Tiered and package rates: the period's units and credits so far, per (period,
        # rate), and what this batch adds to them.
        self.rate_usage: dict[tuple[int, int], list[Decimal]] = {}
        self.rate_usage_added: dict[tuple[int, int], list[Decimal]] = defaultdict(
            lambda: [ZERO, ZERO]
        )

    def run(self) -> None:
        priced = [p for p in map(self._price, self._waiting_for_renewal()) if p is not None]
        captures = [p for p in priced if p.event.authorization_id and p.rated]
        plain = [p for p in priced if not (p.event.authorization_id and p.rated) and p.credits > 0]
        for item in captures:
            item.overage = self._capture(item).overage
        if plain:
            debits = ledger.credits_consume_batch(
                account=self.customer.account,
                debits=[
                    ledger.DebitRequest(
                        p.credits,
                        ledger.Cause("event", str(p.event.id)),
                        p.rated.meter.code if p.rated else "",
                        p.event.workspace,
                        # Usage draws on the grants usable when it happened while its
                        # period is open; once invoiced, it is charged now, in the open one.
                        None if p.late else p.event.timestamp,
                    )
                    for p in plain
                ],
                actor="system:rating",
            )
            for item, debit in zip(plain, debits, strict=True):
                item.overage = debit.overage
        charged = [p for p in priced if p.rated and p.period]
        writes = [
            _ratings_insert(priced, self.now),
            _rate_usage_add(self.rate_usage_added),
            _rollups_add(self.customer.pk, [p for p in priced if p.rated]),
            _period_usage_add(self.customer.pk, charged),
        ]
        pipelined([w for w in writes if w is not None])
        if charged:
            usage_rated.send(
                sender=Customer,
                customer=self.customer,
                period_ids={p.period.pk for p in charged if p.period},
                credits=sum((p.credits for p in charged), ZERO),
                customer_periods=self.periods,
            )

    def _period_for(self, moment: datetime) -> SubscriptionPeriod | None:
        for period in reversed(self.periods):
            if period.start <= moment < period.end:
                return period
        return None

    def _open_period(self) -> SubscriptionPeriod | None:
        for period in reversed(self.periods):
            if period.status == PeriodStatus.OPEN:
                return period
        return None

    def _waiting_for_renewal(self) -> list[_Event]:
        """The events that can be rated now; the others (after the current period's end,
        before the renewal opened the next one) go back to the queue, not to unratable."""
        due = self.renewal_due_at
        ready = [e for e in self.events if due is None or e.timestamp < due]
        self.deferred = [e for e in self.events if due is not None and e.timestamp >= due]
        if self.deferred:
            _requeue(self.customer.pk, self.deferred, self.now + RENEWAL_WAIT)
        return ready

    def _price(self, event: _Event) -> _Priced:
        dimensions, dims_key = self.dimensions(event.dimensions)
        period = self._period_for(event.timestamp)
        if period is None:
            error = RatingError(
                "no_active_subscription", "no subscription period covers the event's timestamp"
            )
            return _Priced(event, dimensions, dims_key, None, None, ZERO, False, error)
        late = period.status == PeriodStatus.INVOICING
        try:
            rated = self._rate(period, event, dimensions, dims_key)
        except RatingError as error:
            return _Priced(event, dimensions, dims_key, period, None, ZERO, late, error)
        if rated.meter.aggregation == Aggregation.MAX:
            credits = self._max_delta(period, rated, dims_key)
        elif counts_period(rated.rate):
            credits = self._period_priced(period, rated, late)
        else:
            credits = rated.credits
        # An event for an invoiced period is charged in the open one, as an adjustment.
        charged_period = (self._open_period() or period) if late else period
        return _Priced(event, dimensions, dims_key, charged_period, rated, credits, late)

    def _rate(
        self, period: SubscriptionPeriod, event: _Event, dimensions: dict[str, str], dims_key: str
    ) -> Rated:
        card = period.plan_version.rate_card_id
        version = self.table.version_at(card, event.timestamp)
        key = (card, version.pk if version else None, event.meter_id, dims_key, event.value)
        rated = self._rated.get(key)
        if rated is None:
            rated = self._rated[key] = self.table.rate(
                rate_card_id=card,
                meter_id=event.meter_id,
                value=event.value,
                dimensions=dimensions,
                at=event.timestamp,
            )
        return rated

    def _period_priced(self, period: SubscriptionPeriod, rated: Rated, late: bool) -> Decimal:
        """A tiered or package rate: priced from the units of the event's period before
        it. A late event (its period already invoiced and trued up) is priced at the
        margin of that period's final units and does not change them."""
        key = (period.pk, rated.rate.pk)
        so_far = self.rate_usage.get(key)
        if so_far is None:
            so_far = self.rate_usage[key] = _rate_usage(period.pk, rated.rate.pk)
        credits = event_charge(rated.rate, so_far[0], rated.units)
        if not late:
            so_far[0] += rated.units
            so_far[1] += credits
            added = self.rate_usage_added[key]
            added[0] += rated.units
            added[1] += credits
        return credits

    def _max_delta(self, period: SubscriptionPeriod, rated: Rated, dims_key: str) -> Decimal:
        """A max meter charges only for a new peak within the period."""
        key = (period.pk, rated.meter.pk, dims_key)
        if key not in self.max_so_far:
            self.max_so_far[key] = _period_max(self.customer.pk, rated.meter.pk, dims_key, period)
        previous = self.max_so_far[key]
        if rated.units <= previous:
            return ZERO
        self.max_so_far[key] = rated.units
        before = rated.credits * previous / rated.units if rated.units else ZERO
        return to_credits(rated.credits - before)

    def _capture(self, item: _Priced) -> ledger.Debit:
        authorization_id = item.event.authorization_id
        assert authorization_id is not None  # only events naming one are captured
        hold = Hold.objects.filter(authorization__pk=authorization_id).first()
        cause = ledger.Cause("event", str(item.event.id))
        if hold is not None and hold.status == HoldStatus.OPEN:
            return ledger.hold_capture(
                hold=hold, amount=item.credits, cause=cause, actor="system:rating"
            )
        # The hold expired or was released before the usage arrived: charge it plainly.
        return ledger.credits_consume(
            account=self.customer.account,
            amount=item.credits,
            cause=cause,
            actor="system:rating",
            meter=item.rated.meter.code if item.rated else "",
            workspace=item.event.workspace,
        )


def _requeue(customer_id: int, events: list[_Event], after: datetime) -> None:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO metering_ratingqueue
                (event_id, customer_id, enqueued_at, attempts, last_error, next_attempt_at)
            SELECT id, %s, %s, 0, '', %s FROM unnest(%s::bigint[]) AS t(id)
            ON CONFLICT (event_id) DO NOTHING
            """,
            [customer_id, timezone.now(), after, [e.id for e in events]],
        )


def dimensions_key(dimensions: dict[str, str]) -> str:
    return json.dumps(dimensions, sort_keys=True, separators=(",", ":"))


def _period_max(
    customer_id: int, meter_id: int, dims_key: str, period: SubscriptionPeriod
) -> Decimal:
    with connection.cursor() as cursor:
        cursor.execute(
            """
            SELECT COALESCE(MAX(value), 0) FROM metering_usagerollup
            WHERE customer_id = %s AND meter_id = %s AND dimensions_key = %s
              AND hour >= date_trunc('hour', %s::timestamptz) AND hour < %s
            """,
            [customer_id, meter_id, dims_key, period.start, period.end],
        )
        row = cursor.fetchone()
    return Decimal(row[0]) if row else ZERO


def _rate_usage(period_id: int, rate_id: int) -> list[Decimal]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT units, credits FROM metering_rateusage WHERE period_id = %s AND rate_id = %s",
            [period_id, rate_id],
        )
        row = cursor.fetchone()
    return [Decimal(row[0]), Decimal(row[1])] if row else [ZERO, ZERO]


# The batch's writes are built as statements and sent in one round trip (``pipelined``).

_RATE_USAGE_SQL = """
INSERT INTO metering_rateusage (period_id, rate_id, units, credits, updated_at)
SELECT period_id, rate_id, units, credits, now()
FROM unnest(%s::bigint[], %s::bigint[], %s::numeric[], %s::numeric[])
    AS t(period_id, rate_id, units, credits)
ON CONFLICT (period_id, rate_id) DO UPDATE SET
    units = metering_rateusage.units + EXCLUDED.units,
    credits = metering_rateusage.credits + EXCLUDED.credits,
    updated_at = now()
"""


def _rate_usage_add(added: dict[tuple[int, int], list[Decimal]]) -> Statement | None:
    if not added:
        return None
    keys = list(added)
    return (
        _RATE_USAGE_SQL,
        [
            [k[0] for k in keys],
            [k[1] for k in keys],
            [added[k][0] for k in keys],
            [added[k][1] for k in keys],
        ],
    )


def _ratings_insert(items: list[_Priced], rated_at: datetime) -> Statement:
    """One EventRating row per event, written as arrays in one statement."""
    columns: tuple[list[Any], ...] = ([], [], [], [], [], [], [], [], [], [])
    ids, statuses, credits, units, rates, periods, late, codes, messages, costs = columns
    for item in items:
        rated, error = item.rated, item.error
        ids.append(item.event.id)
        statuses.append(RatingStatus.RATED.value if rated else RatingStatus.UNRATABLE.value)
        credits.append(item.credits)
        units.append(rated.units if rated else ZERO)
        rates.append(rated.rate.pk if rated else None)
        periods.append(item.period.pk if item.period else None)
        late.append(item.late)
        codes.append(error.code if error else "")
        messages.append(error.message if error else "")
        costs.append(rated.cost if rated else None)
    return (
        _RATINGS_SQL,
        [
            rated_at,
            numbers_array(ids),
            texts_array(statuses),
            numbers_array(credits),
            numbers_array(units),
            numbers_array(rates),
            numbers_array(periods),
            bools_array(late),
            texts_array(codes),
            texts_array(messages),
            numbers_array(costs),
        ],
    )


_RATINGS_SQL = """
INSERT INTO metering_eventrating
    (rated_at, event_id, status, credits, units, rate_id, period_id,
     prior_period_adjustment, error_code, error_message, cost)
SELECT %s, event_id, status, credits, units, rate_id, period_id, late, code, message, cost
FROM unnest(%s::bigint[], %s::text[], %s::numeric[], %s::numeric[], %s::bigint[],
            %s::bigint[], %s::boolean[], %s::text[], %s::text[], %s::numeric[])
    AS t(event_id, status, credits, units, rate_id, period_id, late, code, message, cost)
"""


def _rollups_add(customer_id: int, items: list[_Priced]) -> Statement | None:
    """Add rated events to their hourly rollups: cost grows with new events only."""
    buckets: dict[tuple[int, datetime, str, str], list[_Priced]] = defaultdict(list)
    for item in items:
        assert item.rated is not None
        hour = item.event.timestamp.replace(minute=0, second=0, microsecond=0)
        key = (item.rated.meter.pk, hour, item.dimensions_key, item.event.workspace or "")
        buckets[key].append(item)
    if not buckets:
        return None
    keys = list(buckets)
    values = []
    for key in keys:
        group = buckets[key]
        meter = group[0].rated.meter  # type: ignore[union-attr]
        units = [g.rated.units for g in group]  # type: ignore[union-attr]
        values.append(max(units) if meter.aggregation == Aggregation.MAX else sum(units, ZERO))
    return (
        _ROLLUP_SQL,
        [
            customer_id,
            [k[0] for k in keys],
            [k[1] for k in keys],
            [json.dumps(buckets[k][0].dimensions, sort_keys=True) for k in keys],
            [k[2] for k in keys],
            [k[3] for k in keys],
            values,
            [len(buckets[k]) for k in keys],
            [sum((g.credits for g in buckets[k]), ZERO) for k in keys],
        ],
    )


_PERIOD_USAGE_SQL = """
INSERT INTO metering_periodusage (customer_id, period_id, credits, overage, events, updated_at)
SELECT %s, period_id, credits, overage, events, now()
FROM unnest(%s::bigint[], %s::numeric[], %s::numeric[], %s::bigint[])
    AS t(period_id, credits, overage, events)
ON CONFLICT (period_id) DO UPDATE SET
    credits = metering_periodusage.credits + EXCLUDED.credits,
    overage = metering_periodusage.overage + EXCLUDED.overage,
    events = metering_periodusage.events + EXCLUDED.events,
    updated_at = now()
"""


def _period_usage_add(customer_id: int, items: list[_Priced]) -> Statement | None:
    totals: dict[int, list[Decimal]] = defaultdict(lambda: [ZERO, ZERO, ZERO])
    for item in items:
        assert item.period is not None
        total = totals[item.period.pk]
        total[0] += item.credits
        total[1] += item.overage
        total[2] += 1
    if not totals:
        return None
    # In period order: two batches adding to the same periods lock their rows in one order.
    keys = sorted(totals)
    return (
        _PERIOD_USAGE_SQL,
        [
            customer_id,
            keys,
            [totals[k][0] for k in keys],
            [totals[k][1] for k in keys],
            [int(totals[k][2]) for k in keys],
        ],
    )


_ROLLUP_SQL = """
INSERT INTO metering_usagerollup
    (customer_id, meter_id, hour, dimensions, dimensions_key, workspace, value, events, credits)
SELECT %s, meter_id, hour, dimensions::jsonb, dimensions_key, workspace, value, events, credits
FROM unnest(%s::bigint[], %s::timestamptz[], %s::text[], %s::text[], %s::text[],
            %s::numeric[], %s::bigint[], %s::numeric[])
    AS t(meter_id, hour, dimensions, dimensions_key, workspace, value, events, credits)
ON CONFLICT (customer_id, meter_id, hour, dimensions_key, workspace) DO UPDATE SET
    value = CASE
        WHEN (SELECT aggregation FROM plans_meter WHERE id = EXCLUDED.meter_id) = 'max'
        THEN GREATEST(metering_usagerollup.value, EXCLUDED.value)
        ELSE metering_usagerollup.value + EXCLUDED.value
    END,
    events = metering_usagerollup.events + EXCLUDED.events,
    credits = metering_usagerollup.credits + EXCLUDED.credits
"""
