"""Resends of events sent without a time.

Stripe, OpenMeter and Lago all let a sender leave the time out; the event is then
stamped on arrival. A retry of it arrives later, so its timestamp, and with it its
content, differs from the stored event's, and native ingest would call it a conflict. An
event sent without a time therefore takes the time of the event already stored under its
identifier, if any: a retry is a duplicate, and a resend that really changed is still a
conflict.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from django.db.models import Q

from metering.models import MeterEvent


def stored_times(keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], datetime]:
    """The timestamp stored under each (customer external_id, identifier) that has an
    event (whole, or as parts), in one query."""
    keys = set(keys)
    if not keys:
        return {}
    customers = {customer for customer, _ in keys}
    identifiers = {identifier for _, identifier in keys}
    rows = MeterEvent.objects.filter(
        Q(identifier__in=identifiers) | Q(parent_identifier__in=identifiers),
        customer__external_id__in=customers,
    ).values_list("customer__external_id", "identifier", "parent_identifier", "timestamp")
    stored: dict[tuple[str, str], datetime] = {}
    for customer, identifier, parent, moment in rows:
        key = (customer, parent or identifier)
        if key in keys:
            stored.setdefault(key, moment)
    return stored
