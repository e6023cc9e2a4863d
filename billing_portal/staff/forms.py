"""Forms of the staff workflows. They parse input; the services decide what is allowed."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

from django import forms

from billing_portal.invoicing.models import CreditNoteMethod, CreditNoteReason, Invoice
from billing_portal.staff.services import RELOAD_FORM_MESSAGE
from ledger.models import CREDIT_PLACES, GrantCategory
from ledger.units import CREDIT_QUANTUM
from plans.models import ApiScope, Plan

STAFF_REASONS = [
    ("goodwill", "Goodwill"),
    ("service_outage", "Service outage"),
    ("billing_error", "Billing error"),
    ("duplicate_usage", "Duplicate usage"),
    ("wrong_usage", "Wrong usage reported"),
    ("customer_request", "Customer request"),
    ("fraud", "Fraud"),
    ("other", "Other (say why in the memo)"),
]


def _token() -> str:
    return uuid.uuid4().hex


class TokenForm(forms.Form):
    """Carries a one-time token from the form to its confirmation (see AuditLog)."""

    # Not required=True: a hidden field's own error is never shown, so clean() reports a
    # missing token where the operator sees it.
    request_token = forms.CharField(
        widget=forms.HiddenInput, required=False, max_length=64, initial=_token
    )

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if not data.get("request_token") and "request_token" not in self.errors:
            self.add_error(None, RELOAD_FORM_MESSAGE)
        return data


class ReasonForm(TokenForm):
    reason = forms.ChoiceField(choices=STAFF_REASONS)
    memo = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("reason") == "other" and not data.get("memo", "").strip():
            self.add_error("memo", "say why in the memo when the reason is 'other'")
        return data


def _credits_field(**kwargs: Any) -> forms.DecimalField:
    return forms.DecimalField(
        max_digits=20, decimal_places=CREDIT_PLACES, min_value=CREDIT_QUANTUM, **kwargs
    )


class GrantForm(ReasonForm):
    field_order = ["amount", "category", "priority", "expires_at", "applies_to", "workspace"]

    amount = _credits_field()
    category = forms.ChoiceField(choices=GrantCategory.choices, initial=GrantCategory.PROMOTIONAL)
    priority = forms.IntegerField(min_value=0, max_value=100, initial=50)
    expires_at = forms.DateTimeField(
        required=False, help_text="UTC, e.g. 2026-12-31 23:59; empty: never expires"
    )
    applies_to = forms.CharField(
        required=False, help_text="meter codes separated by commas; empty: every meter"
    )
    workspace = forms.CharField(required=False, max_length=64, help_text="empty: pooled")

    def clean_applies_to(self) -> list[str]:
        raw = self.cleaned_data.get("applies_to") or ""
        return [code.strip() for code in raw.split(",") if code.strip()]


class CorrectEventForm(ReasonForm):
    field_order = ["identifier", "value", "dimensions"]

    identifier = forms.CharField(max_length=255, help_text="a new identifier for the replacement")
    value = forms.DecimalField(max_digits=28, decimal_places=6, min_value=Decimal("0"))
    dimensions = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), initial="{}")

    def clean_dimensions(self) -> dict[str, str]:
        try:
            value = json.loads(self.cleaned_data["dimensions"] or "{}")
        except json.JSONDecodeError as exc:
            raise forms.ValidationError(f"dimensions must be a JSON object: {exc}") from exc
        if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
            raise forms.ValidationError('dimensions must be a JSON object of strings: {"k": "v"}')
        return value


class CreditNoteForm(TokenForm):
    reason = forms.ChoiceField(choices=CreditNoteReason.choices)
    method = forms.ChoiceField(
        choices=CreditNoteMethod.choices, help_text="refund, customer credit, or out of band"
    )
    amount = forms.DecimalField(
        required=False,
        max_digits=14,
        decimal_places=2,
        min_value=Decimal("0.01"),
        help_text="either an amount spread over the lines, or choose lines below",
    )
    memo = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False)

    def __init__(self, *args: Any, invoice: Invoice, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.line_fields: list[str] = []
        for line in invoice.lines.order_by("pk"):
            name = f"line_{line.pk}"
            self.fields[name] = forms.DecimalField(
                required=False,
                max_digits=14,
                decimal_places=2,
                min_value=Decimal("0.01"),
                label=f"Line {line.pk}: {line.description} ({line.amount})",
            )
            self.line_fields.append(name)

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        lines = self.lines()
        if (data.get("amount") is None) == (lines is None):
            raise forms.ValidationError("give either an amount or line amounts, not both")
        return data

    def lines(self) -> dict[int, Decimal] | None:
        data = getattr(self, "cleaned_data", {})
        chosen = {
            int(name.removeprefix("line_")): data[name]
            for name in self.line_fields
            if data.get(name) is not None
        }
        return chosen or None


class PlanChangeForm(ReasonForm):
    field_order = ["plan", "when"]

    plan = forms.ModelChoiceField(queryset=Plan.objects.order_by("code"), to_field_name="code")
    when = forms.ChoiceField(
        choices=[
            ("", "Default (upgrades now, downgrades at period end)"),
            ("now", "Now"),
            ("period_end", "At period end"),
        ],
        required=False,
    )


class ApiKeyForm(ReasonForm):
    field_order = ["name", "scopes"]

    name = forms.CharField(max_length=128)
    scopes = forms.MultipleChoiceField(
        choices=ApiScope.choices, widget=forms.CheckboxSelectMultiple, initial=ApiScope.values
    )


class CatalogForm(ReasonForm):
    field_order = ["text"]

    text = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 30, "cols": 100}),
        help_text="the catalog file; plan or rate card versions in use become new versions",
    )


class MonthForm(forms.Form):
    month = forms.DateField(
        widget=forms.DateInput(attrs={"type": "month"}),
        input_formats=["%Y-%m", "%Y-%m-%d"],
        required=False,
    )
