"""Fields and lookups the resource modules share."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.shortcuts import get_object_or_404
from djmoney.money import Money
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    extend_schema_field,
)
from rest_framework import serializers
from rest_framework.request import Request

from billing_portal.api.auth import request_api_key
from billing_portal.api.errors import ApiError
from ledger.actors import Actor
from ledger.units import rfc3339
from plans.models import (
    Customer,
    Plan,
)
from plans.services import CUSTOMER_METADATA_MAX_KEYS

# --- shared fields --------------------------------------------------------------------


EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(3000, 1, 1, tzinfo=UTC)


@extend_schema_field(OpenApiTypes.DATETIME)
class TimestampField(serializers.Field):
    """RFC 3339 or Unix seconds in; RFC 3339 (UTC, Z) out."""

    default_error_messages = {
        "invalid": "must be an RFC 3339 time like 2026-11-20T10:00:00Z or Unix seconds",
        "naive": "needs a time zone, e.g. 2026-11-20T10:00:00Z",
        "range": "must be between 1970 and 2999",
    }

    def to_internal_value(self, data: Any) -> datetime:
        if isinstance(data, str) and data.isascii() and data.isdigit():
            data = int(data)
        moment = self._parse(data)
        if not EARLIEST <= moment < LATEST:
            self.fail("range")
        return moment

    def _parse(self, data: Any) -> datetime:
        if isinstance(data, int | float) and not isinstance(data, bool):
            try:
                return datetime.fromtimestamp(data, tz=UTC)
            except (OverflowError, OSError, ValueError):
                self.fail("invalid")
        if isinstance(data, str):
            try:
                moment = datetime.fromisoformat(data.replace("Z", "+00:00"))
            except ValueError:
                self.fail("invalid")
            if moment.tzinfo is None:
                self.fail("naive")
            return moment
        self.fail("invalid")

    def to_representation(self, value: datetime) -> str:
        return rfc3339(value)


METADATA_KEY_MAX_LENGTH = 40
METADATA_VALUE_MAX_LENGTH = 500


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {
            "type": "string",
            "nullable": True,
            "maxLength": METADATA_VALUE_MAX_LENGTH,
        },
        "maxProperties": CUSTOMER_METADATA_MAX_KEYS,
    }
)
class MetadataField(serializers.Field):
    """Stripe-style metadata: an object of string keys (1 to 40 characters) and string
    values (up to 500); in an update a value of null or "" removes its key."""

    default_error_messages = {
        "not_object": 'must be an object of strings, like {{"crm_id": "42"}}',
        "key": "keys must be 1 to {max} characters without U+0000; {name!r} is not",
        "value": "the value of {name!r} must be a string of up to {max} characters without "
        'U+0000 (null or "" removes the key)',
    }

    def to_internal_value(self, data: Any) -> dict[str, str | None]:
        if not isinstance(data, dict):
            self.fail("not_object")
        for key, value in data.items():
            # PostgreSQL's jsonb cannot hold U+0000.
            if not 1 <= len(key) <= METADATA_KEY_MAX_LENGTH or "\x00" in key:
                self.fail("key", name=key, max=METADATA_KEY_MAX_LENGTH)
            if value is not None and not _metadata_value_valid(value):
                self.fail("value", name=key, max=METADATA_VALUE_MAX_LENGTH)
        return data

    def to_representation(self, value: dict[str, str]) -> dict[str, str]:
        return dict(value)


def _metadata_value_valid(value: object) -> bool:
    return (
        isinstance(value, str) and len(value) <= METADATA_VALUE_MAX_LENGTH and "\x00" not in value
    )


def unknown_fields_refused(data: Any, serializer: type[serializers.Serializer]) -> None:
    """Refuse fields a serializer does not know, as Stripe does, instead of ignoring them:
    a misspelt field in an update would otherwise change nothing and answer 200."""
    if not isinstance(data, dict):
        return  # the serializer says what is wrong with the body
    known = serializer().fields
    for name in data:
        if name not in known:
            raise ApiError(
                400,
                "parameter_unknown",
                f"Unknown field {name!r}: send only {', '.join(known)}.",
                str(name),
            )


def is_id(value: str) -> bool:
    # str.isdigit() is also true for non-ASCII digits such as superscripts, which the
    # database refuses or reads as another number.
    return value.isascii() and value.isdigit() and len(value) < 19


def credits_field(**kwargs: Any) -> serializers.DecimalField:
    return serializers.DecimalField(
        max_digits=20, decimal_places=6, coerce_to_string=True, **kwargs
    )


def actor(request: Request) -> str:
    return str(Actor.api(request_api_key(request).name))


def customer_or_404(external_id: str) -> Customer:
    if "\x00" in external_id:  # PostgreSQL text cannot hold it: no such customer
        raise ApiError(404, "resource_missing", "no customer with that external_id", "external_id")
    return get_object_or_404(Customer.objects.select_related("account"), external_id=external_id)


def customer_named(external_id: str, param: str = "customer") -> Customer:
    """The customer a body or query names by external_id; 400 when there is none."""
    customer = (
        Customer.objects.select_related("account").filter(external_id=external_id).first()
        if "\x00" not in external_id
        else None
    )
    if customer is None:
        raise ApiError(
            400,
            "unknown_customer",
            f"no customer with external_id {external_id!r}; create it first",
            param,
        )
    return customer


def plan_or_error(code: str) -> Plan:
    plan = Plan.objects.filter(code=code).first()
    if plan is None:
        known = ", ".join(Plan.objects.order_by("code").values_list("code", flat=True)) or "none"
        raise ApiError(400, "unknown_plan", f"no plan with code {code!r} (known: {known})", "plan")
    return plan


class MoneyOut(serializers.Serializer):
    amount = serializers.CharField(help_text='A plain decimal string, e.g. "-12.50".')
    currency = serializers.CharField(help_text="ISO 4217, e.g. USD.")


def money_payload(money: Money) -> dict[str, str]:
    return {"amount": f"{money.amount:f}", "currency": str(money.currency)}
