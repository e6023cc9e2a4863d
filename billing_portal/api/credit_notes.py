"""``/credit_notes``: read the credit notes issued on invoices. Issuing and voiding them
stay staff workflows (the admin), where each writes an audit row."""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import (
    extend_schema,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing_portal.api.base import BaseApiView
from billing_portal.api.errors import ApiError
from billing_portal.api.fields import TimestampField, customer_named, is_id
from billing_portal.api.pagination import Listing, PageQuery, page_response, page_schema, paginate
from billing_portal.api.schema import error_responses
from billing_portal.invoicing.models import (
    CreditNote,
    CreditNoteLine,
    CreditNoteMethod,
    CreditNoteReason,
    Invoice,
)
from plans.money import as_money

CREDIT_NOTES = Listing(noun="credit note")


def _money(value: object) -> str:
    return f"{as_money(value).amount:.2f}"


class CreditNoteLineOut(serializers.Serializer):
    id = serializers.CharField(source="pk")
    invoice_line = serializers.CharField(source="invoice_line_id")
    amount = serializers.SerializerMethodField()
    description = serializers.CharField()

    def get_amount(self, line: CreditNoteLine) -> str:
        return _money(line.amount)


class CreditNoteOut(serializers.Serializer):
    id = serializers.CharField(source="pk")
    number = serializers.CharField()
    invoice = serializers.CharField(source="invoice_id")
    invoice_number = serializers.CharField(source="invoice.number")
    customer = serializers.CharField(source="invoice.customer.external_id")
    status = serializers.CharField(help_text="issued or void.")
    reason = serializers.ChoiceField(choices=CreditNoteReason.choices)
    method = serializers.ChoiceField(choices=CreditNoteMethod.choices)
    memo = serializers.CharField()
    total = serializers.SerializerMethodField()
    currency = serializers.CharField(source="invoice.currency")
    lines = CreditNoteLineOut(many=True)
    created_at = TimestampField()
    voided_at = TimestampField(allow_null=True)

    def get_total(self, note: CreditNote) -> str:
        return _money(note.total)


def _credit_notes() -> QuerySet[CreditNote]:
    lines = Prefetch("lines", queryset=CreditNoteLine.objects.order_by("pk"))
    return CreditNote.objects.select_related("invoice__customer").prefetch_related(lines)


def _invoice_named(invoice_id: str) -> Invoice:
    invoice = Invoice.objects.filter(pk=invoice_id).first() if is_id(invoice_id) else None
    if invoice is None:
        raise ApiError(400, "unknown_invoice", f"no invoice with id {invoice_id!r}", "invoice")
    return invoice


class CreditNotesApi(BaseApiView):
    required_scope = "read"

    class QuerySerializer(PageQuery):
        invoice = serializers.CharField(required=False, help_text="Only this invoice's (its id).")
        customer = serializers.CharField(
            required=False, help_text="Only this customer's (its external_id)."
        )

    @extend_schema(
        operation_id="v1_credit_notes_list",
        parameters=[QuerySerializer],
        responses={
            200: page_schema("CreditNoteList", CreditNoteOut(many=True)),
            **error_responses(400, 401, 403),
        },
        description="Credit notes, newest first.",
    )
    def get(self, request: Request) -> Response:
        query = self.QuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        notes = _credit_notes()
        if "invoice" in query.validated_data:
            notes = notes.filter(invoice=_invoice_named(query.validated_data["invoice"]))
        if "customer" in query.validated_data:
            notes = notes.filter(invoice__customer=customer_named(query.validated_data["customer"]))
        page = paginate(
            notes, within=CreditNote.objects.all(), listing=CREDIT_NOTES, query=query.validated_data
        )
        return page_response(page, CreditNoteOut)


class CreditNoteDetailApi(BaseApiView):
    required_scope = "read"

    @extend_schema(responses={200: CreditNoteOut, **error_responses(401, 403, 404)})
    def get(self, request: Request, credit_note_id: str) -> Response:
        if not is_id(credit_note_id):
            raise ApiError(404, "resource_missing", f"no credit note {credit_note_id!r}", "id")
        return Response(CreditNoteOut(get_object_or_404(_credit_notes(), pk=credit_note_id)).data)
