"""``/customers/{id}/invoices`` and ``/invoices/{id}``: status, totals, lines linked to
ledger entries.
"""

from __future__ import annotations

from typing import Any

from django.shortcuts import get_object_or_404
from drf_spectacular.utils import (
    extend_schema,
    inline_serializer,
)
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from billing_portal.api.base import BaseApiView
from billing_portal.api.errors import ApiError
from billing_portal.api.fields import TimestampField, customer_or_404, is_id
from billing_portal.api.schema import error_responses
from billing_portal.invoicing.models import Invoice, InvoiceLine
from billing_portal.invoicing.selectors import invoices_for
from plans.money import as_money


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
    lines = InvoiceLineOut(many=True)

    def get_total(self, invoice: Invoice) -> str:
        return _money(invoice.total)


def _invoices() -> Any:
    return Invoice.objects.select_related("customer").prefetch_related("lines__entry_links")


class CustomerInvoicesApi(BaseApiView):
    required_scope = "read"

    @extend_schema(
        responses={
            200: inline_serializer("InvoiceList", {"data": InvoiceOut(many=True)}),
            **error_responses(401, 403, 404),
        }
    )
    def get(self, request: Request, external_id: str) -> Response:
        customer = customer_or_404(external_id)
        invoices = (
            invoices_for(customer=customer)
            .select_related("customer")
            .prefetch_related("lines__entry_links")
        )
        return Response({"data": InvoiceOut(invoices, many=True).data})


class InvoiceDetailApi(BaseApiView):
    required_scope = "read"

    @extend_schema(responses={200: InvoiceOut, **error_responses(401, 403, 404)})
    def get(self, request: Request, invoice_id: str) -> Response:
        if not is_id(invoice_id):
            raise ApiError(404, "resource_missing", f"no invoice {invoice_id!r}", "id")
        return Response(InvoiceOut(get_object_or_404(_invoices(), pk=invoice_id)).data)
