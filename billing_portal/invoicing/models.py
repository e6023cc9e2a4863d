"""Invoices, their lines and the ledger entries each line was built from.

Amounts are Money; only invoice lines are rounded to the currency's minor unit.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from djmoney.models.fields import MoneyField

from ledger.models import CreditField


class SyncState(models.TextChoices):
    NOT_SYNCED = "not_synced"  # no Stripe key configured (demo) or nothing to send
    PENDING = "pending"
    SYNCED = "synced"
    FAILED = "failed"


class InvoiceStatus(models.TextChoices):
    DRAFT = "draft"
    OPEN = "open"
    PAID = "paid"
    VOID = "void"
    UNCOLLECTIBLE = "uncollectible"


class InvoiceKind(models.TextChoices):
    PERIOD = "period"
    CREDIT_PACK = "credit_pack"


class InvoiceNumberSequence(models.Model):
    """One row per prefix; taken FOR UPDATE so numbers are gap-free and never reused."""

    prefix = models.CharField(max_length=16, unique=True)
    next_number = models.PositiveIntegerField(default=1)

    def __str__(self) -> str:
        return f"{self.prefix}{self.next_number}"


class Invoice(models.Model):
    customer = models.ForeignKey(
        "plans.Customer", on_delete=models.PROTECT, related_name="invoices"
    )
    kind = models.CharField(max_length=16, choices=InvoiceKind.choices)
    period = models.OneToOneField(
        "plans.SubscriptionPeriod",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="invoice",
    )
    number = models.CharField(max_length=32, unique=True)
    status = models.CharField(
        max_length=16, choices=InvoiceStatus.choices, default=InvoiceStatus.DRAFT
    )
    currency = models.CharField(max_length=3)
    total = MoneyField(max_digits=14, decimal_places=2, default_currency="USD")
    period_start = models.DateTimeField(null=True, blank=True)
    period_end = models.DateTimeField(null=True, blank=True)
    issued_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    voided_at = models.DateTimeField(null=True, blank=True)
    stripe_invoice_id = models.CharField(max_length=64, blank=True)
    hosted_invoice_url = models.URLField(max_length=500, blank=True)
    sync_state = models.CharField(
        max_length=16, choices=SyncState.choices, default=SyncState.NOT_SYNCED
    )
    sync_error = models.TextField(blank=True)
    sync_attempts = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = models.Manager()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=~Q(kind="period") | Q(period__isnull=False),
                name="invoicing_period_invoice_has_period",
            ),
        ]
        indexes = [
            models.Index(fields=["customer", "-created_at"], name="invoicing_invoice_customer")
        ]

    def __str__(self) -> str:
        return self.number


class LineKind(models.TextChoices):
    BASE_FEE = "base_fee"
    PRORATION = "proration"
    INCLUDED_USAGE = "included_usage"
    OVERAGE = "overage"
    CREDIT_PACK = "credit_pack"
    PRIOR_PERIOD_ADJUSTMENT = "prior_period_adjustment"


class InvoiceLine(models.Model):
    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="lines")
    kind = models.CharField(max_length=32, choices=LineKind.choices)
    description = models.CharField(max_length=255)
    quantity = models.DecimalField(max_digits=28, decimal_places=6)
    unit_amount = MoneyField(max_digits=19, decimal_places=8, default_currency="USD")
    amount = MoneyField(max_digits=14, decimal_places=2, default_currency="USD")
    credits = CreditField(default=0)
    service_period_start = models.DateTimeField()
    service_period_end = models.DateTimeField()
    stripe_invoice_item_id = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = models.Manager()

    def __str__(self) -> str:
        return f"{self.invoice.number}: {self.description}"


class InvoiceLineEntry(models.Model):
    """The ledger entries a line was derived from. An entry is billed on one line only."""

    line = models.ForeignKey(InvoiceLine, on_delete=models.PROTECT, related_name="entry_links")
    entry = models.OneToOneField(
        "ledger.LedgerEntry", on_delete=models.PROTECT, related_name="invoice_link"
    )

    def __str__(self) -> str:
        return f"{self.line_id} <- {self.entry_id}"
