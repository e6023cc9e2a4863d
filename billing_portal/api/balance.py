"""``/customers/{id}/balance`` and ``/customers/{id}/usage``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing_portal.api.base import BaseApiView
from billing_portal.api.fields import TimestampField, credits_field, customer_or_404
from billing_portal.api.schema import error_responses
from metering.selectors import GRANULARITY, balance_payload, meter_dimension_keys, usage_rows

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
            "included_used": credits_field(),
            "included_left": credits_field(),
        },
        allow_null=True,
    )
    workspaces = inline_serializer(
        "BalanceWorkspace",
        {"workspace": serializers.CharField(), "available": credits_field()},
        many=True,
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


# --- usage ----------------------------------------------------------------------------


def _group_by_keys(text: str) -> list[str]:
    """The dimension names of a ``group_by``: each must be a dimension of some meter, or
    every row would group under null for it."""
    keys = [k.strip() for k in text.split(",") if k.strip()]
    if any(not k.replace("_", "").isalnum() for k in keys):
        raise serializers.ValidationError({"group_by": "comma-separated dimension names"})
    known = meter_dimension_keys()
    unknown = [k for k in keys if k not in known]
    if unknown:
        raise serializers.ValidationError(
            {
                "group_by": f"no meter has the dimension(s) {', '.join(unknown)}; "
                f"group by {', '.join(known) or 'nothing: no meter has dimensions'}"
            }
        )
    return keys


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
            attrs["group_by"] = _group_by_keys(attrs["group_by"])
            return attrs

    @extend_schema(
        parameters=[
            OpenApiParameter("start", OpenApiTypes.STR, description="RFC 3339 or Unix seconds"),
            OpenApiParameter("end", OpenApiTypes.STR),
            OpenApiParameter(
                "group_by",
                OpenApiTypes.STR,
                description="Dimensions of the meters, comma-separated, e.g. model,token_type; "
                "a name no meter has is refused (400).",
            ),
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
