from __future__ import annotations

import logging
from typing import Any

from celery import shared_task
from django.conf import settings
from django.core.cache import cache
from django.db import transaction

from ledger.task_base import AfterCommitTask, send_quietly
from metering import partitions, rating, retention

logger = logging.getLogger(__name__)

# Set while a rating task is waiting in the broker; the task clears it before it claims
# anything, so an event committed after the clear is either claimed by that task or
# sends a new one. The timeout bounds what a lost message costs (the beat sweep, every
# 2 s, runs the task anyway and clears the flag).
SCHEDULED_KEY = "metering:rating-scheduled"
SCHEDULED_TIMEOUT = 5

# Caches each process keeps to itself: a flag there would not be seen by the worker
# that clears it, so with one of them every accepted batch sends its task.
_UNSHARED_CACHES = {
    "django.core.cache.backends.locmem.LocMemCache",
    "django.core.cache.backends.dummy.DummyCache",
}


def scheduled_flag_shared() -> bool:
    return settings.CACHES["default"]["BACKEND"] not in _UNSHARED_CACHES


class RatingTask(AfterCommitTask):
    def delay_on_commit(self, *args: Any, **kwargs: Any) -> None:
        """Send the task after commit unless one is already waiting: ingest calls this for
        every accepted batch, and one waiting task rates every customer's queue."""
        if args or kwargs:
            super().delay_on_commit(*args, **kwargs)
            return
        transaction.on_commit(self._send_unless_scheduled)

    def _send_unless_scheduled(self) -> None:
        shared = scheduled_flag_shared() and _flag_set()
        if shared is None:
            return  # one is waiting
        if not send_quietly(self) and shared:
            _flag_clear()


def _flag_set() -> bool | None:
    """True when this call set the shared flag, None when it was set already, False when
    the cache is unreachable (then the task is sent anyway: a spare one costs little)."""
    try:
        return True if cache.add(SCHEDULED_KEY, 1, timeout=SCHEDULED_TIMEOUT) else None
    except Exception as exc:
        logger.warning("rating flag not read, cache unreachable (%s); sending the task", exc)
        return False


def _flag_clear() -> None:
    try:
        cache.delete(SCHEDULED_KEY)
    except Exception as exc:
        logger.warning("rating flag not cleared, cache unreachable (%s)", exc)


@shared_task(base=RatingTask, acks_late=True)
def events_rate_pending(rounds: int | None = None) -> int:
    # Safe to run any number of times at once: workers claim disjoint queue rows.
    if scheduled_flag_shared():
        _flag_clear()
    return rating.events_rate_pending(rounds=rounds)


@shared_task
def raw_events_remove() -> int:
    """Retention (METERING_RAW_RETENTION_MONTHS): the raw events it no longer keeps."""
    return retention.raw_events_remove().events


@shared_task
def partitions_ensure() -> list[str]:
    """The monthly partitions of events and ratings, made ahead (metering.partitions)."""
    return partitions.partitions_ensure()
