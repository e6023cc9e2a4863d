"""Reconcile checks that tie invoices to the ledger (invariant 4) and keep each period's
usage on its own credits; registered for `manage.py reconcile`."""

from __future__ import annotations

from ledger.reconcile import query_rows, register

# The consume and overage entries of each period's own events (not the late events of
# earlier periods charged in it, not cancelled ones): what its invoice is built from.
_PERIOD_USAGE = """
SELECT r.period_id,
       COALESCE(-SUM(e.credits) FILTER (WHERE e.kind = 'consume'), 0) AS consumed,
       COALESCE(-SUM(e.credits) FILTER (WHERE e.kind = 'overage'), 0) AS overage
FROM metering_eventrating r
JOIN ledger_ledgerentry e
  ON e.cause_type = 'event' AND e.cause_id = r.event_id::text
 AND e.kind IN ('consume', 'overage')
WHERE NOT r.prior_period_adjustment
  AND NOT EXISTS (SELECT 1 FROM metering_eventcancellation c WHERE c.event_id = r.event_id)
GROUP BY r.period_id
"""


@register("period_invoice_equals_its_ledger_usage")
def period_invoices_match_usage() -> list[str]:
    """A period's invoice says what the ledger did: its included-usage quantity is the
    credits its events drew from grants, its overage the credits no grant covered."""
    rows = query_rows(
        f"""
        WITH usage AS ({_PERIOD_USAGE}),
        lines AS (
            SELECT i.period_id, i.number,
                   COALESCE(SUM(l.quantity) FILTER (WHERE l.kind = 'included_usage'), 0)
                       AS included,
                   COALESCE(SUM(l.quantity) FILTER (WHERE l.kind = 'overage'), 0) AS overage
            FROM invoicing_invoice i
            JOIN invoicing_invoiceline l ON l.invoice_id = i.id
            WHERE i.period_id IS NOT NULL
            GROUP BY i.period_id, i.number
        )
        SELECT lines.period_id, lines.number, lines.included, COALESCE(u.consumed, 0),
               lines.overage, COALESCE(u.overage, 0), v.overage_policy = 'postpaid'
        FROM lines
        JOIN plans_subscriptionperiod p ON p.id = lines.period_id
        JOIN plans_planversion v ON v.id = p.plan_version_id
        LEFT JOIN usage u ON u.period_id = lines.period_id
        WHERE (lines.included <> COALESCE(u.consumed, 0)
               OR (v.overage_policy = 'postpaid' AND lines.overage <> COALESCE(u.overage, 0)))
          -- Retention removed some of its events' ratings: it cannot be recounted.
          AND NOT EXISTS (
              SELECT 1 FROM metering_periodusage pu
              WHERE pu.period_id = lines.period_id AND pu.raw_removed_at IS NOT NULL
          )
        ORDER BY lines.period_id
        """
    )
    return [
        f"period {period} (invoice {number}): invoiced {included} credits of included usage "
        f"and {overage} of overage; its events drew {consumed} from grants"
        + (f" and {ledger_overage} as overage" if postpaid else "")
        for period, number, included, consumed, overage, ledger_overage, postpaid in rows
    ]


@register("period_usage_draws_on_its_own_credits")
def period_usage_isolated() -> list[str]:
    """No event draws on the included or rollover credits of a period it is not charged
    in: a late event uses its own period's credits, never the next period's."""
    rows = query_rows(
        """
        SELECT r.event_id, r.period_id, g.id, g.source_id, -e.credits
        FROM metering_eventrating r
        JOIN ledger_ledgerentry e
          ON e.cause_type = 'event' AND e.cause_id = r.event_id::text AND e.kind = 'consume'
        JOIN ledger_creditgrant g ON g.id = e.grant_id
        WHERE g.source_type = 'subscription_period' AND g.source_id <> r.period_id::text
        ORDER BY r.event_id
        """
    )
    return [
        f"event {event} of period {period} took {credits} credits from grant {grant}, "
        f"which belongs to period {source}"
        for event, period, grant, source, credits in rows
    ]
