from __future__ import annotations

from celery import shared_task

from billing_portal.invoicing import period_close


@shared_task(bind=True)
def periods_close_due_task(self) -> int:  # type: ignore[no-untyped-def]
    """Beat: send one close per batch of due periods (see period_close), to the queue this
    came on."""
    queue = (self.request.delivery_info or {}).get("routing_key")
    due = period_close.periods_due()
    for batch in period_close.batches(due):
        periods_close_task.apply_async((batch,), queue=queue)
    return len(due)


# No retry: a period that fails is left as it was, still due, and the next sweep sends it
# again; acks_late sends the batch again to another worker if this one dies in it.
@shared_task(acks_late=True)
def periods_close_task(period_ids: list[int]) -> list[int]:
    return [invoice.pk for invoice in period_close.periods_close(period_ids=period_ids)]


@shared_task(acks_late=True)
def period_close_task(period_id: int) -> int | None:
    """One period: the messages sent before periods were closed in batches."""
    invoices = period_close.periods_close(period_ids=[period_id])
    return invoices[0].pk if invoices else None


@shared_task
def revenue_recognize() -> int:
    from billing_portal.invoicing.revenue import revenue_recognize_all

    return revenue_recognize_all()
