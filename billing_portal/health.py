"""Liveness of what a request needs: the database and the Celery broker."""

from __future__ import annotations

from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from billing_portal.celery import app as celery_app


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


@never_cache
@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    failures = {
        name: error
        for name, error in (("database", _check_database()), ("broker", _check_broker()))
        if error is not None
    }
    checks = {name: failures.get(name, "ok") for name in ("database", "broker")}
    status = 503 if failures else 200
    return JsonResponse({"status": "fail" if failures else "ok", "checks": checks}, status=status)
