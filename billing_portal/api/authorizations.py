"""``/authorizations``: allow or deny before an expensive call, with a hold."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing_portal.api.base import BaseApiView
from billing_portal.api.errors import ApiError
from billing_portal.api.fields import (
    MoneyOut,
    TimestampField,
    actor,
    credits_field,
    is_id,
    money_payload,
)
from billing_portal.api.schema import error_responses
from billing_portal.invoicing.selectors import authorization_estimate_money
from metering import services
from metering.models import Authorization
from plans.models import (
    MAX_CREDITS,
    MAX_EVENT_VALUE,
)

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
    estimate_money = serializers.SerializerMethodField(
        help_text="What these credits would be billed if used now: the credits beyond those "
        "available at the plan's overage price per credit (0 while credits cover them, or "
        "on a plan without an overage price)."
    )

    # Listed in the description, not as an enum: a second choice set on a field named
    # "reason" would rename the credit notes' ReasonEnum that clients are generated from.
    @extend_schema_field(
        serializers.CharField(
            allow_null=True,
            help_text="Why it was denied, null when allowed: "
            + ", ".join(services.DENY_REASONS)
            + ". payment_overdue: an invoice's payment failed and the plan's past_due_policy "
            "grace is over; paying the invoice allows requests again at once.",
        )
    )
    def get_reason(self, authorization: Authorization) -> str | None:
        return authorization.reason or None

    @extend_schema_field(MoneyOut)
    def get_estimate_money(self, authorization: Authorization) -> dict[str, str]:
        return money_payload(authorization_estimate_money(authorization=authorization))

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
        # A feature of the plan (GET .../entitlements): denied when the plan lacks it
        # (feature_not_in_plan) or its limit for the period would be passed
        # (feature_limit_reached).
        feature = serializers.CharField(max_length=64, required=False)

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
