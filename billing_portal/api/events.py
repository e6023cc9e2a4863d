"""``/events``: ingest meter events, and cancel one (a meter-event adjustment)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import msgspec
from django.db import transaction
from drf_spectacular.utils import (
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing_portal.api.base import BaseApiView, FastJSONRenderer
from billing_portal.api.errors import ApiError
from billing_portal.api.fields import actor
from billing_portal.api.schema import error_responses
from billing_portal.staff.models import AuditAction
from billing_portal.staff.services import audit_record
from billing_portal.web import MAX_JSON_DEPTH, json_nesting_exceeds, json_too_deep_message
from ledger.units import rfc3339
from metering import ingest, services, tasks
from metering.ingest import MAX_EVENTS
from plans.models import (
    MAX_EVENT_VALUE,
    Customer,
)

# --- the request body -------------------------------------------------------------------


def events_from_body(body: bytes) -> list[Any]:
    """The events of a request body: one event object, or {"events": [...]}."""
    if json_nesting_exceeds(body):
        raise _refused("invalid_json", json_too_deep_message())
    try:
        document = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise _refused("invalid_json", f"the body is not valid JSON: {exc}") from exc
    except RecursionError as exc:  # malformed in a way the pre-scan did not foresee
        raise _refused("invalid_json", json_too_deep_message()) from exc
    if isinstance(document, dict) and "events" in document:
        events = document["events"]
        if not isinstance(events, list):
            raise _refused("events_required", "events must be a list of event objects", "events")
    elif isinstance(document, dict):
        events = [document]
    else:
        raise _refused("events_required", 'send one event object or {"events": [...]}', "events")
    if not events:
        raise _refused("events_required", "events is empty: send 1 to 1000 events", "events")
    if len(events) > MAX_EVENTS:
        raise _refused(
            "too_many_events",
            f"{len(events)} events in one request; send at most {MAX_EVENTS} and split the rest",
            "events",
        )
    return events


def _refused(code: str, message: str, param: str | None = None) -> ApiError:
    """The body as a whole is refused: nothing in it is stored."""
    return ApiError(400, code, message, param)


# Floats become Decimals as they are decoded: never a binary float for a value.
_decoder = msgspec.json.Decoder(float_hook=Decimal)


# --- events ---------------------------------------------------------------------------


class EventResultSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    identifier = serializers.CharField(allow_null=True)
    status = serializers.ChoiceField(choices=["accepted", "duplicate", "rejected"])
    meters = serializers.ListField(
        child=serializers.CharField(),
        required=False,
        help_text="when accepted: the codes of the meters the event fed",
    )
    error = inline_serializer(
        "EventError",
        {
            "code": serializers.CharField(),
            "message": serializers.CharField(),
            "param": serializers.CharField(allow_null=True),
        },
        required=False,
    )


class IngestOutSerializer(serializers.Serializer):
    accepted = serializers.IntegerField()
    duplicates = serializers.IntegerField()
    rejected = serializers.IntegerField()
    results = EventResultSerializer(many=True)


class EventInSerializer(serializers.Serializer):
    """Documentation only: the hot path validates without a serializer."""

    identifier = serializers.CharField(max_length=255)
    event_name = serializers.CharField(
        required=False, help_text="every meter fed by this name is fed (or name one: meter)"
    )
    meter = serializers.CharField(
        required=False, help_text="a meter code: feed only this meter (instead of event_name)"
    )
    customer = serializers.CharField()
    timestamp = serializers.CharField(help_text="RFC 3339 or Unix seconds")
    value = serializers.CharField(
        required=False,
        help_text=f"decimal string or number, >= 0, at most 6 decimals, at most {MAX_EVENT_VALUE}",
    )
    dimensions = serializers.DictField(child=serializers.CharField(), required=False)
    properties = serializers.DictField(
        required=False,
        help_text=(
            "instead of value and dimensions: each meter fed reads its value from its "
            "value_property (a dotted path) and its dimensions from its dimension_properties; "
            "an event that feeds several meters is charged once per meter, all or nothing"
        ),
    )
    workspace = serializers.CharField(required=False)
    authorization = serializers.CharField(
        required=False, help_text="id of the authorization this usage captures"
    )


class EventBatchInSerializer(serializers.Serializer):
    events = EventInSerializer(many=True)


class EventsApi(BaseApiView):
    """Accepts one event or up to 1000; answers 202 once the accepted ones are durable."""

    required_scope = "ingest"
    renderer_classes = [FastJSONRenderer]

    @extend_schema(
        request=EventBatchInSerializer,
        responses={202: IngestOutSerializer, **error_responses(400, 401, 403, 429)},
        description=(
            "Each event stands alone: rejected events get a code (missing_field, "
            "invalid_identifier, unknown_customer, unknown_event_name, invalid_value, "
            f"value_out_of_range (above {MAX_EVENT_VALUE}), invalid_dimensions, "
            "invalid_timestamp, timestamp_too_far_in_past, timestamp_in_future, "
            "identifier_conflict, unknown_authorization, unknown_meter, missing_property "
            "(param: the property path)). A body that is not JSON (or nests "
            f"deeper than {MAX_JSON_DEPTH} levels), has no events or more than 1000 is "
            "refused whole (invalid_json, events_required, too_many_events)."
        ),
    )
    def post(self, request: Request) -> Response:
        outcome = events_accept(events_from_body(request.body))
        return Response(outcome.as_dict(), status=202)


def events_accept(events: list[Any], known: ingest.Known | None = None) -> ingest.IngestOutcome:
    """Store a batch of native events and wake rating: the one ingest path, which the
    vendor-compatible endpoints (``billing_portal.api.compat``) translate into."""
    outcome = ingest.events_ingest(events=events, known=known)
    if outcome.count("accepted"):
        tasks.events_rate_pending.delay_on_commit()
    return outcome


class EventCancelApi(BaseApiView):
    # It reverses charges: an operator's correction, not something an ingest-only key
    # (often spread across many services) should be able to do.
    required_scope = "write"

    class InputSerializer(serializers.Serializer):
        customer = serializers.CharField()
        identifier = serializers.CharField(max_length=255)
        reason = serializers.CharField(max_length=64)

    class OutputSerializer(serializers.Serializer):
        customer = serializers.CharField()
        identifier = serializers.CharField()
        status = serializers.CharField()
        reason = serializers.CharField()
        canceled_at = serializers.CharField()

    @extend_schema(
        request=InputSerializer,
        responses={200: OutputSerializer, **error_responses(400, 401, 403, 404, 409)},
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        customer = _customer_for_body(data.validated_data["customer"])
        with transaction.atomic():
            cancellation = services.event_cancel(
                customer=customer,
                identifier=data.validated_data["identifier"],
                reason=data.validated_data["reason"],
                actor=actor(request),
            )
            audit_record(
                actor=actor(request),
                action=AuditAction.EVENT_CANCEL,
                reason=data.validated_data["reason"],
                target=cancellation.event,
                identifier=data.validated_data["identifier"],
            )
        return Response(
            {
                "customer": customer.external_id,
                "identifier": data.validated_data["identifier"],
                "status": "canceled",
                "reason": cancellation.reason,
                "canceled_at": rfc3339(cancellation.created_at),
            }
        )


def _customer_for_body(external_id: str) -> Customer:
    customer = (
        Customer.objects.select_related("account").filter(external_id=external_id).first()
        if "\x00" not in external_id
        else None
    )
    if customer is None:
        raise ApiError(
            404, "unknown_customer", f"no customer with external_id {external_id!r}", "customer"
        )
    return customer
