"""Alerts (each fires once per threshold per period), the customer's alert settings and
auto-recharge rule, and auto-recharge attempts.

The settings and the rule were the portal's models once: their tables keep the ``portal_``
names they were created with, so moving them here changed no row.

An alert row is also the customer's portal notification: ``read_at`` is its read state.
The database refuses the duplicates that concurrency would otherwise create: a second
alert for the same customer, period, kind and threshold, a second attempt for the same
trigger, and a second recharge in flight.
"""

from __future__ import annotations

from django.contrib.postgres.fields import ArrayField
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
    PAYMENT_FAILED = "payment_failed", "Payment failed"


def default_usage_thresholds() -> list[int]:
    return [50, 80, 100]


class AlertSettings(models.Model):
    customer = models.OneToOneField(
        "plans.Customer", on_delete=models.CASCADE, related_name="portal_alert_settings"
    )
    # Percent of the period's included credits used.
    usage_thresholds = ArrayField(
        models.PositiveSmallIntegerField(), default=default_usage_thresholds, blank=True
    )
    low_balance_credits = CreditField(null=True, blank=True)
    recipients = ArrayField(models.EmailField(), default=list, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        db_table = "portal_alertsettings"
        verbose_name_plural = "alert settings"
        constraints = [
            models.CheckConstraint(
                condition=Q(low_balance_credits__isnull=True) | Q(low_balance_credits__gte=0),
                name="portal_low_balance_gte_0",
            ),
        ]

    def __str__(self) -> str:
        return f"alerts of {self.customer_id}"


class AutoRecharge(models.Model):
    customer = models.OneToOneField(
        "plans.Customer", on_delete=models.CASCADE, related_name="portal_auto_recharge"
    )
    enabled = models.BooleanField(default=False)
    # Buy ``pack`` when available credits fall under this.
    threshold_credits = CreditField(null=True, blank=True)
    pack = models.ForeignKey(
        "plans.CreditPack", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    max_recharges_per_month = models.PositiveSmallIntegerField(default=3)
    # What auto-recharge may spend in a calendar month; null: no money cap. Compared only
    # with a pack price in the same currency, never converted.
    max_amount_per_month = MoneyField(
        max_digits=14, decimal_places=2, default_currency="USD", null=True, blank=True
    )
    updated_at = models.DateTimeField(auto_now=True)

    objects = models.Manager()

    class Meta:
        db_table = "portal_autorecharge"
        constraints = [
            models.CheckConstraint(
                condition=Q(enabled=False)
                | (Q(threshold_credits__isnull=False) & Q(pack__isnull=False)),
                name="portal_auto_recharge_complete_when_enabled",
            ),
            models.CheckConstraint(
                condition=Q(threshold_credits__isnull=True) | Q(threshold_credits__gte=0),
                name="portal_auto_recharge_threshold_gte_0",
            ),
            models.CheckConstraint(
                condition=Q(max_amount_per_month__isnull=True) | Q(max_amount_per_month__gt=0),
                name="portal_auto_recharge_max_amount_gt_0",
            ),
        ]

    def __str__(self) -> str:
        return f"auto-recharge of {self.customer_id}"


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
