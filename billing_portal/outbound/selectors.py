"""Reads for outgoing webhooks."""

from __future__ import annotations

from datetime import datetime

from billing_portal.outbound.models import DeliveryStatus, WebhookDelivery


def deliveries_due(*, now: datetime, limit: int = 500) -> list[int]:
    """Ids of pending deliveries to enabled endpoints whose next attempt is due, oldest first."""
    return list(
        WebhookDelivery.objects.filter(
            status=DeliveryStatus.PENDING, next_attempt_at__lte=now, endpoint__enabled=True
        )
        .order_by("next_attempt_at", "pk")
        .values_list("pk", flat=True)[:limit]
    )
