"""Outgoing webhooks: endpoints, the events sent to them, and the log of every attempt.

An event is stored once; each endpoint subscribed to its type gets one delivery, and each
HTTP request made for a delivery is one attempt row, so the log shows every response.
"""

from __future__ import annotations

import secrets

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q


class EventType(models.TextChoices):
    ALERT_TRIGGERED = "alert.triggered"
    BALANCE_DEPLETED = "balance.depleted"
    INVOICE_FINALIZED = "invoice.finalized"
    INVOICE_PAYMENT_FAILED = "invoice.payment_failed"
    INVOICE_PAID = "invoice.paid"
    CREDIT_GRANT_CREATED = "credit_grant.created"


class DeliveryStatus(models.TextChoices):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"


def endpoint_secret_new() -> str:
    return f"whsec_{secrets.token_urlsafe(32)}"


def event_public_id_new() -> str:
    return f"evt_{secrets.token_urlsafe(18)}"


class WebhookEndpoint(models.Model):
    url = models.URLField(max_length=500)
    description = models.CharField(max_length=200, blank=True)
    secret = models.CharField(max_length=100, default=endpoint_secret_new)
    # Empty means every type, including types added later.
    event_types = ArrayField(
        models.CharField(max_length=64, choices=EventType.choices), default=list, blank=True
    )
    enabled = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.description or self.url

    def subscribes_to(self, event_type: str) -> bool:
        return not self.event_types or event_type in self.event_types


class OutboundEvent(models.Model):
    public_id = models.CharField(max_length=64, unique=True, default=event_public_id_new)
    type = models.CharField(max_length=64, choices=EventType.choices)
    customer = models.ForeignKey(
        "plans.Customer",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="outbound_events",
    )
    data = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        indexes = [models.Index(fields=["type", "-created_at"], name="outbound_event_type")]

    def __str__(self) -> str:
        return f"{self.public_id} {self.type}"


class WebhookDelivery(models.Model):
    event = models.ForeignKey(OutboundEvent, on_delete=models.PROTECT, related_name="deliveries")
    # PROTECT keeps the log: an endpoint with deliveries is disabled, not deleted.
    endpoint = models.ForeignKey(
        WebhookEndpoint, on_delete=models.PROTECT, related_name="deliveries"
    )
    status = models.CharField(
        max_length=16, choices=DeliveryStatus.choices, default=DeliveryStatus.PENDING
    )
    attempts = models.PositiveIntegerField(default=0)
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    last_status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "webhook deliveries"
        constraints = [
            models.UniqueConstraint(fields=["event", "endpoint"], name="outbound_delivery_once"),
        ]
        # The sweep reads only pending rows by due time; a partial index stays small.
        indexes = [
            models.Index(
                fields=["next_attempt_at"],
                condition=Q(status="pending"),
                name="outbound_delivery_due",
            )
        ]
        permissions = [("replay_delivery", "Replay a webhook delivery")]

    def __str__(self) -> str:
        return f"{self.event.public_id} to {self.endpoint}"


class DeliveryAttempt(models.Model):
    delivery = models.ForeignKey(
        WebhookDelivery, on_delete=models.PROTECT, related_name="attempt_log"
    )
    number = models.PositiveIntegerField()
    requested_at = models.DateTimeField()
    duration_ms = models.PositiveIntegerField()
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    response_body = models.TextField(blank=True)  # the first kilobyte only

    class Meta:
        ordering = ["delivery", "number"]
        constraints = [
            models.UniqueConstraint(fields=["delivery", "number"], name="outbound_attempt_once"),
        ]

    def __str__(self) -> str:
        return f"attempt {self.number}: {self.status_code or self.error}"
