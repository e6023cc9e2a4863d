"""OpenMeter-compatible ingest: ``POST /compat/openmeter/api/v1/events`` takes CloudEvents,
so the ``openmeter`` SDK (``Client(endpoint="<our base URL>/compat/openmeter", token=<API
key>)``) and plain CloudEvents senders work unchanged.

Only a translation: each CloudEvent becomes a native event for ``events_accept`` (the one
ingest path), and the outcome becomes OpenMeter's answer: 204 without a body, or an RFC
7807 ``application/problem+json`` error, which the SDK raises as its own
``HttpResponseError`` (``ClientAuthenticationError`` for 401).

The mapping: ``type`` is the event name, ``subject`` the customer's external_id, ``time``
the timestamp (now when absent), ``data`` the event's properties (each meter fed by
``type`` reads its value at its ``value_property``), and ``source`` and ``id`` the
identifier (see ``event_identifier``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import IO, Any, ClassVar
from urllib.parse import unquote

import msgspec
from django.urls import path
from django.utils import timezone
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.parsers import BaseParser
from rest_framework.renderers import BaseRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from billing_portal.api.base import BaseApiView, FastJSONRenderer
from billing_portal.api.compat.resends import stored_times
from billing_portal.api.errors import ApiError, api_exception_handler
from billing_portal.api.events import events_accept
from billing_portal.api.schema import ApiAutoSchema
from billing_portal.web import MAX_JSON_DEPTH, json_nesting_exceeds, json_too_deep_message
from ledger.units import rfc3339
from metering import ingest
from metering.ingest import IDENTIFIER, MAX_EVENTS, Rejection, Result

PROBLEM_JSON = "application/problem+json"
SPECVERSION = "1.0"
# What OpenMeter requires of every event; ``subject`` names the customer to charge.
REQUIRED_ATTRIBUTES = ("specversion", "id", "source", "type", "subject")
HASHED_IDENTIFIER_PREFIX = "sha256:"
# How many rejections the problem's ``detail`` spells out; ``events`` lists them all.
DETAIL_REJECTIONS = 3
SHOWN_ID_LENGTH = 64

# Native parameter names, as the CloudEvents attribute a sender would fix.
_ATTRIBUTE_OF = {
    "identifier": "id",
    "event_name": "type",
    "customer": "subject",
    "timestamp": "time",
    "properties": "data",
}
_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


# --- the request body ------------------------------------------------------------------


class CloudEventsParser(BaseParser):
    """A structured CloudEvent (or, for leniency, a batch) as JSON: nesting bounded before
    decoding, numbers with a fraction decoded as Decimal, never float."""

    media_type = "application/cloudevents+json"

    def parse(
        self,
        stream: IO[Any],
        media_type: str | None = None,
        parser_context: Mapping[str, Any] | None = None,
    ) -> Any:
        return cloudevents_decode(stream.read())


class CloudEventsBatchParser(CloudEventsParser):
    media_type = "application/cloudevents-batch+json"


class CloudEventsJSONParser(CloudEventsParser):
    """``application/json``: what the SDK's ``ingest_events_json`` sends (an event or a
    list), and the body of an event in binary mode (its attributes in ``ce-*`` headers)."""

    media_type = "application/json"


_decoder = msgspec.json.Decoder(float_hook=Decimal)


def cloudevents_decode(body: bytes) -> Any:
    if json_nesting_exceeds(body):
        raise _invalid_json(json_too_deep_message())
    try:
        return _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise _invalid_json(f"the body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # malformed in a way the pre-scan did not foresee
        raise _invalid_json(json_too_deep_message()) from exc


def _invalid_json(message: str) -> ApiError:
    return ApiError(400, "invalid_json", message)


def cloudevents_of(request: Request) -> list[Any]:
    """The request's events: a JSON array is a batch, anything else one event; in binary
    mode (a ``ce-specversion`` header) the headers are the attributes and the body data."""
    document = request.data
    if "ce-specversion" in request.headers:
        events = [binary_event(request.headers, document)]
    elif isinstance(document, list):
        events = document
    else:
        events = [document]
    if len(events) > MAX_EVENTS:
        raise ApiError(
            400,
            "too_many_events",
            f"{len(events)} events in one batch; send at most {MAX_EVENTS} and split the rest",
        )
    return events


def binary_event(headers: Mapping[str, str], data: Any) -> dict[str, Any]:
    # The HTTP binding percent-encodes header values; an empty body carries no data.
    event: dict[str, Any] = {
        name[3:].lower(): unquote(value)
        for name, value in headers.items()
        if name.lower().startswith("ce-")
    }
    event["data"] = data or None
    return event


# --- CloudEvents into native events ---------------------------------------------------


def event_identifier(source: str, event_id: str) -> str:
    """The native identifier of (``source``, ``id``), the pair CloudEvents makes unique.

    ``<source>/<id>`` when that is a valid identifier (1 to 255 printable ASCII
    characters, no spaces) and ``id`` holds no "/" (so the last "/" always splits the
    two apart); else ``sha256:<hex of the JSON [source, id]>``, which holds no "/" and so
    never equals the first form. Both are stable: a resend is the same identifier.
    """
    direct = f"{source}/{event_id}"
    if "/" not in event_id and IDENTIFIER.fullmatch(direct):
        return direct
    digest = hashlib.sha256(msgspec.json.encode([source, event_id])).hexdigest()
    return HASHED_IDENTIFIER_PREFIX + digest


def native_event(event: Any, received_at: str) -> dict[str, Any] | Rejection:
    """One CloudEvent as a native event, or why its envelope is refused (what the native
    ingest cannot name: CloudEvents' own attributes)."""
    refused = _envelope_refusal(event)
    if refused is not None:
        return refused
    return {
        "identifier": event_identifier(event["source"], event["id"]),
        "event_name": event["type"],
        "customer": event["subject"],
        "timestamp": event.get("time") or received_at,
        "properties": event.get("data") or {},
    }


def _envelope_refusal(event: Any) -> Rejection | None:
    if not isinstance(event, dict):
        return Rejection("invalid_event", "each event must be a CloudEvents JSON object")
    for name in REQUIRED_ATTRIBUTES:
        value = event.get(name)
        if not isinstance(value, str) or not value:
            return Rejection(
                "missing_attribute",
                f"the CloudEvents attribute {name!r} is required (a non-empty string)",
                name,
            )
    if event["specversion"] != SPECVERSION:
        return Rejection(
            "unsupported_specversion",
            f"specversion {event['specversion']!r} is not supported; send {SPECVERSION!r}",
            "specversion",
        )
    return _data_refusal(event)


def _data_refusal(event: dict[str, Any]) -> Rejection | None:
    content_type = event.get("datacontenttype")
    if content_type is not None and not _is_json(content_type):
        return Rejection(
            "unsupported_datacontenttype",
            f"datacontenttype {content_type!r} is not supported; send data as JSON",
            "datacontenttype",
        )
    if "data_base64" in event:
        return Rejection(
            "unsupported_data",
            "data_base64 is not supported; send data as a JSON object",
            "data_base64",
        )
    data = event.get("data")
    if data is not None and not isinstance(data, dict):
        return Rejection(
            "invalid_data", "data must be a JSON object holding the event's properties", "data"
        )
    return None


def _is_json(content_type: Any) -> bool:
    media = content_type.split(";")[0].strip().lower() if isinstance(content_type, str) else ""
    return media == "application/json" or media.endswith("+json")


# --- the outcome as OpenMeter answers it ---------------------------------------------


@dataclass(frozen=True)
class Failure:
    """A rejected event, named as its sender knows it: by index, ``id`` and ``source``."""

    index: int
    event: Any
    error: Rejection

    def as_dict(self) -> dict[str, Any]:
        event = self.event if isinstance(self.event, dict) else {}
        return {
            "index": self.index,
            "id": _text_or_none(event.get("id")),
            "source": _text_or_none(event.get("source")),
            "code": self.error.code,
            "message": self.error.message,
            "param": attribute_of(self.error.param),
        }

    def summary(self) -> str:
        name = self.as_dict()
        event_id = name["id"]
        if event_id and len(event_id) > SHOWN_ID_LENGTH:
            event_id = event_id[:SHOWN_ID_LENGTH] + "..."
        where = f"event {self.index}" + (f" (id {event_id!r})" if event_id else "")
        param = f"{name['param']}: " if name["param"] else ""
        return f"{where}: {param}{self.error.message}"


def _text_or_none(value: Any) -> str | None:
    # Echoed as sent, but for U+0000: the answer may be stored (Idempotency-Key), and
    # PostgreSQL text cannot hold it.
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else None


def attribute_of(param: str | None) -> str | None:
    """A native parameter as the CloudEvents attribute to fix; any other is a property
    path, read from ``data``."""
    if param is None:
        return None
    if param in _ATTRIBUTE_OF:
        return _ATTRIBUTE_OF[param]
    if param in REQUIRED_ATTRIBUTES or param in {"datacontenttype", "data", "data_base64"}:
        return param
    return "data." + param.removeprefix("properties.")


def failures_of(
    events: Sequence[Any], translated: Sequence[dict[str, Any] | Rejection], results: list[Result]
) -> list[Failure]:
    """The rejected events, in order. A reused ``source`` + ``id`` with the content
    stored is a duplicate (a resend without ``time`` takes the stored time: see
    ``resends``); with other content it is ``identifier_conflict``, as every ingest path
    answers."""
    stored: Iterator[Result] = iter(results)
    failures = []
    for index, (event, native) in enumerate(zip(events, translated, strict=True)):
        error = native if isinstance(native, Rejection) else next(stored).error
        if error is not None:
            failures.append(Failure(index, event, error))
    return failures


def problem(
    status: int, detail: str, code: str, param: str | None, request: Request, **extra: Any
) -> dict[str, Any]:
    """An RFC 7807 problem as OpenMeter answers it (``about:blank``, the status's title),
    with our ``code`` and ``param`` as extensions."""
    return {
        "type": "about:blank",
        "title": _TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
        "instance": request.path,
        "code": code,
        "param": param,
        **extra,
    }


def rejected_problem(failures: list[Failure], total: int, request: Request) -> dict[str, Any]:
    shown = "; ".join(f.summary() for f in failures[:DETAIL_REJECTIONS])
    more = len(failures) - DETAIL_REJECTIONS
    tail = f"; and {more} more (see events)" if more > 0 else ""
    stored = "; the others were stored" if len(failures) < total else ""
    detail = f"{len(failures)} of {total} event(s) rejected{stored}: {shown}{tail}"
    first = failures[0].as_dict()
    return problem(
        400,
        detail,
        first["code"],
        first["param"],
        request,
        events=[f.as_dict() for f in failures],
    )


def problem_exception_handler(exc: Exception, context: dict[str, Any]) -> Response:
    """The API's one error mapping (statuses, codes, Retry-After, WWW-Authenticate),
    answered as a problem instead of the native envelope."""
    answered = api_exception_handler(exc, context)
    error = answered.data["error"]
    body = problem(
        answered.status_code, error["message"], error["code"], error["param"], context["request"]
    )
    return Response(
        body,
        status=answered.status_code,
        headers={k: v for k, v in answered.headers.items() if k.lower() != "content-type"},
        content_type=PROBLEM_JSON,
    )


class ProblemJSONRenderer(FastJSONRenderer):
    """Every body this endpoint sends is a problem (a 204 has none)."""

    media_type = PROBLEM_JSON
    format = "problem+json"


class AnyAcceptNegotiation(DefaultContentNegotiation):
    """Answers in problem+json whatever ``Accept`` says: an SDK may ask for
    ``application/json`` only, and a 406 would hide the error it should see."""

    def select_renderer(
        self, request: Request, renderers: Iterable[BaseRenderer], format_suffix: str | None = None
    ) -> tuple[BaseRenderer, str]:
        first = next(iter(renderers))
        return first, first.media_type


class ProblemAutoSchema(ApiAutoSchema):
    """Errors are documented by the view itself, as problem+json, not the envelope."""

    SHARED_ERRORS: ClassVar[dict[str, tuple[int, ...]]] = {}


# --- OpenAPI ----------------------------------------------------------------------------


# Declared through inline_serializer: "source" and "data" name Serializer attributes.
_CLOUDEVENT_FIELDS: dict[str, serializers.Field] = {
    "specversion": serializers.CharField(help_text='"1.0"'),
    "id": serializers.CharField(help_text="unique per source; a resend is a duplicate"),
    "source": serializers.CharField(),
    "type": serializers.CharField(help_text="the event name meters are fed by"),
    "subject": serializers.CharField(help_text="the customer's external_id"),
    "time": serializers.CharField(required=False, help_text="RFC 3339; absent: on arrival"),
    "data": serializers.DictField(
        required=False, help_text="properties; each meter reads its value_property"
    ),
}
CloudEventSerializer = inline_serializer("CloudEvent", _CLOUDEVENT_FIELDS)
CloudEventBatchSerializer = type(CloudEventSerializer)(many=True)
RejectedCloudEventSerializer = inline_serializer(
    "RejectedCloudEvent",
    {
        "index": serializers.IntegerField(),
        "id": serializers.CharField(allow_null=True),
        "source": serializers.CharField(allow_null=True),
        "code": serializers.CharField(),
        "message": serializers.CharField(),
        "param": serializers.CharField(allow_null=True, help_text="attribute or data.<path>"),
    },
    many=True,
    required=False,
)


class OpenMeterProblemSerializer(serializers.Serializer):
    type = serializers.CharField()
    title = serializers.CharField()
    status = serializers.IntegerField()
    detail = serializers.CharField()
    instance = serializers.CharField()
    code = serializers.CharField()
    param = serializers.CharField(allow_null=True)
    events = RejectedCloudEventSerializer


def _problem_responses(*statuses: int) -> dict[tuple[int, str], OpenApiResponse]:
    return {
        (status, PROBLEM_JSON): OpenApiResponse(
            OpenMeterProblemSerializer, description=_TITLES[status]
        )
        for status in statuses
    }


# --- the endpoint ---------------------------------------------------------------------


class OpenMeterEventsApi(BaseApiView):
    """Ingest CloudEvents as OpenMeter does; every error is problem+json.

    Batches: each event stands alone, as in the native ingest. The valid events are
    stored (and rated) and, if any event is rejected, the answer is 400 listing the
    rejected ones in ``events`` (index, id, source, code, message, param): resending the
    whole batch after fixing them is safe, as the stored ones are then duplicates. 204
    when none is rejected, duplicates included.
    """

    required_scope = "ingest"
    parser_classes = [CloudEventsParser, CloudEventsBatchParser, CloudEventsJSONParser]
    renderer_classes = [ProblemJSONRenderer]
    content_negotiation_class = AnyAcceptNegotiation
    schema = ProblemAutoSchema()

    def get_exception_handler(self) -> Any:
        return problem_exception_handler

    @extend_schema(
        operation_id="compat_openmeter_events_create",
        tags=["compat"],
        summary="Ingest CloudEvents (OpenMeter-compatible)",
        request={
            "application/cloudevents+json": CloudEventSerializer,
            "application/cloudevents-batch+json": CloudEventBatchSerializer,
            "application/json": CloudEventBatchSerializer,
        },
        responses={
            204: OpenApiResponse(description="Accepted (duplicates included)."),
            **_problem_responses(400, 401, 403, 409, 413, 415, 429, 503),
        },
        description=(
            "OpenMeter's ingest, for its SDK and plain CloudEvents senders: one event "
            "(application/cloudevents+json, or binary mode with ce-* headers), a batch of "
            f"up to {MAX_EVENTS} (application/cloudevents-batch+json), or either as "
            "application/json. type is the event name, subject the customer's external_id, "
            "time the timestamp (absent: on arrival), data the properties each meter fed by "
            "type reads its value_property from. source and id are the identifier "
            "(source/id, or sha256:<hex> when that is not 1-255 printable ASCII without "
            "spaces or id holds a '/'); a resent source and id is a duplicate, or "
            "identifier_conflict when its content changed. Each event "
            "stands alone: valid events are stored, and if any is rejected the answer is "
            "400 application/problem+json listing them in events (index, id, source, code, "
            "param); else 204. A missing specversion, id, source, type or subject is "
            "missing_attribute naming it. A body that is not JSON (or nests deeper than "
            f"{MAX_JSON_DEPTH} levels) or holds more than {MAX_EVENTS} events is refused "
            "whole. Every error, auth and rate limits included, is problem+json."
        ),
    )
    def post(self, request: Request) -> Response:
        events = cloudevents_of(request)
        received_at = rfc3339(timezone.now())
        translated = [native_event(event, received_at) for event in events]
        _keep_stored_times(events, translated)
        natives = [native for native in translated if not isinstance(native, Rejection)]
        ingest.rejections_store(
            [
                (_as_sent(event), native)
                for event, native in zip(events, translated, strict=True)
                if isinstance(native, Rejection)
            ]
        )
        results = events_accept(natives).results if natives else []
        failures = failures_of(events, translated, results)
        if failures:
            body = rejected_problem(failures, len(events), request)
            return Response(body, status=400, content_type=PROBLEM_JSON)
        return Response(status=204)


def _keep_stored_times(
    events: Sequence[Any], translated: Sequence[dict[str, Any] | Rejection]
) -> None:
    """Events sent without ``time`` take the stored event's (see ``resends``): a retry is
    a duplicate, a changed resend a conflict."""
    absent = [
        native
        for event, native in zip(events, translated, strict=True)
        if not isinstance(native, Rejection) and not event.get("time")
    ]
    stored = stored_times((n["customer"], n["identifier"]) for n in absent)
    for native in absent:
        earlier = stored.get((native["customer"], native["identifier"]))
        if earlier is not None:
            native["timestamp"] = rfc3339(earlier)


def _as_sent(event: Any) -> dict[str, Any]:
    """A refused CloudEvent for the unmatched-events report, under native names."""
    attributes = event if isinstance(event, dict) else {}
    return {
        "customer": attributes.get("subject"),
        "identifier": attributes.get("id"),
        "event_name": attributes.get("type"),
        "cloudevent": event,
    }


urlpatterns = [
    path("api/v1/events", OpenMeterEventsApi.as_view(), name="compat-openmeter-events"),
]
