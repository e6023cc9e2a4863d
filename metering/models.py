"""Meter events (raw, immutable), their rating, usage rollups and authorizations."""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from django.db import connection, models, transaction
from django.db.models import Q

from ledger.models import CreditField

if TYPE_CHECKING:
    from djmoney.money import Money


class MeterEvent(models.Model):
    """An accepted event exactly as it arrived. Never updated: rating writes elsewhere.

    ``customer`` and ``meter`` are not foreign keys in the database: their per-row
    trigger checks were a third of the ingest statement's database CPU. Ingest validates
    each event against the batch's customers and meters and locks those rows once per
    batch (``metering.ingest``), and deleting one through the ORM is refused while events
    name it (``PROTECT``); the ``events_have_customers_and_meters`` reconcile check looks
    for an event whose row is missing all the same.

    Partitioned by month (``metering.partitions``): the id carries the month the event is
    stamped in, so it is assigned by whoever writes the row (ingest's statement, or
    ``save``), and ``(customer, identifier)`` is kept unique by ``EventKey``."""

    id = models.BigIntegerField(primary_key=True)
    # No index of its own: the unique (customer, identifier) index serves every lookup by
    # customer, so one on the customer alone only cost ingest an insert per row.
    customer = models.ForeignKey(
        "plans.Customer",
        on_delete=models.PROTECT,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )
    # The sender's identifier; for one part of an event that fed several meters,
    # ``"<sender's identifier>#<meter code>"`` with the sender's in ``parent_identifier``.
    identifier = models.CharField(max_length=330)
    parent_identifier = models.CharField(max_length=255, null=True, blank=True)
    event_name = models.CharField(max_length=128)
    meter = models.ForeignKey(
        "plans.Meter", on_delete=models.PROTECT, related_name="+", db_constraint=False
    )
    timestamp = models.DateTimeField()
    value = models.DecimalField(max_digits=28, decimal_places=6)
    dimensions = models.JSONField(default=dict)
    workspace = models.CharField(max_length=64, null=True, blank=True)
    # A foreign key still: its trigger returns at once for an event naming no
    # authorization, the common case. Indexed only where set (metering_event_authorization).
    authorization = models.ForeignKey(
        "metering.Authorization",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        db_index=False,
    )
    # SHA-256 of the canonical content: the same identifier with another hash is a conflict.
    content_hash = models.CharField(max_length=64)
    received_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["customer", "timestamp"], name="metering_event_customer_time"),
            models.Index(
                fields=["customer", "parent_identifier"],
                condition=Q(parent_identifier__isnull=False),
                name="metering_event_parts",
            ),
            # Only events naming an authorization, so ingest's inserts of the others pay
            # nothing for it; the PROTECT check of an authorization's delete reads it.
            models.Index(
                fields=["authorization"],
                condition=Q(authorization__isnull=False),
                name="metering_event_authorization",
            ),
        ]

    def __str__(self) -> str:
        return self.identifier

    def save(self, *args: Any, **kwargs: Any) -> None:
        """Stores a new event as ingest does: an id in its month, and its key. Ingest
        writes events with one statement per batch; this is for the rest (fixtures)."""
        if self.pk is not None:
            super().save(*args, **kwargs)
            return
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute("SELECT metering_event_id(%s)", [self.timestamp])
            self.pk = cursor.fetchone()[0]
            EventKey.objects.create(
                customer_id=self.customer_id, identifier=self.identifier, event_id=self.pk
            )
            kwargs["force_insert"] = True
            super().save(*args, **kwargs)


class EventKey(models.Model):
    """What keeps an identifier to one event per customer: the event table is partitioned
    by month, and a unique index there could only hold within a month. Ingest inserts
    the batch's keys first and stores the events whose keys it won (``ON CONFLICT DO
    NOTHING``); look-ups by identifier come here for the event's id. Retention removes
    the keys of the events it removes."""

    pk = models.CompositePrimaryKey("customer_id", "identifier")
    customer_id = models.BigIntegerField()
    identifier = models.CharField(max_length=330)
    event_id = models.BigIntegerField()

    def __str__(self) -> str:
        return f"{self.customer_id}/{self.identifier}: {self.event_id}"


