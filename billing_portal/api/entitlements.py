"""``/customers/{id}/entitlements``: the features of the plan in force, and what is left."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing_portal.api.base import BaseApiView
from billing_portal.api.fields import customer_or_404
from billing_portal.api.schema import error_responses
from metering.selectors import Entitlement, entitlements_for


class UnitsField(serializers.DecimalField):
    """Units of a meter as a decimal string without storage zeros ("100", "2.5"), as the
    usage endpoint writes them."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(max_digits=28, decimal_places=6, coerce_to_string=True, **kwargs)

    def to_representation(self, value: Decimal) -> str:
        return format(value.normalize(), "f")


class EntitlementOutSerializer(serializers.Serializer):
    code = serializers.CharField()
    enabled = serializers.BooleanField()
    limit = UnitsField(allow_null=True)
    used = UnitsField(allow_null=True)
    remaining = UnitsField(allow_null=True)


class EntitlementsOutSerializer(serializers.Serializer):
    customer = serializers.CharField()
    features = EntitlementOutSerializer(many=True)


class EntitlementsApi(BaseApiView):
    """Without a subscription in force the list is empty: no plan, no features (and an
    authorization naming a feature is denied with ``no_active_subscription``)."""

    required_scope = "read"

    @extend_schema(responses={200: EntitlementsOutSerializer, **error_responses(401, 403, 404)})
    def get(self, request: Request, external_id: str) -> Response:
        customer = customer_or_404(external_id)
        features: list[Entitlement] = entitlements_for(customer=customer)
        return Response(
            EntitlementsOutSerializer({"customer": customer.external_id, "features": features}).data
        )
