"""Liveness of what the product needs: the database, the Celery broker, and rating
keeping up (an accepted event counts only once it is in the balance).

The body also carries the rating figures, so a monitor can graph the lag rather than
wait for the probe to fail, and the event partitions' (beat makes them ahead; events
still stored if it stops, so the probe does not fail for them).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from billing_portal.celery import app as celery_app
from metering.partitions import PartitionsStatus, partition_month_text, partitions_status
from metering.selectors import RatingBacklog, rating_backlog


def _check_database() -> str | None:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _check_broker() -> str | None:
    try:
        with celery_app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def _backlog() -> RatingBacklog | None:
    try:
        return rating_backlog()
    except Exception:
        return None


def _check_rating(backlog: RatingBacklog | None) -> str | None:
    if backlog is None:
        return "unknown: the database is unreachable"
    limit = settings.HEALTH_MAX_RATING_LAG_SECONDS
    if backlog.lag_seconds > limit:
        return (
            f"behind: the oldest unrated event has waited {backlog.lag_seconds:.0f} s "
            f"(limit {limit} s); check that workers run"
        )
    return None


def _rating_figures(backlog: RatingBacklog | None) -> dict[str, Any] | None:
    if backlog is None:
        return None
    oldest = backlog.oldest_enqueued_at
    return {
        "lag_seconds": round(backlog.lag_seconds, 3),
        "oldest_unrated_at": oldest.isoformat() if oldest else None,
        "failing": backlog.failing,
        "parked": backlog.parked,
    }


def _partitions() -> PartitionsStatus | None:
    try:
        return partitions_status()
    except Exception:
        return None


def _partition_figures(status: PartitionsStatus | None) -> dict[str, Any] | None:
    if status is None:
        return None
    made = status.made_through
    return {
        "made_through": partition_month_text(made) if made is not None else None,
        "months_ahead": status.months_ahead,
        "rows_in_default": status.rows_in_default,
    }


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    database = _check_database()
    # Parked events are staff's to resolve (reconcile and the admin name them); they do
    # not take the web out of a load balancer's rotation.
    backlog = _backlog() if database is None else None
    results = {"database": database, "broker": _check_broker(), "rating": _check_rating(backlog)}
    failed = any(error is not None for error in results.values())
    body = {
        "status": "fail" if failed else "ok",
        "checks": {name: error or "ok" for name, error in results.items()},
        "rating": _rating_figures(backlog),
        "partitions": _partition_figures(_partitions() if database is None else None),
    }
    return JsonResponse(body, status=503 if failed else 200)
