"""Staff actions: each calls the service the API calls, then records an audit row.

The admin never writes a balance or a ledger row itself. Each wrapper checks the
operator's permission again (the views check too), so a direct call cannot skip it, and
writes the audit row in the same transaction as the action: both happen or neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import PermissionDenied
from django.db import IntegrityError, transaction
from django.db.models import DecimalField, Sum
from django.db.models.fields.json import KT
from django.db.models.functions import Cast
from django.utils import timezone

from billing_portal.invoicing import credit_notes
from billing_portal.invoicing.models import CreditNote, Invoice
from billing_portal.staff import descriptions
from billing_portal.staff.models import AuditAction, AuditLog
from billing_portal.stripe import sync
from ledger import services as ledger
from ledger.actors import Actor
from ledger.errors import DomainError
from ledger.models import CREDIT_DIGITS, CREDIT_PLACES, ZERO, Account, CreditGrant, GrantCategory
from ledger.units import credits_exact
from metering import services as metering
from metering.ingest import events_ingest
from metering.models import EventKey, MeterEvent, RatingQueue
from metering.rating import events_rate_for_customer, rating_retry
from plans import apikeys, catalog
from plans.models import ApiKey, Customer, Plan, Subscription
from plans.services import SubscriptionError, When, subscription_change_plan

Operator = User | AnonymousUser


class StaffError(DomainError):
    """A request the service refused; the message says what to change."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message, param=param)


@dataclass(frozen=True)
class Reason:
    code: str
    token: str  # the submitted form's one-time token; see _audit
    memo: str = ""  # for staff only
    description: str = ""  # for the customer; empty: the action's default sentence


RELOAD_FORM_MESSAGE = "this form has no one-time token; reload the page and submit it again"
GRANT_WINDOW = timedelta(hours=24)
UNLIMITED_GRANTS_PERM = "staff.exceed_grant_daily_limit"


def support_grant_limit() -> Decimal:
    return Decimal(getattr(settings, "STAFF_SUPPORT_GRANT_LIMIT", Decimal("1000")))


def grant_daily_limit() -> Decimal:
    return Decimal(settings.STAFF_GRANT_DAILY_LIMIT_CREDITS)


def require(operator: Operator, codename: str) -> None:
    if not operator.has_perm(f"staff.{codename}"):
        raise PermissionDenied(f"you need the {codename} permission")


def actor_of(operator: Operator) -> str:
    # The ledger marks staff actors' entries as staff actions.
    return str(Actor.staff(operator.get_username()))


def audit_record(
    *, actor: str, action: str, reason: str, target: Any, memo: str = "", **details: Any
) -> AuditLog:
    """Audit an action taken outside the admin (the API): by an actor, not a staff user.
    Call it in the transaction that made the change."""
    return AuditLog.objects.create(
        operator=None,
        operator_name=actor[:150],
        action=action,
        reason_code=reason,
        memo=memo,
        target_type=target._meta.label_lower,
        target_id=str(target.pk),
        details={key: str(value) for key, value in details.items()},
    )


def _audit(
    operator: Operator, action: str, reason: Reason, target: Any, **details: Any
) -> AuditLog:
    assert isinstance(operator, User)
    if not reason.token:
        # A blank token is stored as NULL, and NULLs never collide in the unique index:
        # the double-submit guard would let the same form apply twice.
        raise StaffError(RELOAD_FORM_MESSAGE)
    try:
        with transaction.atomic():
            return AuditLog.objects.create(
                operator=operator,
                operator_name=operator.get_username(),
                action=action,
                reason_code=reason.code,
                memo=reason.memo,
                target_type=target._meta.label_lower,
                target_id=str(target.pk),
                details={key: str(value) for key, value in details.items()},
                request_token=reason.token,
            )
    except IntegrityError as exc:
        # Raised inside the caller's transaction, so the repeated action is undone too.
        raise StaffError(
            "this form was already submitted; see the audit log for what it did", None
        ) from exc


# --- grants -----------------------------------------------------------------------------


