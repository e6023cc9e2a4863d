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
from decimal import Decimal, InvalidOperation
from typing import Any

from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.utils import timezone

from ledger import services as ledger
from ledger.errors import Conflict, DomainError, NotFound
from ledger.models import ZERO, Account, Hold, LedgerEntry
from ledger.selectors import posted_in_scope
from ledger.units import to_credits
from metering.models import (
    Authorization,
    AuthorizationDecision,
    EventCancellation,
    EventRating,
    MeterEvent,
    PeriodUsage,
    RateUsage,
    RatingQueue,
    RatingStatus,
)
from metering.rating import dimensions_key, events_rate_for_customer
from metering.selectors import events_identified, meter_units_between
from plans.models import (
    MAX_CREDITS,
    Aggregation,
    Customer,
    Meter,
    OveragePolicy,
    PeriodStatus,
    features_from,
)
from plans.money import overage_estimate
from plans.rating import RateTable, RatingError
from plans.selectors import PERIOD_IN_FORCE_SQL


class MeteringError(DomainError):
    def __init__(self, code: str, message: str, param: str | None = None) -> None:
        super().__init__(message, code=code, param=param)


class MeteringNotFound(MeteringError, NotFound):
    pass


class MeteringConflict(MeteringError, Conflict):
    pass


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
    feature: str | None = None

    def fingerprint(self) -> str:
        payload: list[Any] = [
            str(self.credits),
            self.event_name,
            str(self.value),
            sorted((self.dimensions or {}).items()),
            self.workspace,
            self.ttl_seconds,
            self.hold,
        ]
        if self.feature is not None:  # appended only when named: older hashes stay valid
            payload.append(self.feature)
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


@dataclass(frozen=True)
class _Context:
    """What deciding an authorization reads, in one round trip."""

    customer_id: int
    account_id: int
    spend_limit: Decimal | None
    existing_id: int | None  # an authorization with this identifier, if decided before
    period_id: int | None  # the period of the active subscription in force now
    included: Decimal
    rate_card_id: int | None
    overage_policy: str | None
    soft_limit_percent: Decimal | None
    period_start: datetime | None = None
    period_end: datetime | None = None
    features: dict[str, Any] | None = None
    past_due_since: datetime | None = None  # the active subscription's first unpaid failure
    past_due_deny_after_days: int | None = None  # the plan's grace; None: allow while past due
    overage_price: Decimal | None = None  # the plan's price per credit beyond those available
    currency: str = "USD"  # the plan's (the customer's without a plan in force)

    @property
    def allowance(self) -> Decimal | None:
        """How far below zero the plan lets available go (None: no limit)."""
        return allowance_for(self.overage_policy, self.soft_limit_percent, self.included)

    def payment_overdue(self, now: datetime) -> bool:
        paused_at = access_paused_at(
            past_due_since=self.past_due_since, deny_after_days=self.past_due_deny_after_days
        )
        return paused_at is not None and now >= paused_at


# Every reason an authorization is denied with (the API lists them in its schema).
DENY_REASONS = (
    "insufficient_credits",
    "spend_limit_reached",
    "no_active_subscription",
    "feature_not_in_plan",
    "feature_limit_reached",
    "payment_overdue",
)


def access_paused_at(
    *, past_due_since: datetime | None, deny_after_days: int | None
) -> datetime | None:
    """When authorizations start to deny ``payment_overdue``: the plan's grace after the
    first failed payment still unpaid. None while nothing is past due, or when the plan
    allows usage while past due (``past_due_policy: allow``)."""
    if past_due_since is None or deny_after_days is None:
        return None
    return past_due_since + timedelta(days=deny_after_days)


_CONTEXT = (
    """
    SELECT c.id, c.account_id, c.spend_limit_credits,
           (SELECT a.id FROM metering_authorization a
            WHERE a.customer_id = c.id AND a.identifier = %(identifier)s),
           p.id, p.included_credits, v.rate_card_id, v.overage_policy, v.soft_limit_percent,
           p.start, p."end", v.features::text, v.past_due_deny_after_days,
           (SELECT s.past_due_since FROM plans_subscription s
            WHERE s.customer_id = c.id AND s.status = 'active'),
           v.overage_price_per_credit, COALESCE(v.base_fee_currency, c.currency)
    FROM plans_customer c
    LEFT JOIN LATERAL ({period_in_force}) p ON true
    LEFT JOIN plans_planversion v ON v.id = p.plan_version_id
    WHERE c.external_id = %(external_id)s
"""
).replace("{period_in_force}", PERIOD_IN_FORCE_SQL.format(customer="c.id", at="%(at)s"))


