"""What the HTTP API stores for itself: Idempotency-Key answers and rate-limit counts.

They were created in the plans app and moved here (state-only migrations: the tables
keep their names).
"""

from __future__ import annotations

from django.db import models


class ApiKeyRateWindow(models.Model):
    """How many requests a key made in one fixed window of the rate limit.

    Counted in PostgreSQL, with one upsert per request, so every web process on every
    machine shares one exact count per key. The table is UNLOGGED (plans migration 0005): the
    counts live seconds, and losing them in a crash only resets the limit early.
    """

    pk = models.CompositePrimaryKey("api_key", "window_start")
    # No foreign key constraint: checking it would lock the key's row on every request.
    api_key = models.ForeignKey(
        "plans.ApiKey", on_delete=models.DO_NOTHING, db_constraint=False, related_name="+"
    )
    window_start = models.BigIntegerField(help_text="Unix seconds")
    count = models.PositiveIntegerField()

    class Meta:
        db_table = "plans_apikeyratewindow"  # its table from before the move

    def __str__(self) -> str:
        return f"{self.api_key_id} @ {self.window_start}: {self.count}"


class IdempotencyRecord(models.Model):
    """The first response to a POST with an ``Idempotency-Key``, replayed on retries."""

    api_key = models.ForeignKey("plans.ApiKey", on_delete=models.CASCADE, related_name="+")
    key = models.CharField(max_length=255)
    method = models.CharField(max_length=8)
    path = models.CharField(max_length=512)
    request_hash = models.CharField(max_length=64)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    response_body = models.JSONField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "plans_idempotencyrecord"  # its table from before the move
        constraints = [
            models.UniqueConstraint(fields=["api_key", "key"], name="plans_idempotency_key"),
        ]
        indexes = [models.Index(fields=["created_at"], name="plans_idempotency_created")]

    def __str__(self) -> str:
        return f"{self.method} {self.path} [{self.key}]"
