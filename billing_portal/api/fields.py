"""Fields and lookups the resource modules share."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.shortcuts import get_object_or_404
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


def plan_or_error(code: str) -> Plan:
    plan = Plan.objects.filter(code=code).first()
    if plan is None:
        known = ", ".join(Plan.objects.order_by("code").values_list("code", flat=True)) or "none"
        raise ApiError(400, "unknown_plan", f"no plan with code {code!r} (known: {known})", "plan")
    return plan
