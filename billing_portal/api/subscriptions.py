"""``/subscriptions``: start, change plan, cancel."""

from __future__ import annotations

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import (
    extend_schema,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing_portal.api.base import BaseApiView
from billing_portal.api.errors import ApiError
from billing_portal.api.fields import TimestampField, actor, is_id, plan_or_error
from billing_portal.api.schema import error_responses
from plans import services
from plans.models import (
    Customer,
    Subscription,
)

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
