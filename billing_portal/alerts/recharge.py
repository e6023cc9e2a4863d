"""Auto-recharge: buy the customer's chosen pack when ``available`` falls under their
threshold, at most once per trigger, one at a time, within monthly caps on the number of
recharges and, when set, on the money they spend.

The check runs in the rating transaction under the account lock and only writes a
pending :class:`RechargeAttempt`; the purchase and the charge run after commit in a task.
Two constraints keep a burst of rating batches (or a retried task) from buying twice: at
most one pending attempt per customer, and one attempt per trigger key. The key is the
month and the number of attempts already made in it, so it changes only once the
previous attempt has resolved.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone
from djmoney.money import Money

from billing_portal.alerts.models import AlertKind, AutoRecharge, RechargeAttempt, RechargeStatus
from billing_portal.alerts.services import alert_raise
from billing_portal.invoicing.models import CreditPackPurchase, PurchaseStatus
from billing_portal.invoicing.purchases import purchase_create
from billing_portal.stripe.payments import purchase_charge_off_session
from ledger.errors import InvalidRequest
from ledger.units import credits_text
from plans.models import Customer
from plans.money import as_money

logger = logging.getLogger(__name__)

ACTOR = "system:auto_recharge"
SOURCE = "auto_recharge"
FAILED = (RechargeStatus.DECLINED, RechargeStatus.FAILED)
# What counts against the money cap: paid, or possibly being paid.
SPENDING = (RechargeStatus.SUCCEEDED, RechargeStatus.PENDING)
MAX_BACKOFF_DOUBLINGS = 6
# A pending attempt whose task has not started a charge by then lost its message.
STALE_AFTER = timedelta(minutes=5)


def month_start(now: datetime) -> datetime:
    """The start of the calendar month (UTC) the caps count in."""
    return now.astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)


@dataclass(frozen=True)
class CapStop:
    """Why a monthly cap refuses the next recharge.

    ``suffix`` keys the skipped attempt (``<month>:cap<suffix>``) and the alert
    (``<month><suffix>``). The count cap and the money cap share the empty suffix: a month
    gets one "cap reached" alert whichever cap stops it first, as the customer's fix is the
    same (wait for next month or raise a cap). A currency mismatch is a setting to correct,
    not a cap reached, so it keeps its own key and still alerts after a cap did.
    """

    message: str
    data: dict[str, Any] = field(default_factory=dict)
    suffix: str = ""


def auto_recharge_check(
    *, customer: Customer, available: Decimal, now: datetime | None = None
) -> RechargeAttempt | None:
    """Start a recharge if the customer's rule calls for one; the new attempt, or None."""
    now = now or timezone.now()
    rule = (
        AutoRecharge.objects.filter(customer=customer, enabled=True).select_related("pack").first()
    )
    if rule is None or rule.pack is None or rule.threshold_credits is None:
        return None
    if available >= rule.threshold_credits:
        return None
    start = month_start(now)
    attempts = list(
        RechargeAttempt.objects.filter(
            Q(created_at__gte=start)
            | Q(status=RechargeStatus.PENDING)
            | Q(next_allowed_at__gt=now),
            customer=customer,
        )
    )
    if any(a.status == RechargeStatus.PENDING for a in attempts):
        return None  # one in flight; it will lift the balance or fail
    if any(a.next_allowed_at and a.next_allowed_at > now for a in attempts):
        return None  # backing off after a failed payment
    this_month = [a for a in attempts if a.created_at >= start]
    month = f"{start:%Y-%m}"
    stop = _count_cap_stop(rule, this_month) or _money_cap_stop(rule, this_month)
    if stop is not None:
        return _cap_reached(customer, rule, month, stop, this_month, now)
    made = sum(a.status != RechargeStatus.SKIPPED_CAP for a in this_month)
    attempt = _attempt_insert(customer, rule, f"{month}:{made}", RechargeStatus.PENDING, now)
    if attempt is not None:
        from billing_portal.alerts.tasks import recharge_attempt_run_task

        recharge_attempt_run_task.delay_on_commit(attempt.pk)
    return attempt


def _attempt_insert(
    customer: Customer, rule: AutoRecharge, key: str, status: str, now: datetime
) -> RechargeAttempt | None:
    assert rule.pack is not None
    try:
        with transaction.atomic():
            return RechargeAttempt.objects.create(
                customer=customer,
                trigger_key=key,
                status=status,
                pack=rule.pack,
                credits=rule.pack.credits,
                amount=rule.pack.price,
                created_at=now,
                resolved_at=None if status == RechargeStatus.PENDING else now,
            )
    except IntegrityError:
        # This trigger already has its attempt, or another is in flight.
        return None


