"""Who may use a customer's portal, and the alert and auto-recharge settings they keep.

The spend limit itself lives on ``plans.Customer`` because authorizations enforce it.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q
from djmoney.models.fields import MoneyField

from ledger.models import CreditField


class Role(models.TextChoices):
    OWNER = "owner"
    ADMIN = "admin"
    VIEWER = "viewer"


class PortalMembership(models.Model):
    """A portal user belongs to exactly one customer."""

    user = models.OneToOneField(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="portal_membership"
    )
    customer = models.ForeignKey(
        "plans.Customer", on_delete=models.PROTECT, related_name="portal_members"
    )
    role = models.CharField(max_length=8, choices=Role.choices, default=Role.VIEWER)
    invited_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="+",
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"{self.user} ({self.role} of {self.customer_id})"

    @property
    def can_manage(self) -> bool:
        return self.role in (Role.OWNER, Role.ADMIN)

    @property
    def is_owner(self) -> bool:
        return self.role == Role.OWNER


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
