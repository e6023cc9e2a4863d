"""Stripe's ``POST /v1/billing/meter_events``, so stripe-python's
``client.v1.billing.meter_events.create(...)`` works unchanged against us.

An integration changes only its API key and base address
(``StripeClient(key, base_addresses={"api": "<base URL>/compat/stripe"})``). This module
translates and nothing else: the Stripe request becomes one native event for
``events_accept`` (the one ingest path), and the outcome becomes Stripe's
``billing.meter_event`` object or Stripe's error shape.

What maps to what:

* ``payload[stripe_customer_id]`` names the customer: the ``stripe_customer_id`` we store
  for it, else its ``external_id``; ``payload[value]`` is the value; every other payload
  key is a dimension.
* ``identifier`` is the native identifier (one is made up when absent, as Stripe does);
  ``timestamp`` is Unix seconds (now when absent).
* Errors keep the native codes and messages; ``param`` names the Stripe parameter, and
  ``type`` is one of Stripe's (``invalid_request_error``, ``idempotency_error``,
  ``api_error``), since stripe-python picks its exception from the HTTP status.
* An identifier sent again is refused with 400 and Stripe's own message ("An event
  already exists with identifier ..."), which integrations already treat as delivered;
  it is charged once. A retry of the same call (same ``Idempotency-Key``, which
  stripe-python sets on every POST) gets the first answer again instead.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import msgspec
from django.db.models import Q
from django.urls import URLPattern, path
from django.utils import timezone
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.parsers import FormParser
from rest_framework.request import Request
from rest_framework.response import Response

from billing_portal.api.base import ApiJSONParser, BaseApiView
from billing_portal.api.compat.resends import stored_times
from billing_portal.api.errors import (
    API_ERROR,
    IDEMPOTENCY_ERROR,
    INVALID_REQUEST_ERROR,
    ApiError,
    api_exception_handler,
)
from billing_portal.api.events import events_accept
from billing_portal.api.schema import error_responses
from billing_portal.web import json_nesting_exceeds, json_too_deep_message
from metering.ingest import Rejection, Result
from plans.models import Customer

CUSTOMER_KEY = "stripe_customer_id"  # Stripe's default customer_mapping.event_payload_key
VALUE_KEY = "value"  # Stripe's default value_settings.event_payload_key
PARAMETERS = frozenset({"event_name", "payload", "identifier", "timestamp", "expand"})
MAX_FIELDS = 200  # a meter event has a handful; this only bounds the parsing work
MAX_DEPTH = 3  # expand[0], payload[key]; deeper is never a meter event

# The native parameter a rejection names, as the Stripe parameter the caller sent.
STRIPE_PARAMS = {
    "customer": f"payload[{CUSTOMER_KEY}]",
    "value": f"payload[{VALUE_KEY}]",
    "dimensions": "payload",
    "identifier": "identifier",
    "event_name": "event_name",
    "timestamp": "timestamp",
}

_FORM_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_FORM_SEGMENT = re.compile(r"\[([^\[\]]*)\]")
_UNIX_SECONDS = re.compile(r"^-?[0-9]{1,12}$")
# Floats become Decimals as they are decoded: never a binary float for a value.
_json_decoder = msgspec.json.Decoder(float_hook=Decimal)


# --- the request body -----------------------------------------------------------------


def request_params(request: Request) -> dict[str, Any]:
    """The request's parameters as one nested dict, from a form body (what stripe-python
    sends) or a JSON one (cheap to allow, and handy with curl)."""
    body = request.body
    if "json" in (request.content_type or ""):
        params = _json_params(body)
    elif request.content_type in ("", "application/x-www-form-urlencoded") or not body:
        params = form_params(body)
    else:
        raise ApiError(
            415,
            "unsupported_media_type",
            f"Unsupported Content-Type {request.content_type!r}: send the parameters "
            "form-encoded (application/x-www-form-urlencoded), as stripe-python does, or JSON.",
        )
    unknown = sorted(set(params) - PARAMETERS)
    if unknown:
        raise _invalid(
            f"Received unknown parameter: {unknown[0]}. Send event_name, payload, identifier "
            "and timestamp.",
            unknown[0],
        )
    return params


def form_params(body: bytes) -> dict[str, Any]:
    """Stripe's bracket notation (``payload[stripe_customer_id]=cus_1``) as nested dicts.

    Ambiguous bodies are refused rather than guessed at: a parameter given twice (which
    value would be charged?), or given both as a value and as an object."""
    try:
        pairs = parse_qsl(
            body.decode(), keep_blank_values=True, errors="strict", max_num_fields=MAX_FIELDS
        )
    except UnicodeDecodeError as exc:
        raise _invalid(f"The body is not UTF-8 form data ({exc.reason}).") from exc
    except ValueError as exc:  # more than MAX_FIELDS
        raise _invalid(f"The body has more than {MAX_FIELDS} parameters.") from exc
    params: dict[str, Any] = {}
    for key, value in pairs:
        _place(params, _form_path(key), value, key)
    return params


def _form_path(key: str) -> list[str]:
    match = _FORM_KEY.match(key)
    segments = _FORM_SEGMENT.findall(match.group(2)) if match else []
    if match is None or "" in segments:
        raise _invalid(
            f"Malformed parameter name {key!r}: use name or name[key], e.g. "
            f"payload[{CUSTOMER_KEY}].",
            key,
        )
    names = [match.group(1), *segments]
    if len(names) > MAX_DEPTH:
        raise _invalid(f"Parameter {key!r} nests deeper than {MAX_DEPTH} levels.", key)
    return names


def _place(params: dict[str, Any], names: list[str], value: str, key: str) -> None:
    node = params
    for name in names[:-1]:
        node = node.setdefault(name, {})
        if not isinstance(node, dict):
            raise _invalid(f"Parameter {key!r} is given both as a value and as an object.", key)
    if isinstance(node.get(names[-1]), dict):
        raise _invalid(f"Parameter {key!r} is given both as a value and as an object.", key)
    if names[-1] in node:
        raise _invalid(f"Parameter {key!r} is given more than once: send it once.", key)
    node[names[-1]] = value


def _json_params(body: bytes) -> dict[str, Any]:
    if json_nesting_exceeds(body):
        raise ApiError(400, "invalid_json", _sentence(json_too_deep_message()))
    try:
        params = _json_decoder.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise ApiError(400, "invalid_json", f"The body is not valid JSON: {exc}.") from exc
    if not isinstance(params, dict):
        raise ApiError(400, "invalid_json", "The body must be a JSON object of parameters.")
    return params


def _invalid(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, "invalid_request", message, param)


def _sentence(text: str) -> str:
    """A native message, ended as Stripe's are. Not capitalised: it may begin with a
    name the caller sent (a payload key), which must read as sent."""
    return text if text.endswith(".") else text + "."


# --- Stripe's meter event, as a native event --------------------------------------------


@dataclass(frozen=True)
class MeterEventRequest:
    """What the caller asked for, in Stripe's terms: echoed back as the meter event."""

    event_name: Any
    identifier: Any
    timestamp: int
    payload: dict[str, Any]

    @property
    def customer(self) -> Any:
        return self.payload.get(CUSTOMER_KEY)