class RatingQueue(models.Model):
    """Accepted events not yet rated. A rating worker claims rows with SKIP LOCKED and
    deletes them in the transaction that writes their ledger entries, so an event is
    rated exactly once even when a worker dies mid-batch.

    The reference to the event is not a foreign key: the row is written by the statement
    that writes its event and deleted by rating, and the per-row foreign-key trigger cost
    ingest more than writing the row. The ``rating_queue_rows_have_events`` reconcile
    check looks for a row whose event is missing instead."""

    event = models.OneToOneField(
        MeterEvent, on_delete=models.PROTECT, primary_key=True, db_constraint=False
    )
    customer_id = models.BigIntegerField()
    enqueued_at = models.DateTimeField(auto_now_add=True)
    # An event that could not be rated stays queued with its error and is tried again
    # after a back-off, a bounded number of times; then it is parked for staff, and the
    # rest of the customer's events are rated around it. Database defaults: ingest's
    # statement writes only the three columns above.
    attempts = models.PositiveSmallIntegerField(default=0, db_default=0)
    last_error = models.TextField(blank=True, default="", db_default="")
    next_attempt_at = models.DateTimeField(null=True, blank=True)
    parked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [
            # Only failed rows, so ingest's inserts pay nothing for it: the health check
            # and the staff list count and find them without scanning a long queue.
            models.Index(
                fields=["event_id"], condition=Q(attempts__gt=0), name="metering_queue_failed"
            ),
            # Rating claims a customer's oldest events: in this order, the claim reads the
            # rows it takes, not every row of the customer's queue (a hot customer's can
            # hold hundreds of thousands) to sort them.
            models.Index(fields=["customer_id", "event_id"], name="metering_queue_customer"),
        ]

    def __str__(self) -> str:
        return f"pending {self.event_id}"


class RatingStatus(models.TextChoices):
    RATED = "rated"
    UNRATABLE = "unratable"  # no rate matched or no subscription: reported, not charged
    CANCELED = "canceled"


class EventRating(models.Model):
    """What rating made of one event; written once, beside the ledger entries.

    ``event``, ``rate`` and ``period`` are not foreign keys in the database: their three
    deferred trigger checks per rating were most of rating's COMMIT. Rating takes them
    from rows it has just read (the dequeued event, the rate table, the customer's
    periods), the ORM refuses to delete a row a rating names (``PROTECT``), and the
    ``ratings_name_their_event_rate_and_period`` reconcile check looks for a missing one.
    """

    event = models.OneToOneField(
        MeterEvent,
        on_delete=models.PROTECT,
        primary_key=True,
        related_name="rating",
        db_constraint=False,
    )
    status = models.CharField(max_length=16, choices=RatingStatus.choices)
    credits = CreditField()
    units = models.DecimalField(max_digits=28, decimal_places=6)
    rate = models.ForeignKey(
        "plans.Rate",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        db_constraint=False,
    )
    period = models.ForeignKey(
        "plans.SubscriptionPeriod",
        on_delete=models.PROTECT,
        null=True,
        blank=True,
        related_name="+",
        db_constraint=False,
    )
    # Rated into a later period because the event's own period was already invoiced.
    prior_period_adjustment = models.BooleanField(default=False)
    # What the provider charges for the event's units (the rate's ``cost``, in its
    # currency, exact to 8 places); None when the rate carries no cost.
    cost = models.DecimalField(max_digits=24, decimal_places=8, null=True, blank=True)
    error_code = models.CharField(max_length=32, blank=True)
    error_message = models.TextField(blank=True)
    rated_at = models.DateTimeField()

    class Meta:
        indexes = [
            # A period's late events only (few): an estimate of its invoice reads their
            # entries and takes the rest from the period's counters (PeriodUsage).
            models.Index(
                fields=["period"],
                condition=Q(prior_period_adjustment=True),
                name="metering_rating_late",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.event_id}: {self.credits}"


class EventCancellation(models.Model):
    """A meter-event adjustment: the event stays as it arrived, its debit is reversed.

    ``event`` is not a foreign key in the database: events move between partitions (from
    DEFAULT into their month's, ``metering.partitions``), which a key pointing at the
    partitioned table refuses. The ORM refuses to delete a cancelled event (``PROTECT``),
    and the ``cancellations_name_their_event`` reconcile check looks for a missing one."""

    event = models.OneToOneField(
        MeterEvent,
        on_delete=models.PROTECT,
        primary_key=True,
        related_name="cancellation",
        db_constraint=False,
    )
    reason = models.CharField(max_length=64)
    actor = models.CharField(max_length=128)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"cancel {self.event_id}: {self.reason}"


class RejectedEvent(models.Model):
    """An event refused at ingest, kept for the unmatched-events report."""

    customer_external_id = models.CharField(max_length=255, blank=True)
    identifier = models.CharField(max_length=255, blank=True)
    event_name = models.CharField(max_length=255, blank=True)
    code = models.CharField(max_length=32)
    message = models.TextField()
    param = models.CharField(max_length=64, blank=True)
    payload = models.JSONField()
    received_at = models.DateTimeField()

    class Meta:
        indexes = [
            models.Index(fields=["received_at"], name="metering_rejected_time"),
            models.Index(fields=["code", "customer_external_id"], name="metering_rejected_code"),
        ]

    def __str__(self) -> str:
        return f"{self.code}: {self.identifier}"


class UsageRollup(models.Model):
    """Usage per customer, meter, dimensions and hour, kept up to date by rating."""

    customer = models.ForeignKey("plans.Customer", on_delete=models.PROTECT, related_name="+")
    meter = models.ForeignKey("plans.Meter", on_delete=models.PROTECT, related_name="+")
    hour = models.DateTimeField()
    dimensions = models.JSONField(default=dict)
    dimensions_key = models.CharField(max_length=255)
    # The events' workspace ("" for none): usage can be read per workspace.
    workspace = models.CharField(max_length=64, default="", db_default="", blank=True)
    value = models.DecimalField(max_digits=28, decimal_places=6, default=0)
    events = models.BigIntegerField(default=0)
    credits = CreditField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "meter", "hour", "dimensions_key", "workspace"],
                name="metering_rollup_key",
            ),
        ]
        indexes = [
            models.Index(fields=["customer", "hour"], name="metering_rollup_customer_hour"),
        ]

    def __str__(self) -> str:
        return f"{self.customer_id} {self.meter_id} {self.hour:%Y-%m-%d %H}:00"


