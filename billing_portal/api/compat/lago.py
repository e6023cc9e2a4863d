"""Lago-compatible event ingest: ``POST /compat/lago/api/v1/events`` and ``.../events/batch``.

A team already sending usage with Lago's SDK (``lago_python_client``) points it at us::

    Client(api_key="<one of our API keys, scope ingest>", api_url="<our base URL>/compat/lago/")

(the trailing slash matters: the SDK joins ``api/v1/`` onto ``api_url`` with ``urljoin``).

Each Lago event becomes one native event for ``events_accept`` (the one ingest path):

- ``transaction_id`` -> ``identifier``: a resend with the same content is a duplicate,
  charged once; the same id with other content is refused (422, ``identifier_conflict``).
- ``code`` -> a meter code (only that meter is fed: the native ``meter`` key) or else an
  event name (every meter fed by that name).
- ``external_subscription_id`` -> the subscription whose ``external_id`` it is, and so its
  customer; or ``external_customer_id`` -> the customer with that ``external_id``.
- ``timestamp`` (Unix seconds: int, decimal or numeric string, parsed as a Decimal, never
  a float; an RFC 3339 string is taken too) -> ``timestamp``; absent -> now, or, for a
  ``transaction_id`` already stored, the stored event's time, so a retry stays a duplicate.
- ``properties`` -> ``properties``: each meter takes its value from its ``value_property``
  and its dimensions from its ``dimension_properties``.

Answers are Lago's: ``{"event": {...}}`` and ``{"events": [...]}`` (200), and every error,
auth and rate limiting included, as ``{"status", "error", "code", "message"}`` with
``error_details`` on 422, so the SDK raises its own ``LagoApiError``.

A batch is not all-or-nothing: the events that are valid are stored and the answer is
422 listing the others by index (``error_details: {"<index>": {"<field>": [code,
message]}}``). Resending the whole batch after fixing them is safe: the stored ones come
back as duplicates and are charged once.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from http import HTTPStatus
from typing import Any

import msgspec
from django.urls import path
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing_portal.api.base import BaseApiView, FastJSONRenderer
from billing_portal.api.compat.resends import stored_times
from billing_portal.api.events import events_accept
from billing_portal.web import json_nesting_exceeds, json_too_deep_message
from ledger.units import rfc3339
from metering import ingest
from metering.ingest import MAX_EVENTS, Known, Rejection, Result
from plans.models import Customer, Meter, Subscription

# --- Lago's shapes ---------------------------------------------------------------------

# Floats become Decimals as they are decoded: never a binary float for a value.
_decoder = msgspec.json.Decoder(float_hook=Decimal)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class LagoJSONRenderer(FastJSONRenderer):
    """JSON with decimals written back as numbers: properties echo as they were sent."""

    encoder = msgspec.json.Encoder(decimal_format="number")


class LagoError(Exception):
    """An answer in Lago's error shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        error_details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.error_details = error_details

    def as_body(self) -> dict[str, Any]:
        return lago_error_body(self.status, self.code, self.message, self.error_details)


