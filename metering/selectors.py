"""Reads over metering's own tables."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.db import connection
from django.utils import timezone


@dataclass(frozen=True)
class RatingBacklog:
    """How far rating is behind: what a monitor graphs and /healthz judges."""

    lag_seconds: float  # age of the oldest event waiting for its first rating; 0 when none
    oldest_enqueued_at: datetime | None
    failing: int  # failed at least once, to be tried again
    parked: int  # failed every attempt: waiting for staff


def rating_backlog(*, now: datetime | None = None) -> RatingBacklog:
    now = now or timezone.now()
    with connection.cursor() as cursor:
        # Event ids grow with time, so the lowest queued id is (near enough) the oldest
        # and the primary-key index finds it without scanning a long queue.
        cursor.execute(
            """
            SELECT
                (SELECT enqueued_at FROM metering_ratingqueue
                 WHERE attempts = 0 AND parked_at IS NULL ORDER BY event_id LIMIT 1),
                (SELECT COUNT(*) FROM metering_ratingqueue
                 WHERE attempts > 0 AND parked_at IS NULL),
                (SELECT COUNT(*) FROM metering_ratingqueue
                 WHERE attempts > 0 AND parked_at IS NOT NULL)
            """
        )
        oldest, failing, parked = cursor.fetchone()
    lag = max((now - oldest).total_seconds(), 0.0) if oldest else 0.0
    return RatingBacklog(lag, oldest, failing, parked)