def meter_event_request(params: Mapping[str, Any], now: datetime) -> MeterEventRequest:
    """Stripe's defaults applied (identifier, timestamp); everything else is left to the
    native validation, so both paths refuse the same events with the same codes."""
    identifier = params.get("identifier")
    return MeterEventRequest(
        event_name=params.get("event_name"),
        identifier=f"mev_{uuid.uuid4().hex}" if identifier is None else identifier,
        timestamp=_unix_seconds(params.get("timestamp"), now),
        payload=_payload(params.get("payload", {})),
    )


def _payload(raw: Any) -> dict[str, Any]:
    """Stripe's payload is a flat map of strings: an object inside it is refused here, by
    the Stripe parameter's name, rather than as an unreadable dimension."""
    if not isinstance(raw, dict):
        raise _invalid(
            f"payload must be an object: send payload[{CUSTOMER_KEY}]=... and "
            f"payload[{VALUE_KEY}]=...",
            "payload",
        )
    for key, value in raw.items():
        if isinstance(value, dict | list):
            raise _invalid(f"payload[{key}] must be a string, not an object.", f"payload[{key}]")
    return dict(raw)


def _unix_seconds(raw: Any, now: datetime) -> int:
    if raw is None:
        return int(now.timestamp())
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if isinstance(raw, Decimal) and raw.is_finite() and raw == raw.to_integral_value():
        return int(raw)
    if isinstance(raw, str) and _UNIX_SECONDS.match(raw):
        return int(raw)
    raise ApiError(
        400,
        "invalid_timestamp",
        f"timestamp must be a whole number of Unix seconds, e.g. 1700000000, not {raw!r}.",
        "timestamp",
    )