def lago_error_body(
    status: int, code: str | None, message: str, error_details: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {"status": status, "error": HTTPStatus(status).phrase}
    if code:
        body["code"] = "validation_errors" if status == 422 else code
    body["message"] = message
    if status == 422:
        body["error_details"] = error_details or {}
    return body


# --- the translation -------------------------------------------------------------------

# The native param at fault -> the Lago field to name.
_FIELDS = {
    "identifier": "transaction_id",
    "event_name": "code",
    "meter": "code",
    "timestamp": "timestamp",
    "value": "properties",
    "dimensions": "properties",
}


@dataclass
class _Owner:
    customer_external_id: str
    customer_pk: int
    subscription: Subscription | None


@dataclass
class _Translated:
    """One Lago event as a native event, with what its answer repeats."""

    native: dict[str, Any]
    lago: dict[str, Any]
    owner: _Owner
    owner_field: str
    moment: datetime | None  # None: an RFC 3339 string, checked by the native ingest


class _Invalid(Exception):
    def __init__(self, status: int, field: str, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.field, self.code, self.message = status, field, code, message


class _Lookups:
    """Subscriptions, customers and meters named by one request: one query each."""

    def __init__(self, events: list[Any]) -> None:
        dicts = [e for e in events if isinstance(e, dict)]
        subscription_ids = _strings(e.get("external_subscription_id") for e in dicts)
        customer_ids = _strings(
            e.get("external_customer_id")
            for e in dicts
            if not isinstance(e.get("external_subscription_id"), str)
        )
        self.subscriptions = (
            {
                s.external_id: s
                for s in Subscription.objects.select_related("customer").filter(
                    external_id__in=subscription_ids
                )
            }
            if subscription_ids
            else {}
        )
        self.customers = (
            {c.external_id: c for c in Customer.objects.filter(external_id__in=customer_ids)}
            if customer_ids
            else {}
        )
        self.meters = list(Meter.objects.all())
        self.meter_event_names = {m.code: m.event_name for m in self.meters}
        self.meters_per_event_name: dict[str, int] = {}
        for meter in self.meters:
            self.meters_per_event_name[meter.event_name] = (
                self.meters_per_event_name.get(meter.event_name, 0) + 1
            )

    def known(self) -> Known:
        """What the native ingest would read again: handed to it instead."""
        customers = dict(self.customers)
        for subscription in self.subscriptions.values():
            customers[subscription.customer.external_id] = subscription.customer
        return Known(customers=customers, meters=self.meters)


def _strings(values: Any) -> set[str]:
    return {v for v in values if isinstance(v, str) and v and "\x00" not in v}


def _owner(event: dict[str, Any], lookups: _Lookups) -> tuple[_Owner, str]:
    subscription_id = event.get("external_subscription_id")
    if subscription_id is not None:
        subscription = (
            lookups.subscriptions.get(subscription_id) if isinstance(subscription_id, str) else None
        )
        if subscription is None:
            raise _Invalid(
                404,
                "external_subscription_id",
                "subscription_not_found",
                f"no subscription with external_id {subscription_id!r}: start it with that "
                "external_id (POST /api/v1/subscriptions) or send external_customer_id",
            )
        customer = subscription.customer
        named = event.get("external_customer_id")
        if named is not None and named != customer.external_id:
            raise _Invalid(
                422,
                "external_customer_id",
                "customer_mismatch",
                f"subscription {subscription_id!r} belongs to customer "
                f"{customer.external_id!r}, not {named!r}",
            )
        owner = _Owner(customer.external_id, customer.pk, subscription)
        return owner, "external_subscription_id"
    customer_id = event.get("external_customer_id")
    if customer_id is None:
        raise _Invalid(
            422,
            "external_subscription_id",
            "missing_field",
            "external_subscription_id (or external_customer_id) is required",
        )
    found = lookups.customers.get(customer_id) if isinstance(customer_id, str) else None
    if found is None:
        raise _Invalid(
            404,
            "external_customer_id",
            "customer_not_found",
            f"no customer with external_id {customer_id!r}",
        )
    return _Owner(customer_id, found.pk, None), "external_customer_id"


def _timestamp(raw: Any, now: datetime) -> tuple[Any, datetime | None]:
    """The native timestamp (Unix seconds as a Decimal, or the string as sent) and the
    moment it names when known here."""
    if raw is None:
        return rfc3339(now), now
    seconds: Decimal | None = None
    if isinstance(raw, int | Decimal) and not isinstance(raw, bool):
        seconds = Decimal(raw)
    elif isinstance(raw, str):
        try:
            seconds = Decimal(raw.strip())
        except InvalidOperation:
            return raw, None  # RFC 3339, or refused by the native ingest
    if seconds is None or not seconds.is_finite():
        raise _Invalid(
            422, "timestamp", "invalid_timestamp", "timestamp must be Unix seconds, e.g. 1764979200"
        )
    try:
        whole = int(seconds)
        micros = int((seconds - whole) * 1_000_000)
        moment = _EPOCH + timedelta(seconds=whole, microseconds=micros)
    except (OverflowError, ValueError) as exc:
        raise _Invalid(422, "timestamp", "invalid_timestamp", "timestamp is out of range") from exc
    return seconds, moment


def _translate(event: Any, lookups: _Lookups, now: datetime) -> _Translated:
    if not isinstance(event, dict):
        raise _Invalid(422, "event", "invalid_event", "each event must be a JSON object")
    transaction_id = event.get("transaction_id")
    if transaction_id is None or transaction_id == "":
        raise _Invalid(422, "transaction_id", "missing_field", "transaction_id is required")
    code = event.get("code")
    if not isinstance(code, str) or not code:
        raise _Invalid(
            422, "code", "missing_field", "code (a meter code or event name) is required"
        )
    properties = event.get("properties")
    if properties is None:
        properties = {}
    if not isinstance(properties, dict):
        raise _Invalid(422, "properties", "invalid_properties", "properties must be an object")
    if event.get("precise_total_amount_cents") is not None:
        raise _Invalid(
            422,
            "precise_total_amount_cents",
            "not_supported",
            "precise_total_amount_cents is not supported: usage is priced by the rate card",
        )
    owner, owner_field = _owner(event, lookups)
    native_timestamp, moment = _timestamp(event.get("timestamp"), now)
    native: dict[str, Any] = {
        "identifier": transaction_id,
        "event_name": code,
        "customer": owner.customer_external_id,
        "timestamp": native_timestamp,
        "properties": properties,
    }
    event_name = lookups.meter_event_names.get(code)
    if event_name is not None:
        # A meter's code: only that meter is fed, even where others share its event name.
        native["event_name"] = event_name
        if lookups.meters_per_event_name.get(event_name, 0) > 1:
            native["meter"] = code
    return _Translated(native, event, owner, owner_field, moment)


def _keep_stored_times(absent: list[_Translated]) -> None:
    """Events sent without a timestamp take the stored event's (see ``resends``)."""
    stored = stored_times(
        (item.owner.customer_external_id, str(item.native["identifier"])) for item in absent
    )
    for item in absent:
        earlier = stored.get((item.owner.customer_external_id, str(item.native["identifier"])))
        if earlier is not None:
            item.native["timestamp"], item.moment = rfc3339(earlier), earlier


def _event_out(item: _Translated, created_at: str) -> dict[str, Any]:
    subscription = item.owner.subscription
    moment = item.moment
    return {
        "lago_id": None,
        "transaction_id": item.lago.get("transaction_id"),
        "lago_customer_id": str(item.owner.customer_pk),
        "code": item.lago.get("code"),
        "timestamp": rfc3339(moment) if moment else str(item.native["timestamp"]),
        "precise_total_amount_cents": None,
        "properties": item.native["properties"],
        "lago_subscription_id": str(subscription.pk) if subscription else None,
        "external_subscription_id": subscription.external_id if subscription else None,
        "external_customer_id": item.owner.customer_external_id,
        "created_at": created_at,
    }


def _rejection(result: Result, item: _Translated) -> _Invalid:
    error = result.error
    assert error is not None
    if error.code == "unknown_customer":
        return _Invalid(404, item.owner_field, "customer_not_found", error.message)
    param = error.param or ""
    if param in _FIELDS:
        field = _FIELDS[param]
    elif not param or param == "properties" or param.startswith("properties."):
        field = param or "event"
    else:  # a property's path: where a meter reads its value or a dimension
        field = f"properties.{param}"
    return _Invalid(422, field, error.code, error.message)


def _as_sent(event: Any) -> dict[str, Any]:
    """A refused Lago event for the unmatched-events report, under native names."""
    fields = event if isinstance(event, dict) else {}
    return {
        "customer": fields.get("external_customer_id") or fields.get("external_subscription_id"),
        "identifier": fields.get("transaction_id"),
        "event_name": fields.get("code"),
        "lago_event": event,
    }


@dataclass
class _Accepted:
    translated: list[_Translated | None]
    failures: dict[int, _Invalid]
    created_at: str


def _accept(events: list[Any]) -> _Accepted:
    """Translate, then store the translatable events through ``events_accept``."""
    now = timezone.now()
    lookups = _Lookups(events)
    translated: list[_Translated | None] = []
    failures: dict[int, _Invalid] = {}
    for index, event in enumerate(events):
        try:
            translated.append(_translate(event, lookups, now))
        except _Invalid as invalid:
            failures[index] = invalid
            translated.append(None)
    ingest.rejections_store(
        [
            (_as_sent(events[index]), Rejection(invalid.code, invalid.message, invalid.field))
            for index, invalid in failures.items()
        ],
        now,
    )
    present = [(index, item) for index, item in enumerate(translated) if item is not None]
    _keep_stored_times([item for _, item in present if item.lago.get("timestamp") is None])
    if present:
        outcome = events_accept([item.native for _, item in present], lookups.known())
        for (index, item), result in zip(present, outcome.results, strict=True):
            if result.status == "rejected":
                failures[index] = _rejection(result, item)
    return _Accepted(translated, failures, rfc3339(now))


# --- the views -------------------------------------------------------------------------


def _body(request: Request) -> Any:
    body = request.body
    if json_nesting_exceeds(body):
        raise LagoError(400, "invalid_json", json_too_deep_message())
    try:
        return _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise LagoError(400, "invalid_json", f"the body is not valid JSON: {exc}") from exc
    except RecursionError as exc:
        raise LagoError(400, "invalid_json", json_too_deep_message()) from exc


class LagoApiView(BaseApiView):
    """Our auth (``Authorization: Bearer <API key>``, scope ingest), throttle and
    Idempotency-Key, with every answer, errors included, in Lago's shapes."""

    required_scope = "ingest"
    renderer_classes = [LagoJSONRenderer]

    def handle_exception(self, exc: Exception) -> Response:
        if isinstance(exc, LagoError):
            return Response(exc.as_body(), status=exc.status)
        response = super().handle_exception(exc)
        error = response.data.get("error") if isinstance(response.data, dict) else None
        if isinstance(error, dict) and response.status_code >= 400:
            status = response.status_code
            details = None
            if status == 422 and error.get("param"):
                details = {error["param"]: [error["code"], error["message"]]}
            response.data = lago_error_body(status, error.get("code"), error["message"], details)
            if status == 429 and response.get("Retry-After"):
                # Lago's SDK waits this many seconds before it retries.
                response["x-ratelimit-reset"] = response["Retry-After"]
        return response


_EventOut = inline_serializer(
    "LagoEvent",
    {
        "lago_id": serializers.CharField(allow_null=True),
        "transaction_id": serializers.CharField(),
        "lago_customer_id": serializers.CharField(allow_null=True),
        "code": serializers.CharField(),
        "timestamp": serializers.CharField(),
        "precise_total_amount_cents": serializers.CharField(allow_null=True),
        "properties": serializers.DictField(),
        "lago_subscription_id": serializers.CharField(allow_null=True),
        "external_subscription_id": serializers.CharField(allow_null=True),
        "external_customer_id": serializers.CharField(allow_null=True),
        "created_at": serializers.CharField(),
    },
)
_EventIn = inline_serializer(
    "LagoEventInput",
    {
        "transaction_id": serializers.CharField(help_text="becomes the event's identifier"),
        "external_subscription_id": serializers.CharField(
            required=False, help_text="a subscription's external_id"
        ),
        "external_customer_id": serializers.CharField(
            required=False, help_text="a customer's external_id (instead of the subscription)"
        ),
        "code": serializers.CharField(help_text="a meter code (only it is fed) or an event name"),
        "timestamp": serializers.CharField(
            required=False, help_text="Unix seconds (integer, decimal or string); absent: now"
        ),
        "properties": serializers.DictField(required=False),
    },
)
_LagoErrorOut = inline_serializer(
    "LagoError",
    {
        "status": serializers.IntegerField(),
        "error": serializers.CharField(help_text="the HTTP reason phrase"),
        "code": serializers.CharField(required=False),
        "message": serializers.CharField(),
        "error_details": serializers.DictField(
            required=False,
            help_text='422 only: {"<field>": [code, message]}; for a batch keyed by index',
        ),
    },
)
_ERRORS = {
    status: OpenApiResponse(_LagoErrorOut, description=HTTPStatus(status).phrase)
    for status in (400, 401, 403, 404, 409, 413, 422, 429, 503)
}
_MAPPING = (
    "transaction_id -> identifier (a resend is a duplicate, charged once; the same id with "
    "other content is 422 identifier_conflict), code -> a meter code (only that meter) or "
    "an event name, external_subscription_id -> the subscription with that external_id "
    "(or external_customer_id -> the customer), timestamp -> Unix seconds (absent: now), "
    "properties -> properties (each meter reads its value_property)."
)


class LagoEventApi(LagoApiView):
    @extend_schema(
        tags=["compat"],
        operation_id="compat_lago_events_create",
        request=inline_serializer("LagoEventCreate", {"event": _EventIn}),
        responses={200: inline_serializer("LagoEventResponse", {"event": _EventOut}), **_ERRORS},
        description=(
            "Lago's POST /api/v1/events, for Lago's SDKs pointed at <base URL>/compat/lago/. "
            f"{_MAPPING} An unknown external_subscription_id is 404 subscription_not_found; "
            "a refused event is 422 with error_details naming the field."
        ),
    )
    def post(self, request: Request) -> Response:
        document = _body(request)
        event = document.get("event") if isinstance(document, dict) else None
        if not isinstance(event, dict):
            raise LagoError(400, "bad_request", 'send {"event": {...}}')
        accepted = _accept([event])
        failure = accepted.failures.get(0)
        if failure is not None:
            raise LagoError(
                failure.status,
                failure.code,
                failure.message,
                {failure.field: [failure.code, failure.message]},
            )
        item = accepted.translated[0]
        assert item is not None
        return Response({"event": _event_out(item, accepted.created_at)}, status=200)


class LagoEventBatchApi(LagoApiView):
    @extend_schema(
        tags=["compat"],
        operation_id="compat_lago_events_batch_create",
        request=inline_serializer(
            "LagoEventBatchCreate", {"events": serializers.ListField(child=_EventIn)}
        ),
        responses={
            200: inline_serializer(
                "LagoEventBatchResponse", {"events": serializers.ListField(child=_EventOut)}
            ),
            **_ERRORS,
        },
        description=(
            f"Lago's POST /api/v1/events/batch (1 to {MAX_EVENTS} events). {_MAPPING} Not "
            "all-or-nothing: the valid events are stored, and if any is refused the answer "
            'is 422 with error_details {"<index>": {"<field>": [code, message]}} for those '
            "only. Resending the whole batch after fixing them is safe: stored events come "
            "back as duplicates, charged once."
        ),
    )
    def post(self, request: Request) -> Response:
        document = _body(request)
        events = document.get("events") if isinstance(document, dict) else None
        if not isinstance(events, list) or not events:
            raise LagoError(400, "bad_request", 'send {"events": [...]} with 1 or more events')
        if len(events) > MAX_EVENTS:
            raise LagoError(
                422,
                "too_many_events",
                f"{len(events)} events in one request; send at most {MAX_EVENTS}",
                {"events": ["too_many_events"]},
            )
        accepted = _accept(events)
        if accepted.failures:
            failures = accepted.failures
            stored = len(events) - len(failures)
            raise LagoError(
                422,
                "validation_errors",
                f"{len(failures)} of {len(events)} events were refused (listed by index in "
                f"error_details); the other {stored} were stored. Fix the refused ones and "
                "resend: events already stored come back as duplicates, charged once.",
                {
                    str(index): {
                        failures[index].field: [failures[index].code, failures[index].message]
                    }
                    for index in sorted(failures)
                },
            )
        created_at = accepted.created_at
        return Response(
            {"events": [_event_out(t, created_at) for t in accepted.translated if t is not None]},
            status=200,
        )


urlpatterns = [
    path("api/v1/events", LagoEventApi.as_view(), name="compat-lago-events"),
    path("api/v1/events/batch", LagoEventBatchApi.as_view(), name="compat-lago-events-batch"),
]