def check_grant_allowed(operator: Operator, *, amount: Decimal, category: str) -> None:
    if not operator.has_perm("staff.grant_credits"):
        require(operator, "grant_promotional_credits")
        if category != GrantCategory.PROMOTIONAL:
            raise StaffError("your role may grant promotional credits only", "category")
        limit = support_grant_limit()
        if amount > limit:
            raise StaffError(f"your role may grant at most {limit} credits at once", "amount")
    check_grant_daily_limit(operator, amount=amount)


def check_grant_daily_limit(operator: Operator, *, amount: Decimal) -> None:
    left = grant_daily_allowance_left(operator)
    if left is not None and amount > left:
        raise StaffError(
            f"you may grant {credits_exact(left)} more credits today: your limit is "
            f"{credits_exact(grant_daily_limit())} credits per 24 hours. Grant at most "
            f"{credits_exact(left)}, or ask a Billing admin or a superuser to make this grant "
            "(they have no daily limit); the STAFF_GRANT_DAILY_LIMIT_CREDITS setting "
            "raises the limit",
            "amount",
        )


def grant_daily_allowance_left(operator: Operator) -> Decimal | None:
    """Credits the operator may still grant in the rolling window; None: no limit."""
    if operator.has_perm(UNLIMITED_GRANTS_PERM):
        return None
    return max(grant_daily_limit() - granted_in_window(operator), ZERO)


def granted_in_window(operator: Operator) -> Decimal:
    # The audit row, not the grant, is counted: it names the operator by key, so a
    # renamed user keeps their total, and it is written in the grant's transaction.
    amount = Cast(
        KT("details__amount"),
        DecimalField(max_digits=CREDIT_DIGITS, decimal_places=CREDIT_PLACES),
    )
    rows = AuditLog.objects.filter(
        operator_id=operator.pk,
        action=AuditAction.GRANT_CREATE,
        created_at__gt=timezone.now() - GRANT_WINDOW,
    )
    return rows.aggregate(total=Sum(amount))["total"] or ZERO


def _lock_grant_allowance(operator: Operator) -> None:
    # Two grants submitted at once by one operator would each sum the day's total
    # without the other; the second now waits here until the first commits, then
    # counts it. The user row is locked before the ledger's account lock, always.
    if isinstance(operator, User):
        User.objects.select_for_update().filter(pk=operator.pk).first()


def staff_grant_create(
    *,
    operator: Operator,
    customer: Customer,
    amount: Decimal,
    category: str,
    reason: Reason,
    priority: int = 50,
    expires_at: datetime | None = None,
    applies_to: list[str] | None = None,
    workspace: str | None = None,
) -> CreditGrant:
    with transaction.atomic():
        _lock_grant_allowance(operator)
        check_grant_allowed(operator, amount=amount, category=category)
        grant = ledger.credit_grant_create(
            account=customer.account,
            amount=amount,
            category=category,
            actor=actor_of(operator),
            priority=priority,
            expires_at=expires_at,
            applies_to=applies_to or (),
            workspace=workspace or None,
            reason=reason.code,
            memo=reason.memo,
            description=descriptions.grant_description(reason.description),
            source_type="staff",
        )
        _audit(
            operator,
            AuditAction.GRANT_CREATE,
            reason,
            grant,
            customer=customer.external_id,
            amount=amount,
            category=category,
            description=grant.description,
        )
    return grant


def staff_grant_close(
    *, operator: Operator, grant: CreditGrant, reason: Reason, expire: bool = False
) -> CreditGrant:
    """Void (or expire now) a grant; its unused credits are written off by the ledger."""
    require(operator, "void_grant")
    close = ledger.credit_grant_expire if expire else ledger.credit_grant_void
    describe = descriptions.expire_description if expire else descriptions.void_description
    description = describe(reason.code, reason.description)
    with transaction.atomic():
        # The ledger's lock order (account, then grant), taken here so the credits
        # reported as written off are the ones the close really writes off.
        Account.objects.select_for_update().get(pk=grant.account_id)
        written_off = CreditGrant.objects.select_for_update().get(pk=grant.pk).remaining
        closed = close(
            grant=grant,
            actor=actor_of(operator),
            reason=reason.code,
            memo=reason.memo,
            description=description,
        )
        action = AuditAction.GRANT_EXPIRE if expire else AuditAction.GRANT_VOID
        _audit(
            operator,
            action,
            reason,
            closed,
            customer=_customer_of(closed),
            credits_written_off=written_off,
            description=description,
        )
    return closed


