"""Customers and the subscription lifecycle.

Lock order, extending the ledger's: the subscription row first, then (inside the ledger
services) the account, its grants and holds. Every step is safe to run twice: renewal
checks the period under the subscription lock, grants carry idempotency keys derived
from the period or change they belong to.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from enum import Enum
from typing import Literal

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Sum
from django.utils import timezone
from djmoney.money import Money

from ledger import services as ledger
from ledger.errors import Conflict, DomainError
from ledger.models import (
    CREDIT_QUANTUM,
    CreditGrant,
    EntryKind,
    GrantCategory,
    GrantStatus,
    LedgerEntry,
)
from ledger.units import to_cents
from plans.models import (
    PERIOD_SOURCE,
    ChangeKind,
    Customer,
    PeriodStatus,
    Plan,
    PlanVersion,
    Subscription,
    SubscriptionChange,
    SubscriptionPeriod,
    SubscriptionStatus,
)
from plans.money import as_money
from plans.periods import period_bounds, period_containing

When = Literal["now", "period_end"]


class SubscriptionError(DomainError):
    def __init__(self, code: str, message: str, *, param: str | None = None) -> None:
        super().__init__(message, code=code, param=param)


class SubscriptionConflict(SubscriptionError, Conflict):
    """The customer or subscription is not in a state that allows it."""


# --- customers ------------------------------------------------------------------------


def customer_create(*, external_id: str, name: str, email: str, currency: str = "USD") -> Customer:
    currency = currency.upper()
    if currency not in settings.CURRENCIES:
        raise SubscriptionError(
            "unsupported_currency",
            f"currency {currency!r} is not supported; use one of {', '.join(settings.CURRENCIES)}",
            param="currency",
        )
    try:
        with transaction.atomic():
            return Customer.objects.create(
                external_id=external_id,
                name=name,
                email=email,
                currency=currency,
                account=ledger.account_create(),
            )
    except IntegrityError as exc:
        # The unique constraint, not a prior lookup, decides: two racing creates get one row.
        raise SubscriptionConflict(
            "customer_exists",
            f"a customer with external_id {external_id!r} already exists; "
            "use another external_id or fetch the existing customer",
            param="external_id",
        ) from exc


class Keep(Enum):
    """An argument an update leaves alone: None already means "clear it"."""

    KEEP = "keep"


KEEP = Keep.KEEP
# Stripe's limit on metadata keys, which integrators already code against.
CUSTOMER_METADATA_MAX_KEYS = 50


def customer_update(
    *,
    customer: Customer,
    name: str | Keep = KEEP,
    email: str | Keep = KEEP,
    currency: str | Keep = KEEP,
    spend_limit_credits: Decimal | Keep | None = KEEP,
    metadata: Mapping[str, str | None] | Keep | None = KEEP,
) -> Customer:
    """Change what an operator may change about a customer; what is left as KEEP stays.

    ``metadata`` merges key by key, as Stripe's does: a key given None or "" is removed,
    and None for the whole mapping removes every key. The currency cannot change, since
    the customer's invoices and grants are in it: naming another one is refused.
    """
    if currency is not KEEP:
        _currency_unchanged(customer, currency)
    if spend_limit_credits is not KEEP and spend_limit_credits is not None:
        _spend_limit_valid(spend_limit_credits)
    with transaction.atomic():
        # Locked so that two concurrent metadata merges both land.
        locked = Customer.objects.select_for_update().get(pk=customer.pk)
        values = {"name": name, "email": email, "spend_limit_credits": spend_limit_credits}
        changed: dict[str, object] = {f: v for f, v in values.items() if v is not KEEP}
        if metadata is not KEEP:
            changed["metadata"] = _metadata_merged(locked.metadata, metadata)
        for field, value in changed.items():
            setattr(locked, field, value)
        # Only the columns named: the portal sets the spend limit without this lock, and a
        # save of every column from a stale row would undo its change.
        locked.save(update_fields=list(changed))
    return locked


def _currency_unchanged(customer: Customer, currency: str) -> None:
    if currency.upper() != customer.currency:
        raise SubscriptionError(
            "currency_cannot_change",
            f"customer {customer.external_id!r} is billed in {customer.currency}, which cannot "
            f"change: leave currency out, or create another customer in {currency.upper()}",
            param="currency",
        )


def _spend_limit_valid(limit: Decimal) -> None:
    if limit < 0:
        raise SubscriptionError(
            "invalid_spend_limit",
            f"spend_limit_credits {limit} is negative: send 0 or more, or null for no limit",
            param="spend_limit_credits",
        )


def _metadata_merged(
    current: Mapping[str, str], changes: Mapping[str, str | None] | None
) -> dict[str, str]:
    if changes is None:
        return {}
    merged = dict(current)
    for key, value in changes.items():
        if value is None or value == "":
            merged.pop(key, None)
        else:
            merged[key] = value
    if len(merged) > CUSTOMER_METADATA_MAX_KEYS:
        raise SubscriptionError(
            "metadata_too_many_keys",
            f"metadata would hold {len(merged)} keys; at most {CUSTOMER_METADATA_MAX_KEYS} are "
            "allowed: remove keys by setting them to null",
            param="metadata",
        )
    return merged


def plan_version_current(plan: Plan) -> PlanVersion:
    version = plan.versions.order_by("-version").first()
    if version is None:
        raise SubscriptionError("plan_has_no_version", f"plan {plan.code!r} has no version yet")
    return version


# --- start ----------------------------------------------------------------------------


def subscription_start(
    *,
    customer: Customer,
    plan: Plan,
    actor: str,
    start_at: datetime | None = None,
    external_id: str | None = None,
) -> Subscription:
    """Start ``customer`` on ``plan``; ``external_id`` is the integrator's own id for the
    subscription (unique: a taken one is a conflict)."""
    version = plan_version_current(plan)
    # Whole seconds: events are often stamped to the second, and one stamped in the second
    # the subscription started must fall inside its first period, not before it.
    anchor = (start_at or timezone.now()).replace(microsecond=0)
    start, end = period_bounds(anchor, version.interval, 0)
    try:
        with transaction.atomic():
            subscription = Subscription.objects.create(
                customer=customer,
                external_id=external_id,
                plan_version=version,
                anchor=anchor,
                current_period_start=start,
                current_period_end=end,
            )
            period = _period_open(subscription, version, start, end)
            _change(subscription, period, ChangeKind.START, None, version, start, actor)
            # A start in the past catches up at once: the answer shows the current period.
            while subscription.current_period_end <= timezone.now():
                subscription = subscription_renew(subscription=subscription)
    except IntegrityError as exc:
        if (
            external_id is not None
            and Subscription.objects.filter(external_id=external_id).exists()
        ):
            raise SubscriptionConflict(
                "external_id_taken",
                f"external_id {external_id!r} already names another subscription; "
                "choose another one",
                param="external_id",
            ) from exc
        raise SubscriptionConflict(
            "subscription_exists",
            f"customer {customer.external_id!r} already has an active subscription; "
            "change its plan instead of starting another",
            param="customer",
        ) from exc
    return subscription


def _period_open(
    subscription: Subscription, version: PlanVersion, start: datetime, end: datetime
) -> SubscriptionPeriod:
    period = SubscriptionPeriod.objects.create(
        subscription=subscription,
        plan_version=version,
        start=start,
        end=end,
        included_credits=version.included_credits,
    )
    if version.included_credits > 0:
        _grant_included(subscription, period, version.included_credits, key=f"included:{period.pk}")
    return period


def _grant_included(
    subscription: Subscription, period: SubscriptionPeriod, amount: Decimal, *, key: str
) -> CreditGrant:
    return ledger.credit_grant_create(
        account=subscription.customer.account,
        amount=amount,
        category=GrantCategory.INCLUDED,
        actor="system:subscriptions",
        effective_at=period.start,
        expires_at=period.end,
        reason="plan_included",
        source_type=PERIOD_SOURCE,
        source_id=str(period.pk),
        idempotency_key=key,
        expired_by_source=True,
    )


def _change(
    subscription: Subscription,
    period: SubscriptionPeriod | None,
    kind: str,
    from_version: PlanVersion | None,
    to_version: PlanVersion | None,
    effective_at: datetime,
    actor: str,
    **values: object,
) -> SubscriptionChange:
    return SubscriptionChange.objects.create(
        subscription=subscription,
        period=period,
        kind=kind,
        from_version=from_version,
        to_version=to_version,
        effective_at=effective_at,
        actor=actor,
        **values,
    )


def _current_period(subscription: Subscription) -> SubscriptionPeriod:
    return subscription.periods.get(start=subscription.current_period_start)


def _lock(subscription: Subscription) -> Subscription:
    return (
        Subscription.objects.select_for_update()
        .select_related("customer__account")
        .get(pk=subscription.pk)
    )


# --- renewal --------------------------------------------------------------------------


def subscriptions_renew_due(*, now: datetime | None = None) -> int:
    """Renew every subscription whose period has ended; catches up missed periods."""
    now = now or timezone.now()
    due = Subscription.objects.filter(
        status=SubscriptionStatus.ACTIVE, current_period_end__lte=now
    ).values_list("pk", flat=True)
    renewed = 0
    for pk in list(due):
        subscription = Subscription.objects.get(pk=pk)
        while (
            subscription.status == SubscriptionStatus.ACTIVE
            and subscription.current_period_end <= now
        ):
            subscription = subscription_renew(subscription=subscription, now=now)
            renewed += 1
    return renewed


def subscription_renew(*, subscription: Subscription, now: datetime | None = None) -> Subscription:
    """Close the ended period (rollover, expiry) and open the next one."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = _lock(subscription)
        if locked.status != SubscriptionStatus.ACTIVE or locked.current_period_end > now:
            return locked  # renewed (or cancelled) by someone else already
        ended = _current_period(locked)
        # Its credits stay usable for its late events: written off when it is invoiced.
        _period_close(ended, at=ended.end, write_off=False)
        if locked.cancel_at_period_end:
            return _finish(locked, ended.end, "system:subscriptions")
        version = locked.pending_plan_version or locked.plan_version
        if version.interval != ended.plan_version.interval:
            locked.anchor = ended.end  # a new interval counts from its first period
        _, start, end = period_containing(locked.anchor, version.interval, ended.end)
        locked.plan_version = version
        locked.pending_plan_version = None
        locked.current_period_start, locked.current_period_end = start, end
        locked.save()
        period = _period_open(locked, version, start, end)
        _change(locked, period, ChangeKind.RENEWAL, ended.plan_version, version, start, "system")
    return locked


