"""``POST /webhooks/stripe``: Stripe's news about invoices and pack payments.

The body is accepted only with a valid Stripe signature (checked by the stripe library,
through the adapter). Each event is processed once: its id is inserted into
``StripeEvent`` in the same transaction as its effects, and the unique constraint
refuses a second insert, also when two deliveries race. A handler that fails rolls the
whole event back and answers 500 (503 while the database is down), so Stripe delivers it
again. A signed event whose own fields cannot be used (a timestamp no calendar holds, an
id too long to store, a NUL in a text) would fail the same way on every delivery: it is
stored as failed, with the reason and a log line, for staff, and answered 200.

Events arrive in any order and more than once, so every handler moves a row forward
only: a payment completes a purchase once, a late failure never un-pays it, and an
``invoice.paid`` that beats our own sync finds the invoice through its metadata.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import reprlib
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import DataError, IntegrityError, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing_portal.invoicing import collection, purchases
from billing_portal.invoicing.models import (
    CreditPackPurchase,
    Invoice,
    StripeEvent,
    StripeEventStatus,
)
from billing_portal.stripe import adapter, sync
from billing_portal.web import (
    DATABASE_UNAVAILABLE_ERRORS,
    UNAVAILABLE_RETRY_AFTER_SECONDS,
    json_nesting_exceeds,
    json_too_deep_message,
)
from plans.money import as_money

logger = logging.getLogger(__name__)

ACTOR = "stripe:webhook"

StripeObject = Mapping[str, Any]
# What Stripe's ids and event types look like: printable ASCII, as long as the columns.
STRIPE_ID = re.compile(r"[\x21-\x7e]{1,128}")


class UnusableEvent(Exception):
    """A field of a signed event holds what Stripe never sends: nothing is applied."""


# What a handler raises on an absurd field, from our checks, Python or PostgreSQL (a NUL
# in a text, a number too large for a column). OperationalError, a database that is
# down, is not among them: that event is answered 503 and delivered again.
_BAD_FIELD_ERRORS = (
    UnusableEvent,
    DataError,
    ValueError,
    TypeError,
    LookupError,
    AttributeError,
    OverflowError,
)


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    problem: str | None = None
    try:
        event: Mapping[str, Any] | None = adapter.webhook_event_verify(
            payload=request.body,
            signature=request.headers.get("Stripe-Signature"),
            secret=settings.STRIPE_WEBHOOK_SECRET,
        )
    except adapter.WebhookSignatureInvalid as exc:
        return _error("invalid_signature", f"webhook refused: {exc}")
    except RecursionError:
        event = None  # decoded only once the signature checked out: a signed body
    if event is None or json_nesting_exceeds(request.body):
        # Too deep to walk or store safely: kept as failed, under the body's digest.
        event, problem = {"type": "", "data": {"object": {}}}, json_too_deep_message()
    if not _is_event(event):
        return _error("invalid_event", "webhook refused: the body is not a Stripe event")
    try:
        processed = stripe_event_process(event=event, body=request.body, problem=problem)
    except DATABASE_UNAVAILABLE_ERRORS as exc:
        # Nothing was stored: Stripe delivers the event again later.
        logger.warning("Stripe webhook not processed, the database is unavailable: %s", exc)
        return _error(
            "service_unavailable", "the database is unavailable; deliver the event again", 503
        )
    return JsonResponse({"received": True, "duplicate": not processed})


def _error(code: str, message: str, status: int = 400) -> JsonResponse:
    kind = "api_error" if status >= 500 else "invalid_request_error"
    error = {"type": kind, "code": code, "message": message, "param": None}
    response = JsonResponse({"error": error}, status=status)
    if status == 503:
        response["Retry-After"] = str(UNAVAILABLE_RETRY_AFTER_SECONDS)
    return response


def _is_event(event: Mapping[str, Any]) -> bool:
    # The id is not checked here: an event with an unusable id is kept, as failed.
    data = event.get("data")
    return (
        isinstance(event.get("type"), str)
        and isinstance(data, Mapping)
        and isinstance(data.get("object"), Mapping)
    )


def stripe_event_process(
    *, event: Mapping[str, Any], body: bytes | None = None, problem: str | None = None
) -> bool:
    """Apply a verified event once. False: it was stored before (applied or failed), and
    nothing changed. An event whose fields cannot be used (or with a ``problem`` found
    before) is stored as failed, with nothing applied."""
    problem = problem or _event_problem(event)
    with transaction.atomic():
        try:
            with transaction.atomic():
                record = StripeEvent.objects.create(
                    event_id=_storage_key(event, body),
                    type=_printable(event["type"]),
                    payload=_storable(event),
                )
        except IntegrityError:
            return False
        problem = problem or _apply(event)
        _settle(record, problem)
    return True


def _event_problem(event: Mapping[str, Any]) -> str | None:
    if _usable_id(event) is None:
        return (
            f"the event id {reprlib.repr(event.get('id'))} is not a Stripe event id "
            "(printable ASCII, 1 to 128 characters)"
        )
    if not STRIPE_ID.fullmatch(event["type"]):
        return f"the event type {reprlib.repr(event['type'])} is not a Stripe event type"
    return None


def _usable_id(event: Mapping[str, Any]) -> str | None:
    event_id = event.get("id")
    return event_id if isinstance(event_id, str) and STRIPE_ID.fullmatch(event_id) else None


def _storage_key(event: Mapping[str, Any], body: bytes | None) -> str:
    """The event's id; for an id that cannot be stored as is, a digest of the event.

    A digest rather than a refusal: the event is kept for staff, and a redelivery of the
    same event (the same body) still meets the unique constraint, so it is stored once.
    """
    usable = _usable_id(event)
    if usable is not None:
        return usable
    content = body if body is not None else json.dumps(event, sort_keys=True, default=str)
    digest = hashlib.sha256(content.encode() if isinstance(content, str) else content)
    return f"sha256:{digest.hexdigest()}"


def _printable(text: str) -> str:
    return re.sub(r"[^\x20-\x7e]", "?", text)[:128]


# A NUL escaped in JSON text (preceded by an even run of backslashes, so not a literal
# backslash followed by "u0000").
_ESCAPED_NUL = re.compile(r"(?<!\\)((?:\\\\)*)\\u0000")


def _storable(event: Mapping[str, Any]) -> Any:
    """The event as PostgreSQL's jsonb holds it: it refuses U+0000, lone surrogates and
    NaN, which JSON decoding lets through; each is replaced, the rest is kept."""
    text = json.dumps(event, ensure_ascii=False, default=str)
    text = text.encode("utf-8", "replace").decode("utf-8")
    return json.loads(_ESCAPED_NUL.sub(r"\1\\ufffd", text), parse_constant=str)


def _apply(event: Mapping[str, Any]) -> str | None:
    """Run the event's handler; the reason it could not, if its fields were unusable."""
    handler = HANDLERS.get(event["type"])
    if handler is None:
        logger.debug("Stripe event %s (%s) ignored", event["id"], event["type"])
        return None
    try:
        with transaction.atomic():
            handler(event["data"]["object"], _occurred_at(event))
    except _BAD_FIELD_ERRORS as exc:
        logger.info("Stripe event %s: its handler failed", event["id"], exc_info=exc)
        return str(exc) if isinstance(exc, UnusableEvent) else f"{type(exc).__name__}: {exc}"
    return None