class PeriodUsage(models.Model):
    """Credits used in one subscription period, kept current by rating: the balance API,
    spend limits and alerts read one row instead of summing the period's entries."""

    customer = models.ForeignKey("plans.Customer", on_delete=models.PROTECT, related_name="+")
    period = models.OneToOneField(
        "plans.SubscriptionPeriod", on_delete=models.PROTECT, related_name="usage"
    )
    credits = CreditField(default=0)
    overage = CreditField(default=0)
    events = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)
    # When retention removed raw events (and their ratings) charged to this period: its
    # counters then stand for events that are no longer stored (metering.retention).
    raw_removed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"period {self.period_id}: {self.credits}"


class RawEventsRemoval(models.Model):
    """One run of retention that removed raw events stamped before ``before``: lineage
    says where the stored events stop, and why (metering.retention)."""

    before = models.DateTimeField()
    events = models.BigIntegerField()
    ratings = models.BigIntegerField()
    removed_at = models.DateTimeField()

    class Meta:
        indexes = [models.Index(fields=["-before"], name="metering_removal_before")]

    def __str__(self) -> str:
        return f"{self.events} raw events before {self.before:%Y-%m-%d}"


class RateUsage(models.Model):
    """A period's cumulative units and credits charged per tiered or package rate: rating
    prices each event from the units before it, and period close trues the credits up to
    the rate's formula on the period's total."""

    period = models.ForeignKey(
        "plans.SubscriptionPeriod", on_delete=models.PROTECT, related_name="+"
    )
    rate = models.ForeignKey("plans.Rate", on_delete=models.PROTECT, related_name="+")
    units = models.DecimalField(max_digits=28, decimal_places=6, default=0)
    credits = CreditField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["period", "rate"], name="metering_rateusage_period_rate"
            ),
        ]

    def __str__(self) -> str:
        return f"period {self.period_id} rate {self.rate_id}: {self.units}"


class AuthorizationDecision(models.TextChoices):
    ALLOW = "allow"
    DENY = "deny"


class Authorization(models.Model):
    """An allow/deny answer, with the hold it placed (when allowed and not a dry run)."""

    customer = models.ForeignKey("plans.Customer", on_delete=models.PROTECT, related_name="+")
    identifier = models.CharField(max_length=255)
    request_hash = models.CharField(max_length=64)
    decision = models.CharField(max_length=8, choices=AuthorizationDecision.choices)
    reason = models.CharField(max_length=32, blank=True)
    credits = CreditField()
    available = CreditField()
    hold = models.OneToOneField(
        "ledger.Hold", on_delete=models.PROTECT, null=True, blank=True, related_name="authorization"
    )
    dry_run = models.BooleanField(default=False)
    meter = models.ForeignKey(
        "plans.Meter", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    workspace = models.CharField(max_length=64, null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    # Not stored: what the credits would be billed if used now, set by the decision that
    # made this answer from the plan it read (None on an answer read back).
    estimate_money: Money | None = None

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["customer", "identifier"], name="metering_authorization_identifier"
            ),
            models.CheckConstraint(
                condition=Q(decision="deny") | ~Q(reason__gt=""),
                name="metering_allow_has_no_reason",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.identifier}: {self.decision}"

    @property
    def available_before(self) -> Decimal:
        """Credits available when it was decided: ``available`` is after its hold, when
        it placed one."""
        return self.available + self.credits if self.hold_id is not None else self.available
