from __future__ import annotations

from celery import shared_task

from metering import rating


@shared_task(acks_late=True)
def events_rate_pending(rounds: int | None = None) -> int:
    # Safe to run any number of times at once: workers claim disjoint queue rows.
    return rating.events_rate_pending(rounds=rounds)