def _period_close(period: SubscriptionPeriod, *, at: datetime, write_off: bool) -> None:
    """No more usage after ``at``; its late events still draw on its credits unless
    ``write_off`` (a cancellation now), which expires them at once."""
    if write_off:
        _periods_credits_write_off([period])
    period.status = PeriodStatus.CLOSED
    period.end = _period_end_at(period, at)
    period.closed_at = timezone.now()
    period.save(update_fields=["status", "end", "closed_at"])


def _period_end_at(period: SubscriptionPeriod, at: datetime) -> datetime:
    """Where closing at ``at`` ends the period: never after its end, nor before its first
    second (a period is never empty)."""
    return min(period.end, max(at, period.start + timedelta(seconds=1)))


def _periods_credits_write_off(periods: Sequence[SubscriptionPeriod]) -> dict[int, Decimal]:
    """Expire the periods' included and rollover credits, all in one ledger call; return,
    by period, the included credits left unused."""
    period_of = {str(period.pk): period.pk for period in periods}
    grants = list(
        CreditGrant.objects.filter(
            source_type=PERIOD_SOURCE, source_id__in=list(period_of)
        ).values_list("pk", "source_id", "category", "status")
    )
    open_statuses = (GrantStatus.ACTIVE, GrantStatus.DEPLETED)
    ledger.credit_grants_expire(
        grant_ids=[pk for pk, _, _, status in grants if status in open_statuses],
        actor="system:subscriptions",
        reason="period_end",
    )
    # What the expiries wrote off, whoever expired the grant (this or the expiry sweep).
    included = {
        pk: period_of[source]
        for pk, source, category, _ in grants
        if category == GrantCategory.INCLUDED
    }
    written_off = (
        LedgerEntry.objects.filter(grant_id__in=list(included), kind=EntryKind.EXPIRE)
        .values("grant_id")
        .annotate(total=Sum("credits"))
        .values_list("grant_id", "total")
    )
    unused = {period.pk: Decimal(0) for period in periods}
    for grant_id, total in written_off:
        unused[included[grant_id]] -= total
    return unused


