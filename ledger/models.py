"""Credit accounts, grants, holds and the append-only ledger.

Credits are ``Decimal`` with 6 places everywhere. The ledger knows nothing of customers,
plans or events: an :class:`Account` is what a customer holds, and an entry names its
cause as ``(cause_type, cause_id)``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import F, Q
from djmoney.models.fields import MoneyField

# Defined in ledger.units; here too because models, fields and callers read them here.
from ledger.units import CREDIT_DIGITS, CREDIT_PLACES, CREDIT_QUANTUM, ZERO  # noqa: F401


def CreditField(**kwargs: object) -> models.DecimalField:
    return models.DecimalField(max_digits=CREDIT_DIGITS, decimal_places=CREDIT_PLACES, **kwargs)  # type: ignore[arg-type]


class Account(models.Model):
    """One per customer: the row every balance change locks first.

    ``held`` is the sum of open holds. Posted credits are the ``remaining`` of usable
    grants, read from the grants themselves: whether a grant is usable depends on the
    clock (effective_at, expires_at), so a stored total would be stale between ticks.
    """

    created_at = models.DateTimeField(auto_now_add=True)
    held = CreditField(default=ZERO)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(held__gte=0), name="ledger_account_held_gte_0"),
        ]

    def __str__(self) -> str:
        return f"account {self.pk}"


class GrantCategory(models.TextChoices):
    INCLUDED = "included"
    PROMOTIONAL = "promotional"
    PAID = "paid"
    ROLLOVER = "rollover"


# Draw-down order puts free credits before paid ones (Stripe: promotional before paid).
CATEGORY_RANK = {
    GrantCategory.INCLUDED: 0,
    GrantCategory.ROLLOVER: 0,
    GrantCategory.PROMOTIONAL: 0,
    GrantCategory.PAID: 1,
}


# The draw-down order, stated once (Stripe's documented order): lower priority number;
# earlier expiry, none last; free (included, rollover, promotional) before paid; earlier
# effective; earlier created. Two forms of the one rule side by side: the ordering for
# queries and the key for grants already in memory.
DRAW_DOWN_ORDER = (
    "priority",
    F("expires_at").asc(nulls_last=True),
    "category_rank",
    "effective_at",
    "pk",
)
_NEVER = datetime.max.replace(tzinfo=UTC)


def draw_down_key(grant: CreditGrant) -> tuple[object, ...]:
    return (
        grant.priority,
        grant.expires_at is None,
        grant.expires_at or _NEVER,
        grant.category_rank,
        grant.effective_at,
        grant.pk,
    )


class GrantStatus(models.TextChoices):
    ACTIVE = "active"
    DEPLETED = "depleted"
    EXPIRED = "expired"
    VOIDED = "voided"


class CreditGrant(models.Model):
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="grants")
    amount = CreditField()
    remaining = CreditField()
    category = models.CharField(max_length=16, choices=GrantCategory.choices)
    category_rank = models.PositiveSmallIntegerField()
    priority = models.PositiveSmallIntegerField(default=50)
    effective_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)
    # Empty: usable for every meter. Otherwise only for these meter codes.
    applies_to = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    # Null: pooled across the customer. Otherwise only for usage in this workspace.
    workspace = models.CharField(max_length=64, null=True, blank=True)
    cost_basis = MoneyField(max_digits=19, decimal_places=8, default_currency="USD", default=0)
    status = models.CharField(
        max_length=16, choices=GrantStatus.choices, default=GrantStatus.ACTIVE
    )
    reason = models.CharField(max_length=64, blank=True)
    # For staff only: never shown to the customer (see description).
    memo = models.TextField(blank=True)
    # What the customer reads about this grant (portal, e-mails, the API's customers).
    description = models.CharField(max_length=255, blank=True, default="", db_default="")
    actor = models.CharField(max_length=128)
    # Where the grant came from, e.g. ("subscription_period", "42") or ("payment", "pi_...").
    source_type = models.CharField(max_length=32, blank=True)
    source_id = models.CharField(max_length=128, blank=True)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    # Usage is charged against the grants usable at its timestamp, so a grant past
    # expires_at still pays for late usage until its leftovers are written off: by the
    # expiry sweep a grace window after expires_at, or, when this is set, by the grant's
    # source when it closes (a subscription period, whose late events may arrive until
    # it is invoiced).
    expired_by_source = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)

    # Declared so type checkers see it; django-money wraps it to understand Money lookups.
    objects = models.Manager()

    class Meta:
        constraints = [
            # What an entry's (grant, account) foreign key points at: see LedgerEntry.
            models.UniqueConstraint(fields=["id", "account"], name="ledger_grant_of_account"),
            models.CheckConstraint(condition=Q(amount__gt=0), name="ledger_grant_amount_gt_0"),
            models.CheckConstraint(
                condition=Q(remaining__gte=0), name="ledger_grant_remaining_gte_0"
            ),
            models.CheckConstraint(
                condition=Q(remaining__lte=F("amount")), name="ledger_grant_remaining_lte_amount"
            ),
            models.CheckConstraint(
                condition=Q(priority__gte=0, priority__lte=100),
                name="ledger_grant_priority_0_100",
            ),
            models.CheckConstraint(
                condition=Q(expires_at__isnull=True) | Q(expires_at__gt=F("effective_at")),
                name="ledger_grant_expires_after_effective",
            ),
            models.UniqueConstraint(
                fields=["account", "idempotency_key"], name="ledger_grant_idempotency_key"
            ),
        ]
        indexes = [
            models.Index(
                fields=["account", "priority", "expires_at"],
                condition=Q(status="active"),
                name="ledger_grant_active_order",
            ),
            models.Index(
                fields=["expires_at"], condition=Q(status="active"), name="ledger_grant_expiring"
            ),
        ]

    def __str__(self) -> str:
        return f"grant {self.pk}: {self.remaining}/{self.amount} {self.category}"


class HoldStatus(models.TextChoices):
    OPEN = "open"
    CAPTURED = "captured"
    RELEASED = "released"
    EXPIRED = "expired"


class Hold(models.Model):
    """A reservation: reduces available at once, resolves exactly once."""

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="holds")
    credits = CreditField()
    captured_credits = CreditField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=HoldStatus.choices, default=HoldStatus.OPEN)
    meter = models.CharField(max_length=64, blank=True)
    workspace = models.CharField(max_length=64, null=True, blank=True)
    expires_at = models.DateTimeField()
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    resolved_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(credits__gte=0), name="ledger_hold_credits_gte_0"),
            models.CheckConstraint(
                condition=Q(status="open", resolved_at__isnull=True)
                | (~Q(status="open") & Q(resolved_at__isnull=False)),
                name="ledger_hold_resolved_once",
            ),
            models.UniqueConstraint(
                fields=["account", "idempotency_key"], name="ledger_hold_idempotency_key"
            ),
        ]
        indexes = [
            models.Index(
                fields=["expires_at"], condition=Q(status="open"), name="ledger_hold_open_expiry"
            ),
        ]

    def __str__(self) -> str:
        return f"hold {self.pk}: {self.credits} {self.status}"


class OperationKind(models.TextChoices):
    GRANT = "grant"
    CONSUME = "consume"
    HOLD = "hold"
    CAPTURE = "capture"
    RELEASE = "release"
    EXPIRE = "expire"
    VOID = "void"
    ADJUSTMENT = "adjustment"
    REVERSAL = "reversal"


class LedgerOperation(models.Model):
    """The header of one service call: who did it, why, and its idempotency key."""

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="operations")
    kind = models.CharField(max_length=16, choices=OperationKind.choices)
    actor = models.CharField(max_length=128)
    reason = models.CharField(max_length=64, blank=True)
    # For staff only: never shown to the customer.
    memo = models.TextField(blank=True)
    # What the customer reads about this movement; empty: the portal's own words. The
    # database default serves the hold path, which inserts operations in raw SQL.
    description = models.CharField(max_length=255, blank=True, default="", db_default="")
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["account", "idempotency_key"], name="ledger_operation_idempotency_key"
            ),
            # What an entry's (operation, account) foreign key points at: see LedgerEntry.
            models.UniqueConstraint(fields=["id", "account"], name="ledger_operation_of_account"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.pk}"


class EntryKind(models.TextChoices):
    GRANT = "grant"
    CONSUME = "consume"
    HOLD = "hold"
    CAPTURE = "capture"
    RELEASE = "release"
    EXPIRE = "expire"
    VOID = "void"
    OVERAGE = "overage"
    ADJUSTMENT = "adjustment"
    REVERSAL = "reversal"


class CauseType(models.TextChoices):
    EVENT = "event"
    HOLD = "hold"
    INVOICE_LINE = "invoice_line"
    STAFF_ACTION = "staff_action"
    SUBSCRIPTION = "subscription"
    PAYMENT = "payment"
    SYSTEM = "system"
    # Period close bringing a tiered or package rate's credits to its formula on the
    # period's total (cause id "<period id>:<rate id>").
    TIER_TRUE_UP = "tier_true_up"


class LedgerEntry(models.Model):
    """One movement, never updated or deleted (a database trigger refuses both).

    ``credits`` is the signed effect on the grant's remaining credits; ``overage``
    entries have no grant and record the part of a debit no grant covered. ``held`` is
    the signed effect on the account's held credits (hold, capture, release).

    The operation, account and grant are checked by two composite foreign keys in the
    database (migration 0008), which Django cannot declare: (operation, account) names
    an operation of the entry's account and (grant, account) a grant of it, so no entry
    moves one customer's credits under another's operation or grant. Two checks per entry
    instead of three separate ones, which could not tell the accounts apart.
    """

    operation = models.ForeignKey(
        LedgerOperation, on_delete=models.PROTECT, related_name="entries", db_constraint=False
    )
    # Every lookup by account is served by ledger_entry_account_time, which starts with it.
    account = models.ForeignKey(
        Account,
        on_delete=models.PROTECT,
        related_name="entries",
        db_index=False,
        db_constraint=False,
    )
    kind = models.CharField(max_length=16, choices=EntryKind.choices)
    grant = models.ForeignKey(
        CreditGrant,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="entries",
        db_constraint=False,
    )
    # Indexed only where set (ledger_entry_hold): debits, most of the entries, name no hold.
    hold = models.ForeignKey(
        Hold,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="entries",
        db_index=False,
    )
    credits = CreditField(default=ZERO)
    held = CreditField(default=ZERO)
    cause_type = models.CharField(max_length=16, choices=CauseType.choices)
    cause_id = models.CharField(max_length=128, blank=True)
    meter = models.CharField(max_length=64, blank=True)
    workspace = models.CharField(max_length=64, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        verbose_name_plural = "ledger entries"
        constraints = [
            models.CheckConstraint(
                condition=~Q(kind="overage") | (Q(grant__isnull=True) & Q(credits__lte=0)),
                name="ledger_entry_overage_has_no_grant",
            ),
            models.CheckConstraint(
                condition=Q(kind__in=["overage", "hold", "capture", "release", "reversal"])
                | Q(grant__isnull=False),
                name="ledger_entry_names_its_grant",
            ),
        ]
        indexes = [
            models.Index(fields=["account", "created_at"], name="ledger_entry_account_time"),
            models.Index(fields=["cause_type", "cause_id"], name="ledger_entry_cause"),
            models.Index(
                fields=["hold"], condition=Q(hold__isnull=False), name="ledger_entry_hold"
            ),
            # What was written off a grant (plans.selectors.included_credits_used, read with
            # every batch rated): without it, the read walks every debit of the grant.
            models.Index(
                fields=["grant"],
                condition=Q(kind__in=["expire", "void"]),
                name="ledger_entry_written_off",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} {self.credits} (entry {self.pk})"
