"""Period close, the whole flow, read top to bottom.

1. **Renewal** (``plans.services.subscriptions_renew_due``; beat job ``renew-subscriptions``,
   every 60 s). At its end a period is closed to new usage (status ``closed``) and the
   next one opens with its own included credits. The closed period's late events, stamped
   before its end, still draw on its credits and are invoiced with it
   (``metering.rating`` charges an event against the grants usable at its timestamp).
2. **Due** (``plans.services.periods_due_for_close``; beat job ``close-periods``, every
   60 s, task ``periods_close_due_task``). Once the grace window
   (``BILLING_GRACE_PERIOD_SECONDS``) has passed since the period's end and since its
   close, no late event can arrive any more. The beat task sends one
   ``period_close_task`` per due period, so workers close many periods at once.
3. **Close** (:func:`period_close`, one transaction per period, with the period's row
   locked and then the customer's account):

   a. bring each tiered or package rate to its formula on the period's total units
      (``metering.true_up``: volume tiers, cancelled events), drawn on the period's
      own credits;
   b. write off the period's included and rollover credits (breakage) and roll over
      what the plan allows into the next period (``plans.services.period_credits_close``);
   c. mark it ``invoicing``: rating now charges its late events to the open period, as
      prior-period adjustments on the next invoice;
   d. build its invoice from the ledger entries of its events
      (``billing_portal.invoicing.services.period_invoice_create``): base fee,
      prorations, credits used, postpaid overage, tier quantities and true-ups,
      prior-period adjustments; every line linked to its entries;
   e. announce the invoice (signal ``billing_portal.invoicing.signals.invoice_issued``):
      the Stripe integration's receiver marks it pending and queues its sync (task
      ``invoice_sync_task``), sent once the transaction commits.

A period closed twice (a repeated message, two workers) is closed once: the second finds
it locked or no longer ``closed``. A period handed to invoicing without an invoice (data
from before this flow) is invoiced by the same sweep.
"""

from __future__ import annotations

from datetime import datetime

from django.db import transaction
from django.db.models import Exists, OuterRef
from django.utils import timezone

from billing_portal.invoicing.models import Invoice
from billing_portal.invoicing.services import period_invoice_create
from billing_portal.invoicing.signals import invoice_issued
from metering.true_up import period_rates_true_up
from plans.models import PeriodStatus, SubscriptionPeriod
from plans.services import period_credits_close, periods_due_for_close


def periods_close_due(*, now: datetime | None = None) -> int:
    """Close every due period here and now (tests, commands); beat fans out instead."""
    now = now or timezone.now()
    return sum(period_close(period_id=pk, now=now) is not None for pk in periods_due(now=now))


def periods_due(*, now: datetime | None = None) -> list[int]:
    """Periods to close: due ones, and any handed over without an invoice."""
    unbilled = SubscriptionPeriod.objects.filter(status=PeriodStatus.INVOICING).exclude(
        Exists(Invoice.objects.filter(period=OuterRef("pk")))
    )
    return periods_due_for_close(now=now) + list(unbilled.values_list("pk", flat=True)[:500])


def period_close(*, period_id: int, now: datetime | None = None) -> Invoice | None:
    """Close one period and invoice it; None when another worker has it or it is done."""
    now = now or timezone.now()
    with transaction.atomic():
        # of=self: without it the row locks of the joined plan and plan version, which
        # every period shares, would make concurrent closes skip each other's periods.
        period = (
            SubscriptionPeriod.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("subscription__customer", "plan_version__plan")
            .filter(pk=period_id, status__in=[PeriodStatus.CLOSED, PeriodStatus.INVOICING])
            .first()
        )
        if period is None or Invoice.objects.filter(period=period).exists():
            return None
        if period.status == PeriodStatus.CLOSED:
            # Tiered and package rates first: what they still owe draws on the period's
            # own credits, before those are written off.
            period_rates_true_up(period=period)
            period_credits_close(period=period, now=now)
        invoice = period_invoice_create(period=period)
        invoice_issued.send(sender=Invoice, invoice=invoice)
    return invoice