def _context(external_id: str, identifier: str, at: datetime) -> _Context | None:
    with connection.cursor() as cursor:
        cursor.execute(
            _CONTEXT,
            {
                "external_id": external_id,
                "identifier": identifier,
                "at": at,
            },
        )
        row = cursor.fetchone()
    if row is None:
        return None
    customer_id, account_id, spend_limit, existing_id, period_id, included, *plan = row
    rate_card_id, overage_policy, soft_limit_percent, start, end, features, *rest = plan
    deny_after_days, past_due_since, overage_price, currency = rest
    return _Context(
        customer_id=customer_id,
        account_id=account_id,
        spend_limit=spend_limit,
        existing_id=existing_id,
        period_id=period_id,
        included=included or ZERO,
        rate_card_id=rate_card_id,
        overage_policy=overage_policy,
        soft_limit_percent=soft_limit_percent,
        period_start=start,
        period_end=end,
        features=json.loads(features) if features else None,
        past_due_since=past_due_since,
        past_due_deny_after_days=deny_after_days,
        overage_price=overage_price,
        currency=currency,
    )


def authorization_create(
    *, customer: Customer, request: AuthorizationRequest, actor: str
) -> Authorization:
    """Price the estimate, and hold it if the plan's policy and the spend limit allow.

    The same identifier again returns the first authorization, decided once.
    """
    return authorization_create_for(external_id=customer.external_id, request=request, actor=actor)


def authorization_create_for(
    *, external_id: str, request: AuthorizationRequest, actor: str
) -> Authorization:
    """:func:`authorization_create` for a customer named by its external id (404 if none).

    The hot path of the API: one query reads the customer, an earlier answer for the
    identifier and the plan in force; the ledger's hold call decides; one insert stores
    the answer.
    """
    now = timezone.now()
    context = _context(external_id, request.identifier, now) if "\x00" not in external_id else None
    if context is None:
        raise MeteringNotFound(
            "unknown_customer", f"no customer with external_id {external_id!r}", "customer"
        )
    if context.existing_id is not None:
        return Authorization.objects.select_related("hold").get(pk=context.existing_id)
    try:
        return _decide(context, request, now, actor)
    except IntegrityError:
        # The same identifier decided concurrently: its answer is the answer.
        return Authorization.objects.select_related("hold").get(
            customer_id=context.customer_id, identifier=request.identifier
        )


def _decide(
    context: _Context, request: AuthorizationRequest, now: datetime, actor: str
) -> Authorization:
    if context.period_id is None or context.rate_card_id is None:
        return _store(
            context, request, AuthorizationDecision.DENY, "no_active_subscription", ZERO, ZERO
        )
    credits, meter = _price(request, context.rate_card_id, now)
    denial = "payment_overdue" if context.payment_overdue(now) else None
    if denial is None and request.feature is not None:
        denial = _feature_denial(context, request, meter)
    if denial is not None:
        available = _available(context, meter, request.workspace, now)
        return _store(
            context, request, AuthorizationDecision.DENY, denial, credits, available, meter
        )
    if context.spend_limit is not None:
        with transaction.atomic():
            return _decide_within_spend_limit(context, request, credits, meter, now, actor)
    if not request.hold:
        available = _available(context, meter, request.workspace, now)
        return _dry_run(context, request, credits, meter, available)
    # Outside any transaction, so concurrent authorizations of one customer in this
    # process share the ledger's transactions (see ledger.combiner).
    return _hold(context, request, credits, meter, now, actor)


def _price(
    request: AuthorizationRequest, rate_card_id: int, now: datetime
) -> tuple[Decimal, Meter | None]:
    if request.credits is not None:
        return request.credits, None
    assert request.event_name is not None and request.value is not None
    table = RateTable.cached([rate_card_id])
    try:
        rated = table.rate(
            rate_card_id=rate_card_id,
            event_name=request.event_name,
            value=request.value,
            dimensions=request.dimensions or {},
            at=now,
        )
    except RatingError as error:
        names_meter = error.code in ("unknown_event_name", "event_name_feeds_several_meters")
        param = "event_name" if names_meter else "dimensions"
        raise MeteringError(error.code, error.message, param) from error
    except InvalidOperation as error:  # more credits than Decimal's 28 digits hold
        raise _estimate_too_large(request.value) from error
    if rated.credits > MAX_CREDITS:
        raise _estimate_too_large(request.value)
    return rated.credits, rated.meter