def _rollovers(ended: Sequence[SubscriptionPeriod], unused: Mapping[int, Decimal]) -> None:
    """Carry unused included credits into the period that followed each, if there is one."""
    amounts = {}
    for period in ended:
        limit = period.plan_version.rollover_max_credits
        amount = min(unused[period.pk], limit) if limit is not None else Decimal(0)
        if amount > 0:
            amounts[period.pk] = amount
    rolling = [period for period in ended if period.pk in amounts]
    if not rolling:
        return
    following = {
        (period.subscription_id, period.start): period
        for period in SubscriptionPeriod.objects.filter(
            subscription__in={period.subscription_id for period in rolling},
            start__in={period.end for period in rolling},
        )
    }
    requests = []
    for period in rolling:
        next_period = following.get((period.subscription_id, period.end))
        if next_period is None:
            continue
        requests.append(
            ledger.GrantRequest(
                account_id=period.subscription.customer.account_id,
                amount=amounts[period.pk],
                category=GrantCategory.ROLLOVER,
                actor="system:subscriptions",
                effective_at=next_period.start,
                expires_at=next_period.end,
                reason="rollover",
                source_type=PERIOD_SOURCE,
                source_id=str(next_period.pk),
                idempotency_key=f"rollover:{period.pk}",
                expired_by_source=True,
            )
        )
    ledger.credit_grants_create(requests=requests)