def _customer_of(grant: CreditGrant) -> str:
    return Customer.objects.only("external_id").get(account_id=grant.account_id).external_id


# --- usage corrections --------------------------------------------------------------------


def staff_event_cancel(*, operator: Operator, event: MeterEvent, reason: Reason) -> MeterEvent:
    require(operator, "correct_usage")
    with transaction.atomic():
        _cancel(operator, event, reason)
        _audit(
            operator,
            AuditAction.EVENT_CANCEL,
            reason,
            event,
            customer=event.customer.external_id,
            identifier=event.identifier,
            description=descriptions.correction_description(reason.code, reason.description),
        )
    return event


def _cancel(operator: Operator, event: MeterEvent, reason: Reason) -> None:
    try:
        metering.event_cancel(
            customer=event.customer,
            identifier=event.identifier,
            reason=reason.code,
            actor=actor_of(operator),
            description=descriptions.correction_description(reason.code, reason.description),
        )
    except metering.MeteringError as exc:
        raise StaffError(exc.message, exc.param) from exc


def staff_rating_retry(*, operator: Operator, queued: Sequence[RatingQueue], reason: Reason) -> int:
    """Put failing or parked events back in line for rating, e.g. after fixing the cause."""
    require(operator, "correct_usage")
    with transaction.atomic():
        retried = rating_retry(event_ids=[row.event_id for row in queued])
        for row in queued:
            _audit_event_retry(operator, reason, row)
    return retried


def _audit_event_retry(operator: Operator, reason: Reason, row: RatingQueue) -> None:
    # One audit row per event; each needs its own one-time token.
    per_event = Reason(reason.code, f"{reason.token}:{row.event_id}", reason.memo)
    _audit(
        operator,
        AuditAction.RATING_RETRY,
        per_event,
        row.event,
        attempts=row.attempts,
        last_error=row.last_error[:500],
    )


def staff_event_correct(
    *,
    operator: Operator,
    event: MeterEvent,
    reason: Reason,
    identifier: str,
    value: Decimal,
    dimensions: dict[str, str],
) -> MeterEvent:
    """Cancel an event and ingest its replacement under a new identifier, at once."""
    require(operator, "correct_usage")
    with transaction.atomic():
        _cancel(operator, event, reason)
        outcome = events_ingest(
            events=[
                {
                    "identifier": identifier,
                    # The meter, not only the name: a part of an LLM call replaces that
                    # part, not the whole call.
                    "meter": event.meter.code,
                    "event_name": event.event_name,
                    "customer": event.customer.external_id,
                    "timestamp": event.timestamp.isoformat(),
                    "value": str(value),
                    "dimensions": dimensions,
                    **({"workspace": event.workspace} if event.workspace else {}),
                }
            ]
        )
        result = outcome.results[0]
        if result.status != "accepted":
            # Raising inside the atomic block undoes the cancellation too: a correction
            # is both halves or nothing.
            message = result.error.message if result.error else f"replacement {result.status}"
            raise StaffError(f"the replacement event was refused: {message}", "identifier")
        replacement = MeterEvent.objects.get(
            pk=EventKey.objects.get(customer_id=event.customer_id, identifier=identifier).event_id
        )
        _audit(
            operator,
            AuditAction.EVENT_CORRECT,
            reason,
            event,
            customer=event.customer.external_id,
            identifier=event.identifier,
            replacement=identifier,
            value=value,
            description=descriptions.correction_description(reason.code, reason.description),
        )
    # Rated now so the balance staff look at next already shows the corrected usage.
    events_rate_for_customer(customer_id=event.customer_id)
    return replacement


# --- credit notes -----------------------------------------------------------------------


