from __future__ import annotations

from celery import shared_task
from django.db.models import Exists, OuterRef

from billing_portal.invoicing import services
from billing_portal.invoicing.models import Invoice
from plans.models import PeriodStatus, SubscriptionPeriod


@shared_task(bind=True, max_retries=10, acks_late=True)
def invoice_period(self, period_id: int) -> int:  # type: ignore[no-untyped-def]
    try:
        period = SubscriptionPeriod.objects.get(pk=period_id)
        return services.invoice_for_period(period=period).pk
    except Exception as exc:
        raise self.retry(exc=exc, countdown=min(600, 2**self.request.retries * 5)) from exc


@shared_task
def invoice_periods_missing() -> int:
    """Invoice periods handed to invoicing whose message was lost; safe to repeat."""
    missing = SubscriptionPeriod.objects.filter(status=PeriodStatus.INVOICING).exclude(
        Exists(Invoice.objects.filter(period=OuterRef("pk")))
    )
    count = 0
    for period in missing[:500]:
        services.invoice_for_period(period=period)
        count += 1
    return count


@shared_task
def stripe_syncs_unsent() -> int:
    from billing_portal.invoicing.sync import stripe_syncs_unsent

    return stripe_syncs_unsent()


@shared_task
def revenue_recognize() -> int:
    from billing_portal.invoicing.revenue import revenue_recognize_all

    return revenue_recognize_all()


# Stripe sync tasks live beside the adapter's callers; imported so Celery registers them.
from billing_portal.invoicing import stripe_tasks  # noqa: E402, F401
