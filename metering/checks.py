"""Invariant 3 for `manage.py reconcile`: every accepted event is rated exactly once, and
its credits equal the consume and overage entries that name it; every queued row names
an event, every event its customer and meter, and every rating its event, rate and
period (these references are not foreign keys); the running counts rating keeps (per
tiered rate, per period) agree with the charges they count. A period whose raw events
retention removed (``PeriodUsage.raw_removed_at``) cannot be recounted from its ratings
and is passed over by the checks that recount one."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.utils import timezone

from ledger.reconcile import query_rows, register, triggers_missing


@register("event_rated_exactly_once")
def events_rated_once() -> list[str]:
    rows = query_rows(
        """
        SELECT e.id, e.identifier, r.event_id IS NOT NULL, q.event_id IS NOT NULL
        FROM metering_meterevent e
        LEFT JOIN metering_eventrating r ON r.event_id = e.id
        LEFT JOIN metering_ratingqueue q ON q.event_id = e.id
        WHERE (r.event_id IS NULL) = (q.event_id IS NULL)
        ORDER BY e.id
        """
    )
    return [
        f"event {pk} ({identifier}): "
        + ("rated and still queued" if rated else "neither rated nor queued")
        for pk, identifier, rated, _queued in rows
    ]


@register("event_credits_equal_its_entries")
def events_charged_as_rated() -> list[str]:
    rows = query_rows(
        """
        WITH charged AS (
            SELECT cause_id, -SUM(credits) AS credits
            FROM ledger_ledgerentry
            WHERE cause_type = 'event' AND kind IN ('consume', 'overage')
            GROUP BY cause_id
        )
        SELECT r.event_id, r.credits, COALESCE(c.credits, 0)
        FROM metering_eventrating r
        LEFT JOIN charged c ON c.cause_id = r.event_id::text
        WHERE r.credits <> COALESCE(c.credits, 0)
        ORDER BY r.event_id
        """
    )
    return [
        f"event {pk}: rated at {credits} credits, ledger entries charge {charged}"
        for pk, credits, charged in rows
    ]


@register("rating_queue_rows_have_events")
def queue_rows_have_events() -> list[str]:
    # Ingest writes a queue row in the statement that writes its event, so none should
    # ever be missing one; rating leaves such a row queued rather than guess.
    rows = query_rows(
        """
        SELECT q.event_id, q.customer_id
        FROM metering_ratingqueue q
        LEFT JOIN metering_meterevent e ON e.id = q.event_id
        WHERE e.id IS NULL
        ORDER BY q.event_id
        """
    )
    return [
        f"queued event {pk} (customer {customer_id}): no such event" for pk, customer_id in rows
    ]


@register("events_have_customers_and_meters")
def events_have_customers_and_meters() -> list[str]:
    # Ingest locks the customers and meters of a batch while it stores it, and the ORM
    # refuses to delete one that events name; a delete in raw SQL (or one whose check
    # ran before an ingest committed) is caught here.
    rows = query_rows(
        """
        SELECT e.id, e.identifier, e.customer_id, c.id IS NULL, e.meter_id, m.id IS NULL
        FROM metering_meterevent e
        LEFT JOIN plans_customer c ON c.id = e.customer_id
        LEFT JOIN plans_meter m ON m.id = e.meter_id
        WHERE c.id IS NULL OR m.id IS NULL
        ORDER BY e.id
        """
    )
    return [_missing_parents_line(*row) for row in rows]


def _missing_parents_line(
    pk: int, identifier: str, customer_id: int, no_customer: bool, meter_id: int, no_meter: bool
) -> str:
    missing = [f"no such customer {customer_id}"] if no_customer else []
    if no_meter:
        missing.append(f"no such meter {meter_id}")
    return f"event {pk} ({identifier}): {', '.join(missing)}"


@register("ratings_name_their_event_rate_and_period")
def ratings_name_their_event_rate_and_period() -> list[str]:
    # Rating writes these from rows it has just read, and the ORM refuses to delete a row
    # a rating names; a delete in raw SQL is caught here.
    rows = query_rows(
        """
        SELECT r.event_id, e.id IS NULL, r.rate_id, r.rate_id IS NOT NULL AND t.id IS NULL,
               r.period_id, r.period_id IS NOT NULL AND p.id IS NULL
        FROM metering_eventrating r
        LEFT JOIN metering_meterevent e ON e.id = r.event_id
        LEFT JOIN plans_rate t ON t.id = r.rate_id
        LEFT JOIN plans_subscriptionperiod p ON p.id = r.period_id
        WHERE e.id IS NULL
           OR (r.rate_id IS NOT NULL AND t.id IS NULL)
           OR (r.period_id IS NOT NULL AND p.id IS NULL)
        ORDER BY r.event_id
        """
    )
    return [_missing_references_line(*row) for row in rows]


@register("cancellations_name_their_event")
def cancellations_name_their_event() -> list[str]:
    rows = query_rows(
        """
        SELECT c.event_id FROM metering_eventcancellation c
        LEFT JOIN metering_meterevent e ON e.id = c.event_id
        WHERE e.id IS NULL ORDER BY c.event_id
        """
    )
    return [f"cancellation of event {event_id}: no such event" for (event_id,) in rows]


@register("event_keys_match_events")
def event_keys_match_events() -> list[str]:
    # Ingest writes an event's key and the event in one statement; retention removes
    # both. An event without its key could be accepted again, and charged twice.
    unkeyed = query_rows(
        """
        SELECT e.id, e.identifier, k.event_id FROM metering_meterevent e
        LEFT JOIN metering_eventkey k
          ON k.customer_id = e.customer_id AND k.identifier = e.identifier
        WHERE k.event_id IS DISTINCT FROM e.id
        ORDER BY e.id
        """
    )
    orphans = query_rows(
        """
        SELECT k.customer_id, k.identifier, k.event_id FROM metering_eventkey k
        LEFT JOIN metering_meterevent e ON e.id = k.event_id
        WHERE e.id IS NULL
        ORDER BY k.event_id
        """
    )
    return [
        f"event {pk} ({identifier}): "
        + ("has no key" if key is None else f"its key names event {key}")
        for pk, identifier, key in unkeyed
    ] + [
        f"key {identifier} of customer {customer_id} names event {pk}, which does not exist"
        for customer_id, identifier, pk in orphans
    ]


def _missing_references_line(
    event_id: int,
    no_event: bool,
    rate_id: int | None,
    no_rate: bool,
    period_id: int | None,
    no_period: bool,
) -> str:
    missing = [
        text
        for gone, text in (
            (no_event, "no such event"),
            (no_rate, f"no such rate {rate_id}"),
            (no_period, f"no such period {period_id}"),
        )
        if gone
    ]
    return f"rating of event {event_id}: {', '.join(missing)}"


@register("events_rated_in_time")
def events_rated_in_time() -> list[str]:
    """Rating keeps up: no event waits longer than RECONCILE_MAX_RATING_WAIT_SECONDS.

    An event that keeps failing (or is parked for staff) leaves its customer's balance
    short of real usage; this names each such customer with the oldest waiting event.
    """
    limit = settings.RECONCILE_MAX_RATING_WAIT_SECONDS
    rows = query_rows(
        """
        SELECT DISTINCT ON (q.customer_id)
               c.external_id, COUNT(*) OVER (PARTITION BY q.customer_id),
               e.id, e.identifier, q.enqueued_at, q.attempts, q.parked_at, q.last_error
        FROM metering_ratingqueue q
        JOIN metering_meterevent e ON e.id = q.event_id
        JOIN plans_customer c ON c.id = q.customer_id
        WHERE q.enqueued_at < %s
        ORDER BY q.customer_id, q.enqueued_at, q.event_id
        """,
        [timezone.now() - timedelta(seconds=limit)],
    )
    return [_waiting_line(limit, *row) for row in rows]


def _waiting_line(limit: int, customer: object, waiting: object, *oldest: object) -> str:
    pk, identifier, enqueued_at, attempts, parked_at, error = oldest
    line = (
        f"customer {customer}: {waiting} event(s) waiting to be rated for over {limit} s; "
        f"the oldest is event {pk} ({identifier}), queued at {enqueued_at}"
    )
    if attempts:
        state = "parked for staff" if parked_at else "still failing"
        line += f", {state} after {attempts} attempt(s): {error}"
    return line


@register("tiered_rate_usage_equals_its_charges")
def tiered_usage_matches_charges() -> list[str]:
    """A tiered or package rate's running count is what its period's own, uncancelled
    events and its true-up charged: the count the next event is priced from."""
    rows = query_rows(
        """
        WITH events AS (
            SELECT r.period_id, r.rate_id, SUM(r.units) AS units, SUM(r.credits) AS credits
            FROM metering_eventrating r
            WHERE NOT r.prior_period_adjustment AND r.status = 'rated'
              AND NOT EXISTS (
                  SELECT 1 FROM metering_eventcancellation c WHERE c.event_id = r.event_id
              )
            GROUP BY r.period_id, r.rate_id
        ),
        true_ups AS (
            SELECT cause_id, -SUM(credits) AS credits
            FROM ledger_ledgerentry
            WHERE cause_type = 'tier_true_up'
            GROUP BY cause_id
        )
        SELECT u.period_id, u.rate_id, u.units, COALESCE(e.units, 0), u.credits,
               COALESCE(e.credits, 0) + COALESCE(t.credits, 0)
        FROM metering_rateusage u
        LEFT JOIN events e ON e.period_id = u.period_id AND e.rate_id = u.rate_id
        LEFT JOIN true_ups t ON t.cause_id = u.period_id::text || ':' || u.rate_id::text
        WHERE (u.units <> COALESCE(e.units, 0)
               OR u.credits <> COALESCE(e.credits, 0) + COALESCE(t.credits, 0))
          AND NOT EXISTS (
              SELECT 1 FROM metering_periodusage pu
              WHERE pu.period_id = u.period_id AND pu.raw_removed_at IS NOT NULL
          )
        ORDER BY u.period_id, u.rate_id
        """
    )
    return [
        f"period {period} rate {rate}: counted {units} units and {credits} credits; its events "
        f"and true-up come to {event_units} units and {charged} credits"
        for period, rate, units, event_units, credits, charged in rows
    ]


@register("period_usage_equals_its_charges")
def period_usage_matches_charges() -> list[str]:
    """A period's usage counters (``PeriodUsage``: the balance's used and overage, the
    spend limit, the estimated bill) are what its uncancelled rated events and its
    tiered true-ups charged, as the ledger's entries say."""
    rows = query_rows(
        """
        WITH events AS (
            SELECT r.period_id, SUM(r.credits) AS credits,
                   -COALESCE(SUM(o.credits), 0) AS overage
            FROM metering_eventrating r
            LEFT JOIN LATERAL (
                SELECT SUM(e.credits) AS credits FROM ledger_ledgerentry e
                WHERE e.cause_type = 'event' AND e.cause_id = r.event_id::text
                  AND e.kind = 'overage'
            ) o ON true
            WHERE r.status = 'rated' AND r.period_id IS NOT NULL
              AND NOT EXISTS (
                  SELECT 1 FROM metering_eventcancellation c WHERE c.event_id = r.event_id
              )
            GROUP BY r.period_id
        ),
        true_ups AS (
            SELECT split_part(cause_id, ':', 1)::bigint AS period_id,
                   -SUM(credits) AS credits,
                   -COALESCE(SUM(credits) FILTER (
                       WHERE kind = 'overage' OR (kind = 'reversal' AND grant_id IS NULL)
                   ), 0) AS overage
            FROM ledger_ledgerentry
            WHERE cause_type = 'tier_true_up'
            GROUP BY 1
        ),
        periods AS (
            SELECT period_id FROM metering_periodusage
            UNION SELECT period_id FROM events
            UNION SELECT period_id FROM true_ups
        )
        SELECT p.period_id, COALESCE(u.credits, 0), COALESCE(u.overage, 0),
               COALESCE(e.credits, 0) + COALESCE(t.credits, 0),
               COALESCE(e.overage, 0) + COALESCE(t.overage, 0)
        FROM periods p
        LEFT JOIN metering_periodusage u ON u.period_id = p.period_id
        LEFT JOIN events e ON e.period_id = p.period_id
        LEFT JOIN true_ups t ON t.period_id = p.period_id
        WHERE (COALESCE(u.credits, 0) <> COALESCE(e.credits, 0) + COALESCE(t.credits, 0)
               OR COALESCE(u.overage, 0) <> COALESCE(e.overage, 0) + COALESCE(t.overage, 0))
          AND u.raw_removed_at IS NULL
        ORDER BY p.period_id
        """
    )
    return [
        f"period {period}: counted {credits} credits used and {overage} overage; its events "
        f"and true-ups charged {charged} and {charged_overage}"
        for period, credits, overage, charged, charged_overage in rows
    ]


@register("rate_tables_follow_the_catalog")
def catalog_generation_triggers() -> list[str]:
    """Rating keeps a rate table while the catalog's generation is unchanged (plans
    migration 0013): the triggers that move it on every change to meters, rate card
    versions and rates exist and are enabled, else a repriced rate would go unseen."""
    return triggers_missing(
        {
            (table, "plans_catalog_changed")
            for table in ("plans_meter", "plans_ratecardversion", "plans_rate")
        }
    )
