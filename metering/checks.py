"""Invariant 3 for `manage.py reconcile`: every accepted event is rated exactly once, and
its credits equal the consume and overage entries that name it; every queued row names
an event (the queue's reference is not a foreign key)."""

from __future__ import annotations

from ledger.reconcile import query_rows, register


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