def _feature_denial(
    context: _Context, request: AuthorizationRequest, meter: Meter | None
) -> str | None:
    """Why the plan in force does not allow the feature the request names, if it does not.

    A metered feature's limit counts the period's rated units so far plus this request's:
    its ``value`` when its event feeds the feature's meter (1 for a count meter), else 1
    (one more use). Authorizations in flight are not counted: their events are, once
    rated, as for credits."""
    feature = next((f for f in features_from(context.features) if f.code == request.feature), None)
    if feature is None or not feature.enabled:
        return "feature_not_in_plan"
    if feature.meter is None or feature.limit is None:
        return None
    limited = meter if meter is not None and meter.code == feature.meter else None
    limited = limited or Meter.objects.filter(code=feature.meter).first()
    if limited is None:
        return None
    units = Decimal(1)
    if meter is limited and meter.aggregation != Aggregation.COUNT and request.value is not None:
        units = request.value
    assert context.period_start is not None and context.period_end is not None
    used = meter_units_between(
        customer_id=context.customer_id,
        meter=limited,
        start=context.period_start,
        end=context.period_end,
    )
    total = max(used, units) if limited.aggregation == Aggregation.MAX else used + units
    return "feature_limit_reached" if total > feature.limit else None


def _estimate_too_large(value: Decimal) -> MeteringError:
    # Only a rate loaded before catalogs bounded credits per unit can get here.
    return MeteringError(
        "value_out_of_range",
        f"value {value} prices at more than {MAX_CREDITS} credits, the most one "
        "authorization can hold; estimate less at a time",
        "value",
    )


def allowance_for(
    policy: str | None, soft_limit_percent: Decimal | None, included: Decimal
) -> Decimal | None:
    if policy == OveragePolicy.HARD_STOP:
        return ZERO
    if policy == OveragePolicy.SOFT_LIMIT:
        percent = soft_limit_percent or ZERO
        return to_credits(included * percent / 100)
    return None


def _available(
    context: _Context, meter: Meter | None, workspace: str | None, now: datetime
) -> Decimal:
    account = Account(pk=context.account_id)
    posted = posted_in_scope(
        account=account, meter=meter.code if meter else None, workspace=workspace, at=now
    )
    return posted - Account.objects.values_list("held", flat=True).get(pk=context.account_id)


def _dry_run(
    context: _Context,
    request: AuthorizationRequest,
    credits: Decimal,
    meter: Meter | None,
    available: Decimal,
) -> Authorization:
    limit = context.allowance
    allowed = limit is None or credits <= available + limit
    return _store(
        context,
        request,
        AuthorizationDecision.ALLOW if allowed else AuthorizationDecision.DENY,
        "" if allowed else "insufficient_credits",
        credits,
        available,
        meter,
    )


def _hold(
    context: _Context,
    request: AuthorizationRequest,
    credits: Decimal,
    meter: Meter | None,
    now: datetime,
    actor: str,
) -> Authorization:
    """Hold the estimate; the answer is stored in the hold's own transaction."""
    expires_at = now + timedelta(seconds=request.ttl_seconds)
    answers: list[Authorization] = []

    def record(held: ledger.HoldDecision) -> tuple[str, list[Any]]:
        if held.allowed:
            answer = _authorization(
                context,
                request,
                AuthorizationDecision.ALLOW,
                "",
                credits,
                held.available,
                meter,
                held.hold,
                expires_at,
            )
        else:
            answer = _authorization(
                context,
                request,
                AuthorizationDecision.DENY,
                "insufficient_credits",
                credits,
                held.available,
                meter,
            )
        answers.append(answer)
        return _INSERT_AUTHORIZATION_ONCE, _insert_params(answer)

    held = ledger.hold_create(
        account=Account(pk=context.account_id),
        amount=credits,
        expires_at=expires_at,
        actor=actor,
        allowance=context.allowance,
        meter=meter.code if meter else "",
        workspace=request.workspace,
        idempotency_key=f"authorization:{request.identifier}",
        record=record,
    )
    if not held.recorded:
        raise IntegrityError("the identifier was decided concurrently")
    return _saved(answers[-1], held.recorded[0][0])


