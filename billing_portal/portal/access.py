"""Tenant isolation in one place: every portal object is fetched through a helper here,
and another customer's object is a 404, never a 403 that would confirm it exists."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest
from django.http.response import HttpResponseBase
from django_htmx.middleware import HtmxDetails

from billing_portal.alerts.models import Alert
from billing_portal.invoicing.models import CreditNote, CreditPackPurchase, Invoice
from billing_portal.portal.models import PortalMembership

if TYPE_CHECKING:
    from django.contrib.auth.models import User

View = Callable[..., HttpResponseBase]


class PortalRequest(HttpRequest):
    """A request that passed :func:`portal_view`: a signed-in member of one customer."""

    user: User
    membership: PortalMembership
    htmx: HtmxDetails


def membership_of(request: HttpRequest) -> PortalMembership:
    membership = (
        PortalMembership.objects.select_related("customer__account", "user")
        .filter(user_id=request.user.pk or 0)
        .first()
    )
    if membership is None:
        raise PermissionDenied("this account is not a member of any customer")
    return membership


def portal_view(*, manage: bool = False, owner: bool = False) -> Callable[[View], View]:
    """Sign-in, membership, and the role a view needs (viewers only read)."""

    def decorate(view: View) -> View:
        @login_required
        @wraps(view)
        def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponseBase:
            membership = membership_of(request)
            if (owner and not membership.is_owner) or (manage and not membership.can_manage):
                raise PermissionDenied("your role may not do this")
            request.membership = membership  # type: ignore[attr-defined]
            return view(request, *args, **kwargs)

        return wrapper

    return decorate


def invoice_for(request: PortalRequest, pk: int) -> Invoice:
    invoice = Invoice.objects.filter(pk=pk, customer_id=request.membership.customer_id).first()
    if invoice is None:
        raise Http404("no such invoice")
    return invoice


def credit_note_for(request: PortalRequest, pk: int) -> CreditNote:
    note = (
        CreditNote.objects.select_related("invoice")
        .filter(pk=pk, invoice__customer_id=request.membership.customer_id)
        .first()
    )
    if note is None:
        raise Http404("no such credit note")
    return note


def purchase_for(request: PortalRequest, pk: int) -> CreditPackPurchase:
    purchase = (
        CreditPackPurchase.objects.select_related("pack", "invoice")
        .filter(pk=pk, customer_id=request.membership.customer_id)
        .first()
    )
    if purchase is None:
        raise Http404("no such purchase")
    return purchase


def member_for(request: PortalRequest, pk: int) -> PortalMembership:
    member = (
        PortalMembership.objects.select_related("user")
        .filter(pk=pk, customer_id=request.membership.customer_id)
        .first()
    )
    if member is None:
        raise Http404("no such member")
    return member


def alert_for(request: PortalRequest, pk: int) -> Alert:
    alert = Alert.objects.filter(pk=pk, customer_id=request.membership.customer_id).first()
    if alert is None:
        raise Http404("no such notification")
    return alert