def _finish(
    subscription: Subscription,
    at: datetime,
    actor: str,
    *,
    period: SubscriptionPeriod | None = None,
    proration: Money | None = None,
) -> Subscription:
    subscription.status = SubscriptionStatus.CANCELED
    subscription.canceled_at = at
    subscription.current_period_end = min(subscription.current_period_end, at)
    subscription.save()
    version = subscription.plan_version
    _change(subscription, period, ChangeKind.CANCEL, version, None, at, actor, proration=proration)
    return subscription


# --- plan changes and cancellation ------------------------------------------------------
#
# Each change is decided by a preview (what it would do, written nowhere) and then
# applied from that same preview, so what the portal shows before a change is what the
# change records: the ``*_preview`` functions are the read-only half of the services.


@dataclass(frozen=True)
class PlanChangePreview:
    """What changing to ``to_version`` does: ``when`` "now" charges ``proration`` (the fee
    difference for the time left) and grants ``extra_included_credits`` at once;
    "period_end" changes nothing before ``effective_at``, the renewal."""

    from_version: PlanVersion
    to_version: PlanVersion
    when: When
    effective_at: datetime
    period: SubscriptionPeriod | None = None
    proration: Money | None = None
    extra_included_credits: Decimal = Decimal(0)
    # The same plan with nothing scheduled: there is nothing to do.
    unchanged: bool = False
    # The plan change already scheduled for the renewal, which this one replaces.
    replaces: PlanVersion | None = None


def subscription_change_plan_preview(
    *,
    subscription: Subscription,
    plan: Plan,
    when: When | None = None,
    now: datetime | None = None,
) -> PlanChangePreview:
    """What :func:`subscription_change_plan` would do now; writes nothing."""
    fresh = Subscription.objects.select_related("plan_version", "pending_plan_version").get(
        pk=subscription.pk
    )
    return _plan_change_decide(fresh, plan, when, now or timezone.now())