def _decide_within_spend_limit(
    context: _Context,
    request: AuthorizationRequest,
    credits: Decimal,
    meter: Meter | None,
    now: datetime,
    actor: str,
) -> Authorization:
    """The customer's own monthly cap, checked and held under the account lock, so two
    authorizations never both fit under it (inside the caller's transaction)."""
    account = Account.objects.select_for_update().get(pk=context.account_id)
    available = _available(context, meter, request.workspace, now)
    used = (
        PeriodUsage.objects.filter(period_id=context.period_id)
        .values_list("credits", flat=True)
        .first()
        or ZERO
    )
    assert context.spend_limit is not None
    if used + account.held + credits > context.spend_limit:
        return _store(
            context,
            request,
            AuthorizationDecision.DENY,
            "spend_limit_reached",
            credits,
            available,
            meter,
        )
    if not request.hold:
        return _dry_run(context, request, credits, meter, available)
    return _hold(context, request, credits, meter, now, actor)


_INSERT_AUTHORIZATION = """
    INSERT INTO metering_authorization
        (customer_id, identifier, request_hash, decision, reason, credits, available, hold_id,
         dry_run, meter_id, workspace, expires_at, created_at)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)
    RETURNING id
"""
# In the hold's transaction: a concurrent answer for the identifier wins without failing
# the hold batch (the same identifier got the same hold, by its idempotency key).
_INSERT_AUTHORIZATION_ONCE = _INSERT_AUTHORIZATION.replace(
    "RETURNING id", "ON CONFLICT (customer_id, identifier) DO NOTHING RETURNING id"
)


def _authorization(
    context: _Context,
    request: AuthorizationRequest,
    decision: str,
    reason: str,
    credits: Decimal,
    available: Decimal,
    meter: Meter | None = None,
    hold: Hold | None = None,
    expires_at: datetime | None = None,
) -> Authorization:
    authorization = Authorization(
        customer_id=context.customer_id,
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
        created_at=timezone.now(),
    )
    authorization.estimate_money = overage_estimate(
        credits=credits,
        available=authorization.available_before,
        price_per_credit=context.overage_price,
        currency=context.currency,
    )
    return authorization


def _insert_params(a: Authorization) -> list[Any]:
    return [
        a.customer_id,
        a.identifier,
        a.request_hash,
        a.decision,
        a.reason,
        a.credits,
        a.available,
        a.hold_id,
        a.dry_run,
        a.meter_id,
        a.workspace,
        a.expires_at,
        a.created_at,
    ]


def _saved(authorization: Authorization, pk: int) -> Authorization:
    authorization.pk = pk
    authorization._state.adding = False
    authorization._state.db = connection.alias
    return authorization


def _store(
    context: _Context,
    request: AuthorizationRequest,
    decision: str,
    reason: str,
    credits: Decimal,
    available: Decimal,
    meter: Meter | None = None,
) -> Authorization:
    """Store an answer that holds nothing (a deny, a dry run)."""
    authorization = _authorization(context, request, decision, reason, credits, available, meter)
    with connection.cursor() as cursor:
        cursor.execute(_INSERT_AUTHORIZATION, _insert_params(authorization))
        (pk,) = cursor.fetchone()
    return _saved(authorization, pk)


def authorization_release(*, authorization: Authorization, actor: str) -> Authorization:
    if authorization.hold is None:
        raise MeteringConflict(
            "authorization_has_no_hold",
            "this authorization holds no credits (denied or a dry run)",
        )
    try:
        ledger.hold_release(hold=authorization.hold, actor=actor)
    except ledger.HoldNotOpen as exc:
        # Named as the caller knows it: the hold behind an authorization is internal.
        authorization.hold.refresh_from_db(fields=["status"])
        raise MeteringConflict(
            "authorization_captured",
            f"authorization {authorization.pk} is already {authorization.hold.status}; "
            "nothing to release",
        ) from exc
    authorization.hold.refresh_from_db()
    return authorization


# --- cancellation ---------------------------------------------------------------------


