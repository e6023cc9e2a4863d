"""Alerts and auto-recharge attempts, read-only: both are written by evaluation only."""

from __future__ import annotations

from django.contrib import admin

from billing_portal.alerts.models import Alert, RechargeAttempt
from billing_portal.staff.admin import ReadOnlyAdmin


@admin.register(Alert)
class AlertAdmin(ReadOnlyAdmin):
    list_display = ["created_at", "customer", "kind", "threshold", "period", "read_at"]
    list_filter = ["kind"]
    search_fields = ["customer__external_id", "customer__name", "message"]
    date_hierarchy = "created_at"
    list_select_related = ["customer", "period"]


@admin.register(RechargeAttempt)
class RechargeAttemptAdmin(ReadOnlyAdmin):
    list_display = [
        "created_at",
        "customer",
        "status",
        "credits",
        "amount",
        "trigger_key",
        "next_allowed_at",
        "purchase",
    ]
    list_filter = ["status"]
    search_fields = ["customer__external_id", "customer__name", "trigger_key"]
    date_hierarchy = "created_at"
    list_select_related = ["customer", "purchase"]
