"""Forms of the staff workflows. They parse input; the services decide what is allowed."""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

from django import forms
from django.utils import timezone

from billing_portal.invoicing.models import CreditNoteMethod, CreditNoteReason, Invoice
from billing_portal.staff import display
from billing_portal.staff.descriptions import STAFF_REASONS
from billing_portal.staff.services import RELOAD_FORM_MESSAGE
from ledger.models import CREDIT_PLACES, GrantCategory
from ledger.units import CREDIT_QUANTUM
from plans.models import ApiScope, Plan

__all__ = ["STAFF_REASONS"]

MEMO_HELP = "For staff only: kept in the audit log, never shown to the customer."


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


def _memo_field() -> forms.CharField:
    return forms.CharField(
        widget=forms.Textarea(attrs={"rows": 2}),
        required=False,
        label="Internal memo",
        help_text=MEMO_HELP,
    )


def _description_field(default: str) -> forms.CharField:
    return forms.CharField(
        max_length=255,
        required=False,
        label="Customer-facing description",
        help_text=f'What the customer reads in their portal. Empty: "{default}".',
    )


class ReasonForm(TokenForm):
    reason = forms.ChoiceField(choices=STAFF_REASONS)
    memo = _memo_field()

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("reason") == "other" and not data.get("memo", "").strip():
            self.add_error("memo", "say why in the memo when the reason is 'other'")
        return data


def _credits_field(**kwargs: Any) -> forms.DecimalField:
    return forms.DecimalField(
        max_digits=20, decimal_places=CREDIT_PLACES, min_value=CREDIT_QUANTUM, **kwargs
    )


class CustomerReasonForm(ReasonForm):
    """A reason for an action the customer sees: a sentence for them next to the memo."""

    description = _description_field("a sentence built from the reason")

    def __init__(self, *args: Any, default_description: str = "", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if default_description:
            self.fields[
                "description"
            ].help_text = (
                f'What the customer reads in their portal. Empty: "{default_description}".'
            )


class GrantForm(CustomerReasonForm):
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

    def clean_expires_at(self) -> Any:
        expires_at = self.cleaned_data.get("expires_at")
        if expires_at is not None and expires_at <= timezone.now():
            raise forms.ValidationError(
                f"the expiry must be in the future (now is {timezone.now():%Y-%m-%d %H:%M} UTC);"
                " leave it empty for credits that never expire"
            )
        return expires_at

    def clean_applies_to(self) -> list[str]:
        raw = self.cleaned_data.get("applies_to") or ""
        return [code.strip() for code in raw.split(",") if code.strip()]


class CorrectEventForm(CustomerReasonForm):
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


def _choices(prompt: str, codes: list[str]) -> list[tuple[str, str]]:
    return [("", prompt), *((code, display.label(code)) for code in codes)]


class CreditNoteForm(TokenForm):
    reason = forms.ChoiceField(choices=_choices("Choose a reason", CreditNoteReason.values))
    # No default: a refund moves money, so the operator picks it on purpose.
    method = forms.ChoiceField(
        choices=_choices("Choose a method", CreditNoteMethod.values),
        help_text="Refund: Stripe pays the money back. Customer credit: it reduces their next "
        "invoice. Out of band: settled outside Stripe (e.g. a bank transfer).",
    )
    amount = forms.DecimalField(
        required=False,
        max_digits=14,
        decimal_places=2,
        min_value=Decimal("0.01"),
        help_text="either an amount spread over the lines, or choose lines below",
    )
    memo = _memo_field()
    description = _description_field("Credit for <invoice number>")

    def __init__(self, *args: Any, invoice: Invoice, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["amount"].label = f"Amount ({invoice.currency})"
        self.fields[
            "description"
        ].help_text = (
            f'What the customer reads on the credit note. Empty: "Credit for {invoice.number}".'
        )
        self.line_fields: list[str] = []
        for line in invoice.lines.order_by("pk"):
            name = f"line_{line.pk}"
            self.fields[name] = forms.DecimalField(
                required=False,
                max_digits=14,
                decimal_places=2,
                min_value=Decimal("0.01"),
                label=f"{line.description} ({display.money(line.amount)})",
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
        # A month input shows only a "YYYY-MM" value; a full date leaves it blank.
        widget=forms.DateInput(format="%Y-%m", attrs={"type": "month", "aria-label": "Month"}),
        input_formats=["%Y-%m", "%Y-%m-%d"],
        required=False,
    )