def _with_stored_time(event: MeterEventRequest, external_id: str) -> MeterEventRequest:
    """Sent without a timestamp: the stored event's, if the identifier has one (see
    ``resends``), so a retry is Stripe's "already exists", not a conflict."""
    if not isinstance(event.identifier, str):
        return event
    earlier = stored_times([(external_id, event.identifier)]).get((external_id, event.identifier))
    if earlier is None:
        return event
    return replace(event, timestamp=int(earlier.timestamp()))


def customer_external_id(handle: Any) -> str | None:
    """Our external_id for the customer a Stripe payload names, in one query: the
    customer holding that Stripe customer id, else the one with that external_id."""
    if not isinstance(handle, str) or not handle or "\x00" in handle:
        return None  # "" would match every customer without a Stripe id
    found = list(
        Customer.objects.filter(Q(stripe_customer_id=handle) | Q(external_id=handle))
        .order_by("pk")
        .values_list("external_id", "stripe_customer_id")[:3]
    )
    by_stripe_id = [external_id for external_id, stripe_id in found if stripe_id == handle]
    if len(by_stripe_id) > 1:
        raise ApiError(
            400,
            "ambiguous_customer",
            f"Several customers have the Stripe customer id {handle!r} "
            f"({', '.join(by_stripe_id)}): give each its own, or send our external_id.",
            STRIPE_PARAMS["customer"],
        )
    return by_stripe_id[0] if by_stripe_id else found[0][0] if found else None


def native_event(event: MeterEventRequest, external_id: str | None) -> dict[str, Any]:
    """The native event: an unknown customer handle goes as it came, so the native
    ingest refuses it (and records the refusal) like any other."""
    dimensions = {k: v for k, v in event.payload.items() if k not in (CUSTOMER_KEY, VALUE_KEY)}
    return {
        "identifier": event.identifier,
        "event_name": event.event_name,
        "customer": external_id if external_id is not None else event.customer,
        "timestamp": event.timestamp,
        "value": event.payload.get(VALUE_KEY),
        "dimensions": dimensions,
    }


# --- the answer -----------------------------------------------------------------------


def meter_event_object(event: MeterEventRequest, created: datetime) -> dict[str, Any]:
    """Stripe's ``billing.meter_event``; payload values are strings there."""
    return {
        "object": "billing.meter_event",
        "created": int(created.timestamp()),
        "event_name": event.event_name,
        "identifier": event.identifier,
        "livemode": False,
        "payload": {key: str(value) for key, value in event.payload.items()},
        "timestamp": event.timestamp,
    }


def meter_event_answer(result: Result, event: MeterEventRequest, created: datetime) -> Response:
    if result.status == "accepted":
        return Response(meter_event_object(event, created))
    if result.status == "duplicate":
        raise duplicate_error(event.identifier)
    assert result.error is not None  # a rejected result always says why
    raise rejection_error(result.error, event)


def stripe_param(native: str | None) -> str | None:
    """The Stripe parameter for a native one. Any other name is a property path (a meter
    reading its value or a dimension from the event's properties): a payload key here."""
    if native is None:
        return None
    return STRIPE_PARAMS.get(native, f"payload[{native}]")


def duplicate_error(identifier: str) -> ApiError:
    """Stripe's answer to an identifier it has seen, word for word: integrations match
    the message to count the event as delivered. Retrying it would change nothing."""
    return ApiError(
        400,
        "resource_already_exists",
        f"An event already exists with identifier {identifier}.",
        "identifier",
        headers={"Stripe-Should-Retry": "false"},
    )


