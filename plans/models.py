"""The catalog (meters, rate cards, plans, credit packs), customers and subscriptions,
and the API keys that operators call with.

Rate cards and plans in use are versioned, never edited in place: rated events and
subscriptions keep pointing at the version they had.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from django.contrib.postgres.fields import ArrayField
from django.db import models
from django.db.models import Q
from djmoney.models.fields import MoneyField

from ledger.models import CREDIT_DIGITS, CREDIT_PLACES, CREDIT_QUANTUM, CreditField

# The most credits one ledger column holds: they are numeric(20,6).
MAX_CREDITS = Decimal(10) ** (CREDIT_DIGITS - CREDIT_PLACES) - CREDIT_QUANTUM
# The largest value one meter event (or authorization estimate) may carry. It is chosen
# with the rates it allows: catalog loading refuses a rate whose credits per unit times
# this value exceeds MAX_CREDITS, so one event always rates to an amount the ledger can
# store. 1e9 units per event with up to ~100,000 credits per unit: 1e9 x 1e5 = 1e14.
MAX_EVENT_VALUE = Decimal(1_000_000_000)


class Aggregation(models.TextChoices):
    SUM = "sum"
    COUNT = "count"
    MAX = "max"


class Meter(models.Model):
    """What is counted. Several meters may share an event name: one event carrying
    ``properties`` (an LLM call's input, output and cached tokens) then feeds each of
    them, every meter taking its value from its own ``value_property``."""

    code = models.SlugField(max_length=64, unique=True)
    event_name = models.CharField(max_length=128, db_index=True)
    aggregation = models.CharField(max_length=8, choices=Aggregation.choices)
    unit = models.CharField(max_length=32)
    dimensions = ArrayField(models.CharField(max_length=64), default=list, blank=True)
    # Where an event's ``properties`` hold this meter's value (a dotted path), and which
    # properties become its dimensions (each named by its path's last part; empty: the
    # meter's dimensions, read from properties of the same names).
    value_property = models.CharField(max_length=128, default="value")
    dimension_properties = ArrayField(models.CharField(max_length=128), default=list, blank=True)
    display_name = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.code

    @property
    def label(self) -> str:
        return self.display_name or self.code


class RateCard(models.Model):
    code = models.SlugField(max_length=64, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.code


class RateCardVersion(models.Model):
    """The rates of a card from ``effective_from`` until the next version starts."""

    rate_card = models.ForeignKey(RateCard, on_delete=models.PROTECT, related_name="versions")
    version = models.PositiveIntegerField()
    effective_from = models.DateTimeField()
    # The effective_from the catalog file gave. A change to a version already in effect
    # becomes a new version effective at load time; this remembers which entry it came
    # from, so loading the same file again changes nothing.
    source_effective_from = models.DateTimeField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["rate_card", "version"], name="plans_ratecard_version"),
            models.UniqueConstraint(
                fields=["rate_card", "effective_from"], name="plans_ratecard_effective_from"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.rate_card.code} v{self.version} from {self.effective_from:%Y-%m-%d}"


class TiersMode(models.TextChoices):
    FLAT = "", "flat"
    # Each unit is priced by the tier it falls in (counted over the period).
    GRADUATED = "graduated"
    # All of the period's units are priced at the tier the period's total reaches.
    VOLUME = "volume"


class Rate(models.Model):
    """``credits`` per ``per`` units of a meter, for events whose dimensions include ``match``.

    A tiered rate prices by the period's cumulative units of the rate (``tiers``: a list of
    ``{"up_to": "<units>" | None, "credits": "<credits per per units>"}``, bounds
    increasing, the last open); its ``credits`` is then the highest tier price, what
    estimates and holds reserve at. ``round_up`` makes ``per`` a package: a started package
    costs a whole one, counted over the period too. ``cost`` is what the provider charges
    per ``per`` units (money, never shown to customers)."""

    version = models.ForeignKey(RateCardVersion, on_delete=models.PROTECT, related_name="rates")
    meter = models.ForeignKey(Meter, on_delete=models.PROTECT, related_name="rates")
    match = models.JSONField(default=dict, blank=True)
    credits = CreditField()
    per = models.PositiveIntegerField(default=1)
    tiers_mode = models.CharField(
        max_length=16, choices=TiersMode.choices, default=TiersMode.FLAT, blank=True
    )
    tiers = models.JSONField(default=list, blank=True)
    round_up = models.BooleanField(default=False)
    cost = MoneyField(
        max_digits=19, decimal_places=8, default_currency="USD", null=True, blank=True
    )

    objects = models.Manager()

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(credits__gte=0), name="plans_rate_credits_gte_0"),
            models.CheckConstraint(condition=Q(per__gt=0), name="plans_rate_per_gt_0"),
            models.CheckConstraint(
                condition=Q(tiers_mode="") | ~Q(tiers=[]), name="plans_rate_tiered_has_tiers"
            ),
            models.CheckConstraint(
                condition=Q(cost__isnull=True) | Q(cost__gte=0), name="plans_rate_cost_gte_0"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.meter.code} {self.match} {self.credits}/{self.per}"

    @property
    def counts_period(self) -> bool:
        """Priced on the period's cumulative units (tiers or packages), not per event."""
        return bool(self.tiers_mode) or self.round_up