def subscription_change_plan(
    *,
    subscription: Subscription,
    plan: Plan,
    actor: str,
    when: When | None = None,
    now: datetime | None = None,
) -> Subscription:
    """Upgrades apply now by default (prorated), downgrades at period end."""
    now = now or timezone.now()
    with transaction.atomic():
        locked = _lock(subscription)
        preview = _plan_change_decide(locked, plan, when, now)
        if preview.unchanged:
            return locked
        if preview.when == "period_end":
            new, old = preview.to_version, preview.from_version
            locked.pending_plan_version = None if new.pk == old.pk else new
            locked.save(update_fields=["pending_plan_version"])
            _change(
                locked,
                None,
                ChangeKind.PLAN_CHANGE_SCHEDULED,
                old,
                new,
                preview.effective_at,
                actor,
            )
            return locked
        _switch_now(locked, preview, actor)
    return locked


def _plan_change_decide(
    subscription: Subscription, plan: Plan, when: When | None, now: datetime
) -> PlanChangePreview:
    _require_active(subscription)
    new = plan_version_current(plan)
    old = subscription.plan_version
    pending = subscription.pending_plan_version
    if new.pk == old.pk and pending is None:
        return PlanChangePreview(
            old, new, "period_end", subscription.current_period_end, unchanged=True
        )
    when = when or ("now" if _is_upgrade(old, new) else "period_end")
    if when == "period_end":
        return PlanChangePreview(old, new, when, subscription.current_period_end, replaces=pending)
    if new.interval != old.interval:
        raise SubscriptionError(
            "interval_change_at_period_end",
            f"moving from a {old.interval}ly to a {new.interval}ly plan takes effect at "
            "period end; send when=period_end",
            param="when",
        )
    period = _current_period(subscription)
    left = _fraction_left(period, now)
    fee_delta = as_money(new.base_fee).amount - as_money(old.base_fee).amount
    proration = Money(to_cents(fee_delta * left), as_money(new.base_fee).currency)
    extra = max(Decimal(0), (new.included_credits - old.included_credits) * left).quantize(
        CREDIT_QUANTUM
    )
    return PlanChangePreview(old, new, when, now, period, proration, extra, replaces=pending)


def _is_upgrade(old: PlanVersion, new: PlanVersion) -> bool:
    old_fee, new_fee = as_money(old.base_fee).amount, as_money(new.base_fee).amount
    return (new_fee, new.included_credits) > (old_fee, old.included_credits)


def _switch_now(subscription: Subscription, preview: PlanChangePreview, actor: str) -> None:
    period, new, extra = preview.period, preview.to_version, preview.extra_included_credits
    assert period is not None  # a change now is decided on the current period
    change = _change(
        subscription,
        period,
        ChangeKind.PLAN_CHANGE,
        preview.from_version,
        new,
        preview.effective_at,
        actor,
        proration=preview.proration,
        extra_included_credits=extra,
    )
    if extra > 0:
        _grant_included(subscription, period, extra, key=f"included:change:{change.pk}")
    subscription.plan_version = new
    subscription.pending_plan_version = None
    subscription.save(update_fields=["plan_version", "pending_plan_version"])
    period.plan_version = new
    period.included_credits += extra
    period.save(update_fields=["plan_version", "included_credits"])


def _fraction_left(period: SubscriptionPeriod, now: datetime) -> Decimal:
    total = Decimal((period.end - period.start).total_seconds())
    left = Decimal(max(0.0, (period.end - max(now, period.start)).total_seconds()))
    return min(Decimal(1), left / total)


@dataclass(frozen=True)
class CancelPreview:
    """What cancelling does: "period_end" keeps everything until ``effective_at``; "now"
    ends the period at ``effective_at``, gives back ``refund`` (the base fee of the time
    left, negative: a credit on the period's invoice) and writes off the period's included
    and rollover credits still unused (``credits_written_off``)."""

    version: PlanVersion
    when: When
    effective_at: datetime
    period: SubscriptionPeriod | None = None
    refund: Money | None = None
    credits_written_off: Decimal = Decimal(0)


