"""Outgoing webhooks: publish an event, sign and send it, retry with back-off, replay.

Publishing stores the event and its deliveries in the caller's transaction and queues the
sends for after commit. A send claims its delivery under a row lock, makes one HTTP
request with no transaction open, then records the attempt in the delivery log. A beat
sweep sends what is due: retries, replays and anything a lost message left behind.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID

import requests
import urllib3
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import Q
from django.utils import timezone
from djmoney.money import Money

from billing_portal.outbound.models import (
    DeliveryAttempt,
    DeliveryStatus,
    EventType,
    OutboundEvent,
    WebhookDelivery,
    WebhookEndpoint,
)
from billing_portal.staff.models import AuditLog
from ledger.errors import DomainError
from ledger.units import rfc3339
from plans.models import Customer

SIGNATURE_HEADER = "Billing-Signature"
EVENT_ID_HEADER = "Billing-Event-Id"
EVENT_TYPE_HEADER = "Billing-Event-Type"
USER_AGENT = "billing-portal-webhooks/1"

MAX_ATTEMPTS = 8
MAX_BACKOFF = timedelta(hours=6)
TIMEOUT_SECONDS = 10
# A claimed delivery is not due again for this long, so the sweep does not send it a second
# time while the first request still waits for an answer (the timeout is per read).
CLAIM_LEASE = timedelta(seconds=TIMEOUT_SECONDS * 6)
RESPONSE_EXCERPT_BYTES = 1024
# Actions this app writes to the staff audit log (not among staff.AuditAction's choices).
REPLAY_AUDIT_ACTION = "webhook_replay"
ENDPOINT_CREATE_AUDIT_ACTION = "webhook_endpoint_create"
ENDPOINT_CHANGE_AUDIT_ACTION = "webhook_endpoint_change"
AUDIT_REASON = "operator_request"


class SignatureError(DomainError):
    """A webhook whose signature header does not prove it came from us, just now."""


# --- publishing -------------------------------------------------------------------------


@dataclass(frozen=True)
class EventDraft:
    """An event to publish: its type, its data and the customer it concerns."""

    type: str
    data: dict[str, Any]
    customer: Customer | None = None


def event_publish(
    *, type: str, data: dict[str, Any], customer: Customer | None = None
) -> OutboundEvent:
    """Store an event and one delivery per subscribed endpoint; send them after commit."""
    (event,) = events_publish([EventDraft(type=type, data=data, customer=customer)])
    return event


def events_publish(drafts: Sequence[EventDraft]) -> list[OutboundEvent]:
    """Store many events and their deliveries, one statement each for all of them (a
    batch of invoices finalized); each delivery is sent after commit, as one published
    alone."""
    from billing_portal.outbound.tasks import delivery_send

    if not drafts:
        return []
    for draft in drafts:
        if draft.type not in EventType.values:
            raise ValueError(f"unknown webhook event type {draft.type!r}")
    with transaction.atomic():
        events = OutboundEvent.objects.bulk_create(
            OutboundEvent(type=draft.type, customer=draft.customer, data=_plain(draft.data))
            for draft in drafts
        )
        types = sorted({draft.type for draft in drafts})
        endpoints = list(
            WebhookEndpoint.objects.filter(enabled=True)
            .filter(Q(event_types=[]) | Q(event_types__overlap=types))
            .order_by("pk")
        )
        deliveries = WebhookDelivery.objects.bulk_create(
            WebhookDelivery(event=event, endpoint=endpoint, next_attempt_at=event.created_at)
            for event in events
            for endpoint in endpoints
            if endpoint.subscribes_to(event.type)
        )
        for delivery in deliveries:
            delivery_send.delay_on_commit(delivery.pk)
    return events


def _plain(value: Any) -> Any:
    """JSON-ready data: Decimal and Money as strings, times as RFC 3339; floats refused."""
    if isinstance(value, float):
        raise TypeError("webhook data may not hold floats; pass money and credits as Decimal")
    if isinstance(value, Money):
        return {"amount": str(value.amount), "currency": str(value.currency)}
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, datetime):
        return rfc3339(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if value is None or isinstance(value, str | int):
        return value
    raise TypeError(f"webhook data may not hold {type(value).__name__}")


def event_body(event: OutboundEvent) -> bytes:
    payload = {
        "id": event.public_id,
        "type": event.type,
        "created": rfc3339(event.created_at),
        "customer": event.customer.external_id if event.customer is not None else None,
        "data": event.data,
    }
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


# --- signatures -------------------------------------------------------------------------


def _signature(*, payload: bytes, secret: str, timestamp: int) -> str:
    signed = f"{timestamp}.".encode() + payload
    return hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()


def signature_header(*, payload: bytes, secret: str, timestamp: int) -> str:
    return f"t={timestamp},v1={_signature(payload=payload, secret=secret, timestamp=timestamp)}"


def signature_verify(
    *, payload: bytes, header: str, secret: str, tolerance_seconds: int = 300
) -> None:
    """Raise SignatureError unless the header signs this exact body, recently.

    The timestamp is part of the signed text, so a captured request replayed later fails
    the tolerance check and cannot be re-signed without the secret.
    """
    parts = [part.strip().partition("=") for part in header.split(",")]
    timestamps = [value for key, _, value in parts if key == "t"]
    signatures = [value for key, _, value in parts if key == "v1"]
    if len(timestamps) != 1 or not timestamps[0].isdigit():
        raise SignatureError("the signature header has no timestamp")
    if not signatures:
        raise SignatureError("the signature header has no v1 signature")
    timestamp = int(timestamps[0])
    if abs(time.time() - timestamp) > tolerance_seconds:
        raise SignatureError("the signature timestamp is outside the tolerance")
    expected = _signature(payload=payload, secret=secret, timestamp=timestamp)
    # Every candidate is compared, in constant time, so timing tells nothing.
    matches = [hmac.compare_digest(expected, candidate) for candidate in signatures]
    if not any(matches):
        raise SignatureError("no signature matches the payload")


# --- sending ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Response:
    requested_at: datetime
    duration_ms: int
    status_code: int | None
    body: str
    error: str

    @property
    def ok(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


def delivery_attempt(*, delivery_id: int) -> DeliveryAttempt | None:
    """Make one attempt if the delivery is pending and due; None when there was nothing to do.

    Safe to run twice or from two workers at once: only one claims the delivery.
    """
    delivery = _delivery_claim(delivery_id)
    if delivery is None:
        return None
    response = _post(delivery)
    return _attempt_record(delivery, response)


def _delivery_claim(delivery_id: int) -> WebhookDelivery | None:
    with transaction.atomic():
        delivery = (
            WebhookDelivery.objects.select_for_update(skip_locked=True, of=("self",))
            .select_related("event__customer", "endpoint")
            .filter(pk=delivery_id)
            .first()
        )
        now = timezone.now()
        if delivery is None or delivery.status != DeliveryStatus.PENDING:
            return None
        if not delivery.endpoint.enabled:
            return None  # kept pending: sent once the endpoint is enabled again
        if delivery.next_attempt_at is not None and delivery.next_attempt_at > now:
            return None
        delivery.attempts += 1
        delivery.next_attempt_at = now + CLAIM_LEASE
        delivery.save(update_fields=["attempts", "next_attempt_at"])
    return delivery


def _post(delivery: WebhookDelivery) -> _Response:
    event, endpoint = delivery.event, delivery.endpoint
    body = event_body(event)
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        SIGNATURE_HEADER: signature_header(
            payload=body, secret=endpoint.secret, timestamp=timestamp
        ),
        EVENT_ID_HEADER: event.public_id,
        EVENT_TYPE_HEADER: event.type,
    }
    requested_at = timezone.now()
    started = time.monotonic()
    status_code: int | None = None
    excerpt, error = b"", ""
    try:
        # A redirect counts as a failure: the signed body goes to the configured URL only.
        with requests.post(
            endpoint.url,
            data=body,
            headers=headers,
            timeout=TIMEOUT_SECONDS,
            allow_redirects=False,
            stream=True,
        ) as response:
            status_code = response.status_code
            excerpt = response.raw.read(RESPONSE_EXCERPT_BYTES, decode_content=True) or b""
    except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
        error = f"{type(exc).__name__}: {exc}"
    return _Response(
        requested_at=requested_at,
        duration_ms=int((time.monotonic() - started) * 1000),
        status_code=status_code,
        body=_text(excerpt),
        error=_text(error.encode())[:2000],
    )


def _text(raw: bytes) -> str:
    # PostgreSQL text cannot hold NUL characters.
    return raw.decode("utf-8", errors="replace").replace("\x00", "")


def backoff(attempt_number: int) -> timedelta:
    base = timedelta(seconds=settings.OUTBOUND_WEBHOOK_BACKOFF_SECONDS)
    return min(base * 2 ** (attempt_number - 1), MAX_BACKOFF)


def _attempt_record(delivery: WebhookDelivery, response: _Response) -> DeliveryAttempt:
    with transaction.atomic():
        locked = WebhookDelivery.objects.select_for_update().get(pk=delivery.pk)
        number = delivery.attempts
        attempt = DeliveryAttempt.objects.create(
            delivery=locked,
            number=number,
            requested_at=response.requested_at,
            duration_ms=response.duration_ms,
            status_code=response.status_code,
            error=response.error,
            response_body=response.body,
        )
        if locked.attempts != number:
            return attempt  # a replay started a newer attempt; that one decides the state
        locked.last_status_code = response.status_code
        if response.ok:
            locked.status, locked.next_attempt_at = DeliveryStatus.SUCCEEDED, None
        elif number >= MAX_ATTEMPTS:
            locked.status, locked.next_attempt_at = DeliveryStatus.FAILED, None
        else:
            locked.next_attempt_at = timezone.now() + backoff(number)
        locked.save(update_fields=["status", "next_attempt_at", "last_status_code"])
    return attempt


# --- staff ------------------------------------------------------------------------------


def _audit(actor: User, action: str, target: Any, **details: Any) -> AuditLog:
    return AuditLog.objects.create(
        operator=actor,
        operator_name=actor.get_username(),
        action=action,
        reason_code=AUDIT_REASON,
        target_type=target._meta.label_lower,
        target_id=str(target.pk),
        details={key: str(value) for key, value in details.items()},
    )


def endpoint_save(
    *, endpoint: WebhookEndpoint, actor: User | AnonymousUser, created: bool
) -> WebhookEndpoint:
    """Create or change an endpoint and record who did it (never the secret)."""
    if not actor.has_perm(f"outbound.{'add' if created else 'change'}_webhookendpoint"):
        raise PermissionDenied("you may not manage webhook endpoints")
    assert isinstance(actor, User)
    with transaction.atomic():
        endpoint.save()
        _audit(
            actor,
            ENDPOINT_CREATE_AUDIT_ACTION if created else ENDPOINT_CHANGE_AUDIT_ACTION,
            endpoint,
            url=endpoint.url,
            event_types=",".join(endpoint.event_types) or "all",
            enabled=endpoint.enabled,
        )
    return endpoint


def delivery_replay(*, delivery: WebhookDelivery, actor: User | AnonymousUser) -> WebhookDelivery:
    """Send a delivery again now, whatever its state; earlier attempts stay in the log.

    A replay is one more attempt: past the attempt limit, a failed replay fails the
    delivery again instead of starting a new round of retries.
    """
    from billing_portal.outbound.tasks import delivery_send

    if not actor.has_perm("outbound.replay_delivery"):
        raise PermissionDenied("you need the replay_delivery permission")
    assert isinstance(actor, User)
    with transaction.atomic():
        locked = WebhookDelivery.objects.select_for_update().get(pk=delivery.pk)
        previous = locked.status
        locked.status, locked.next_attempt_at = DeliveryStatus.PENDING, timezone.now()
        locked.save(update_fields=["status", "next_attempt_at"])
        _audit(
            actor,
            REPLAY_AUDIT_ACTION,
            locked,
            event=locked.event.public_id,
            endpoint=locked.endpoint.url,
            previous_status=previous,
            attempts=locked.attempts,
        )
        delivery_send.delay_on_commit(locked.pk)
    return locked
