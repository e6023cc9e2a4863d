from __future__ import annotations

from celery import shared_task

from billing_portal.invoicing import period_close


@shared_task(bind=True)
def periods_close_due_task(self) -> int:  # type: ignore[no-untyped-def]
    """Beat: send one close per due period (see period_close), to the queue this came on."""
    queue = (self.request.delivery_info or {}).get("routing_key")
    due = period_close.periods_due()
    for period_id in due:
        period_close_task.apply_async((period_id,), queue=queue)
    return len(due)


@shared_task(bind=True, max_retries=10, acks_late=True)
def period_close_task(self, period_id: int) -> int | None:  # type: ignore[no-untyped-def]
    try:
        invoice = period_close.period_close(period_id=period_id)
    except Exception as exc:
        raise self.retry(exc=exc, countdown=min(600, 2**self.request.retries * 5)) from exc
    return invoice.pk if invoice else None


@shared_task
def revenue_recognize() -> int:
    from billing_portal.invoicing.revenue import revenue_recognize_all

    return revenue_recognize_all()
