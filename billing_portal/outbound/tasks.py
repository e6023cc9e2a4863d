from __future__ import annotations

from celery import shared_task
from django.utils import timezone

from billing_portal.outbound import selectors, services


@shared_task(acks_late=True)
def delivery_send(delivery_id: int) -> int | None:
    """One attempt; retries are scheduled on the row and sent by the sweep below."""
    attempt = services.delivery_attempt(delivery_id=delivery_id)
    return attempt.status_code if attempt is not None else None


@shared_task
def deliveries_send_due() -> int:
    """Queue every due delivery: retries, replays, and sends whose message was lost.

    A delivery queued twice is sent once: the first task to claim it moves it out of due.
    """
    due = selectors.deliveries_due(now=timezone.now())
    for delivery_id in due:
        delivery_send.delay(delivery_id)
    return len(due)
