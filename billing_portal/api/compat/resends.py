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

from metering.selectors import events_identified
from plans.models import Customer


def stored_times(keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], datetime]:
    """The timestamp stored under each (customer external_id, identifier) that has an
    event (whole, or as parts), in one query."""
    keys = set(keys)
    if not keys:
        return {}
    customers = dict(
        Customer.objects.filter(external_id__in={customer for customer, _ in keys}).values_list(
            "external_id", "pk"
        )
    )
    pairs = [(customers[c], identifier) for c, identifier in keys if c in customers]
    rows = events_identified(pairs).values_list(
        "customer__external_id", "identifier", "parent_identifier", "timestamp"
    )
    stored: dict[tuple[str, str], datetime] = {}
    for customer, identifier, parent, moment in rows:
        key = (customer, parent or identifier)
        if key in keys:
            stored.setdefault(key, moment)
    return stored