def staff_credit_note_issue(
    *,
    operator: Operator,
    invoice: Invoice,
    reason: Reason,
    method: str,
    lines: dict[int, Decimal] | None,
    amount: Decimal | None,
) -> CreditNote:
    require(operator, "issue_credit_note")
    with transaction.atomic():
        try:
            note = credit_notes.credit_note_issue(
                invoice=invoice,
                reason=reason.code,
                method=method,
                actor=actor_of(operator),
                lines=lines,
                amount=amount,
                memo=reason.memo,
                description=reason.description,
            )
        except credit_notes.CreditNoteError as exc:
            raise StaffError(exc.message, exc.param) from exc
        _audit(
            operator,
            AuditAction.CREDIT_NOTE_ISSUE,
            reason,
            note,
            customer=invoice.customer.external_id,
            invoice=invoice.number,
            total=note.total,
            method=method,
            description=note.description,
        )
    return note


def staff_credit_note_void(
    *, operator: Operator, credit_note: CreditNote, reason: Reason
) -> CreditNote:
    require(operator, "issue_credit_note")
    with transaction.atomic():
        note = credit_notes.credit_note_void(credit_note=credit_note, actor=actor_of(operator))
        _audit(operator, AuditAction.CREDIT_NOTE_VOID, reason, note, number=note.number)
    return note


# --- subscriptions, sync, keys, catalog ---------------------------------------------------


def staff_plan_change(
    *,
    operator: Operator,
    subscription: Subscription,
    plan: Plan,
    when: When | None,
    reason: Reason,
) -> Subscription:
    require(operator, "change_plan")
    before = subscription.plan_version
    with transaction.atomic():
        try:
            changed = subscription_change_plan(
                subscription=subscription, plan=plan, actor=actor_of(operator), when=when
            )
        except SubscriptionError as exc:
            raise StaffError(exc.message, exc.param) from exc
        _audit(
            operator,
            AuditAction.PLAN_CHANGE,
            reason,
            changed,
            from_version=before,
            to_plan=plan.code,
            when=when or "default",
        )
    return changed


def staff_sync_retry(
    *, operator: Operator, target: Invoice | CreditNote, reason: Reason
) -> Invoice | CreditNote:
    require(operator, "retry_sync")
    with transaction.atomic():
        # The Stripe call itself runs in a task after commit, never in this transaction.
        if isinstance(target, Invoice):
            retried: Invoice | CreditNote = sync.sync_retry(
                invoice=target, actor=actor_of(operator)
            )
        else:
            retried = sync.credit_note_sync_retry(credit_note=target, actor=actor_of(operator))
        _audit(operator, AuditAction.SYNC_RETRY, reason, retried, state=retried.sync_state)
    return retried


def staff_api_key_create(
    *, operator: Operator, name: str, scopes: list[str], reason: Reason
) -> tuple[ApiKey, str]:
    require(operator, "manage_api_keys")
    with transaction.atomic():
        try:
            api_key, secret = apikeys.api_key_create(name=name, scopes=scopes)
        except apikeys.InvalidApiKeyRequest as exc:
            raise StaffError(str(exc), "name") from exc
        # Never the secret: the audit log is readable by every staff member.
        _audit(operator, AuditAction.API_KEY_CREATE, reason, api_key, prefix=api_key.prefix)
    return api_key, secret


def staff_api_key_revoke(*, operator: Operator, api_key: ApiKey, reason: Reason) -> ApiKey:
    require(operator, "manage_api_keys")
    with transaction.atomic():
        revoked = apikeys.api_key_revoke(api_key=api_key)
        _audit(operator, AuditAction.API_KEY_REVOKE, reason, revoked, prefix=revoked.prefix)
    return revoked


def staff_catalog_load(*, operator: Operator, text: str, reason: Reason) -> list[str]:
    """Edit plans and rate cards; a version in use becomes a new version (catalog.load)."""
    require(operator, "edit_catalog")
    with transaction.atomic():
        try:
            changes = catalog.load(text, now=timezone.now())
        except catalog.CatalogError as exc:
            raise StaffError(str(exc), "text") from exc
        if changes:
            # The audit row's target is the plan table as a whole: one load may touch many.
            plan = Plan.objects.order_by("pk").first()
            assert plan is not None
            _audit(operator, AuditAction.CATALOG_LOAD, reason, plan, changes="; ".join(changes))
    return changes
