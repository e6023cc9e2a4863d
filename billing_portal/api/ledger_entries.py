"""``/customers/{id}/ledger_entries``: every movement of a customer's credits, with the
operation behind it (who, why) and its cause."""

from __future__ import annotations

from drf_spectacular.utils import (
    extend_schema,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing_portal.api.base import BaseApiView
from billing_portal.api.errors import ApiError
from billing_portal.api.fields import TimestampField, credits_field, customer_or_404, is_id
from billing_portal.api.pagination import Listing, PageQuery, page_response, page_schema, paginate
from billing_portal.api.schema import error_responses
from ledger.models import CauseType, EntryKind, OperationKind
from ledger.selectors import ledger_entries_for

LEDGER_ENTRIES = Listing(noun="ledger entry")


class LedgerEntryOut(serializers.Serializer):
    id = serializers.CharField(source="pk")
    kind = serializers.ChoiceField(choices=EntryKind.choices)
    credits = credits_field(help_text="The signed change to the grant's remaining credits.")
    held = credits_field(help_text="The signed change to the customer's held credits.")
    grant = serializers.CharField(source="grant_id", allow_null=True)
    hold = serializers.CharField(source="hold_id", allow_null=True)
    operation = serializers.CharField(source="operation_id")
    operation_kind = serializers.ChoiceField(source="operation.kind", choices=OperationKind.choices)
    actor = serializers.CharField(
        source="operation.actor", help_text='Who did it, as "kind:id", e.g. "api:backend".'
    )
    reason = serializers.CharField(source="operation.reason")
    cause_type = serializers.ChoiceField(choices=CauseType.choices)
    cause_id = serializers.CharField(
        help_text="With cause_type event, the `id` of the customer's event."
    )
    meter = serializers.CharField()
    workspace = serializers.CharField(allow_null=True)
    created_at = TimestampField()


class CustomerLedgerEntriesApi(BaseApiView):
    required_scope = "read"

    class QuerySerializer(PageQuery):
        kind = serializers.ChoiceField(choices=EntryKind.choices, required=False)
        grant = serializers.CharField(required=False, help_text="Only the entries of this grant.")

    @extend_schema(
        operation_id="v1_customers_ledger_entries_list",
        parameters=[QuerySerializer],
        responses={
            200: page_schema("LedgerEntryList", LedgerEntryOut(many=True)),
            **error_responses(400, 401, 403, 404),
        },
        description="The customer's ledger entries, newest first.",
    )
    def get(self, request: Request, external_id: str) -> Response:
        customer = customer_or_404(external_id)
        query = self.QuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        grant = query.validated_data.get("grant")
        if grant is not None and not is_id(grant):
            raise ApiError(400, "invalid_request", f"grant {grant!r} is not a grant id", "grant")
        entries = ledger_entries_for(
            account_id=customer.account_id,
            kind=query.validated_data.get("kind"),
            grant_id=None if grant is None else int(grant),
        )
        page = paginate(
            entries,
            within=ledger_entries_for(account_id=customer.account_id),
            listing=LEDGER_ENTRIES,
            query=query.validated_data,
        )
        return page_response(page, LedgerEntryOut)
