"""``/subscriptions``: start, list, read, change plan, cancel."""

from __future__ import annotations

from collections.abc import Callable

from django.db import transaction
from django.db.models import Q, QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import (
    extend_schema,
    extend_schema_field,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing_portal.api.base import BaseApiView
from billing_portal.api.errors import ApiError
from billing_portal.api.fields import (
    MoneyOut,
    TimestampField,
    actor,
    customer_named,
    is_id,
    money_payload,
    plan_or_error,
)
from billing_portal.api.pagination import Listing, PageQuery, page_response, page_schema, paginate
from billing_portal.api.schema import error_responses
from billing_portal.invoicing.collection import subscription_status
from plans import services
from plans.models import (
    Subscription,
    SubscriptionChange,
    SubscriptionStatus,
)
from plans.money import as_money

# --- subscriptions --------------------------------------------------------------------

SUBSCRIPTIONS = Listing(noun="subscription")
SUBSCRIPTION_STATUSES = ["active", "past_due", "canceled"]
# A subscription's external_id: what Lago's transaction and subscription ids allow here.
EXTERNAL_ID = r"^[\x21-\x7e]{1,255}\Z"


class SubscriptionOut(serializers.Serializer):
    id = serializers.CharField(source="pk")
    external_id = serializers.CharField(
        allow_null=True, help_text="The integrator's own id for it (null when none was given)."
    )
    customer = serializers.CharField(source="customer.external_id")
    status = serializers.SerializerMethodField()
    past_due_since = TimestampField(
        allow_null=True,
        help_text="The first failed payment of an invoice still unpaid (status past_due); "
        "null once every invoice whose payment failed is paid or void.",
    )
    plan = serializers.CharField(source="plan_version.plan.code")
    plan_version = serializers.IntegerField(source="plan_version.version")
    current_period_start = TimestampField()
    current_period_end = TimestampField()
    cancel_at_period_end = serializers.BooleanField()
    pending_plan = serializers.CharField(
        source="pending_plan_version.plan.code", allow_null=True, default=None
    )
    canceled_at = TimestampField(allow_null=True)

    # Described, not an enum: another choice set on a field named "status" would rename
    # the StatusEnum component that clients are generated from.
    @extend_schema_field(
        serializers.CharField(
            help_text="active, past_due or canceled. past_due: active, with an invoice whose "
            "payment failed still unpaid (the plan's past_due_policy says whether requests "
            "are refused meanwhile)."
        )
    )
    def get_status(self, subscription: Subscription) -> str:
        return subscription_status(subscription)


class SubscriptionChangeOut(SubscriptionOut):
    """A subscription as a plan change or cancellation left it, with the prorated base fee
    that call wrote (negative: a credit); null when it prorated nothing."""

    proration = serializers.SerializerMethodField()

    @extend_schema_field(MoneyOut(allow_null=True))
    def get_proration(self, subscription: Subscription) -> dict[str, str] | None:
        change: SubscriptionChange | None = self.context.get("change")
        if change is None or change.proration is None:
            return None
        return money_payload(as_money(change.proration))


def _status_is(status: str) -> Q:
    """The subscriptions listed with ``status`` (past_due is stored as active)."""
    if status == "canceled":
        return Q(status=SubscriptionStatus.CANCELED)
    return Q(status=SubscriptionStatus.ACTIVE, past_due_since__isnull=status == "active")


def _subscriptions() -> QuerySet[Subscription]:
    return Subscription.objects.select_related(
        "customer__account", "plan_version__plan", "pending_plan_version__plan"
    )


def subscription_or_404(subscription_id: str) -> Subscription:
    if not is_id(subscription_id):
        raise ApiError(404, "resource_missing", f"no subscription {subscription_id!r}", "id")
    return get_object_or_404(_subscriptions(), pk=subscription_id)


def changed(
    subscription: Subscription, write: Callable[[], Subscription]
) -> tuple[Subscription, SubscriptionChange | None]:
    """Run one service call that changes a subscription, and find the change row it wrote
    (None when it had nothing to do). The subscription's row is locked first, as the
    services lock it, and held to the end: no other change can come in between."""
    with transaction.atomic():
        locked = Subscription.objects.select_for_update().get(pk=subscription.pk)
        before = locked.changes.order_by("-pk").values_list("pk", flat=True).first() or 0
        result = write()
        change = result.changes.filter(pk__gt=before).order_by("-pk").first()
    return result, change


class SubscriptionsApi(BaseApiView):
    required_scope = {"GET": "read", "POST": "write"}

    class InputSerializer(serializers.Serializer):
        customer = serializers.CharField()
        plan = serializers.CharField()
        start_at = TimestampField(required=False)
        external_id = serializers.RegexField(
            EXTERNAL_ID,
            required=False,
            allow_null=True,
            help_text=(
                "Your own id for the subscription (unique; 1 to 255 printable ASCII "
                "characters, no spaces), e.g. Lago's external_subscription_id: events sent "
                "to /compat/lago name the subscription by it."
            ),
            error_messages={
                "invalid": "must be 1 to 255 printable ASCII characters without spaces."
            },
        )

        class Meta:
            # The name the document gave it before this view also listed subscriptions.
            ref_name = "SubscriptionCreateInput"

    class QuerySerializer(PageQuery):
        customer = serializers.CharField(
            required=False, help_text="Only this customer's subscriptions (its external_id)."
        )
        status = serializers.ChoiceField(choices=SUBSCRIPTION_STATUSES, required=False)

    @extend_schema(
        operation_id="v1_subscriptions_list",
        parameters=[QuerySerializer],
        responses={
            200: page_schema("SubscriptionList", SubscriptionOut(many=True)),
            **error_responses(400, 401, 403),
        },
        description="Subscriptions, newest first.",
    )
    def get(self, request: Request) -> Response:
        query = self.QuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        subscriptions = _subscriptions()
        if "customer" in query.validated_data:
            customer = customer_named(query.validated_data["customer"])
            subscriptions = subscriptions.filter(customer=customer)
        if "status" in query.validated_data:
            subscriptions = subscriptions.filter(_status_is(query.validated_data["status"]))
        page = paginate(
            subscriptions,
            within=Subscription.objects.all(),
            listing=SUBSCRIPTIONS,
            query=query.validated_data,
        )
        return page_response(page, SubscriptionOut)

    @extend_schema(
        request=InputSerializer,
        responses={201: SubscriptionOut, **error_responses(400, 401, 403, 409)},
        description=(
            "Starts a subscription. A taken external_id is 409 external_id_taken; a customer "
            "with an active subscription is 409 subscription_exists."
        ),
    )
    def post(self, request: Request) -> Response:
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        subscription = services.subscription_start(
            customer=customer_named(data.validated_data["customer"]),
            plan=plan_or_error(data.validated_data["plan"]),
            start_at=data.validated_data.get("start_at"),
            external_id=data.validated_data.get("external_id"),
            actor=actor(request),
        )
        return Response(SubscriptionOut(subscription).data, status=201)


class SubscriptionDetailApi(BaseApiView):
    required_scope = "read"

    @extend_schema(responses={200: SubscriptionOut, **error_responses(401, 403, 404)})
    def get(self, request: Request, subscription_id: str) -> Response:
        return Response(SubscriptionOut(subscription_or_404(subscription_id)).data)


class SubscriptionChangePlanApi(BaseApiView):
    required_scope = "write"

    class InputSerializer(serializers.Serializer):
        plan = serializers.CharField()
        when = serializers.ChoiceField(choices=["now", "period_end"], required=False)

    @extend_schema(
        request=InputSerializer,
        responses={200: SubscriptionChangeOut, **error_responses(400, 401, 403, 404, 409)},
    )
    def post(self, request: Request, subscription_id: str) -> Response:
        subscription = subscription_or_404(subscription_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        plan = plan_or_error(data.validated_data["plan"])
        subscription, change = changed(
            subscription,
            lambda: services.subscription_change_plan(
                subscription=subscription,
                plan=plan,
                when=data.validated_data.get("when"),
                actor=actor(request),
            ),
        )
        return Response(SubscriptionChangeOut(subscription, context={"change": change}).data)


class SubscriptionCancelApi(BaseApiView):
    required_scope = "write"

    class InputSerializer(serializers.Serializer):
        when = serializers.ChoiceField(
            choices=["now", "period_end"], required=False, default="period_end"
        )

    @extend_schema(
        request=InputSerializer,
        responses={200: SubscriptionChangeOut, **error_responses(400, 401, 403, 404, 409)},
    )
    def post(self, request: Request, subscription_id: str) -> Response:
        subscription = subscription_or_404(subscription_id)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        subscription, change = changed(
            subscription,
            lambda: services.subscription_cancel(
                subscription=subscription, when=data.validated_data["when"], actor=actor(request)
            ),
        )
        return Response(SubscriptionChangeOut(subscription, context={"change": change}).data)
