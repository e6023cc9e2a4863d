"""Portal forms: each validates what its service then stores."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal
from typing import Any
from zoneinfo import available_timezones

from django import forms
from django.contrib.auth import get_user_model
from django.contrib.auth.forms import AuthenticationForm
from django.core.validators import validate_email
from django.utils import timezone
from djmoney.money import Money

from billing_portal.alerts.models import AlertSettings, AutoRecharge
from billing_portal.invoicing.margin import money_text
from billing_portal.portal.models import Role
from billing_portal.portal.selectors import CUSTOM_RANGE_MAX_DAYS, credits_value
from billing_portal.portal.templatetags.portal import money, price_text
from ledger.units import credits_exact, credits_text
from plans.models import CreditPack
from plans.money import as_money

MAX_CREDITS = Decimal("1000000000000")
MAX_MONEY = Decimal("999999999999.99")
EXAMPLE_CREDITS = Decimal(10000)


class SignInForm(AuthenticationForm):
    """Portal users sign in with the e-mail address they were invited with (their user
    name), so the field says so."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        field = self.fields["username"]
        field.label = "E-mail"
        field.widget.attrs.update({"autocomplete": "email", "inputmode": "email"})


class PlainDecimalField(forms.DecimalField):
    """A number typed as people write it ("25,000", "12.5"), shown the same way, with one
    plain error instead of Django's storage-format messages ("no more than 19 digits")."""

    widget = forms.TextInput

    def __init__(
        self, *, unit: str, example: str, places: int, show_places: int | None = None, **kwargs: Any
    ) -> None:
        self.show_places = show_places
        low, high = kwargs.get("min_value"), kwargs.get("max_value")
        most = f"Enter at most {_number(high)}{unit}." if high is not None else ""
        kwargs["error_messages"] = {
            "invalid": f"Enter a number, such as {example}.",
            "max_value": most,
            "max_digits": most,
            "max_whole_digits": most,
            "max_decimal_places": f"Use at most {places} decimal places.",
            **({"min_value": f"Enter {_number(low)}{unit} or more."} if low is not None else {}),
        }
        super().__init__(decimal_places=places, max_digits=19, **kwargs)

    def widget_attrs(self, widget: forms.Widget) -> dict[str, Any]:
        attrs: dict[str, Any] = super().widget_attrs(widget)
        return {**attrs, "inputmode": "decimal", "autocomplete": "off"}

    def to_python(self, value: Any) -> Decimal | None:  # type: ignore[override]
        if isinstance(value, str):
            value = value.replace(",", "").replace(" ", "").replace("\u00a0", "")
        return super().to_python(value)

    def run_validators(self, value: Any) -> None:
        if value in self.empty_values:
            return
        # One message is enough: 1e99 is "at most 1,000,000,000,000", not also "too many
        # digits".
        for validator in self.validators:
            try:
                validator(value)
            except forms.ValidationError as exc:
                message = self.error_messages.get(exc.code or "", exc.message)
                raise forms.ValidationError(message, code=exc.code, params=exc.params) from None

    def prepare_value(self, value: Any) -> Any:
        if not isinstance(value, Decimal):
            return value
        if self.show_places is not None:
            return f"{value:,.{self.show_places}f}"
        # Unrounded, so saving the form again never changes the stored value.
        return credits_exact(value)


def _number(value: Any) -> str:
    return credits_exact(Decimal(value))


def credits_field(*, required: bool = False, label: str = "", help_text: str = "") -> Any:
    return PlainDecimalField(
        unit=" credits",
        example="25,000 or 12.5",
        places=6,
        required=required,
        min_value=Decimal(0),
        max_value=MAX_CREDITS,
        label=label,
        help_text=help_text,
    )


def expiry_words(days: int | None) -> str:
    """How long a pack's credits last, as the pack picker and checkout say it."""
    if days is None:
        return "never expire"
    return f"expire {days} day{'' if days == 1 else 's'} after purchase"


class PackChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj: Any) -> str:
        price = as_money(obj.price)
        cost = money_text(price.amount, str(price.currency))
        lasts = expiry_words(obj.expires_after_days)
        return f"{credits_text(obj.credits)} credits for {cost} ({lasts})"