def subscription_cancel_preview(
    *, subscription: Subscription, when: When = "period_end", now: datetime | None = None
) -> CancelPreview:
    """What :func:`subscription_cancel` would do now; writes nothing."""
    fresh = Subscription.objects.select_related("plan_version").get(pk=subscription.pk)
    return _cancel_decide(fresh, when, now or timezone.now())


def subscription_cancel(
    *,
    subscription: Subscription,
    actor: str,
    when: When = "period_end",
    now: datetime | None = None,
) -> Subscription:
    now = now or timezone.now()
    with transaction.atomic():
        locked = _lock(subscription)
        preview = _cancel_decide(locked, when, now)
        if preview.period is None:
            locked.cancel_at_period_end = True
            locked.save(update_fields=["cancel_at_period_end"])
            _change(
                locked,
                None,
                ChangeKind.CANCEL_SCHEDULED,
                locked.plan_version,
                None,
                preview.effective_at,
                actor,
            )
            return locked
        period = preview.period
        _period_close(period, at=now, write_off=True)
        return _finish(locked, period.end, actor, period=period, proration=preview.refund)


def _cancel_decide(subscription: Subscription, when: When, now: datetime) -> CancelPreview:
    _require_active(subscription)
    version = subscription.plan_version
    if when == "period_end":
        return CancelPreview(version, when, subscription.current_period_end)
    period = _current_period(subscription)
    ends = _period_end_at(period, now)
    unused = CreditGrant.objects.filter(
        source_type=PERIOD_SOURCE, source_id=str(period.pk), status=GrantStatus.ACTIVE
    ).aggregate(left=Sum("remaining"))["left"]
    return CancelPreview(
        version, when, ends, period, _unused_base_fee(version, period, now), unused or Decimal(0)
    )


def _unused_base_fee(version: PlanVersion, period: SubscriptionPeriod, now: datetime) -> Money:
    """Cancelling now gives back the base fee of the time left, as an upgrade charges it."""
    fee = as_money(version.base_fee)
    return Money(-to_cents(fee.amount * _fraction_left(period, now)), fee.currency)


def _require_active(subscription: Subscription) -> None:
    if subscription.status != SubscriptionStatus.ACTIVE:
        raise SubscriptionConflict(
            "subscription_canceled", f"subscription {subscription.pk} is canceled; start a new one"
        )


# --- hand-off to invoicing --------------------------------------------------------------


def grace_period() -> timedelta:
    return timedelta(seconds=settings.BILLING_GRACE_PERIOD_SECONDS)


def periods_due_for_close(*, now: datetime | None = None) -> list[int]:
    """Closed periods whose late events can no longer arrive: ended, and closed, more
    than the grace window ago (a period closed just now, by a subscription started in the
    past, still takes its late events)."""
    before = (now or timezone.now()) - grace_period()
    due = SubscriptionPeriod.objects.filter(
        status=PeriodStatus.CLOSED, end__lte=before, closed_at__lte=before
    )
    return list(due.order_by("end", "pk").values_list("pk", flat=True))


def periods_credits_close(*, periods: Sequence[SubscriptionPeriod], now: datetime) -> None:
    """Hand closed periods over to invoicing: write off their credits, roll over what each
    plan allows, and stop charging their late events to them, in a few statements for
    the whole batch. The caller holds the periods' row locks and their customers' account
    locks (see billing_portal.invoicing.period_close, which takes a batch's account locks
    in one statement): rating reads periods under the account lock, so from here on it
    charges these periods' late events to the open ones, never to these after their
    invoices."""
    if not periods:
        return
    _rollovers(periods, _periods_credits_write_off(periods))
    SubscriptionPeriod.objects.filter(pk__in=[period.pk for period in periods]).update(
        status=PeriodStatus.INVOICING, handed_to_invoicing_at=now
    )
    for period in periods:
        period.status = PeriodStatus.INVOICING
        period.handed_to_invoicing_at = now