def event_cancel(
    *, customer: Customer, identifier: str, reason: str, actor: str, description: str = ""
) -> EventCancellation:
    """Reverse an event's debit while its period is open (a meter-event adjustment).

    An event that fed several meters is cancelled whole: every part, or none."""
    events = list(
        events_identified([(customer.pk, identifier)])
        .filter(Q(identifier=identifier) | Q(parent_identifier=identifier), customer=customer)
        .select_related("meter")
        .order_by("pk")
    )
    if not events:
        raise MeteringNotFound(
            "event_not_found", f"no event {identifier!r} for this customer", "identifier"
        )
    if RatingQueue.objects.filter(event__in=events).exists():
        events_rate_for_customer(customer_id=customer.pk)  # rate them first: then reverse
    with transaction.atomic():
        # Still queued: it failed to rate (or is parked). Taking its queue row first keeps
        # rating's lock order (queue row, then account) and keeps a worker off it.
        unrated = set(
            RatingQueue.objects.filter(event__in=events)
            .select_for_update()
            .values_list("event_id", flat=True)
        )
        Account.objects.select_for_update().get(pk=customer.account_id)
        done = {c.event_id: c for c in EventCancellation.objects.filter(event__in=events)}
        ratings = {
            r.event_id: r
            for r in EventRating.objects.select_related("period").filter(event__in=events)
        }
        if any(
            r.period is not None and r.period.status == PeriodStatus.INVOICING
            for r in ratings.values()
            if r.event_id not in done
        ):
            raise MeteringConflict(
                "period_closed",
                "the event's period is already invoiced; correct it with a credit note",
                "identifier",
            )
        cancellations = [
            done.get(event.pk)
            or _cancel_one(
                customer,
                event,
                ratings.get(event.pk),
                event.pk in unrated,
                reason=reason,
                actor=actor,
                description=description,
            )
            for event in events
        ]
    return cancellations[0]


def _cancel_one(
    customer: Customer,
    event: MeterEvent,
    rating: EventRating | None,
    unrated: bool,
    *,
    reason: str,
    actor: str,
    description: str = "",
) -> EventCancellation:
    if unrated:
        return _cancel_unrated(event, reason=reason, actor=actor)
    assert rating is not None, f"event {event.pk} is neither queued nor rated"
    cancellation = EventCancellation.objects.create(event=event, reason=reason, actor=actor)
    if rating.status == RatingStatus.RATED:
        ledger.credits_reverse(
            account=customer.account,
            cause=ledger.Cause("event", str(event.pk)),
            actor=actor,
            reason=reason,
            # What the customer reads for the returned credits (staff corrections).
            description=description,
        )
        _usage_subtract(event, rating)
    return cancellation


def _cancel_unrated(event: MeterEvent, *, reason: str, actor: str) -> EventCancellation:
    """An event that never rated charged nothing: it leaves the queue as cancelled."""
    queued = RatingQueue.objects.get(event=event)
    EventRating.objects.create(
        event=event,
        status=RatingStatus.CANCELED,
        credits=ZERO,
        units=ZERO,
        error_code="canceled_before_rating",
        error_message=queued.last_error[:2000],
        rated_at=timezone.now(),
    )
    queued.delete()
    return EventCancellation.objects.create(event=event, reason=reason, actor=actor)


def _usage_subtract(event: MeterEvent, rating: EventRating) -> None:
    is_max = event.meter.aggregation == "max"
    hour = event.timestamp.replace(minute=0, second=0, microsecond=0)
    with connection.cursor() as cursor:
        cursor.execute(
            """
            UPDATE metering_usagerollup
            SET value = value - %s, events = events - 1, credits = credits - %s
            WHERE customer_id = %s AND meter_id = %s AND hour = %s AND dimensions_key = %s
              AND workspace = %s
            """,
            [
                ZERO if is_max else rating.units,
                rating.credits,
                event.customer_id,
                event.meter_id,
                hour,
                dimensions_key(event.dimensions),
                event.workspace or "",
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
    if rating.rate_id is not None and not rating.prior_period_adjustment:
        # A tiered or package rate counts the period's units: the events after this one
        # price from the units without it, and period close trues the rest up.
        RateUsage.objects.filter(period_id=rating.period_id, rate_id=rating.rate_id).update(
            units=F("units") - rating.units, credits=F("credits") - rating.credits
        )