def _occurred_at(event: Mapping[str, Any]) -> datetime:
    """When Stripe says it happened (the event's ``created``), for news that carries no
    time of its own; never later than now, and now when the field is unusable."""
    now = timezone.now()
    created = event.get("created")
    if isinstance(created, int) and not isinstance(created, bool):
        try:
            return min(datetime.fromtimestamp(created, tz=UTC), now)
        except (OverflowError, OSError, ValueError):
            pass
    return now


def _settle(record: StripeEvent, problem: str | None) -> None:
    record.processed_at = timezone.now()
    if problem is not None:
        record.status, record.error = StripeEventStatus.FAILED, problem[:2000]
        logger.error(
            "Stripe event %s (%s) stored as failed, nothing applied: %s",
            record.event_id,
            record.type,
            record.error,
        )
    record.save(update_fields=["processed_at", "status", "error"])


# --- finding our rows -------------------------------------------------------------------


def _metadata_pk(obj: StripeObject, key: str) -> int | None:
    metadata = obj.get("metadata") or {}
    return _pk(metadata.get(key) if isinstance(metadata, Mapping) else None)


def _pk(value: object) -> int | None:
    """One of our row ids that Stripe echoes back, in ASCII digits ("²" is a digit too)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    return None


def _text(obj: StripeObject, name: str) -> str:
    """A text field of a Stripe object; "" when absent."""
    value = obj.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise UnusableEvent(f"{obj.get('object')}.{name} is {reprlib.repr(value)}, not a string")
    return value


def _our_invoice(obj: StripeObject) -> Invoice | None:
    """By Stripe id, else by the id we put in its metadata (the news may beat our sync)."""
    stripe_id = _text(obj, "id")
    invoice = Invoice.objects.filter(stripe_invoice_id=stripe_id).first() if stripe_id else None
    if invoice is not None:
        return invoice
    pk = _metadata_pk(obj, "invoice_id")
    if pk is None:
        logger.info("Stripe invoice %s is not one of ours; ignored", stripe_id)
        return None
    # A row that already names another Stripe invoice is not this one's.
    invoice = Invoice.objects.filter(pk=pk, stripe_invoice_id__in=["", stripe_id]).first()
    if invoice is None:
        logger.info("Stripe invoice %s is not one of ours; ignored", stripe_id)
    elif stripe_id and not invoice.stripe_invoice_id:
        # Our sync made it but has not recorded it yet: the id lets the sync's retry
        # find it instead of making another.
        Invoice.objects.filter(pk=invoice.pk, stripe_invoice_id="").update(
            stripe_invoice_id=stripe_id
        )
        invoice.stripe_invoice_id = stripe_id
    return invoice


def _our_purchase(obj: StripeObject) -> CreditPackPurchase | None:
    pk = _metadata_pk(obj, "purchase_id")
    if pk is None:
        pk = _pk(obj.get("client_reference_id"))
    purchase = CreditPackPurchase.objects.filter(pk=pk).first() if pk is not None else None
    if purchase is None:
        logger.info(
            "Stripe %s %s names no purchase of ours; ignored", obj.get("object"), obj.get("id")
        )
    return purchase


def _pays_for(purchase: CreditPackPurchase, obj: StripeObject, amount_field: str) -> bool:
    """Credits only for the pack's price in its currency; anything else is for staff."""
    price = as_money(purchase.price)
    amount, currency = obj.get(amount_field), str(obj.get("currency") or "")
    if amount == adapter.minor_units(price) and currency.upper() == str(price.currency):
        return True
    logger.error(
        "Stripe %s %s paid %s %s for purchase %s, which costs %s: no credits granted",
        obj.get("object"),
        obj.get("id"),
        amount,
        currency,
        purchase.pk,
        price,
    )
    return False


