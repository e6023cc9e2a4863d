"""``/customers``: create and read customers."""

from __future__ import annotations

from drf_spectacular.utils import (
    extend_schema,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing_portal.api.base import BaseApiView
from billing_portal.api.fields import TimestampField, credits_field, customer_or_404
from billing_portal.api.schema import error_responses
from plans import services

# --- customers ------------------------------------------------------------------------


class CustomerOut(serializers.Serializer):
    id = serializers.CharField(source="external_id")
    external_id = serializers.CharField()
    name = serializers.CharField()
    email = serializers.EmailField()
    currency = serializers.CharField()
    spend_limit_credits = credits_field(allow_null=True)
    created_at = TimestampField()


class CustomerCreateApi(BaseApiView):
    required_scope = "write"

    class InputSerializer(serializers.Serializer):
        external_id = serializers.RegexField(
            r"^[A-Za-z0-9_.:@-]{1,128}$",
            error_messages={"invalid": "use 1 to 128 letters, digits and _ . : @ -"},
        )
        name = serializers.CharField(max_length=200)
        email = serializers.EmailField()
        currency = serializers.RegexField(
            r"^[A-Za-z]{3}$",
            required=False,
            default="USD",
            error_messages={"invalid": "must be a 3-letter ISO 4217 code like USD"},
        )

    @extend_schema(
        request=InputSerializer, responses={201: CustomerOut, **error_responses(400, 401, 403, 409)}
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        customer = services.customer_create(**data.validated_data)
        return Response(CustomerOut(customer).data, status=201)


class CustomerDetailApi(BaseApiView):
    required_scope = "read"

    @extend_schema(responses={200: CustomerOut, **error_responses(401, 403, 404)})
    def get(self, request: Request, external_id: str) -> Response:
        return Response(CustomerOut(customer_or_404(external_id)).data)