def _count_cap_stop(rule: AutoRecharge, this_month: list[RechargeAttempt]) -> CapStop | None:
    succeeded = sum(a.status == RechargeStatus.SUCCEEDED for a in this_month)
    if succeeded < rule.max_recharges_per_month:
        return None
    return CapStop(
        message=f"Auto-recharge bought {succeeded} packs this month, its monthly cap: "
        "no more are bought until next month. Buy a pack or raise the cap to keep going.",
        data={"recharges": succeeded, "cap": rule.max_recharges_per_month},
    )


def _money_cap_stop(rule: AutoRecharge, this_month: list[RechargeAttempt]) -> CapStop | None:
    """Refuse the pack if this month's spend plus its price would pass the money cap."""
    if rule.max_amount_per_month is None:
        return None
    assert rule.pack is not None
    cap, price = as_money(rule.max_amount_per_month), as_money(rule.pack.price)
    spending = [as_money(a.amount) for a in this_month if a.status in SPENDING]
    if any(m.currency != cap.currency for m in [price, *spending]):
        return _currency_stop(cap, price, spending)
    spent = sum(spending, Money(0, cap.currency))
    if spent + price <= cap:
        return None
    return CapStop(
        message=f"Auto-recharge spent {spent} this month; another pack at {price} would pass "
        f"its monthly cap of {cap}: no more are bought until next month. Buy a pack or raise "
        "the cap to keep going.",
        data={
            "spent": str(spent.amount),
            "price": str(price.amount),
            "amount_cap": str(cap.amount),
            "currency": cap.currency.code,
        },
    )


def _currency_stop(cap: Money, price: Money, spending: list[Money]) -> CapStop:
    # Comparing amounts in two currencies needs a rate we do not have; a cap is a safety
    # limit, so refuse rather than guess.
    reasons = []
    if price.currency != cap.currency:
        reasons.append(f"the pack costs {price}")
    others = sorted({m.currency.code for m in spending} - {cap.currency.code})
    if others:
        reasons.append(f"this month's recharges were paid in {', '.join(others)}")
    return CapStop(
        message=f"Auto-recharge did not buy a pack: its monthly cap is {cap} in "
        f"{cap.currency.code}, but {' and '.join(reasons)}, and amounts in different "
        f"currencies are not converted. Set the cap in {price.currency.code} to keep going.",
        data={
            "amount_cap": str(cap.amount),
            "currency": cap.currency.code,
            "price": str(price.amount),
            "price_currency": price.currency.code,
        },
        suffix=":currency",
    )


def _cap_reached(
    customer: Customer,
    rule: AutoRecharge,
    month: str,
    stop: CapStop,
    this_month: list[RechargeAttempt],
    now: datetime,
) -> RechargeAttempt | None:
    key = f"{month}:cap{stop.suffix}"
    if any(a.trigger_key == key for a in this_month):
        return None  # skipped and alerted already this month
    attempt = _attempt_insert(customer, rule, key, RechargeStatus.SKIPPED_CAP, now)
    if attempt is not None:
        alert_raise(
            customer=customer,
            kind=AlertKind.AUTO_RECHARGE_CAP_REACHED,
            threshold=f"{month}{stop.suffix}",
            period=None,
            message=stop.message,
            data={"month": month, **stop.data},
            now=now,
        )
    return attempt


# --- the task's side -------------------------------------------------------------------


def recharge_attempt_run(*, attempt: RechargeAttempt) -> RechargeAttempt:
    """Create the attempt's purchase (once) and charge it; never inside a transaction.

    A temporary Stripe failure propagates for the task to retry: the purchase's
    idempotency key and the PaymentIntent's key make the retry charge once.
    """
    attempt = RechargeAttempt.objects.select_related("customer", "pack", "purchase").get(
        pk=attempt.pk
    )
    if attempt.status != RechargeStatus.PENDING:
        return attempt
    purchase = attempt.purchase
    if purchase is None:
        try:
            purchase = purchase_create(
                customer=attempt.customer,
                pack=attempt.pack,
                actor=ACTOR,
                source=SOURCE,
                idempotency_key=f"auto-recharge-{attempt.pk}",
            )
        except InvalidRequest as exc:
            return recharge_attempt_resolve(attempt=attempt, purchase=None, message=str(exc))
        RechargeAttempt.objects.filter(pk=attempt.pk, purchase__isnull=True).update(
            purchase=purchase
        )
    purchase = purchase_charge_off_session(purchase=purchase, actor=ACTOR)
    return recharge_attempt_resolve(attempt=attempt, purchase=purchase)


