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


# A period invoice is written first and numbered last, when its transaction is about to
# commit (the number sequence stays locked from numbering to commit); until then its
# number is this prefix and its period's id.
UNNUMBERED_PREFIX = "~"


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
    # Collection, as Stripe reports it (invoice.payment_failed / invoice.paid): Stripe
    # runs the retries; these record them.
    payment_attempts = models.PositiveIntegerField(default=0)
    payment_failed_at = models.DateTimeField(null=True, blank=True)
    payment_error = models.TextField(blank=True)
    next_payment_attempt_at = models.DateTimeField(null=True, blank=True)
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
    # Detail of a tiered or package rate: the units in one tier and their price in
    # credits (money stays on the usage lines).
    USAGE_TIER = "usage_tier"
    # Credits bringing a tiered or package rate to its formula on the period's total.
    TIER_TRUE_UP = "tier_true_up"


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


class PurchaseStatus(models.TextChoices):
    PENDING = "pending"
    PAID = "paid"
    FAILED = "failed"
    CANCELED = "canceled"


class CreditPackPurchase(models.Model):
    """A pack bought by a customer: an invoice, a payment, and once paid, a grant."""

    customer = models.ForeignKey(
        "plans.Customer", on_delete=models.PROTECT, related_name="purchases"
    )
    pack = models.ForeignKey("plans.CreditPack", on_delete=models.PROTECT, related_name="+")
    # Copied from the pack at purchase time: a later catalog change does not alter it.
    credits = CreditField()
    price = MoneyField(max_digits=14, decimal_places=2, default_currency="USD")
    expires_after_days = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(
        max_length=16, choices=PurchaseStatus.choices, default=PurchaseStatus.PENDING
    )
    invoice = models.OneToOneField(Invoice, on_delete=models.PROTECT, related_name="purchase")
    grant = models.OneToOneField(
        "ledger.CreditGrant",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="purchase",
    )
    source = models.CharField(max_length=16, default="portal")  # portal | api | auto_recharge
    stripe_checkout_session_id = models.CharField(max_length=128, blank=True)
    stripe_payment_intent_id = models.CharField(max_length=128, blank=True)
    checkout_url = models.URLField(max_length=1000, blank=True)
    failure_message = models.TextField(blank=True)
    idempotency_key = models.CharField(max_length=255, null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    paid_at = models.DateTimeField(null=True, blank=True)

    objects = models.Manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "idempotency_key"], name="invoicing_purchase_idempotency_key"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.pack_id} for {self.customer_id} ({self.status})"


class CreditNoteReason(models.TextChoices):
    DUPLICATE = "duplicate"
    FRAUDULENT = "fraudulent"
    ORDER_CHANGE = "order_change"
    PRODUCT_UNSATISFACTORY = "product_unsatisfactory"


class CreditNoteMethod(models.TextChoices):
    REFUND = "refund"
    CUSTOMER_CREDIT = "customer_credit"
    OUT_OF_BAND = "out_of_band"


class CreditNoteStatus(models.TextChoices):
    ISSUED = "issued"
    VOID = "void"


class CreditNote(models.Model):
    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="credit_notes")
    number = models.CharField(max_length=32, unique=True)
    status = models.CharField(
        max_length=8, choices=CreditNoteStatus.choices, default=CreditNoteStatus.ISSUED
    )
    reason = models.CharField(max_length=32, choices=CreditNoteReason.choices)
    method = models.CharField(max_length=16, choices=CreditNoteMethod.choices)
    # For staff only: never shown to the customer, nor sent to Stripe.
    memo = models.TextField(blank=True)
    # What the customer reads on the credit note, e.g. "Credit for INV-0042".
    description = models.CharField(max_length=255, blank=True, default="", db_default="")
    total = MoneyField(max_digits=14, decimal_places=2, default_currency="USD")
    actor = models.CharField(max_length=128)
    stripe_credit_note_id = models.CharField(max_length=64, blank=True)
    sync_state = models.CharField(
        max_length=16, choices=SyncState.choices, default=SyncState.NOT_SYNCED
    )
    sync_error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    voided_at = models.DateTimeField(null=True, blank=True)

    objects = models.Manager()

    def __str__(self) -> str:
        return self.number


class CreditNoteLine(models.Model):
    credit_note = models.ForeignKey(CreditNote, on_delete=models.PROTECT, related_name="lines")
    invoice_line = models.ForeignKey(
        InvoiceLine, on_delete=models.PROTECT, related_name="credit_note_lines"
    )
    amount = MoneyField(max_digits=14, decimal_places=2, default_currency="USD")
    description = models.CharField(max_length=255)

    objects = models.Manager()

    def __str__(self) -> str:
        return f"{self.credit_note_id}: {self.amount}"


class StripeEventStatus(models.TextChoices):
    PROCESSED = "processed"
    FAILED = "failed"  # signed, but its fields could not be used: nothing was applied


class StripeEvent(models.Model):
    """Each Stripe webhook event processed once: the unique id refuses a second insert.

    A signed event that cannot be applied (an absurd timestamp, an id too long to store)
    is kept as failed, with the reason, for staff; Stripe is told it arrived, since
    delivering it again would fail the same way.
    """

    event_id = models.CharField(max_length=128, unique=True)
    type = models.CharField(max_length=128)
    payload = models.JSONField()
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)
    status = models.CharField(
        max_length=16, choices=StripeEventStatus.choices, default=StripeEventStatus.PROCESSED
    )
    error = models.TextField(blank=True)

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class RevenueKind(models.TextChoices):
    DEFERRED = "deferred"  # prepaid: a liability until the credits are used
    RECOGNIZED_USAGE = "recognized_usage"  # paid credits consumed, at their cost basis
    BREAKAGE = "breakage"  # paid credits expired or voided unused
    BASE_FEE = "base_fee"  # ratably by day over the service period
    OVERAGE = "overage"  # at period end
    CREDIT_NOTE = "credit_note"  # reversal


class RevenueEntry(models.Model):
    """Append-only revenue facts; each names its invoice line or ledger entry."""

    customer = models.ForeignKey("plans.Customer", on_delete=models.PROTECT, related_name="+")
    kind = models.CharField(max_length=24, choices=RevenueKind.choices)
    recognized_on = models.DateField()
    # Positive: revenue recognized. Deferred entries move money into (+) or out of (-) the
    # deferred balance; recognizing prepaid credits writes both.
    amount = MoneyField(max_digits=19, decimal_places=8, default_currency="USD")
    deferred_change = MoneyField(max_digits=19, decimal_places=8, default_currency="USD", default=0)
    invoice_line = models.ForeignKey(
        InvoiceLine, on_delete=models.PROTECT, null=True, blank=True, related_name="revenue_entries"
    )
    ledger_entry = models.ForeignKey(
        "ledger.LedgerEntry",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="revenue_entries",
    )
    credit_note_line = models.ForeignKey(
        CreditNoteLine,
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="revenue_entries",
    )
    # Makes a re-run harmless: the same fact is written once.
    key = models.CharField(max_length=128, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = models.Manager()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(invoice_line__isnull=False)
                | Q(ledger_entry__isnull=False)
                | Q(credit_note_line__isnull=False),
                name="invoicing_revenue_names_its_source",
            ),
        ]
        indexes = [models.Index(fields=["recognized_on", "kind"], name="invoicing_revenue_day")]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} on {self.recognized_on}"
