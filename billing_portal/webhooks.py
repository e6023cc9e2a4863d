"""``POST /webhooks/stripe``: Stripe's news about invoices and pack payments.

The body is accepted only with a valid Stripe signature (checked by the stripe library,
through the adapter). Each event is processed once: its id is inserted into
``StripeEvent`` in the same transaction as its effects, and the unique constraint
refuses a second insert, also when two deliveries race. A handler that fails rolls the
whole event back and answers 500, so Stripe delivers it again.

Events arrive in any order and more than once, so every handler moves a row forward
only: a payment completes a purchase once, a late failure never un-pays it, and an
``invoice.paid`` that beats our own sync finds the invoice through its metadata.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from billing_portal import stripe_adapter
from billing_portal.invoicing import purchases, sync
from billing_portal.invoicing.models import CreditPackPurchase, Invoice, StripeEvent
from plans.money import as_money

logger = logging.getLogger(__name__)

ACTOR = "stripe:webhook"

StripeObject = Mapping[str, Any]


@csrf_exempt
@require_POST
def stripe_webhook(request: HttpRequest) -> HttpResponse:
    try:
        event = stripe_adapter.webhook_event_verify(
            payload=request.body,
            signature=request.headers.get("Stripe-Signature"),
            secret=settings.STRIPE_WEBHOOK_SECRET,
        )
    except stripe_adapter.WebhookSignatureInvalid as exc:
        return _refused("invalid_signature", f"webhook refused: {exc}")
    if not _is_event(event):
        return _refused("invalid_event", "webhook refused: the body is not a Stripe event")
    processed = stripe_event_process(event=event)
    return JsonResponse({"received": True, "duplicate": not processed})


def _refused(code: str, message: str) -> JsonResponse:
    error = {"type": "invalid_request_error", "code": code, "message": message, "param": None}
    return JsonResponse({"error": error}, status=400)


def _is_event(event: Mapping[str, Any]) -> bool:
    data = event.get("data")
    return (
        isinstance(event.get("id"), str)
        and isinstance(event.get("type"), str)
        and isinstance(data, Mapping)
        and isinstance(data.get("object"), Mapping)
    )


def stripe_event_process(*, event: Mapping[str, Any]) -> bool:
    """Apply a verified event once. False: it was processed before, nothing changed."""
    with transaction.atomic():
        try:
            with transaction.atomic():
                record = StripeEvent.objects.create(
                    event_id=event["id"], type=event["type"], payload=dict(event)
                )
        except IntegrityError:
            return False
        handler = HANDLERS.get(event["type"])
        if handler is None:
            logger.debug("Stripe event %s (%s) ignored", event["id"], event["type"])
        else:
            handler(event["data"]["object"])
        record.processed_at = timezone.now()
        record.save(update_fields=["processed_at"])
    return True


# --- finding our rows -------------------------------------------------------------------


def _metadata_pk(obj: StripeObject, key: str) -> int | None:
    metadata = obj.get("metadata") or {}
    value = metadata.get(key) if isinstance(metadata, Mapping) else None
    return int(value) if isinstance(value, str) and value.isdigit() else None


def _our_invoice(obj: StripeObject) -> Invoice | None:
    """By Stripe id, else by the id we put in its metadata (the news may beat our sync)."""
    stripe_id = obj.get("id") or ""
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
    if pk is None and str(obj.get("client_reference_id") or "").isdigit():
        pk = int(obj["client_reference_id"])
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
    if amount == stripe_adapter.minor_units(price) and currency.upper() == str(price.currency):
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


def _moment(value: object) -> datetime | None:
    return datetime.fromtimestamp(value, tz=UTC) if isinstance(value, int) else None


def _intent_id(value: object) -> str:
    """A payment intent field: an id, or the object when Stripe expanded it."""
    if isinstance(value, Mapping):
        return str(value.get("id") or "")
    return str(value or "")


# --- handlers ---------------------------------------------------------------------------


def _invoice_paid(obj: StripeObject) -> None:
    invoice = _our_invoice(obj)
    if invoice is not None:
        transitions = obj.get("status_transitions") or {}
        sync.invoice_stripe_paid(invoice=invoice, paid_at=_moment(transitions.get("paid_at")))


def _invoice_payment_failed(obj: StripeObject) -> None:
    # Stripe keeps collecting (retries, reminders); the invoice stays open meanwhile.
    invoice = _our_invoice(obj)
    if invoice is not None:
        logger.warning(
            "invoice %s: Stripe could not collect payment (attempt %s)",
            invoice.number,
            obj.get("attempt_count"),
        )


def _invoice_voided(obj: StripeObject) -> None:
    invoice = _our_invoice(obj)
    if invoice is not None:
        transitions = obj.get("status_transitions") or {}
        sync.invoice_stripe_voided(invoice=invoice, voided_at=_moment(transitions.get("voided_at")))


def _invoice_uncollectible(obj: StripeObject) -> None:
    invoice = _our_invoice(obj)
    if invoice is not None:
        sync.invoice_stripe_uncollectible(invoice=invoice)


def _checkout_completed(obj: StripeObject) -> None:
    # Delayed payment methods (bank debits) complete the session unpaid; their outcome
    # comes later as checkout.session.async_payment_succeeded or _failed.
    if obj.get("payment_status") in ("paid", "no_payment_required"):
        _checkout_paid(obj)


def _checkout_paid(obj: StripeObject) -> None:
    purchase = _our_purchase(obj)
    if purchase is not None and _pays_for(purchase, obj, "amount_total"):
        purchases.purchase_complete(
            purchase=purchase, payment_intent_id=_intent_id(obj.get("payment_intent")), actor=ACTOR
        )


def _checkout_payment_failed(obj: StripeObject) -> None:
    purchase = _our_purchase(obj)
    if purchase is not None:
        purchases.purchase_fail(
            purchase=purchase,
            message="the payment made at checkout failed",
            actor=ACTOR,
            payment_intent_id=_intent_id(obj.get("payment_intent")),
        )


def _checkout_expired(obj: StripeObject) -> None:
    purchase = _our_purchase(obj)
    if purchase is not None and purchase.stripe_checkout_session_id in ("", obj.get("id")):
        purchases.purchase_cancel(
            purchase=purchase, reason="checkout expired before payment", actor=ACTOR
        )


def _payment_intent_succeeded(obj: StripeObject) -> None:
    purchase = _our_purchase(obj)
    if purchase is not None and _pays_for(purchase, obj, "amount_received"):
        purchases.purchase_complete(
            purchase=purchase, payment_intent_id=_intent_id(obj.get("id")), actor=ACTOR
        )


def _payment_intent_failed(obj: StripeObject) -> None:
    purchase = _our_purchase(obj)
    if purchase is None:
        return
    error = obj.get("last_payment_error") or {}
    message = error.get("message") if isinstance(error, Mapping) else None
    purchases.purchase_fail(
        purchase=purchase,
        message=str(message or "the payment failed"),
        actor=ACTOR,
        payment_intent_id=_intent_id(obj.get("id")),
    )


HANDLERS: dict[str, Callable[[StripeObject], None]] = {
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
