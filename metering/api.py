"""HTTP API for meter events, balances, usage and authorizations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db.models import Sum
from django.db.models.fields.json import KeyTextTransform
from django.db.models.functions import Trunc
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from ledger.selectors import account_balance
from ledger.units import rfc3339
from metering import ingest, services, tasks
from metering.models import Authorization, PeriodUsage, UsageRollup
from plans import selectors as plan_selectors
from plans.api import TimestampField, actor, credits_field, customer_or_404, is_id
from plans.api_support import (
    MAX_JSON_DEPTH,
    ApiError,
    BaseApiView,
    FastJSONRenderer,
    error_responses,
)
from plans.models import MAX_CREDITS, MAX_EVENT_VALUE, Customer, OveragePolicy

# --- events ---------------------------------------------------------------------------


class EventResultSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    identifier = serializers.CharField(allow_null=True)
    status = serializers.ChoiceField(choices=["accepted", "duplicate", "rejected"])
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
    event_name = serializers.CharField()
    customer = serializers.CharField()
    timestamp = serializers.CharField(help_text="RFC 3339 or Unix seconds")
    value = serializers.CharField(
        help_text=f"decimal string or number, >= 0, at most 6 decimals, at most {MAX_EVENT_VALUE}"
    )
    dimensions = serializers.DictField(child=serializers.CharField(), required=False)
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
            "identifier_conflict, unknown_authorization). A body that is not JSON (or nests "
            f"deeper than {MAX_JSON_DEPTH} levels), has no events or more than 1000 is "
            "refused whole (invalid_json, events_required, too_many_events)."
        ),
    )
    def post(self, request: Request) -> Response:
        events = ingest.parse_body(request.body)
        outcome = ingest.events_ingest(events=events)
        if outcome.count("accepted"):
            tasks.events_rate_pending.delay_on_commit()
        return Response(outcome.as_dict(), status=202)


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
        cancellation = services.event_cancel(
            customer=customer,
            identifier=data.validated_data["identifier"],
            reason=data.validated_data["reason"],
            actor=actor(request),
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


# --- balance --------------------------------------------------------------------------


class BalanceGrantSerializer(serializers.Serializer):
    id = serializers.CharField(source="pk")
    category = serializers.CharField()
    remaining = credits_field()
    priority = serializers.IntegerField()
    expires_at = TimestampField(allow_null=True)
    applies_to = serializers.ListField(child=serializers.CharField())
    workspace = serializers.CharField(allow_null=True)


class BalanceOutSerializer(serializers.Serializer):
    customer = serializers.CharField()
    available = credits_field()
    posted = credits_field()
    held = credits_field()
    grants = BalanceGrantSerializer(many=True)
    period = inline_serializer(
        "BalancePeriod",
        {
            "start": serializers.CharField(),
            "end": serializers.CharField(),
            "included": credits_field(),
            "used": credits_field(),
            "overage": credits_field(),
        },
        allow_null=True,
    )
    limits = inline_serializer(
        "BalanceLimits",
        {
            "overage_policy": serializers.CharField(allow_null=True),
            "hard_stop": serializers.BooleanField(),
            "spend_limit": credits_field(allow_null=True),
            "spend_limit_reached": serializers.BooleanField(),
        },
    )
    as_of = serializers.CharField()


class BalanceApi(BaseApiView):
    required_scope = "read"

    @extend_schema(responses={200: BalanceOutSerializer, **error_responses(401, 403, 404)})
    def get(self, request: Request, external_id: str) -> Response:
        customer = customer_or_404(external_id)
        return Response(balance_payload(customer))


def _fmt(value: Decimal) -> str:
    return f"{value:.6f}"


def balance_payload(customer: Customer) -> dict[str, Any]:
    """The balance as the API shows it; the portal renders the same numbers."""
    # The period's usage comes from PeriodUsage (one row), not from summing its entries.
    balance = account_balance(account=customer.account)
    period = plan_selectors.period_in_force(customer=customer, at=balance.as_of)
    usage = PeriodUsage.objects.filter(period=period).first() if period else None
    used = usage.credits if usage else Decimal(0)
    subscription = plan_selectors.subscription_active(customer=customer)
    policy = subscription.plan_version.overage_policy if subscription else None
    limit = customer.spend_limit_credits
    return {
        "customer": customer.external_id,
        "available": _fmt(balance.available),
        "posted": _fmt(balance.posted),
        "held": _fmt(balance.held),
        "grants": BalanceGrantSerializer(balance.grants, many=True).data,
        "period": {
            "start": rfc3339(period.start),
            "end": rfc3339(period.end),
            "included": _fmt(period.included_credits),
            "used": _fmt(used),
            "overage": _fmt(usage.overage if usage else Decimal(0)),
        }
        if period
        else None,
        "limits": {
            "overage_policy": policy,
            "hard_stop": policy == OveragePolicy.HARD_STOP,
            "spend_limit": _fmt(limit) if limit is not None else None,
            "spend_limit_reached": limit is not None and used + balance.held >= limit,
        },
        "as_of": rfc3339(balance.as_of),
    }


# --- usage ----------------------------------------------------------------------------

GRANULARITY = {"hour": "hour", "day": "day", "month": "month"}


class UsageApi(BaseApiView):
    required_scope = "read"

    class QuerySerializer(serializers.Serializer):
        start = TimestampField(required=False)
        end = TimestampField(required=False)
        group_by = serializers.CharField(required=False, default="")
        granularity = serializers.ChoiceField(
            choices=list(GRANULARITY), required=False, default="day"
        )
        meter = serializers.CharField(required=False)

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            end = attrs.get("end") or timezone.now()
            start = attrs.get("start") or end - timedelta(days=30)
            if start >= end:
                raise serializers.ValidationError({"start": "must be before end"})
            if end - start > timedelta(days=400):
                raise serializers.ValidationError({"start": "the range may span at most 400 days"})
            attrs["start"], attrs["end"] = start, end
            keys = [k.strip() for k in attrs["group_by"].split(",") if k.strip()]
            if any(not k.replace("_", "").isalnum() for k in keys):
                raise serializers.ValidationError({"group_by": "comma-separated dimension names"})
            attrs["group_by"] = keys
            return attrs

    @extend_schema(
        parameters=[
            OpenApiParameter("start", OpenApiTypes.STR, description="RFC 3339 or Unix seconds"),
            OpenApiParameter("end", OpenApiTypes.STR),
            OpenApiParameter("group_by", OpenApiTypes.STR, description="e.g. model,token_type"),
            OpenApiParameter("granularity", OpenApiTypes.STR, enum=list(GRANULARITY)),
            OpenApiParameter("meter", OpenApiTypes.STR, description="meter code"),
        ],
        responses={200: OpenApiTypes.OBJECT, **error_responses(400, 401, 403, 404)},
        examples=[
            OpenApiExample(
                "rows",
                value={
                    "data": [
                        {
                            "period_start": "2026-11-20T00:00:00Z",
                            "meter": "llm_tokens",
                            "dimensions": {"model": "large"},
                            "value": "812",
                            "credits": "12.180000",
                        }
                    ]
                },
            )
        ],
    )
    def get(self, request: Request, external_id: str) -> Response:
        customer = customer_or_404(external_id)
        query = self.QuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response({"data": usage_rows(customer=customer, **query.validated_data)})


def usage_rows(
    *,
    customer: Customer,
    start: datetime,
    end: datetime,
    group_by: list[str],
    granularity: str,
    meter: str | None = None,
) -> list[dict[str, Any]]:
    """Usage from the hourly rollups: cost follows the range asked for, not history."""
    rollups = UsageRollup.objects.filter(customer=customer, hour__gte=_hour(start), hour__lt=end)
    if meter:
        rollups = rollups.filter(meter__code=meter)
    dims = {f"dim_{key}": KeyTextTransform(key, "dimensions") for key in group_by}
    rows = (
        rollups.annotate(bucket=Trunc("hour", GRANULARITY[granularity], tzinfo=UTC), **dims)
        .values("bucket", "meter__code", *dims)
        .annotate(value=Sum("value"), credits=Sum("credits"), events=Sum("events"))
        .order_by("bucket", "meter__code", *dims)
    )
    return [
        {
            "period_start": rfc3339(row["bucket"]),
            "meter": row["meter__code"],
            "dimensions": {key: row[f"dim_{key}"] for key in group_by},
            "value": format(row["value"].normalize(), "f"),
            "credits": _fmt(row["credits"]),
            "events": row["events"],
        }
        for row in rows
    ]


def _hour(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


# --- authorizations -------------------------------------------------------------------


class BoundedDecimalField(serializers.DecimalField):
    """A decimal >= 0 with at most 6 places, up to ``maximum``; above it the error code is
    value_out_of_range. The bound is checked before the precision rules, so 1e30 is out of
    range rather than "too many digits", and no arithmetic runs on a huge number."""

    def __init__(self, *, maximum: Decimal, advice: str, **kwargs: Any) -> None:
        # As many whole digits as the maximum has: the schema's pattern then shows it.
        whole_digits = len(str(int(maximum)))
        super().__init__(
            max_digits=whole_digits + 6, decimal_places=6, min_value=Decimal(0), **kwargs
        )
        self.maximum = maximum
        self.advice = advice

    def validate_precision(self, value: Decimal) -> Decimal:
        if value > self.maximum:
            raise serializers.ValidationError(
                f"{value} is above the maximum of {self.maximum}; {self.advice}",
                code="value_out_of_range",
            )
        return super().validate_precision(value)


class AuthorizationOutSerializer(serializers.Serializer):
    id = serializers.CharField(source="pk")
    identifier = serializers.CharField()
    decision = serializers.CharField()
    reason = serializers.SerializerMethodField()
    credits = credits_field()
    available = credits_field()
    expires_at = TimestampField(allow_null=True)
    status = serializers.SerializerMethodField()
    dry_run = serializers.BooleanField()

    def get_reason(self, authorization: Authorization) -> str | None:
        return authorization.reason or None

    def get_status(self, authorization: Authorization) -> str | None:
        """open, captured, released or expired; null when nothing was held."""
        return authorization.hold.status if authorization.hold else None


class AuthorizationsApi(BaseApiView):
    required_scope = "ingest"

    class InputSerializer(serializers.Serializer):
        customer = serializers.CharField()
        identifier = serializers.RegexField(
            r"^[\x21-\x7e]{1,255}$",
            error_messages={"invalid": "1 to 255 printable ASCII characters without spaces"},
        )
        credits = BoundedDecimalField(
            maximum=MAX_CREDITS, advice="authorize less at a time", required=False
        )
        event_name = serializers.CharField(required=False)
        value = BoundedDecimalField(
            maximum=MAX_EVENT_VALUE, advice="estimate less at a time", required=False
        )
        dimensions = serializers.DictField(
            child=serializers.CharField(max_length=128), required=False
        )
        workspace = serializers.CharField(max_length=64, required=False)
        ttl_seconds = serializers.IntegerField(
            min_value=1, max_value=86400, required=False, default=300
        )
        hold = serializers.BooleanField(required=False, default=True)

        def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
            has_credits = "credits" in attrs
            has_event = "event_name" in attrs or "value" in attrs
            if has_credits == has_event:
                raise serializers.ValidationError(
                    {"credits": "give either credits, or event_name and value (with dimensions)"}
                )
            if has_event and not ("event_name" in attrs and "value" in attrs):
                missing = "value" if "event_name" in attrs else "event_name"
                raise serializers.ValidationError({missing: "is required with an event estimate"})
            return attrs

    @extend_schema(
        request=InputSerializer,
        responses={200: AuthorizationOutSerializer, **error_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        external_id = values.pop("customer")
        authorization = services.authorization_create_for(
            external_id=external_id,
            request=services.AuthorizationRequest(**values),
            actor=actor(request),
        )
        return Response(AuthorizationOutSerializer(authorization).data)


class AuthorizationReleaseApi(BaseApiView):
    required_scope = "ingest"

    @extend_schema(
        request=None,
        responses={200: AuthorizationOutSerializer, **error_responses(401, 403, 404, 409)},
    )
    def post(self, request: Request, authorization_id: str) -> Response:
        authorization = (
            Authorization.objects.select_related("hold").filter(pk=authorization_id).first()
            if is_id(authorization_id)
            else None
        )
        if authorization is None:
            raise ApiError(404, "resource_missing", f"no authorization {authorization_id!r}", "id")
        authorization = services.authorization_release(
            authorization=authorization, actor=actor(request)
        )
        return Response(AuthorizationOutSerializer(authorization).data)
