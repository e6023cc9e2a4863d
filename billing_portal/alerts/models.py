"""Alerts (each fires once per threshold per period) and auto-recharge attempts.

An alert row is also the customer's portal notification: ``read_at`` is its read state.
The database refuses the duplicates that concurrency would otherwise create: a second
alert for the same customer, period, kind and threshold, a second attempt for the same
trigger, and a second recharge in flight.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils import timezone
from djmoney.models.fields import MoneyField

from ledger.models import CreditField


class AlertKind(models.TextChoices):
    USAGE_THRESHOLD = "usage_threshold", "Usage alert"
    LOW_BALANCE = "low_balance", "Low credit balance"
    SPEND_LIMIT_REACHED = "spend_limit_reached", "Spend limit reached"
    ANOMALOUS_BURN = "anomalous_burn", "Unusual usage"
    BALANCE_DEPLETED = "balance_depleted", "Credits used up"
    AUTO_RECHARGE_FAILED = "auto_recharge_failed", "Auto-recharge failed"
    AUTO_RECHARGE_CAP_REACHED = "auto_recharge_cap_reached", "Auto-recharge monthly cap reached"


class Alert(models.Model):
    customer = models.ForeignKey("plans.Customer", on_delete=models.CASCADE, related_name="alerts")
    # NULL for alerts that belong to no billing period (e.g. the monthly recharge cap).
    period = models.ForeignKey(
        "plans.SubscriptionPeriod",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
    )
    kind = models.CharField(max_length=32, choices=AlertKind.choices)
    # What makes this alert distinct within its period: "80" (percent), the low-balance
    # amount, the hour of a burn, the recharge attempt or month.
    threshold = models.CharField(max_length=64)
    message = models.TextField()
    data = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    read_at = models.DateTimeField(null=True, blank=True)
    emailed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            # NULLS NOT DISTINCT: an alert without a period is still fired once.
            models.UniqueConstraint(
                fields=["customer", "period", "kind", "threshold"],
                nulls_distinct=False,
                name="alerts_alert_once",
            ),
        ]
        indexes = [
            models.Index(fields=["customer", "-created_at"], name="alerts_alert_customer_recent"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.threshold} for {self.customer_id}"


class RechargeStatus(models.TextChoices):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    FAILED = "failed"  # not a decline: the pack is no longer sold, Stripe gave up
    SKIPPED_CAP = "skipped_cap"


class RechargeAttempt(models.Model):
    customer = models.ForeignKey(
        "plans.Customer", on_delete=models.CASCADE, related_name="recharge_attempts"
    )
    purchase = models.OneToOneField(
        "invoicing.CreditPackPurchase",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="recharge_attempt",
    )
    # One attempt per trigger: every rating batch that finds the balance low derives the
    # same key until this attempt is resolved, so a burst of batches buys once.
    trigger_key = models.CharField(max_length=128)
    status = models.CharField(
        max_length=16, choices=RechargeStatus.choices, default=RechargeStatus.PENDING
    )
    pack = models.ForeignKey("plans.CreditPack", on_delete=models.PROTECT, related_name="+")
    credits = CreditField()
    amount = MoneyField(max_digits=14, decimal_places=2, default_currency="USD")
    failure_message = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    resolved_at = models.DateTimeField(null=True, blank=True)
    # After a failure, no new attempt before this (exponential back-off).
    next_allowed_at = models.DateTimeField(null=True, blank=True)

    objects = models.Manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "trigger_key"], name="alerts_recharge_once_per_trigger"
            ),
            models.UniqueConstraint(
                fields=["customer"],
                condition=Q(status="pending"),
                name="alerts_recharge_one_in_flight",
            ),
        ]
        indexes = [
            models.Index(fields=["customer", "-created_at"], name="alerts_recharge_recent"),
        ]

    def __str__(self) -> str:
        return f"recharge {self.trigger_key} for {self.customer_id} ({self.status})"
