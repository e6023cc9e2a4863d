"""Portal fragments about paying invoices: the banner shown on every page while past due."""

from __future__ import annotations

from typing import Any

from django import template
from django.utils import timezone

from billing_portal.invoicing.collection import past_due_for

register = template.Library()


@register.inclusion_tag("portal/_past_due_banner.html", takes_context=True)
def past_due_banner(context: template.Context) -> dict[str, Any]:
    membership = getattr(context.get("request"), "membership", None)
    past_due = past_due_for(customer=membership.customer) if membership is not None else None
    paused_at = past_due.access_paused_at if past_due is not None else None
    return {
        "past_due": past_due,
        "paused": paused_at is not None and paused_at <= timezone.now(),
    }
