"""``/customers/{id}/invoices`` and ``/invoices/{id}``: status, totals, lines linked to
ledger entries; ``/customers/{id}/upcoming_invoice``: the same shape for the invoice the
open period would produce if it closed now.
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
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
from billing_portal.api.fields import TimestampField, customer_or_404, is_id
from billing_portal.api.pagination import Listing, PageQuery, page_response, page_schema, paginate
from billing_portal.api.schema import error_responses
from billing_portal.invoicing.collection import invoice_amount_due
from billing_portal.invoicing.models import (
    CreditNote,
    CreditNoteReason,
    Invoice,
    InvoiceLine,
)
from billing_portal.invoicing.selectors import invoices_for, upcoming_invoice
from billing_portal.invoicing.services import InvoiceDraft, LineDraft
from plans.money import as_money

INVOICES = Listing(noun="invoice")


def _money(value: object) -> str:
    return f"{as_money(value).amount:.2f}"


def _plain(value: object) -> str:
    """A unit price as a plain decimal string at its own precision ("0.004", "10"), never
    in exponent notation (Decimal("10.00").normalize() prints "1E+1")."""
    return f"{as_money(value).amount.normalize():f}"


class InvoiceLineOut(serializers.Serializer):
    id = serializers.CharField(source="pk")
    kind = serializers.CharField()
    description = serializers.CharField()
    quantity = serializers.DecimalField(max_digits=28, decimal_places=6, coerce_to_string=True)
    unit_amount = serializers.SerializerMethodField()
    amount = serializers.SerializerMethodField()
    currency = serializers.SerializerMethodField()
    credits = serializers.DecimalField(max_digits=20, decimal_places=6, coerce_to_string=True)
    service_period = serializers.SerializerMethodField()
    ledger_entry_ids = serializers.SerializerMethodField()

    def get_unit_amount(self, line: InvoiceLine) -> str:
        return _plain(line.unit_amount)

    def get_currency(self, line: InvoiceLine) -> str:
        return str(as_money(line.amount).currency)

    def get_amount(self, line: InvoiceLine) -> str:
        return _money(line.amount)

    def get_service_period(self, line: InvoiceLine) -> dict[str, Any]:
        field = TimestampField()
        return {
            "start": field.to_representation(line.service_period_start),
            "end": field.to_representation(line.service_period_end),
        }

    def get_ledger_entry_ids(self, line: InvoiceLine) -> list[str]:
        return [str(link.entry_id) for link in line.entry_links.all()]


class InvoiceCreditNoteOut(serializers.Serializer):
    id = serializers.CharField(source="pk")
    number = serializers.CharField()
    status = serializers.CharField(help_text="issued or void.")
    total = serializers.SerializerMethodField()
    reason = serializers.ChoiceField(choices=CreditNoteReason.choices)

    def get_total(self, note: CreditNote) -> str:
        return _money(note.total)


class InvoiceOut(serializers.Serializer):
    id = serializers.CharField(source="pk")
    number = serializers.CharField()
    customer = serializers.CharField(source="customer.external_id")
    kind = serializers.CharField()
    status = serializers.CharField()
    currency = serializers.CharField()
    total = serializers.SerializerMethodField()
    period_start = TimestampField(allow_null=True)
    period_end = TimestampField(allow_null=True)
    issued_at = TimestampField(allow_null=True)
    paid_at = TimestampField(allow_null=True)
    hosted_invoice_url = serializers.CharField()
    stripe_invoice_id = serializers.CharField()
    sync_state = serializers.CharField()
    amount_due = serializers.SerializerMethodField()
    payment_attempts = serializers.IntegerField(
        help_text="Failed attempts to collect it so far (Stripe runs the retries)."
    )
    payment_failed_at = TimestampField(
        allow_null=True, help_text="The first failed payment; null when none failed."
    )
    payment_error = serializers.CharField(
        help_text="Why the last attempt failed, in the payment provider's words; empty when "
        "none failed."
    )
    next_payment_attempt_at = TimestampField(
        allow_null=True, help_text="When the next attempt is due; null when none is planned."
    )
    lines = InvoiceLineOut(many=True)
    credit_notes = serializers.SerializerMethodField()

    def get_total(self, invoice: Invoice) -> str:
        return _money(invoice.total)

    def get_amount_due(self, invoice: Invoice) -> str:
        return f"{invoice_amount_due(invoice):.2f}"

    @extend_schema_field(InvoiceCreditNoteOut(many=True))
    def get_credit_notes(self, invoice: Invoice) -> list[dict[str, Any]]:
        notes = sorted(invoice.credit_notes.all(), key=lambda note: note.pk)
        return list(InvoiceCreditNoteOut(notes, many=True).data)


def _with_parts(invoices: QuerySet[Invoice]) -> QuerySet[Invoice]:
    """What InvoiceOut reads, in a fixed number of queries per page."""
    return invoices.select_related("customer").prefetch_related(
        "lines__entry_links", "credit_notes"
    )


class CustomerInvoicesApi(BaseApiView):
    required_scope = "read"

    @extend_schema(
        parameters=[PageQuery],
        responses={
            200: page_schema("InvoiceList", InvoiceOut(many=True)),
            **error_responses(400, 401, 403, 404),
        },
        description="The customer's invoices, newest first.",
    )
    def get(self, request: Request, external_id: str) -> Response:
        customer = customer_or_404(external_id)
        query = PageQuery(data=request.query_params)
        query.is_valid(raise_exception=True)
        invoices = invoices_for(customer=customer)
        page = paginate(
            _with_parts(invoices),
            within=invoices,
            listing=INVOICES,
            query=query.validated_data,
        )
        return page_response(page, InvoiceOut)


class InvoiceDetailApi(BaseApiView):
    required_scope = "read"

    @extend_schema(responses={200: InvoiceOut, **error_responses(401, 403, 404)})
    def get(self, request: Request, invoice_id: str) -> Response:
        if not is_id(invoice_id):
            raise ApiError(404, "resource_missing", f"no invoice {invoice_id!r}", "id")
        return Response(
            InvoiceOut(get_object_or_404(_with_parts(Invoice.objects.all()), pk=invoice_id)).data
        )


class UpcomingInvoiceLineOut(InvoiceLineOut):
    """A line of the upcoming invoice: InvoiceLineOut read from a LineDraft, not a row."""

    id = serializers.CharField(allow_null=True, default=None, help_text="Always null: not stored.")

    def get_ledger_entry_ids(self, line: LineDraft) -> list[str]:  # type: ignore[override]
        return [str(entry.pk) for entry in line.entries]


class UpcomingInvoiceOut(InvoiceOut):
    """InvoiceOut's shape for an InvoiceDraft: the defaults fill what only a stored
    invoice has (an id, a number, an issue date, a Stripe copy)."""

    id = serializers.CharField(allow_null=True, default=None, help_text="Always null: not stored.")
    number = serializers.CharField(
        allow_null=True, default=None, help_text="Always null: numbers are given at close."
    )
    kind = serializers.CharField(default="period")
    status = serializers.CharField(default="upcoming", help_text="Always upcoming.")
    issued_at = TimestampField(allow_null=True, default=None)
    paid_at = TimestampField(allow_null=True, default=None)
    hosted_invoice_url = serializers.CharField(default="")
    stripe_invoice_id = serializers.CharField(default="")
    sync_state = serializers.CharField(default="not_synced")
    payment_attempts = serializers.IntegerField(default=0)
    payment_failed_at = TimestampField(allow_null=True, default=None)
    payment_error = serializers.CharField(default="")
    next_payment_attempt_at = TimestampField(allow_null=True, default=None)
    lines = UpcomingInvoiceLineOut(many=True)

    def get_amount_due(self, invoice: InvoiceDraft) -> str:  # type: ignore[override]
        return _money(invoice.total)

    @extend_schema_field(InvoiceCreditNoteOut(many=True))
    def get_credit_notes(self, invoice: InvoiceDraft) -> list[dict[str, Any]]:  # type: ignore[override]
        return []


class UpcomingInvoiceApi(BaseApiView):
    required_scope = "read"

    @extend_schema(
        responses={200: UpcomingInvoiceOut, **error_responses(401, 403, 404)},
        description=(
            "The invoice the customer's open period would produce if it closed now, computed "
            "by period close's own code; nothing is stored (no id, no number). 404 when the "
            "customer has no open period."
        ),
    )
    def get(self, request: Request, external_id: str) -> Response:
        draft = upcoming_invoice(customer=customer_or_404(external_id))
        return Response(UpcomingInvoiceOut(draft).data)