def recharge_attempt_resolve(
    *,
    attempt: RechargeAttempt,
    purchase: CreditPackPurchase | None,
    message: str = "",
    now: datetime | None = None,
) -> RechargeAttempt:
    """Record how the purchase ended; a purchase still processing leaves it pending."""
    now = now or timezone.now()
    if purchase is not None and purchase.status == PurchaseStatus.PENDING:
        return attempt
    with transaction.atomic():
        locked = RechargeAttempt.objects.select_for_update().get(pk=attempt.pk)
        if locked.status != RechargeStatus.PENDING:
            return locked
        locked.resolved_at = now
        if purchase is not None and purchase.status == PurchaseStatus.PAID:
            locked.status = RechargeStatus.SUCCEEDED
            locked.save(update_fields=["status", "resolved_at"])
            logger.info("auto-recharge %s for %s paid", locked.pk, locked.customer_id)
            return locked
        declined = purchase is not None and purchase.status == PurchaseStatus.FAILED
        locked.status = RechargeStatus.DECLINED if declined else RechargeStatus.FAILED
        locked.failure_message = (purchase.failure_message if purchase else "") or message
        locked.next_allowed_at = now + _backoff(locked)
        locked.save(update_fields=["status", "resolved_at", "failure_message", "next_allowed_at"])
        _failed_alert(locked, now)
    return locked


def _backoff(attempt: RechargeAttempt) -> timedelta:
    """Base, 2x, 4x, ... per failure in a row since the last successful recharge."""
    base = timedelta(seconds=int(getattr(settings, "AUTO_RECHARGE_BACKOFF_SECONDS", 3600)))
    previous = (
        RechargeAttempt.objects.filter(
            customer_id=attempt.customer_id, created_at__lt=attempt.created_at
        )
        .exclude(status=RechargeStatus.SKIPPED_CAP)
        .order_by("-created_at", "-pk")
        .values_list("status", flat=True)[:MAX_BACKOFF_DOUBLINGS]
    )
    in_a_row = 0
    for status in previous:
        if status not in FAILED:
            break
        in_a_row += 1
    return base * 2**in_a_row


def _failed_alert(attempt: RechargeAttempt, now: datetime) -> None:
    reason = attempt.failure_message or "the payment did not go through"
    retry = timezone.localtime(attempt.next_allowed_at) if attempt.next_allowed_at else None
    alert_raise(
        customer=attempt.customer,
        kind=AlertKind.AUTO_RECHARGE_FAILED,
        threshold=attempt.trigger_key,
        period=None,
        message=f"Auto-recharge could not buy {credits_text(attempt.credits)} credits: "
        f"{reason}. It tries again after {retry:%Y-%m-%d %H:%M} if credits are still low."
        if retry
        else f"Auto-recharge could not buy {credits_text(attempt.credits)} credits: {reason}.",
        data={
            "attempt": attempt.pk,
            "status": attempt.status,
            "credits": str(attempt.credits),
            "amount": str(as_money(attempt.amount).amount),
            "currency": str(as_money(attempt.amount).currency),
            "failure_message": attempt.failure_message,
            "next_allowed_at": attempt.next_allowed_at.isoformat()
            if attempt.next_allowed_at
            else None,
        },
        now=now,
    )


def recharge_attempts_reconcile(*, now: datetime | None = None) -> int:
    """Resolve pending attempts whose purchase ended elsewhere (a webhook), and restart
    those whose task message was lost; return how many were touched."""
    now = now or timezone.now()
    pending = RechargeAttempt.objects.filter(status=RechargeStatus.PENDING).select_related(
        "purchase"
    )
    from billing_portal.alerts.tasks import recharge_attempt_run_task

    touched = 0
    for attempt in pending.order_by("pk")[:500]:
        purchase = attempt.purchase
        if purchase is not None and purchase.status != PurchaseStatus.PENDING:
            recharge_attempt_resolve(attempt=attempt, purchase=purchase, now=now)
            touched += 1
        elif attempt.created_at < now - STALE_AFTER and not (
            purchase and purchase.stripe_payment_intent_id
        ):
            recharge_attempt_run_task.delay(attempt.pk)
            touched += 1
    return touched