class Plan(models.Model):
    code = models.SlugField(max_length=64, unique=True)
    # Offered in the portal's plan comparison. Not versioned: it is visibility, not a
    # billing term, so hiding a plan never moves its subscribers to a new version.
    public = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.code


class Interval(models.TextChoices):
    MONTH = "month"
    YEAR = "year"


class OveragePolicy(models.TextChoices):
    HARD_STOP = "hard_stop"
    SOFT_LIMIT = "soft_limit"
    POSTPAID = "postpaid"


def default_alert_usage_thresholds() -> list[int]:
    return [50, 80, 100]


class PlanVersion(models.Model):
    plan = models.ForeignKey(Plan, on_delete=models.PROTECT, related_name="versions")
    version = models.PositiveIntegerField()
    name = models.CharField(max_length=128)
    interval = models.CharField(max_length=8, choices=Interval.choices)
    base_fee = MoneyField(max_digits=14, decimal_places=2, default_currency="USD")
    included_credits = CreditField(default=Decimal(0))
    rate_card = models.ForeignKey(RateCard, on_delete=models.PROTECT, related_name="plan_versions")
    overage_policy = models.CharField(max_length=16, choices=OveragePolicy.choices)
    soft_limit_percent = models.DecimalField(max_digits=7, decimal_places=2, null=True, blank=True)
    overage_price_per_credit = MoneyField(
        max_digits=19, decimal_places=8, default_currency="USD", null=True, blank=True
    )
    rollover_max_credits = CreditField(null=True, blank=True)
    # Alert rules for subscribers who set none of their own in the portal: percent of the
    # period's included credits used, and a low-balance alert (None: no such alert).
    alert_usage_thresholds = ArrayField(
        models.PositiveSmallIntegerField(), default=default_alert_usage_thresholds, blank=True
    )
    alert_low_balance_credits = CreditField(null=True, blank=True)
    # What the plan entitles its subscribers to, as the catalog wrote it: a feature code
    # to ``true``/``false``, or to ``{"meter": <code>, "limit": "<decimal>"}`` for a limit
    # on a meter's units per period. Read through :meth:`feature_list`.
    features = models.JSONField(default=dict, blank=True)
    # What an unpaid invoice does to access: None allows usage while Stripe retries the
    # payment; N denies authorizations (``payment_overdue``) N days after the first failure.
    past_due_deny_after_days = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = models.Manager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["plan", "version"], name="plans_plan_version"),
            models.CheckConstraint(
                condition=~Q(overage_policy="soft_limit") | Q(soft_limit_percent__isnull=False),
                name="plans_soft_limit_has_percent",
            ),
            models.CheckConstraint(
                condition=Q(included_credits__gte=0), name="plans_included_credits_gte_0"
            ),
            models.CheckConstraint(
                condition=Q(alert_low_balance_credits__isnull=True)
                | Q(alert_low_balance_credits__gte=0),
                name="plans_alert_low_balance_gte_0",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.plan.code} v{self.version}"

    def feature_list(self) -> list[Feature]:
        return features_from(self.features)