def rejection_error(error: Rejection, event: MeterEventRequest) -> ApiError:
    """A native rejection, with its code, naming the Stripe parameter at fault."""
    param = stripe_param(error.param)
    if error.code == "unknown_customer":
        return ApiError(
            404,
            error.code,
            f"No such customer: {event.customer!r} is neither the Stripe customer id nor "
            f"the external_id of a customer ({param}). Create the customer first, or set "
            "its stripe_customer_id.",
            param,
        )
    if error.code == "missing_field":
        return ApiError(400, error.code, f"Missing required param: {param}.", param)
    message = _sentence(error.message)
    if error.param == "dimensions":
        message += f" Every payload key other than {CUSTOMER_KEY} and {VALUE_KEY} is a dimension."
    return ApiError(400, error.code, message, param)


# --- errors in Stripe's shape ---------------------------------------------------------


def stripe_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """The API's own envelope (already Stripe's shape), with Stripe's error types and
    Stripe's status for an Idempotency-Key reused on another request (400, which
    stripe-python raises as IdempotencyError; our 409 would be retried in vain)."""
    response = api_exception_handler(exc, context)
    error = response.data["error"]
    if error["code"] == "idempotency_key_reused":
        response.status_code = 400
    error["type"] = stripe_error_type(error["type"], response.status_code)
    return response


def stripe_error_type(ours: str, status: int) -> str:
    if ours == IDEMPOTENCY_ERROR:
        return IDEMPOTENCY_ERROR
    return API_ERROR if status >= 500 else INVALID_REQUEST_ERROR


# --- the endpoint ---------------------------------------------------------------------


class StripeMeterEventsApi(BaseApiView):
    """Stripe's meter event create, over the native ingest."""

    required_scope = "ingest"
    parser_classes = [FormParser, ApiJSONParser]

    def get_exception_handler(self) -> Any:
        return stripe_exception_handler

    @extend_schema(
        operation_id="compat_stripe_v1_billing_meter_events_create",
        tags=["compat"],
        summary="Stripe-compatible meter event (stripe-python's meter_events.create)",
        description=(
            "Stripe's `POST /v1/billing/meter_events`, form-encoded as stripe-python sends "
            "it (or JSON). `payload[stripe_customer_id]` is the customer's Stripe customer "
            "id or our external_id, `payload[value]` the value (decimal string), and every "
            "other payload key a dimension. `identifier` is made up when absent; "
            "`timestamp` is Unix seconds, now when absent. Answers Stripe's "
            "`billing.meter_event`. Errors come in Stripe's shape with our codes: 400 "
            "invalid input (an identifier sent before: `resource_already_exists`, charged "
            "once; with other content: `identifier_conflict`), 401 bad key, 403 a key "
            "without the `ingest` scope, 404 unknown customer, 429 rate limited. An "
            "Idempotency-Key reused for another request is a 400 `idempotency_error`."
        ),
        request={
            "application/x-www-form-urlencoded": inline_serializer(
                "StripeMeterEventCreate",
                {
                    "event_name": serializers.CharField(),
                    "payload": serializers.DictField(
                        child=serializers.CharField(),
                        help_text=f"{CUSTOMER_KEY}, {VALUE_KEY}, and dimensions",
                    ),
                    "identifier": serializers.CharField(required=False, max_length=255),
                    "timestamp": serializers.IntegerField(required=False, help_text="Unix seconds"),
                },
            ),
        },
        responses={
            200: inline_serializer(
                "StripeMeterEvent",
                {
                    "object": serializers.CharField(default="billing.meter_event"),
                    "created": serializers.IntegerField(),
                    "event_name": serializers.CharField(),
                    "identifier": serializers.CharField(),
                    "livemode": serializers.BooleanField(),
                    "payload": serializers.DictField(child=serializers.CharField()),
                    "timestamp": serializers.IntegerField(),
                },
            ),
            **error_responses(400, 401, 403, 404, 429),
        },
    )
    def post(self, request: Request) -> Response:
        now = timezone.now()
        params = request_params(request)
        event = meter_event_request(params, now)
        external_id = customer_external_id(event.customer)
        if params.get("timestamp") is None and external_id is not None:
            event = _with_stored_time(event, external_id)
        outcome = events_accept([native_event(event, external_id)])
        return meter_event_answer(outcome.results[0], event, now)


urlpatterns: list[URLPattern] = [
    path(
        "v1/billing/meter_events",
        StripeMeterEventsApi.as_view(),
        name="compat-stripe-meter-events",
    ),
]
