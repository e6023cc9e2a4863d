"""Housekeeping of what the API stores for itself."""

from __future__ import annotations

from datetime import timedelta

from celery import shared_task
from django.conf import settings
from django.utils import timezone

from billing_portal.api.idempotency import idempotency_records_prune


@shared_task
def idempotency_records_prune_task() -> int:
    """Idempotency-Key answers older than IDEMPOTENCY_KEY_RETENTION_HOURS (24, as Stripe
    keeps them) are forgotten: a retry after that is a new request."""
    cutoff = timezone.now() - timedelta(hours=settings.IDEMPOTENCY_KEY_RETENTION_HOURS)
    return idempotency_records_prune(older_than=cutoff)
