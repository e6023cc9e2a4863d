"""Portal fragments: the latest unread alert, and what refuses requests right now."""

from __future__ import annotations

from typing import Any

from django import template

from billing_portal.alerts import selectors

register = template.Library()


def _customer(context: template.Context) -> Any:
    membership = getattr(context.get("request"), "membership", None)
    return membership.customer if membership is not None else None


@register.inclusion_tag("portal/_alert_banner.html", takes_context=True)
def alert_banner(context: template.Context) -> dict[str, Any]:
    customer = _customer(context)
    alert = selectors.alert_unread_latest(customer=customer) if customer else None
    return {"alert": alert, "request": context.get("request")}


@register.inclusion_tag("portal/_limits_notice.html", takes_context=True)
def limits_notice(
    context: template.Context,
    with_spend_limit: bool = True,
    controls: selectors.SpendControls | None = None,
) -> dict[str, Any]:
    """``controls``: a page that read the balance already passes what it found."""
    customer = _customer(context)
    if controls is None and customer is not None:
        controls = selectors.spend_controls_for(customer=customer)
    return {"controls": controls, "with_spend_limit": with_spend_limit}
