"""``/customers``: create, list, read and update customers."""

from __future__ import annotations

from decimal import Decimal

from drf_spectacular.utils import (
    extend_schema,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing_portal.api.base import BaseApiView
from billing_portal.api.fields import (
    MetadataField,
    TimestampField,
    credits_field,
    customer_or_404,
    unknown_fields_refused,
)
from billing_portal.api.pagination import (
    Listing,
    PageQuery,
    page_response,
    page_schema,
    paginate,
)
from billing_portal.api.schema import error_responses
from plans import services
from plans.models import Customer

# --- customers ------------------------------------------------------------------------

CUSTOMERS = Listing(noun="customer", id_field="external_id")


class CustomerOut(serializers.Serializer):
    id = serializers.CharField(source="external_id")
    external_id = serializers.CharField()
    name = serializers.CharField()
    email = serializers.EmailField()
    currency = serializers.CharField()
    spend_limit_credits = credits_field(allow_null=True)
    metadata = MetadataField()
    created_at = TimestampField()


class CustomersApi(BaseApiView):
    required_scope = {"GET": "read", "POST": "write"}

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

        class Meta:
            # The name the document gave it before this view also listed customers.
            ref_name = "CustomerCreateInput"

    class QuerySerializer(PageQuery):
        email = serializers.CharField(required=False, help_text="Only customers with this email.")
        external_id = serializers.CharField(required=False, help_text="Only this customer.")

    @extend_schema(
        operation_id="v1_customers_list",
        parameters=[QuerySerializer],
        responses={
            200: page_schema("CustomerList", CustomerOut(many=True)),
            **error_responses(400, 401, 403),
        },
        description="Customers, newest first.",
    )
    def get(self, request: Request) -> Response:
        query = self.QuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        filters = {
            name: query.validated_data[name]
            for name in ("email", "external_id")
            if name in query.validated_data
        }
        customers = Customer.objects.filter(**filters)
        page = paginate(
            customers, within=Customer.objects.all(), listing=CUSTOMERS, query=query.validated_data
        )
        return page_response(page, CustomerOut)

    @extend_schema(
        request=InputSerializer, responses={201: CustomerOut, **error_responses(400, 401, 403, 409)}
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        customer = services.customer_create(**data.validated_data)
        return Response(CustomerOut(customer).data, status=201)


class CustomerDetailApi(BaseApiView):
    required_scope = {"GET": "read", "PATCH": "write"}

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=200, required=False)
        email = serializers.EmailField(required=False)
        spend_limit_credits = credits_field(
            required=False,
            allow_null=True,
            min_value=Decimal(0),
            help_text="Credits the customer may use per billing period; null removes the limit.",
        )
        metadata = MetadataField(
            required=False,
            allow_null=True,
            help_text='Merged key by key into the stored metadata: a key set to null or "" is '
            "removed; null removes every key. At most 50 keys in all.",
        )
        currency = serializers.RegexField(
            r"^[A-Za-z]{3}$",
            required=False,
            error_messages={"invalid": "must be a 3-letter ISO 4217 code like USD"},
            help_text="Cannot change: only the customer's own currency is accepted.",
        )

        class Meta:
            ref_name = "CustomerUpdateInput"

    @extend_schema(responses={200: CustomerOut, **error_responses(401, 403, 404)})
    def get(self, request: Request, external_id: str) -> Response:
        return Response(CustomerOut(customer_or_404(external_id)).data)

    @extend_schema(
        request=InputSerializer,
        responses={200: CustomerOut, **error_responses(400, 401, 403, 404)},
        description="Changes only the fields sent; unknown fields are refused.",
    )
    def patch(self, request: Request, external_id: str) -> Response:
        customer = customer_or_404(external_id)
        unknown_fields_refused(request.data, self.InputSerializer)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        customer = services.customer_update(customer=customer, **data.validated_data)
        return Response(CustomerOut(customer).data)
