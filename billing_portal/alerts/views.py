"""Portal notifications: the alerts list and marking one read."""

from __future__ import annotations

from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from billing_portal.alerts import selectors, services
from billing_portal.alerts.models import Alert
from billing_portal.portal.access import PortalRequest, portal_view

PAGE = 100


def alert_for(request: PortalRequest, pk: int) -> Alert:
    alert = Alert.objects.filter(pk=pk, customer_id=request.membership.customer_id).first()
    if alert is None:
        raise Http404("no such notification")
    return alert


@require_GET
@portal_view()
def notifications(request: PortalRequest) -> HttpResponse:
    alerts = selectors.alerts_for(customer=request.membership.customer).select_related("period")
    return render(request, "portal/notifications.html", {"alerts": alerts[:PAGE]})


@require_POST
@portal_view()
def notification_read(request: PortalRequest, pk: int) -> HttpResponse:
    """Reading a notification changes nothing billed, so viewers may do it too."""
    services.alert_mark_read(alert=alert_for(request, pk))
    target = request.POST.get("next", "")
    if request.htmx:
        # The banner's place now shows the next unread notification, if any.
        latest = selectors.alert_unread_latest(customer=request.membership.customer)
        context = {"alert": latest, "next": target}
        return render(request, "portal/_alert_banner.html", context)
    if url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(target)
    return redirect("portal:notifications")
