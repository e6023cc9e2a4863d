"""The staff audit log: one row per staff action taken through the admin workflows.

Append-only like the ledger: a database trigger (migration 0002) refuses UPDATE and
DELETE, so a compromised or careless admin session cannot rewrite who did what.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models


class AuditAction(models.TextChoices):
    GRANT_CREATE = "grant_create"
    GRANT_VOID = "grant_void"
    GRANT_EXPIRE = "grant_expire"
    EVENT_CANCEL = "event_cancel"
    EVENT_CORRECT = "event_correct"
    RATING_RETRY = "rating_retry"
    CREDIT_NOTE_ISSUE = "credit_note_issue"
    CREDIT_NOTE_VOID = "credit_note_void"
    PLAN_CHANGE = "plan_change"
    SYNC_RETRY = "sync_retry"
    API_KEY_CREATE = "api_key_create"
    API_KEY_REVOKE = "api_key_revoke"
    CATALOG_LOAD = "catalog_load"


class AuditLog(models.Model):
    """Every balance-changing action, from any surface: the admin's workflows (a staff
    user) and the API (no user: ``operator_name`` is the actor, e.g. ``api:backend``)."""

    operator = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+", null=True
    )
    # Kept in clear so the row still reads right if the user is later renamed.
    operator_name = models.CharField(max_length=150)
    action = models.CharField(max_length=32, choices=AuditAction.choices)
    reason_code = models.CharField(max_length=64)
    memo = models.TextField(blank=True)
    target_type = models.CharField(max_length=64)
    target_id = models.CharField(max_length=64)
    details = models.JSONField(default=dict, blank=True)
    # One per submitted form: a double-clicked "Confirm" or a replayed POST is refused by
    # this constraint, and the refused action is rolled back with it.
    request_token = models.CharField(max_length=64, unique=True, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["target_type", "target_id"], name="staff_audit_target")]
        # Workflow permissions live here: they are about staff actions, not one model.
        permissions = [
            ("grant_credits", "Grant credits of any category and amount"),
            ("grant_promotional_credits", "Grant promotional credits up to the support limit"),
            ("exceed_grant_daily_limit", "Grant credits beyond the daily limit per staff user"),
            ("void_grant", "Void or expire a credit grant"),
            ("correct_usage", "Cancel or correct a meter event"),
            ("issue_credit_note", "Issue or void a credit note"),
            ("change_plan", "Change a customer's plan"),
            ("retry_sync", "Retry a failed Stripe sync"),
            ("manage_api_keys", "Create and revoke API keys"),
            ("edit_catalog", "Edit plans and rate cards"),
            ("read_reports", "View revenue, reconciliation and lineage reports"),
        ]

    def __str__(self) -> str:
        return f"{self.action} {self.target_type} {self.target_id} by {self.operator_name}"

    def save(self, *args: Any, **kwargs: Any) -> None:
        if self.pk is not None:
            raise ValueError("audit rows are append-only")
        super().save(*args, **kwargs)