@dataclass(frozen=True)
class Feature:
    """One feature of a plan: boolean (``meter`` None), or a limit per period on a meter."""

    code: str
    enabled: bool
    meter: str | None = None
    limit: Decimal | None = None


def features_from(stored: dict[str, Any] | None) -> list[Feature]:
    """A plan version's stored ``features``, in code order."""
    out = []
    for code, value in sorted((stored or {}).items()):
        if isinstance(value, dict):
            out.append(Feature(code, True, str(value["meter"]), Decimal(str(value["limit"]))))
        else:
            out.append(Feature(code, bool(value)))
    return out


class CreditPack(models.Model):
    code = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=128)
    credits = CreditField()
    price = MoneyField(max_digits=14, decimal_places=2, default_currency="USD")
    expires_after_days = models.PositiveIntegerField(null=True, blank=True)
    active = models.BooleanField(default=True)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = models.Manager()

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(credits__gt=0), name="plans_pack_credits_gt_0"),
        ]

    def __str__(self) -> str:
        return self.code


class Customer(models.Model):
    external_id = models.CharField(max_length=128, unique=True)
    name = models.CharField(max_length=200)
    email = models.EmailField()
    currency = models.CharField(max_length=3, default="USD")
    stripe_customer_id = models.CharField(max_length=64, blank=True)
    # The customer's own cap on credits used per billing period (portal setting);
    # authorizations deny beyond it whatever the plan's overage policy.
    spend_limit_credits = CreditField(null=True, blank=True)
    # Where the customer reads days and times in the portal (an IANA zone name).
    timezone = models.CharField(max_length=64, default="UTC")
    # The operator's own string keys and values (Stripe's metadata), at most 50 keys
    # (plans.services.customer_update); billing never reads them.
    metadata = models.JSONField(default=dict, blank=True)
    account = models.OneToOneField(
        "ledger.Account", on_delete=models.PROTECT, related_name="customer"
    )
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.external_id


class Workspace(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="workspaces")
    key = models.SlugField(max_length=64)
    name = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["customer", "key"], name="plans_workspace_key"),
        ]

    def __str__(self) -> str:
        return f"{self.customer.external_id}/{self.key}"


class SubscriptionStatus(models.TextChoices):
    ACTIVE = "active"
    CANCELED = "canceled"


class Subscription(models.Model):
    customer = models.ForeignKey(Customer, on_delete=models.PROTECT, related_name="subscriptions")
    # The integrator's own id for it (Lago's external_subscription_id): events sent to
    # the Lago-compatible endpoint name the subscription by it.
    external_id = models.CharField(max_length=255, unique=True, null=True, blank=True)
    plan_version = models.ForeignKey(
        PlanVersion, on_delete=models.PROTECT, related_name="subscriptions"
    )
    status = models.CharField(
        max_length=16, choices=SubscriptionStatus.choices, default=SubscriptionStatus.ACTIVE
    )
    # Periods follow calendar months (or years) from the anchor's day and time.
    anchor = models.DateTimeField()
    current_period_start = models.DateTimeField()
    current_period_end = models.DateTimeField()
    pending_plan_version = models.ForeignKey(
        PlanVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    cancel_at_period_end = models.BooleanField(default=False)
    canceled_at = models.DateTimeField(null=True, blank=True)
    # Set when a payment of one of its invoices fails, cleared when every failed invoice
    # is paid: the subscription is then ``past_due`` to the API and the portal.
    past_due_since = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            # One live subscription per customer: the balance has one set of rules.
            models.UniqueConstraint(
                fields=["customer"],
                condition=Q(status="active"),
                name="plans_one_active_subscription",
            ),
        ]
        indexes = [
            models.Index(
                fields=["current_period_end"],
                condition=Q(status="active"),
                name="plans_subscription_renewal",
            ),
        ]

    def __str__(self) -> str:
        return f"subscription {self.pk} ({self.customer.external_id})"