def _moment(obj: StripeObject, name: str) -> datetime | None:
    """A Unix-seconds field of ``obj``; None when absent."""
    value = obj.get(name)
    if value is None:
        return None
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            return datetime.fromtimestamp(value, tz=UTC)
    except (OverflowError, OSError, ValueError):
        pass
    raise UnusableEvent(f"{name} is {reprlib.repr(value)}, not a time in Unix seconds")


def _transitions(obj: StripeObject) -> StripeObject:
    transitions = obj.get("status_transitions") or {}
    if not isinstance(transitions, Mapping):
        raise UnusableEvent(f"status_transitions is {reprlib.repr(transitions)}, not an object")
    return transitions


def _intent_id(obj: StripeObject, name: str) -> str:
    """A payment intent field: an id, or the object when Stripe expanded it."""
    value = obj.get(name)
    return _text(value, "id") if isinstance(value, Mapping) else _text(obj, name)


# --- handlers ---------------------------------------------------------------------------


def _invoice_paid(obj: StripeObject, at: datetime) -> None:
    invoice = _our_invoice(obj)
    if invoice is not None:
        paid_at = _moment(_transitions(obj), "paid_at") or at
        sync.invoice_stripe_paid(invoice=invoice, paid_at=paid_at)


def _invoice_payment_failed(obj: StripeObject, at: datetime) -> None:
    # Stripe keeps collecting (retries, reminders); the invoice stays open meanwhile.
    invoice = _our_invoice(obj)
    if invoice is None:
        return
    failure = collection.PaymentFailure(
        failed_at=at,
        attempts=_count(obj, "attempt_count"),
        error=_payment_error(obj),
        next_attempt_at=_moment(obj, "next_payment_attempt"),
        hosted_invoice_url=_text(obj, "hosted_invoice_url"),
    )
    logger.warning(
        "invoice %s: Stripe could not collect payment (attempt %s): %s",
        invoice.number,
        failure.attempts,
        failure.error,
    )
    collection.invoice_payment_failure_record(invoice=invoice, failure=failure)


