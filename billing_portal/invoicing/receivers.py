from __future__ import annotations

from typing import Any

from django.dispatch import receiver

from plans.models import SubscriptionPeriod
from plans.signals import period_ready_for_invoicing


@receiver(period_ready_for_invoicing)
def enqueue_period_invoice(sender: Any, period: SubscriptionPeriod, **kwargs: Any) -> None:
    from billing_portal.invoicing.tasks import invoice_period

    invoice_period.delay_on_commit(period.pk)
