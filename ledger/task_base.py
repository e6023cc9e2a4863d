"""The base of every task: a task asked for after a commit never undoes that commit.

Work is sent to the broker once the transaction that asked for it commits. If the
broker is unreachable then, the caller has already committed: raising would answer a
client "failed" for data that is stored (a client that resends under new identifiers is
then charged twice). So the send is logged and dropped, and the beat job that sweeps for
the same work (every task that is sent after a commit has one) picks it up later.

After a failed send, sends are skipped for ``BROKER_REST_SECONDS``: while the broker is
down each one would wait for a connection attempt, and the sweeps catch up anyway.

It lives in the lowest layer so that every app's tasks can use it; the Celery app makes
it the default task class.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from celery.contrib.django.task import DjangoTask
from django.db import transaction

logger = logging.getLogger(__name__)

BROKER_REST_SECONDS = 5.0
_resting_until = 0.0


class AfterCommitTask(DjangoTask):
    def delay_on_commit(self, *args: Any, **kwargs: Any) -> None:
        transaction.on_commit(functools.partial(send_quietly, self, args, kwargs))

    def apply_async_on_commit(
        self,
        args: Sequence[Any] | None = None,
        kwargs: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> None:
        transaction.on_commit(
            functools.partial(send_quietly, self, args or (), kwargs or {}, options)
        )


def send_quietly(
    task: Any,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    options: Mapping[str, Any] | None = None,
) -> bool:
    """Send ``task``; on failure log it and return False instead of raising."""
    global _resting_until
    if time.monotonic() < _resting_until:
        logger.info(
            "task %s not sent (broker unreachable moments ago); its sweep runs it", task.name
        )
        return False
    try:
        task.apply_async(tuple(args), dict(kwargs or {}), **dict(options or {}))
    except Exception as exc:
        _resting_until = time.monotonic() + BROKER_REST_SECONDS
        logger.warning(
            "task %s%s not sent, the broker is unreachable (%s: %s); its beat sweep runs it",
            task.name,
            tuple(args),
            type(exc).__name__,
            exc,
        )
        return False
    return True


def broker_rest_reset() -> None:
    """Forget an earlier failure (tests, and a process that knows the broker is back)."""
    global _resting_until
    _resting_until = 0.0