def _count(obj: StripeObject, name: str) -> int | None:
    value = obj.get(name)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 2**31 - 1:
        return value
    raise UnusableEvent(f"{name} is {reprlib.repr(value)}, not a count")


def _payment_error(obj: StripeObject) -> str:
    """Why the payment failed, in Stripe's words: the payment's own error when Stripe
    expanded the payment intent, else the invoice's finalization error; "" when neither."""
    intent = obj.get("payment_intent")
    for holder, name in ((intent, "last_payment_error"), (obj, "last_finalization_error")):
        error = holder.get(name) if isinstance(holder, Mapping) else None
        if isinstance(error, Mapping) and _text(error, "message"):
            return _text(error, "message")
    return ""


def _invoice_voided(obj: StripeObject, at: datetime) -> None:
    invoice = _our_invoice(obj)
    if invoice is not None:
        voided_at = _moment(_transitions(obj), "voided_at") or at
        sync.invoice_stripe_voided(invoice=invoice, voided_at=voided_at)


def _invoice_uncollectible(obj: StripeObject, at: datetime) -> None:
    invoice = _our_invoice(obj)
    if invoice is not None:
        sync.invoice_stripe_uncollectible(invoice=invoice)


def _checkout_completed(obj: StripeObject, at: datetime) -> None:
    # Delayed payment methods (bank debits) complete the session unpaid; their outcome
    # comes later as checkout.session.async_payment_succeeded or _failed.
    if obj.get("payment_status") in ("paid", "no_payment_required"):
        _checkout_paid(obj, at)


def _checkout_paid(obj: StripeObject, at: datetime) -> None:
    purchase = _our_purchase(obj)
    if purchase is not None and _pays_for(purchase, obj, "amount_total"):
        purchases.purchase_complete(
            purchase=purchase, payment_intent_id=_intent_id(obj, "payment_intent"), actor=ACTOR
        )


def _checkout_payment_failed(obj: StripeObject, at: datetime) -> None:
    purchase = _our_purchase(obj)
    if purchase is not None:
        purchases.purchase_fail(
            purchase=purchase,
            message="the payment made at checkout failed",
            actor=ACTOR,
            payment_intent_id=_intent_id(obj, "payment_intent"),
        )


def _checkout_expired(obj: StripeObject, at: datetime) -> None:
    purchase = _our_purchase(obj)
    if purchase is not None and purchase.stripe_checkout_session_id in ("", obj.get("id")):
        purchases.purchase_cancel(
            purchase=purchase, reason="checkout expired before payment", actor=ACTOR
        )


def _payment_intent_succeeded(obj: StripeObject, at: datetime) -> None:
    purchase = _our_purchase(obj)
    if purchase is not None and _pays_for(purchase, obj, "amount_received"):
        purchases.purchase_complete(
            purchase=purchase, payment_intent_id=_intent_id(obj, "id"), actor=ACTOR
        )


def _payment_intent_failed(obj: StripeObject, at: datetime) -> None:
    purchase = _our_purchase(obj)
    if purchase is None:
        return
    error = obj.get("last_payment_error") or {}
    message = error.get("message") if isinstance(error, Mapping) else None
    purchases.purchase_fail(
        purchase=purchase,
        message=str(message or "the payment failed"),
        actor=ACTOR,
        payment_intent_id=_intent_id(obj, "id"),
    )


# Each handler gets the event's object and when Stripe says it happened.
HANDLERS: dict[str, Callable[[StripeObject, datetime], None]] = {
    "invoice.paid": _invoice_paid,
    "invoice.payment_failed": _invoice_payment_failed,
    "invoice.voided": _invoice_voided,
    "invoice.marked_uncollectible": _invoice_uncollectible,
    "checkout.session.completed": _checkout_completed,
    "checkout.session.async_payment_succeeded": _checkout_paid,
    "checkout.session.async_payment_failed": _checkout_payment_failed,
    "checkout.session.expired": _checkout_expired,
    "payment_intent.succeeded": _payment_intent_succeeded,
    "payment_intent.payment_failed": _payment_intent_failed,
}
