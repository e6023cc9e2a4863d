"""``/customers/{id}/events``: a customer's meter events as stored, with what rating made
of each and, for one event, the ledger entries that name it."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from drf_spectacular.utils import (
    OpenApiParameter,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_field,
    inline_serializer,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing_portal.api.base import BaseApiView
from billing_portal.api.errors import ApiError
from billing_portal.api.fields import TimestampField, credits_field, customer_or_404
from billing_portal.api.ledger_entries import LedgerEntryOut
from billing_portal.api.pagination import Listing, PageQuery, page_response, page_schema, paginate
from billing_portal.api.schema import error_responses
from ledger.models import CauseType
from ledger.selectors import ledger_entries_caused_by
from metering.models import MeterEvent
from metering.selectors import (
    EventRatingReading,
    EventStatus,
    event_cancellation,
    event_for,
    event_parts_for,
    event_rating_reading,
    events_for,
)
from plans.models import Customer

EVENTS = Listing(noun="event", order="timestamp")


class RatingOut(serializers.Serializer):
    # Plain strings, as every output status: an enum named "status" renames StatusEnum.
    status = serializers.CharField(
        source="state",
        help_text="pending, failing (to be tried again) or parked (failed every attempt, "
        "waiting for staff) while queued; then rated, unratable or canceled.",
    )
    credits = credits_field(allow_null=True)
    units = serializers.DecimalField(
        max_digits=28, decimal_places=6, coerce_to_string=True, allow_null=True
    )
    rated_at = TimestampField(allow_null=True)
    error = serializers.SerializerMethodField()
    attempts = serializers.IntegerField(help_text="Failed attempts so far, while queued.")
    next_attempt_at = TimestampField(allow_null=True)
    parked_at = TimestampField(allow_null=True)

    @extend_schema_field(
        inline_serializer(
            "EventRatingError",
            {"code": serializers.CharField(), "message": serializers.CharField()},
            allow_null=True,
        )
    )
    def get_error(self, reading: EventRatingReading) -> dict[str, str] | None:
        if not reading.error_code:
            return None
        return {"code": reading.error_code, "message": reading.error_message}


class CancellationOut(serializers.Serializer):
    reason = serializers.CharField()
    actor = serializers.CharField()
    created_at = TimestampField()


class EventOut(serializers.Serializer):
    id = serializers.CharField(source="pk", help_text="Ledger entries name the event by it.")
    identifier = serializers.CharField(
        help_text="As sent; for one part of an event that fed several meters, "
        "`<identifier>#<meter code>`."
    )
    parent_identifier = serializers.CharField(
        allow_null=True,
        help_text="For one part of an event that fed several meters: the identifier it was "
        "sent with (GET it for the whole event).",
    )
    customer = serializers.SerializerMethodField()
    event_name = serializers.CharField()
    meter = serializers.CharField(source="meter.code")
    timestamp = TimestampField()
    # Not get_value: that name is the field-reading hook every serializer has.
    value = serializers.SerializerMethodField(method_name="value_text")
    dimensions = serializers.DictField(child=serializers.CharField())
    workspace = serializers.CharField(allow_null=True)
    authorization = serializers.CharField(source="authorization_id", allow_null=True)
    received_at = TimestampField()
    status = serializers.CharField(
        help_text="accepted (stored, not rated yet), rated, unratable or cancelled.",
    )
    rating = serializers.SerializerMethodField()
    cancellation = serializers.SerializerMethodField()

    def get_customer(self, event: MeterEvent) -> str:
        customer: Customer = self.context["customer"]
        return customer.external_id

    def value_text(self, event: MeterEvent) -> str:
        return f"{event.value.normalize():f}"

    @extend_schema_field(RatingOut)
    def get_rating(self, event: MeterEvent) -> dict[str, Any]:
        return RatingOut(event_rating_reading(event)).data

    @extend_schema_field(CancellationOut(allow_null=True))
    def get_cancellation(self, event: MeterEvent) -> dict[str, Any] | None:
        cancellation = event_cancellation(event)
        return None if cancellation is None else CancellationOut(cancellation).data


class EventDetailOut(EventOut):
    ledger_entries = serializers.SerializerMethodField()

    @extend_schema_field(LedgerEntryOut(many=True))
    def get_ledger_entries(self, event: MeterEvent) -> list[dict[str, Any]]:
        customer: Customer = self.context["customer"]
        entries = ledger_entries_caused_by(
            account_id=customer.account_id, cause_type=CauseType.EVENT, cause_id=str(event.pk)
        ).order_by("pk")
        return list(LedgerEntryOut(entries, many=True).data)


class EventGroupOut(serializers.Serializer):
    """An event that fed several meters: one stored part per meter."""

    identifier = serializers.CharField()
    customer = serializers.CharField()
    event_name = serializers.CharField()
    timestamp = TimestampField()
    status = serializers.CharField(
        help_text="rated once every part is; cancelled when cancelled; else as its parts."
    )
    credits = credits_field(help_text="What its parts were charged, together.")
    parts = EventDetailOut(many=True)


def _group_payload(customer: Customer, identifier: str, parts: list[MeterEvent]) -> dict[str, Any]:
    context = {"customer": customer}
    details = [EventDetailOut(part, context=context).data for part in parts]
    statuses = {d["status"] for d in details}
    credits = sum(
        (Decimal(d["rating"]["credits"]) for d in details if d["rating"]["credits"]), Decimal(0)
    )
    return {
        "identifier": identifier,
        "customer": customer.external_id,
        "event_name": parts[0].event_name,
        "timestamp": details[0]["timestamp"],
        "status": statuses.pop() if len(statuses) == 1 else "accepted",
        "credits": str(credits),
        "parts": details,
    }


class CustomerEventsApi(BaseApiView):
    required_scope = "read"

    class QuerySerializer(PageQuery):
        start = TimestampField(required=False, help_text="Events at or after this time.")
        end = TimestampField(required=False, help_text="Events before this time.")
        event_name = serializers.CharField(required=False)
        status = serializers.ChoiceField(
            choices=[status.value for status in EventStatus], required=False
        )

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            start, end = attrs.get("start"), attrs.get("end")
            if start is not None and end is not None and start >= end:
                raise serializers.ValidationError({"start": "must be before end"})
            return attrs

    @extend_schema(
        operation_id="v1_customers_events_list",
        parameters=[QuerySerializer],
        responses={
            200: page_schema("EventList", EventOut(many=True)),
            **error_responses(400, 401, 403, 404),
        },
        description="The customer's stored events, newest timestamp first. `starting_after` "
        "takes an event's `id`.",
    )
    def get(self, request: Request, external_id: str) -> Response:
        customer = customer_or_404(external_id)
        query = self.QuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        filters = {
            name: query.validated_data[name]
            for name in ("start", "end", "event_name", "status")
            if name in query.validated_data
        }
        page = paginate(
            events_for(customer=customer, **filters),
            within=MeterEvent.objects.filter(customer=customer),
            listing=EVENTS,
            query=query.validated_data,
        )
        return page_response(page, EventOut, context={"customer": customer})


class CustomerEventDetailApi(BaseApiView):
    required_scope = "read"

    @extend_schema(
        parameters=[
            OpenApiParameter(
                "identifier",
                str,
                OpenApiParameter.PATH,
                description="The identifier the event was sent with.",
            )
        ],
        responses={
            200: PolymorphicProxySerializer(
                "EventOrGroup",
                serializers=[EventDetailOut, EventGroupOut],
                resource_type_field_name=None,
            ),
            **error_responses(401, 403, 404),
        },
        description="One event as sent. An event that fed several meters answers with its "
        "parts (one per meter), each as an event of its own.",
    )
    def get(self, request: Request, external_id: str, identifier: str) -> Response:
        customer = customer_or_404(external_id)
        if "\x00" in identifier:
            raise _no_event(external_id, identifier)
        event = event_for(customer=customer, identifier=identifier)
        if event is None:
            parts = event_parts_for(customer=customer, identifier=identifier)
            if parts:
                return Response(_group_payload(customer, identifier, parts))
            raise _no_event(external_id, identifier)
        return Response(EventDetailOut(event, context={"customer": customer}).data)


def _no_event(external_id: str, identifier: str) -> ApiError:
    return ApiError(
        404,
        "resource_missing",
        f"customer {external_id!r} has no event {identifier!r}: check the identifier "
        "it was sent with",
        "identifier",
    )
