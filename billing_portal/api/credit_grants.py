"""``/customers/{id}/credit_grants`` and ``/credit_grants/{id}``: grant, list, void, expire."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import ClassVar

from django.db import transaction
from django.shortcuts import get_object_or_404
from djmoney.money import Money
from drf_spectacular.utils import (
    extend_schema,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing_portal.api.base import BaseApiView
from billing_portal.api.errors import ApiError
from billing_portal.api.fields import TimestampField, actor, credits_field, customer_or_404, is_id
from billing_portal.api.pagination import Listing, PageQuery, page_response, page_schema, paginate
from billing_portal.api.schema import error_responses
from billing_portal.staff import descriptions
from billing_portal.staff.models import AuditAction
from billing_portal.staff.services import audit_record
from ledger import services as ledger
from ledger.models import CreditGrant, GrantCategory, GrantStatus, LedgerOperation
from ledger.selectors import grant_close_operations
from ledger.units import CREDIT_QUANTUM, rfc3339
from plans import selectors
from plans.models import (
    Customer,
    Meter,
)
from plans.money import as_money

# --- credit grants --------------------------------------------------------------------

GRANTS = Listing(noun="credit grant")


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
    closed_reason = serializers.SerializerMethodField(
        help_text="The reason given when the grant was voided or expired."
    )
    closed_by = serializers.SerializerMethodField(
        help_text='Who voided or expired it, as "kind:id", e.g. "api:backend" or "system:expiry".'
    )
    voided_reason = serializers.SerializerMethodField(
        help_text="closed_reason, when the grant was voided."
    )
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

    # Read from the void or expire operation: the ledger keeps who closed a grant and why.
    # A grant closed with nothing left wrote no entry, so its operation is not found.
    def get_closed_reason(self, grant: CreditGrant) -> str | None:
        operation = self._close_operation(grant)
        return operation.reason if operation else None

    def get_closed_by(self, grant: CreditGrant) -> str | None:
        operation = self._close_operation(grant)
        return operation.actor if operation else None

    def get_voided_reason(self, grant: CreditGrant) -> str | None:
        return self.get_closed_reason(grant) if grant.status == GrantStatus.VOIDED else None

    def _close_operation(self, grant: CreditGrant) -> LedgerOperation | None:
        if grant.status not in (GrantStatus.VOIDED, GrantStatus.EXPIRED):
            return None
        operations: dict[int, LedgerOperation] | None = self.context.get("close_operations")
        if operations is None:
            operations = grant_close_operations(grant_ids=[grant.pk])
        return operations.get(grant.pk)


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
        memo = serializers.CharField(
            required=False, default="", allow_blank=True, help_text="Internal: never shown."
        )
        description = serializers.CharField(
            max_length=255,
            required=False,
            default="",
            allow_blank=True,
            help_text=f'Shown to the customer; empty: "{descriptions.GRANT_DEFAULT}".',
        )

        def validate_applies_to(self, value: list[str]) -> list[str]:
            unknown = set(value) - set(
                Meter.objects.filter(code__in=value).values_list("code", flat=True)
            )
            if unknown:
                raise serializers.ValidationError(
                    f"unknown meter code(s): {', '.join(sorted(unknown))}"
                )
            return value

    class QuerySerializer(PageQuery):
        status = serializers.ChoiceField(choices=GrantStatus.choices, required=False)
        category = serializers.ChoiceField(choices=GrantCategory.choices, required=False)

    @extend_schema(
        parameters=[QuerySerializer],
        responses={
            200: page_schema("CreditGrantList", CreditGrantOut(many=True)),
            **error_responses(400, 401, 403, 404),
        },
        description="The customer's grants, newest first.",
    )
    def get(self, request: Request, external_id: str) -> Response:
        customer = customer_or_404(external_id)
        query = self.QuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        grants = selectors.credit_grants_for(customer=customer)
        filters = {
            name: query.validated_data[name]
            for name in ("status", "category")
            if name in query.validated_data
        }
        page = paginate(
            grants.filter(**filters), within=grants, listing=GRANTS, query=query.validated_data
        )
        operations = grant_close_operations(grant_ids=[grant.pk for grant in page.items])
        context = {"customer": customer, "close_operations": operations}
        return page_response(page, CreditGrantOut, context)

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
        values["description"] = descriptions.grant_description(values["description"])
        with transaction.atomic():
            grant = ledger.credit_grant_create(
                account=customer.account,
                actor=actor(request),
                cost_basis=Money(basis if basis is not None else 0, customer.currency),
                source_type="api",
                **values,
            )
            _audit(request, AuditAction.GRANT_CREATE, values.get("reason") or "api", grant)
        return Response(CreditGrantOut(grant, context={"customer": customer}).data, status=201)


def _audit(request: Request, action: str, reason: str, grant: CreditGrant) -> None:
    # In the change's transaction: the audit row and the change commit together.
    audit_record(actor=actor(request), action=action, reason=reason, target=grant)


class ReasonInput(serializers.Serializer):
    reason = serializers.CharField(max_length=64)
    memo = serializers.CharField(
        required=False, default="", allow_blank=True, help_text="Internal: never shown."
    )
    description = serializers.CharField(
        max_length=255,
        required=False,
        default="",
        allow_blank=True,
        help_text='Shown to the customer; empty: "Credits removed: <reason>" for a void, '
        '"Credits expired early: <reason>" for an expiry.',
    )


class _CreditGrantCloseApi(BaseApiView):
    """Void or expire: the grant's credits left are written off, with a reason."""

    required_scope = "write"
    close: ClassVar[Callable[..., CreditGrant]]
    action: ClassVar[str]
    describe: ClassVar[Callable[[str, str], str]]

    @extend_schema(
        request=ReasonInput,
        responses={200: CreditGrantOut, **error_responses(400, 401, 403, 404, 409)},
    )
    def post(self, request: Request, grant_id: str) -> Response:
        grant = grant_or_404(grant_id)
        data = ReasonInput(data=request.data)
        data.is_valid(raise_exception=True)
        values = dict(data.validated_data)
        values["description"] = type(self).describe(values["reason"], values["description"])
        with transaction.atomic():
            grant = type(self).close(grant=grant, actor=actor(request), **values)
            _audit(request, self.action, data.validated_data["reason"], grant)
        return Response(CreditGrantOut(grant).data)


class CreditGrantVoidApi(_CreditGrantCloseApi):
    close = ledger.credit_grant_void
    action = AuditAction.GRANT_VOID
    describe = descriptions.void_description


class CreditGrantExpireApi(_CreditGrantCloseApi):
    close = ledger.credit_grant_expire
    action = AuditAction.GRANT_EXPIRE
    describe = descriptions.expire_description
