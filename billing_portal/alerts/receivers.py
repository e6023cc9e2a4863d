"""Rating tells us a customer's usage moved: evaluate alerts and auto-recharge. Invoicing
tells us a payment failed: alert the customer."""

from __future__ import annotations

import logging
from decimal import Decimal
from typing import Any

from django.db import transaction
from django.dispatch import receiver

from billing_portal.alerts import recharge, services
from billing_portal.invoicing.models import Invoice
from billing_portal.invoicing.signals import invoice_payment_failed
from metering.signals import usage_rated
from plans.models import Customer, SubscriptionPeriod

logger = logging.getLogger(__name__)


@receiver(usage_rated, dispatch_uid="alerts_usage_rated")
def _usage_rated(
    sender: Any,
    *,
    customer: Customer,
    period_ids: set[int],
    credits: Decimal,
    customer_periods: list[SubscriptionPeriod] | None = None,
    **kwargs: Any,
) -> None:
    # A savepoint: a failure here is logged and rolled back on its own, because an
    # alert that cannot be evaluated must not stop the customer's usage being billed.
    try:
        with transaction.atomic():
            # usage_rated is sent under the customer's account lock (metering.signals).
            figures = services.usage_evaluate(
                customer=customer,
                period_ids=period_ids,
                account_locked=True,
                customer_periods=customer_periods,
            )
            # The rule was read with the figures: only a balance under it reads it again.
            available = figures.balance.available
            if figures.recharge_below is not None and available < figures.recharge_below:
                recharge.auto_recharge_check(customer=customer, available=available)
    except Exception:
        logger.exception("alerts for %s could not be evaluated", customer)


@receiver(invoice_payment_failed, dispatch_uid="alerts_invoice_payment_failed")
def _invoice_payment_failed(sender: Any, *, invoice: Invoice, **kwargs: Any) -> None:
    # In the webhook's transaction, with no savepoint of its own: an alert that cannot be
    # stored rolls the event back, and Stripe delivers it again.
    services.payment_failed_alert(invoice=invoice)
