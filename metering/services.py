"""Authorizations (allow/deny with holds) and meter-event cancellation.

Lock order: the customer's account row first (the ledger's rule), so an authorization,
the rating of the same customer's events and a cancellation queue on one row and a
decision is made on numbers nobody else is changing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from ledger import services as ledger
from ledger.models import ZERO, Account, LedgerEntry
from ledger.selectors import posted_in_scope
from metering.models import (
    Authorization,
    AuthorizationDecision,
    EventCancellation,
    EventRating,
    MeterEvent,
    PeriodUsage,
    RatingQueue,
    RatingStatus,
)
from metering.rating import dimensions_key, events_rate_for_customer
from plans import selectors as plan_selectors
from plans.models import (
    Customer,
    Meter,
    OveragePolicy,
    PeriodStatus,
    PlanVersion,
    SubscriptionPeriod,
)
from plans.rating import RateTable, RatingError


class MeteringError(Exception):
    def __init__(self, status: int, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.param = param


# --- authorizations -------------------------------------------------------------------


@dataclass(frozen=True)
class AuthorizationRequest:
    identifier: str
    credits: Decimal | None = None
    event_name: str | None = None
    value: Decimal | None = None
    dimensions: dict[str, str] | None = None
    workspace: str | None = None
    ttl_seconds: int = 300
    hold: bool = True

    def fingerprint(self) -> str:
        payload = [
            str(self.credits),
            self.event_name,
            str(self.value),
            sorted((self.dimensions or {}).items()),
            self.workspace,
            self.ttl_seconds,
            self.hold,
        ]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def authorization_create(
    *, customer: Customer, request: AuthorizationRequest, actor: str
) -> Authorization:
    """Price the estimate, and hold it if the plan's policy and the spend limit allow.

    The same identifier again returns the first authorization, decided once.
    """
    existing = Authorization.objects.filter(
        customer=customer, identifier=request.identifier
    ).first()
    if existing is not None:
        return existing
    now = timezone.now()
    period = plan_selectors.period_in_force(customer=customer, at=now)
    if period is None:
        return _store(
            customer,
            request,
            AuthorizationDecision.DENY,
            "no_active_subscription",
            ZERO,
            ZERO,
            None,
            None,
        )
    credits, meter = _price(request, period, now)
    try:
        if customer.spend_limit_credits is None:
            return _decide(customer, request, period, credits, meter, now, actor)
        with transaction.atomic():
            return _decide_within_spend_limit(customer, request, period, credits, meter, now, actor)
    except IntegrityError:
        # The same identifier decided concurrently: its answer is the answer.
        return Authorization.objects.get(customer=customer, identifier=request.identifier)


def _price(
    request: AuthorizationRequest, period: SubscriptionPeriod, now: datetime
) -> tuple[Decimal, Meter | None]:
    if request.credits is not None:
        return request.credits, None
    assert request.event_name is not None and request.value is not None
    table = RateTable.cached([period.plan_version.rate_card_id])
    try:
        rated = table.rate(
            rate_card_id=period.plan_version.rate_card_id,
            event_name=request.event_name,
            value=request.value,
            dimensions=request.dimensions or {},
            at=now,
        )
    except RatingError as error:
        param = "event_name" if error.code == "unknown_event_name" else "dimensions"
        raise MeteringError(400, error.code, error.message, param) from error
    return rated.credits, rated.meter


def allowance(version: PlanVersion, period: SubscriptionPeriod) -> Decimal | None:
    """How far below zero the plan lets available go (None: no limit)."""
    if version.overage_policy == OveragePolicy.HARD_STOP:
        return ZERO
    if version.overage_policy == OveragePolicy.SOFT_LIMIT:
        percent = version.soft_limit_percent or ZERO
        return (period.included_credits * percent / 100).quantize(Decimal("0.000001"))
    return None


def _decide(
    customer: Customer,
    request: AuthorizationRequest,
    period: SubscriptionPeriod,
    credits: Decimal,
    meter: Meter | None,
    now: datetime,
    actor: str,
) -> Authorization:
    """No spend limit: the plan's policy alone decides, in the ledger's hold call.

    Outside any transaction, so concurrent authorizations of one customer in this
    process share the ledger's transactions (see ledger.combiner).
    """
    meter_code = meter.code if meter else ""
    limit = allowance(period.plan_version, period)
    if not request.hold:
        available = posted_in_scope(
            account=customer.account,
            meter=meter_code or None,
            workspace=request.workspace,
            at=now,
        ) - Account.objects.values_list("held", flat=True).get(pk=customer.account_id)
        allowed = limit is None or credits <= available + limit
        return _store(
            customer,
            request,
            AuthorizationDecision.ALLOW if allowed else AuthorizationDecision.DENY,
            "" if allowed else "insufficient_credits",
            credits,
            available,
            meter,
            None,
        )
    return _hold(customer, request, credits, meter, now, actor, limit)


def _hold(
    customer: Customer,
    request: AuthorizationRequest,
    credits: Decimal,
    meter: Meter | None,
    now: datetime,
    actor: str,
    limit: Decimal | None,
) -> Authorization:
    expires_at = now + timedelta(seconds=request.ttl_seconds)
    held = ledger.hold_create(
        account=customer.account,
        amount=credits,
        expires_at=expires_at,
        actor=actor,
        allowance=limit,
        meter=meter.code if meter else "",
        workspace=request.workspace,
        idempotency_key=f"authorization:{request.identifier}",
    )
    if not held.allowed:
        return _store(
            customer,
            request,
            AuthorizationDecision.DENY,
            "insufficient_credits",
            credits,
            held.available,
            meter,
            None,
        )
    return _store(
        customer,
        request,
        AuthorizationDecision.ALLOW,
        "",
        credits,
        held.available,
        meter,
        held.hold,
        expires_at,
    )


def _decide_within_spend_limit(
    customer: Customer,
    request: AuthorizationRequest,
    period: SubscriptionPeriod,
    credits: Decimal,
    meter: Meter | None,
    now: datetime,
    actor: str,
) -> Authorization:
    """The customer's own monthly cap, checked and held under the account lock, so two
    authorizations never both fit under it (inside the caller's transaction)."""
    account = Account.objects.select_for_update().get(pk=customer.account_id)
    meter_code = meter.code if meter else ""
    available = (
        posted_in_scope(
            account=account, meter=meter_code or None, workspace=request.workspace, at=now
        )
        - account.held
    )
    if _over_spend_limit(customer, period, account, credits):
        return _store(
            customer,
            request,
            AuthorizationDecision.DENY,
            "spend_limit_reached",
            credits,
            available,
            meter,
            None,
        )
    limit = allowance(period.plan_version, period)
    if not request.hold:
        allowed = limit is None or credits <= available + limit
        decision = AuthorizationDecision.ALLOW if allowed else AuthorizationDecision.DENY
        return _store(
            customer,
            request,
            decision,
            "" if allowed else "insufficient_credits",
            credits,
            available,
            meter,
            None,
        )
    return _hold(customer, request, credits, meter, now, actor, limit)


def _over_spend_limit(
    customer: Customer, period: SubscriptionPeriod, account: Account, credits: Decimal
) -> bool:
    if customer.spend_limit_credits is None:
        return False
    used = (
        PeriodUsage.objects.filter(period=period).values_list("credits", flat=True).first() or ZERO
    )
    return used + account.held + credits > customer.spend_limit_credits


def _store(
    customer: Customer,
    request: AuthorizationRequest,
    decision: str,
    reason: str,
    credits: Decimal,
    available: Decimal,
    meter: Meter | None,
    hold: Any,
    expires_at: datetime | None = None,
) -> Authorization:
    return Authorization.objects.create(
        customer=customer,
        identifier=request.identifier,
        request_hash=request.fingerprint(),
        decision=decision,
        reason=reason,
        credits=credits,
        available=available,
        hold=hold,
        dry_run=not request.hold,
        meter=meter,
        workspace=request.workspace,
        expires_at=expires_at,
    )


def authorization_release(*, authorization: Authorization, actor: str) -> Authorization:
    if authorization.hold is None:
        raise MeteringError(
            409,
            "authorization_has_no_hold",
            "this authorization holds no credits (denied or a dry run)",
        )
    try:
        ledger.hold_release(hold=authorization.hold, actor=actor)
    except ledger.HoldNotOpen as exc:
        raise MeteringError(
            409, "authorization_captured", f"{exc.message}; nothing to release"
        ) from exc
    authorization.hold.refresh_from_db()
    return authorization


# --- cancellation ---------------------------------------------------------------------


def event_cancel(
    *, customer: Customer, identifier: str, reason: str, actor: str
) -> EventCancellation:
    """Reverse an event's debit while its period is open (a meter-event adjustment)."""
    event = (
        MeterEvent.objects.filter(customer=customer, identifier=identifier)
        .select_related("meter")
        .first()
    )
    if event is None:
        raise MeteringError(
            404, "event_not_found", f"no event {identifier!r} for this customer", "identifier"
        )
    if RatingQueue.objects.filter(event=event).exists():
        events_rate_for_customer(customer_id=customer.pk)  # rate it first: then reverse it
    with transaction.atomic():
        Account.objects.select_for_update().get(pk=customer.account_id)
        done = EventCancellation.objects.filter(event=event).first()
        if done is not None:
            return done
        rating = EventRating.objects.select_related("period").get(event=event)
        if rating.period is not None and rating.period.status == PeriodStatus.INVOICING:
            raise MeteringError(
                409,
                "period_closed",
                "the event's period is already invoiced; correct it with a credit note",
                "identifier",
            )
        cancellation = EventCancellation.objects.create(event=event, reason=reason, actor=actor)
        if rating.status == RatingStatus.RATED:
            ledger.credits_reverse(
                account=customer.account,
                cause=ledger.Cause("event", str(event.pk)),
                actor=actor,
                reason=reason,
            )
            _usage_subtract(event, rating)
    return cancellation


def _usage_subtract(event: MeterEvent, rating: EventRating) -> None:
    is_max = event.meter.aggregation == "max"
    hour = event.timestamp.replace(minute=0, second=0, microsecond=0)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE metering_usagerollup
            SET value = value - %s, events = events - 1, credits = credits - %s
            WHERE customer_id = %s AND meter_id = %s AND hour = %s AND dimensions_key = %s
            """,
            [
                ZERO if is_max else rating.units,
                rating.credits,
                event.customer_id,
                event.meter_id,
                hour,
                dimensions_key(event.dimensions),
            ],
        )
    overage = -sum(
        (
            e
            for e in LedgerEntry.objects.filter(
                cause_type="event", cause_id=str(event.pk), kind="overage"
            ).values_list("credits", flat=True)
        ),
        ZERO,
    )
    PeriodUsage.objects.filter(period_id=rating.period_id).update(
        credits=F("credits") - rating.credits,
        overage=F("overage") - overage,
        events=F("events") - 1,
    )
