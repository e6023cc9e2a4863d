"""HTTP API for customers, subscriptions and credit grants (see the public contract).

One view per operation; each POST validates with its input serializer and calls one
service.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from django.shortcuts import get_object_or_404
from djmoney.money import Money
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field, inline_serializer
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from ledger import services as ledger
from ledger.actors import Actor
from ledger.models import CreditGrant, GrantCategory, GrantStatus
from ledger.units import CREDIT_QUANTUM, rfc3339
from plans import selectors, services
from plans.api_support import ApiError, BaseApiView, error_responses, request_api_key
from plans.models import Customer, Meter, Plan, Subscription
from plans.money import as_money

# --- shared fields --------------------------------------------------------------------


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(3000, 1, 1, tzinfo=UTC)


@extend_schema_field(OpenApiTypes.DATETIME)
class TimestampField(serializers.Field):
    """RFC 3339 or Unix seconds in; RFC 3339 (UTC, Z) out."""

    default_error_messages = {
        "invalid": "must be an RFC 3339 time like 2026-11-20T10:00:00Z or Unix seconds",
        "naive": "needs a time zone, e.g. 2026-11-20T10:00:00Z",
        "range": "must be between 1970 and 2999",
    }

    def to_internal_value(self, data: Any) -> datetime:
        if isinstance(data, str) and data.isascii() and data.isdigit():
            data = int(data)
        moment = self._parse(data)
        if not EARLIEST <= moment < LATEST:
            self.fail("range")
        return moment

    def _parse(self, data: Any) -> datetime:
        if isinstance(data, int | float) and not isinstance(data, bool):
            try:
                return datetime.fromtimestamp(data, tz=UTC)
            except (OverflowError, OSError, ValueError):
                self.fail("invalid")
        if isinstance(data, str):
            try:
                moment = datetime.fromisoformat(data.replace("Z", "+00:00"))
            except ValueError:
                self.fail("invalid")
            if moment.tzinfo is None:
                self.fail("naive")
            return moment
        self.fail("invalid")

    def to_representation(self, value: datetime) -> str:
        return rfc3339(value)


def is_id(value: str) -> bool:
    # str.isdigit() is also true for non-ASCII digits such as superscripts, which the
    # database refuses or reads as another number.
    return value.isascii() and value.isdigit() and len(value) < 19


def credits_field(**kwargs: Any) -> serializers.DecimalField:
    return serializers.DecimalField(
        max_digits=20, decimal_places=6, coerce_to_string=True, **kwargs
    )


def actor(request: Request) -> str:
    return str(Actor.api(request_api_key(request).name))


def customer_or_404(external_id: str) -> Customer:
    if "\x00" in external_id:  # PostgreSQL text cannot hold it: no such customer
        raise ApiError(404, "resource_missing", "no customer with that external_id", "external_id")
    return get_object_or_404(Customer.objects.select_related("account"), external_id=external_id)


def plan_or_error(code: str) -> Plan:
    plan = Plan.objects.filter(code=code).first()
    if plan is None:
        known = ", ".join(Plan.objects.order_by("code").values_list("code", flat=True)) or "none"
        raise ApiError(400, "unknown_plan", f"no plan with code {code!r} (known: {known})", "plan")
    return plan


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


# --- subscriptions --------------------------------------------------------------------


class SubscriptionOut(serializers.Serializer):
    id = serializers.CharField(source="pk")
    customer = serializers.CharField(source="customer.external_id")
    status = serializers.CharField()
    plan = serializers.CharField(source="plan_version.plan.code")
    plan_version = serializers.IntegerField(source="plan_version.version")
    current_period_start = TimestampField()
    current_period_end = TimestampField()
    cancel_at_period_end = serializers.BooleanField()
    pending_plan = serializers.CharField(
        source="pending_plan_version.plan.code", allow_null=True, default=None
    )
    canceled_at = TimestampField(allow_null=True)


def subscription_or_404(subscription_id: str) -> Subscription:
    if not is_id(subscription_id):
        raise ApiError(404, "resource_missing", f"no subscription {subscription_id!r}", "id")
    return get_object_or_404(
        Subscription.objects.select_related("customer__account", "plan_version__plan"),
        pk=subscription_id,
    )


class SubscriptionCreateApi(BaseApiView):
    required_scope = "write"

    class InputSerializer(serializers.Serializer):
        customer = serializers.CharField()
        plan = serializers.CharField()
        start_at = TimestampField(required=False)

    @extend_schema(
        request=InputSerializer,
        responses={201: SubscriptionOut, **error_responses(400, 401, 403, 409)},
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        customer = (
            Customer.objects.select_related("account")
            .filter(external_id=data.validated_data["customer"])
            .first()
        )
        if customer is None:
            raise ApiError(
                400,
                "unknown_customer",
                "no customer with that external_id; create it first",
                "customer",
            )
        subscription = services.subscription_start(
            customer=customer,
            plan=plan_or_error(data.validated_data["plan"]),
            start_at=data.validated_data.get("start_at"),
            actor=actor(request),
        )
        return Response(SubscriptionOut(subscription).data, status=201)


class SubscriptionChangePlanApi(BaseApiView):
    required_scope = "write"

    class InputSerializer(serializers.Serializer):
        plan = serializers.CharField()
        when = serializers.ChoiceField(choices=["now", "period_end"], required=False)

    @extend_schema(
        request=InputSerializer,
        responses={200: SubscriptionOut, **error_responses(400, 401, 403, 404, 409)},
    )
    def post(self, request: Request, subscription_id: str) -> Response:
        subscription = subscription_or_404(subscription_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        subscription = services.subscription_change_plan(
            subscription=subscription,
            plan=plan_or_error(data.validated_data["plan"]),
            when=data.validated_data.get("when"),
            actor=actor(request),
        )
        return Response(SubscriptionOut(subscription).data)


class SubscriptionCancelApi(BaseApiView):
    required_scope = "write"

    class InputSerializer(serializers.Serializer):
        when = serializers.ChoiceField(
            choices=["now", "period_end"], required=False, default="period_end"
        )

    @extend_schema(
        request=InputSerializer,
        responses={200: SubscriptionOut, **error_responses(400, 401, 403, 404, 409)},
    )
    def post(self, request: Request, subscription_id: str) -> Response:
        subscription = subscription_or_404(subscription_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        subscription = services.subscription_cancel(
            subscription=subscription, when=data.validated_data["when"], actor=actor(request)
        )
        return Response(SubscriptionOut(subscription).data)


# --- credit grants --------------------------------------------------------------------


class CreditGrantOut(serializers.Serializer):
    id = serializers.CharField(source="pk")
    customer = serializers.SerializerMethodField()
    category = serializers.CharField()
    status = serializers.CharField()
    amount = credits_field()
    remaining = credits_field()
    priority = serializers.IntegerField()
    effective_at = TimestampField()
    expires_at = TimestampField(allow_null=True)
    applies_to = serializers.ListField(child=serializers.CharField())
    workspace = serializers.CharField(allow_null=True)
    cost_basis = serializers.SerializerMethodField()
    currency = serializers.SerializerMethodField()
    reason = serializers.CharField()
    voided_at = serializers.SerializerMethodField()
    expired_at = serializers.SerializerMethodField()
    created_at = TimestampField()

    def get_customer(self, grant: CreditGrant) -> str:
        customer: Customer | None = self.context.get("customer")
        if customer is None:
            customer = Customer.objects.only("external_id").get(account_id=grant.account_id)
        return customer.external_id

    def get_cost_basis(self, grant: CreditGrant) -> str:
        return str(as_money(grant.cost_basis).amount.normalize())

    def get_currency(self, grant: CreditGrant) -> str:
        return str(as_money(grant.cost_basis).currency)

    def get_voided_at(self, grant: CreditGrant) -> str | None:
        return (
            rfc3339(grant.closed_at)
            if grant.status == GrantStatus.VOIDED and grant.closed_at
            else None
        )

    def get_expired_at(self, grant: CreditGrant) -> str | None:
        return (
            rfc3339(grant.closed_at)
            if grant.status == GrantStatus.EXPIRED and grant.closed_at
            else None
        )


def grant_or_404(grant_id: str) -> CreditGrant:
    if not is_id(grant_id):
        raise ApiError(404, "resource_missing", f"no credit grant {grant_id!r}", "id")
    return get_object_or_404(CreditGrant.objects.all(), pk=grant_id)


class CreditGrantsApi(BaseApiView):
    required_scope = {"GET": "read", "POST": "write"}

    class InputSerializer(serializers.Serializer):
        amount = credits_field(min_value=CREDIT_QUANTUM)
        category = serializers.ChoiceField(choices=[GrantCategory.PROMOTIONAL, GrantCategory.PAID])
        priority = serializers.IntegerField(min_value=0, max_value=100, required=False, default=50)
        effective_at = TimestampField(required=False)
        expires_at = TimestampField(required=False, allow_null=True)
        applies_to = serializers.ListField(
            child=serializers.CharField(max_length=64), required=False, default=list
        )
        workspace = serializers.CharField(max_length=64, required=False, allow_null=True)
        cost_basis = serializers.DecimalField(
            max_digits=19, decimal_places=8, min_value=Decimal(0), required=False
        )
        reason = serializers.CharField(max_length=64, required=False, default="", allow_blank=True)
        memo = serializers.CharField(required=False, default="", allow_blank=True)

        def validate_applies_to(self, value: list[str]) -> list[str]:
            unknown = set(value) - set(
                Meter.objects.filter(code__in=value).values_list("code", flat=True)
            )
            if unknown:
                raise serializers.ValidationError(
                    f"unknown meter code(s): {', '.join(sorted(unknown))}"
                )
            return value

    @extend_schema(
        responses={
            200: inline_serializer("CreditGrantList", {"data": CreditGrantOut(many=True)}),
            **error_responses(401, 403, 404),
        }
    )
    def get(self, request: Request, external_id: str) -> Response:
        customer = customer_or_404(external_id)
        grants = selectors.credit_grants_for(customer=customer)
        out = CreditGrantOut(grants, many=True, context={"customer": customer})
        return Response({"data": out.data})

    @extend_schema(
        request=InputSerializer,
        responses={201: CreditGrantOut, **error_responses(400, 401, 403, 404)},
    )
    def post(self, request: Request, external_id: str) -> Response:
        customer = customer_or_404(external_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        basis = values.pop("cost_basis", None)
        grant = ledger.credit_grant_create(
            account=customer.account,
            actor=actor(request),
            cost_basis=Money(basis if basis is not None else 0, customer.currency),
            source_type="api",
            **values,
        )
        return Response(CreditGrantOut(grant, context={"customer": customer}).data, status=201)


class ReasonInput(serializers.Serializer):
    reason = serializers.CharField(max_length=64)
    memo = serializers.CharField(required=False, default="", allow_blank=True)


class CreditGrantVoidApi(BaseApiView):
    required_scope = "write"

    @extend_schema(
        request=ReasonInput,
        responses={200: CreditGrantOut, **error_responses(400, 401, 403, 404, 409)},
    )
    def post(self, request: Request, grant_id: str) -> Response:
        grant = grant_or_404(grant_id)
        data = ReasonInput(data=request.data)
        data.is_valid(raise_exception=True)
        grant = ledger.credit_grant_void(grant=grant, actor=actor(request), **data.validated_data)
        return Response(CreditGrantOut(grant).data)


class CreditGrantExpireApi(BaseApiView):
    required_scope = "write"

    @extend_schema(
        request=ReasonInput,
        responses={200: CreditGrantOut, **error_responses(400, 401, 403, 404, 409)},
    )
    def post(self, request: Request, grant_id: str) -> Response:
        grant = grant_or_404(grant_id)
        data = ReasonInput(data=request.data)
        data.is_valid(raise_exception=True)
        grant = ledger.credit_grant_expire(grant=grant, actor=actor(request), **data.validated_data)
        return Response(CreditGrantOut(grant).data)