class PeriodStatus(models.TextChoices):
    OPEN = "open"
    CLOSED = "closed"  # ended; open for late events until the grace window passes
    INVOICING = "invoicing"  # handed to invoicing


# The source of the grants a period owns (its included and rollover credits).
PERIOD_SOURCE = "subscription_period"


class SubscriptionPeriod(models.Model):
    subscription = models.ForeignKey(Subscription, on_delete=models.PROTECT, related_name="periods")
    plan_version = models.ForeignKey(PlanVersion, on_delete=models.PROTECT, related_name="+")
    start = models.DateTimeField()
    end = models.DateTimeField()
    status = models.CharField(
        max_length=16, choices=PeriodStatus.choices, default=PeriodStatus.OPEN
    )
    included_credits = CreditField(default=Decimal(0))
    closed_at = models.DateTimeField(null=True, blank=True)
    handed_to_invoicing_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["subscription", "start"], name="plans_period_start"),
            models.CheckConstraint(
                condition=Q(end__gt=models.F("start")), name="plans_period_order"
            ),
        ]
        indexes = [
            models.Index(fields=["status", "end"], name="plans_period_status_end"),
        ]

    def __str__(self) -> str:
        return f"{self.subscription_id}: {self.start:%Y-%m-%d} - {self.end:%Y-%m-%d}"


class ChangeKind(models.TextChoices):
    START = "start"
    PLAN_CHANGE = "plan_change"
    PLAN_CHANGE_SCHEDULED = "plan_change_scheduled"
    CANCEL = "cancel"
    CANCEL_SCHEDULED = "cancel_scheduled"
    RENEWAL = "renewal"


class SubscriptionChange(models.Model):
    """What happened to a subscription, and what invoicing must charge for it."""

    subscription = models.ForeignKey(Subscription, on_delete=models.PROTECT, related_name="changes")
    period = models.ForeignKey(
        SubscriptionPeriod, on_delete=models.PROTECT, null=True, blank=True, related_name="changes"
    )
    kind = models.CharField(max_length=32, choices=ChangeKind.choices)
    from_version = models.ForeignKey(
        PlanVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    to_version = models.ForeignKey(
        PlanVersion, on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    effective_at = models.DateTimeField()
    # Prorated base-fee difference for a change mid-period; negative is a credit.
    proration = MoneyField(
        max_digits=14, decimal_places=2, default_currency="USD", null=True, blank=True
    )
    extra_included_credits = CreditField(default=Decimal(0))
    actor = models.CharField(max_length=128)
    created_at = models.DateTimeField(auto_now_add=True)

    objects = models.Manager()

    def __str__(self) -> str:
        return f"{self.kind} of subscription {self.subscription_id}"


class ApiScope(models.TextChoices):
    INGEST = "ingest"
    READ = "read"
    WRITE = "write"


class ApiKey(models.Model):
    """An operator's secret key. Only its SHA-256 is stored; the key is shown once."""

    name = models.CharField(max_length=128)
    prefix = models.CharField(max_length=16, unique=True)
    key_hash = models.CharField(max_length=64, unique=True)
    scopes = ArrayField(models.CharField(max_length=16, choices=ApiScope.choices))
    created_at = models.DateTimeField(auto_now_add=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}...)"
