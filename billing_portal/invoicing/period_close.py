"""Period close, the whole flow, read top to bottom.

1. **Renewal** (``plans.services.subscriptions_renew_due``; beat job ``renew-subscriptions``,
   every 60 s). At its end a period is closed to new usage (status ``closed``) and the
   next one opens with its own included credits. The closed period's late events, stamped
   before its end, still draw on its credits and are invoiced with it
   (``metering.rating`` charges an event against the grants usable at its timestamp).
2. **Due** (``plans.services.periods_due_for_close``; beat job ``close-periods``, every
   60 s, task ``periods_close_due_task``). Once the grace window
   (``BILLING_GRACE_PERIOD_SECONDS``) has passed since the period's end and since its
   close, no late event can arrive any more. The beat task sends the due periods in
   batches of ``BATCH_SIZE``, one ``periods_close_task`` per batch, so workers close many
   batches at once.
3. **Close** (:func:`periods_close`, one transaction per batch, with the periods' rows
   locked, then their customers' accounts, each in one statement):

   a. per period with tiered or package rates, in a savepoint of its own: bring each
      to its formula on the period's total units (``metering.true_up``: volume tiers,
      cancelled events), drawn on the period's own credits. A period that raises is
      rolled back alone, logged and left for the next sweep; the others go on;
   b. for the batch at once, in a savepoint: write off the periods' included and
      rollover credits (breakage), roll over what each plan allows into the next period
      and mark them ``invoicing`` (``plans.services.periods_credits_close``, a few
      statements for the batch): rating now charges their late events to the open
      periods, as prior-period adjustments on the next invoices. If that fails, the
      periods are closed one by one, each in a savepoint, and one that raises is left
      for the next sweep;
   c. build the batch's invoices from the ledger entries of their events
      (``billing_portal.invoicing.services.period_invoice_drafts``: a few queries for the
      whole batch): base fee, prorations, credits used, postpaid overage, tier
      quantities and true-ups, prior-period adjustments;
   d. store them (``period_invoices_create``: invoices, lines and the lines' links to
      their entries, one statement each for the batch) and number them last, in order,
      with one lock of the number sequence, held until the commit. The numbered batch is
      announced at once (signal ``invoices_numbered``), on which the outgoing
      ``invoice.finalized`` events are published, one statement each for the events and
      their deliveries (``billing_portal.outbound.receivers``);
   e. announce the invoices (signal ``billing_portal.invoicing.signals.invoices_issued``):
      the Stripe integration's receiver marks the ones Stripe collects pending, in one
      statement, and queues their syncs (task ``invoice_sync_task``), sent once the
      transaction commits.

   If a step of the batch as a whole fails (c to e), the batch is rolled back and its
   periods are closed one by one, each in its own transaction, so one bad period never
   holds the others back.

A period closed twice (a repeated message, two workers) is closed once: the second finds
it locked (skipped), or no longer ``closed`` and invoiced. A period handed to invoicing
without an invoice (data from before this flow) is invoiced by the same sweep.
:func:`period_close` closes one period through the same path (tests, commands).

A batch holds its customers' account locks until it commits (rating and holds of those
customers wait for it): ``BATCH_SIZE`` bounds that wait.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import datetime

from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from billing_portal.invoicing.models import Invoice
from billing_portal.invoicing.services import period_invoice_drafts, period_invoices_create
from billing_portal.invoicing.signals import invoices_issued
from ledger.models import Account
from metering.true_up import TrueUp, period_rates_true_up, periods_true_ups
from plans.models import PeriodStatus, SubscriptionPeriod
from plans.services import periods_credits_close, periods_due_for_close

logger = logging.getLogger(__name__)

# Periods per task and per transaction: large enough that a period costs a few
# statements of its own, small enough that a batch's account locks are held briefly.
BATCH_SIZE = 100


def periods_close_due(*, now: datetime | None = None) -> int:
    """Close every due period here and now (tests, commands); beat fans out instead."""
    now = now or timezone.now()
    return sum(
        len(periods_close(period_ids=batch, now=now)) for batch in batches(periods_due(now=now))
    )


def periods_due(*, now: datetime | None = None) -> list[int]:
    """Periods to close: due ones, and any handed over without an invoice."""
    unbilled = SubscriptionPeriod.objects.filter(status=PeriodStatus.INVOICING).exclude(
        Exists(Invoice.objects.filter(period=OuterRef("pk")))
    )
    return periods_due_for_close(now=now) + list(unbilled.values_list("pk", flat=True)[:500])


def batches(period_ids: Sequence[int]) -> Iterator[list[int]]:
    """The periods in batches of ``BATCH_SIZE``, in their order (the beat job's tasks)."""
    for start in range(0, len(period_ids), BATCH_SIZE):
        yield list(period_ids[start : start + BATCH_SIZE])


def period_close(*, period_id: int, now: datetime | None = None) -> Invoice | None:
    """Close one period and invoice it; None when another worker has it or it is done.
    What fails is raised to the caller."""
    invoices = _close(period_ids=[period_id], now=now or timezone.now(), isolate=False)
    return invoices[0] if invoices else None


def periods_close(*, period_ids: Sequence[int], now: datetime | None = None) -> list[Invoice]:
    """Close a batch of periods and invoice them, in one transaction; returns the invoices
    made (periods another worker has, or already invoiced, are skipped). A period that
    fails is logged and left as it was, for the next sweep."""
    now = now or timezone.now()
    try:
        return _close(period_ids=period_ids, now=now, isolate=True)
    except Exception:
        if len(period_ids) == 1:
            logger.exception("period %s: close failed; left for the next sweep", period_ids[0])
            return []
        logger.exception("period close: a batch of %s failed; closing one by one", len(period_ids))
    invoices = []
    for period_id in period_ids:
        invoices.extend(periods_close(period_ids=[period_id], now=now))
    return invoices


def _close(*, period_ids: Sequence[int], now: datetime, isolate: bool) -> list[Invoice]:
    with transaction.atomic():
        periods = _periods_lock(period_ids)
        if not periods:
            return []
        closing = [period for period in periods if period.status == PeriodStatus.CLOSED]
        # Rating reads periods and counts units under the account lock: taken before
        # the true-ups read the counts, and kept until the periods are handed over.
        accounts = {period.subscription.customer.account_id for period in closing}
        if accounts:
            list(Account.objects.select_for_update().filter(pk__in=accounts).order_by("pk"))
        true_ups = periods_true_ups(closing)
        trued_up = [
            period
            for period in closing
            if _true_up(period, true_ups.get(period.pk, []), isolate=isolate)
        ]
        handed_over = {period.pk for period in _hand_over(trued_up, now=now, isolate=isolate)}
        # Periods handed over already (by a close that failed after it) are invoiced too.
        closing_ids = {period.pk for period in closing}
        handed = [
            period for period in periods if period.pk not in closing_ids or period.pk in handed_over
        ]
        invoices = period_invoices_create(drafts=period_invoice_drafts(periods=handed))
        invoices_issued.send(sender=Invoice, invoices=invoices)
    return invoices


def _periods_lock(period_ids: Sequence[int]) -> list[SubscriptionPeriod]:
    """The batch's periods still to invoice, locked; the ones another worker holds are
    skipped."""
    # of=self: without it the row locks of the joined plan and plan version, which
    # every period shares, would make concurrent closes skip each other's periods.
    periods = list(
        SubscriptionPeriod.objects.select_for_update(skip_locked=True, of=("self",))
        .select_related("subscription__customer", "plan_version__plan")
        .filter(pk__in=period_ids, status__in=[PeriodStatus.CLOSED, PeriodStatus.INVOICING])
        .order_by("pk")
    )
    # Read after the locks, in a snapshot of its own: a close that committed after the
    # locking read's snapshot was taken left an invoice that read cannot see.
    invoiced = set(
        Invoice.objects.filter(period__in=[period.pk for period in periods]).values_list(
            "period_id", flat=True
        )
    )
    return [period for period in periods if period.pk not in invoiced]


def _true_up(period: SubscriptionPeriod, true_ups: list[TrueUp], *, isolate: bool) -> bool:
    """A closed period's tiered and package rates brought to their formulas, in a
    savepoint: a period that fails is rolled back alone. What they still owe draws on the
    period's own credits, so this comes before the credits are written off. A period
    with nothing to true up (most: no tiered rate) needs no savepoint."""
    if not true_ups:
        return True
    try:
        with transaction.atomic():
            period_rates_true_up(period=period, true_ups=true_ups)
    except Exception:
        if not isolate:
            raise
        logger.exception("period %s: close failed; left for the next sweep", period.pk)
        return False
    return True


def _hand_over(
    periods: list[SubscriptionPeriod], *, now: datetime, isolate: bool
) -> list[SubscriptionPeriod]:
    """The periods' credits written off and rolled over, and the periods handed over to
    invoicing: for the batch at once, in a savepoint; if that fails, period by period,
    each in a savepoint of its own, so one that fails is rolled back alone."""
    if not periods:
        return []
    try:
        with transaction.atomic():
            periods_credits_close(periods=periods, now=now)
        return periods
    except Exception:
        if not isolate:
            raise
        logger.warning("period close: credits of %s periods failed; one by one", len(periods))
    return [period for period in periods if _hand_over_alone(period, now=now)]


def _hand_over_alone(period: SubscriptionPeriod, *, now: datetime) -> bool:
    try:
        with transaction.atomic():
            periods_credits_close(periods=[period], now=now)
    except Exception:
        logger.exception("period %s: close failed; left for the next sweep", period.pk)
        return False
    return True