class AlertSettingsForm(forms.ModelForm):
    usage_thresholds = forms.CharField(
        required=False,
        label="Usage alerts (% of included credits)",
        help_text="Comma-separated percentages, e.g. 50, 80, 100.",
    )
    low_balance_credits = credits_field(
        label="Low-balance alert (credits)",
        help_text="Alert when available credits fall below this. Leave empty for none.",
    )
    recipients = forms.CharField(
        required=False,
        label="Recipients",
        help_text="Comma-separated e-mail addresses. Empty: the portal's owners and admins.",
        widget=forms.Textarea(attrs={"rows": 2}),
    )

    class Meta:
        model = AlertSettings
        fields = ["usage_thresholds", "low_balance_credits", "recipients"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not self.is_bound:
            self.initial["usage_thresholds"] = ", ".join(map(str, self.instance.usage_thresholds))
            self.initial["recipients"] = ", ".join(self.instance.recipients)

    def clean_usage_thresholds(self) -> list[int]:
        raw = [part.strip() for part in self.cleaned_data["usage_thresholds"].split(",")]
        values = []
        for part in filter(None, raw):
            if not part.isdigit() or not 1 <= int(part) <= 1000:
                raise forms.ValidationError(f"{part!r} is not a whole percentage from 1 to 1000.")
            values.append(int(part))
        if len(values) > 10:
            raise forms.ValidationError("At most 10 thresholds.")
        return sorted(set(values))

    def clean_recipients(self) -> list[str]:
        raw = self.cleaned_data["recipients"].replace("\n", ",").split(",")
        emails = [part.strip() for part in raw if part.strip()]
        for email in emails:
            try:
                validate_email(email)
            except forms.ValidationError as exc:
                raise forms.ValidationError(f"{email!r} is not an e-mail address.") from exc
        if len(emails) > 20:
            raise forms.ValidationError("At most 20 recipients.")
        return list(dict.fromkeys(emails))


class SpendLimitForm(forms.Form):
    spend_limit_credits = credits_field(
        label="Monthly spend limit (credits)",
        help_text="Requests are refused once this many credits are used in a billing period. "
        "Leave empty for no limit.",
    )

    def __init__(self, *args: Any, price: Money | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if price is None:
            return
        field = self.fields["spend_limit_credits"]
        saved = self.initial.get("spend_limit_credits")
        each = f"At your plan's {price_text(price)} per credit"
        if saved is not None:
            worth = money(credits_value(saved, price))
            field.help_text += f" {each}, your limit of {credits_text(saved)} credits is {worth}."
        else:
            worth = money(credits_value(EXAMPLE_CREDITS, price))
            field.help_text += f" {each}, {credits_text(EXAMPLE_CREDITS)} credits are {worth}."


class AutoRechargeForm(forms.ModelForm):
    threshold_credits = credits_field(
        label="Recharge when available credits fall below",
    )
    pack = PackChoiceField(
        queryset=CreditPack.objects.filter(active=True).order_by("credits"),
        required=False,
        label="Pack to buy",
    )
    max_recharges_per_month = forms.IntegerField(
        min_value=1,
        max_value=31,
        label="At most this many recharges a month",
        error_messages={
            "invalid": "Enter a whole number from 1 to 31.",
            "min_value": "Enter a whole number from 1 to 31.",
            "max_value": "Enter a whole number from 1 to 31.",
        },
    )
    # An amount only: the service stores it in the customer's currency.
    max_amount_per_month = PlainDecimalField(
        unit="",
        example="250 or 99.50",
        places=2,
        show_places=2,
        max_value=MAX_MONEY,
        required=False,
        label="At most this much spent a month",
        help_text="Auto-recharge buys no pack that would take this calendar month's "
        "auto-recharge spending past this amount. Leave empty for no money cap.",
    )

    class Meta:
        model = AutoRecharge
        fields = ["enabled", "threshold_credits", "pack", "max_recharges_per_month"]
        labels = {"enabled": "Turn on auto-recharge"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        currency = self.instance.customer.currency
        field = self.fields["max_amount_per_month"]
        field.label = f"{field.label} ({currency})"
        if self.instance.max_amount_per_month is None:
            return
        cap = as_money(self.instance.max_amount_per_month)
        if not self.is_bound:
            self.initial["max_amount_per_month"] = cap.amount
        if cap.currency.code != currency:
            field.help_text += (
                f" The saved cap is in {cap.currency.code}; saving sets it in {currency}."
            )

    def clean_max_amount_per_month(self) -> Decimal | None:
        amount: Decimal | None = self.cleaned_data["max_amount_per_month"]
        if amount is not None and amount <= 0:
            raise forms.ValidationError(
                "Enter an amount greater than 0, or leave it empty for no money cap."
            )
        return amount

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        if data.get("enabled"):
            if data.get("threshold_credits") is None:
                self.add_error("threshold_credits", "Required to turn on auto-recharge.")
            if data.get("pack") is None:
                self.add_error("pack", "Choose the pack to buy.")
        return data


class PackBuyForm(forms.Form):
    pack = PackChoiceField(
        queryset=CreditPack.objects.filter(active=True).order_by("credits"),
        to_field_name="code",
        empty_label=None,
        label="Credit pack",
        help_text="The credits are added once the pack is paid. Credits still unused when the "
        "pack expires are lost.",
    )


class UsageRangeForm(forms.Form):
    """Days the customer chooses for the usage chart and table (both included)."""

    start = forms.DateField(label="From", widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(label="To", widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("start"), data.get("end")
        if start and end:
            if end < start:
                self.add_error("end", "Choose a day on or after the first one.")
            elif (end - start).days + 1 > CUSTOM_RANGE_MAX_DAYS:
                self.add_error("end", f"Choose at most {CUSTOM_RANGE_MAX_DAYS} days.")
            elif start > timezone.now().date():
                self.add_error("start", "Choose a day that has begun.")
        return data


def _zones() -> list[tuple[str, str]]:
    return [(name, name.replace("_", " ")) for name in sorted(available_timezones())]


class TimeZoneForm(forms.Form):
    timezone = forms.ChoiceField(
        choices=_zones,
        label="Time zone",
        help_text="Where days and times are read on this page.",
        error_messages={"invalid_choice": "Choose a time zone from the list, e.g. Europe/Paris."},
    )


class ExportForm(forms.Form):
    start = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}))
    end = forms.DateField(widget=forms.DateInput(attrs={"type": "date"}))

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start, end = data.get("start"), data.get("end")
        if isinstance(start, date) and isinstance(end, date):
            if start > end:
                self.add_error("end", "The end date must not be before the start date.")
            elif end - start > timedelta(days=400):
                self.add_error("start", "Export at most 400 days at a time.")
        return data

    @classmethod
    def defaults(cls) -> dict[str, date]:
        today = timezone.now().date()
        return {"start": today - timedelta(days=29), "end": today}


class InviteForm(forms.Form):
    email = forms.EmailField(label="E-mail")
    role = forms.ChoiceField(choices=Role.choices, initial=Role.VIEWER)

    def clean_email(self) -> str:
        email = self.cleaned_data["email"].strip().lower()
        user_model = get_user_model()
        if user_model.objects.filter(username__iexact=email).exists():
            raise forms.ValidationError("This address already has a portal account.")
        return email
