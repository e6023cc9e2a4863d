"""Portal pages. Each view serves the full page, and its htmx partial when asked."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, StreamingHttpResponse
from django.http.response import HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils import timezone
from django.utils.cache import patch_vary_headers
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect
from django_htmx.middleware import HtmxDetails
from djmoney.money import Money

from billing_portal.alerts import selectors as alert_selectors
from billing_portal.alerts import services as alert_services
from billing_portal.csv_safe import SafeWriter
from billing_portal.invoicing.models import CreditNote, PurchaseStatus
from billing_portal.invoicing.purchases import purchase_create
from billing_portal.invoicing.selectors import invoices_for
from billing_portal.portal import forms, plan_views, selectors, services
from billing_portal.portal.access import (
    PortalRequest,
    alert_for,
    credit_note_for,
    invoice_for,
    member_for,
    portal_view,
    purchase_for,
)
from billing_portal.portal.models import ROLE_HELP, PortalMembership, Role
from billing_portal.stripe import adapter as stripe_adapter
from billing_portal.stripe.payments import (
    PaymentsNotConfigured,
    purchase_checkout_start,
    purchase_demo_pay,
)
from ledger.actors import Actor
from ledger.errors import InvalidRequest
from plans import selectors as plan_selectors


def _actor(request: PortalRequest) -> str:
    return str(Actor.portal(request.user.get_username()))


def _page(
    request: HttpRequest, template: str, partial: str, context: dict[str, Any]
) -> HttpResponse:
    """The whole page, or just ``partial`` for an htmx request that targets it."""
    htmx: HtmxDetails | None = getattr(request, "htmx", None)
    # A history restore (back button, cache miss) is an htmx request that needs the page.
    fragment = htmx is not None and bool(htmx) and not htmx.history_restore_request
    name = f"{template}#{partial}" if fragment else template
    response = render(request, name, context)
    # One URL, two bodies: caches must keep the page and the fragment apart.
    patch_vary_headers(response, ["HX-Request"])
    return response


# --- sign-in ---------------------------------------------------------------------------


class LoginView(auth_views.LoginView):
    template_name = "portal/auth/login.html"
    authentication_form = forms.SignInForm
    redirect_authenticated_user = True

    def get_default_redirect_url(self) -> str:
        return reverse("portal:dashboard")


class LogoutView(auth_views.LogoutView):
    def get_default_redirect_url(self) -> str:
        return reverse("portal:login")


class PasswordResetView(auth_views.PasswordResetView):
    template_name = "portal/auth/password_reset.html"
    email_template_name = "portal/auth/password_reset_email.txt"
    subject_template_name = "portal/auth/password_reset_subject.txt"
    success_url = reverse_lazy("portal:password_reset_done")


class PasswordResetDoneView(auth_views.PasswordResetDoneView):
    template_name = "portal/auth/password_reset_done.html"


class PasswordResetConfirmView(auth_views.PasswordResetConfirmView):
    template_name = "portal/auth/password_reset_confirm.html"
    success_url = reverse_lazy("portal:password_reset_complete")


class PasswordResetCompleteView(auth_views.PasswordResetCompleteView):
    template_name = "portal/auth/password_reset_complete.html"


# --- dashboard -------------------------------------------------------------------------


@require_GET
@portal_view()
def dashboard(request: PortalRequest) -> HttpResponse:
    customer = request.membership.customer
    range_key = request.GET.get("range", "30")
    group = request.GET.get("group", "model")
    if range_key not in selectors.RANGES:
        range_key = "30"
    if group not in selectors.GROUPS:
        group = "model"
    range_form = forms.UsageRangeForm(request.GET if "start" in request.GET else None)
    chosen = range_form.cleaned_data if range_form.is_bound and range_form.is_valid() else {}
    window = selectors.usage_range(key=range_key, start=chosen.get("start"), end=chosen.get("end"))
    summary = selectors.dashboard_for(customer=customer)
    table = selectors.usage_table(customer=customer, window=window, price=summary.price_per_credit)
    context = {
        "summary": summary,
        "estimated_bill": selectors.estimated_bill(period=summary.period),
        "balance_parts": summary.parts,
        "features": selectors.plan_features_for(customer=customer, period=summary.period),
        "chart": selectors.usage_chart(customer=customer, window=window, group=group),
        "window": window,
        "range_form": range_form,
        "table": table,
        "table_total": selectors.usage_total(table),
        "range_key": window.key,
        "group": group,
        "ranges": list(selectors.RANGES),
        "groups": list(selectors.GROUPS),
    }
    return _page(request, "portal/dashboard.html", "usage", context)


# --- alerts and controls ---------------------------------------------------------------


def _controls_context(request: PortalRequest, **forms_given: Any) -> dict[str, Any]:
    customer = request.membership.customer
    alerts = alert_selectors.alert_settings_for(customer=customer)
    recharge = services.auto_recharge_get(customer=customer)
    price = _price_per_credit(request)
    return {
        "alert_form": forms_given.get("alert_form") or forms.AlertSettingsForm(instance=alerts),
        "limit_form": forms_given.get("limit_form")
        or forms.SpendLimitForm(
            initial={"spend_limit_credits": customer.spend_limit_credits}, price=price
        ),
        "recharge_form": forms_given.get("recharge_form")
        or forms.AutoRechargeForm(instance=recharge),
        "saved": forms_given.get("saved"),
        "announce": forms_given.get("announce", ""),
        "payments": _payments_mode(),
        "card_purchase": selectors.recharge_card_purchase(customer=customer),
    }


def _price_per_credit(request: PortalRequest) -> Money | None:
    subscription = plan_selectors.subscription_active(customer=request.membership.customer)
    return selectors.price_per_credit(subscription.plan_version if subscription else None)


def _payments_mode() -> str:
    """How packs are paid: "stripe" (a saved card), "demo" (no payment) or "none"."""
    if stripe_adapter.stripe_enabled():
        return "stripe"
    return "demo" if stripe_adapter.demo_payments_enabled() else "none"


def _not_saved(what: str, form: Any) -> str:
    """What a screen reader hears after a refused save: each field's first problem."""
    problems = [
        f"{form.fields[name].label if name in form.fields else 'Form'}: {errors[0]}"
        for name, errors in form.errors.items()
    ]
    return f"{what} not saved. " + " ".join(problems)


@require_GET
@portal_view()
def controls(request: PortalRequest) -> HttpResponse:
    return render(request, "portal/controls.html", _controls_context(request))


def _controls_saved(request: PortalRequest, partial: str, message: str) -> HttpResponse:
    if request.htmx:
        context = _controls_context(request, saved=partial, announce=message)
        return render(request, f"portal/controls.html#{partial}", context)
    messages.success(request, message)
    return redirect("portal:controls")


def _controls_invalid(request: PortalRequest, partial: str, what: str, **form: Any) -> HttpResponse:
    (given,) = form.values()
    context = _controls_context(request, announce=_not_saved(what, given), **form)
    return _page(request, "portal/controls.html", partial, context)


@require_POST
@portal_view(manage=True)
def alerts_save(request: PortalRequest) -> HttpResponse:
    customer = request.membership.customer
    alerts = alert_selectors.alert_settings_for(customer=customer)
    form = forms.AlertSettingsForm(request.POST, instance=alerts)
    if not form.is_valid():
        return _controls_invalid(request, "alerts", "Alert settings", alert_form=form)
    services.alert_settings_set(customer=customer, **form.cleaned_data)
    return _controls_saved(request, "alerts", "Alert settings saved.")


@require_POST
@portal_view(manage=True)
def spend_limit_save(request: PortalRequest) -> HttpResponse:
    form = forms.SpendLimitForm(request.POST, price=_price_per_credit(request))
    if not form.is_valid():
        return _controls_invalid(request, "limit", "Spend limit", limit_form=form)
    services.spend_limit_set(
        customer=request.membership.customer, limit=form.cleaned_data["spend_limit_credits"]
    )
    return _controls_saved(request, "limit", "Spend limit saved.")


@require_POST
@portal_view(manage=True)
def auto_recharge_save(request: PortalRequest) -> HttpResponse:
    recharge = services.auto_recharge_get(customer=request.membership.customer)
    form = forms.AutoRechargeForm(request.POST, instance=recharge)
    if not form.is_valid():
        return _controls_invalid(request, "recharge", "Auto-recharge settings", recharge_form=form)
    services.auto_recharge_set(customer=request.membership.customer, **form.cleaned_data)
    return _controls_saved(request, "recharge", "Auto-recharge settings saved.")


# --- billing ---------------------------------------------------------------------------


def _billing_context(request: PortalRequest, **given: Any) -> dict[str, Any]:
    customer = request.membership.customer
    subscription = plan_selectors.subscription_active(customer=customer)
    return {
        "subscription": subscription,
        "plan_price": plan_views.price_text(subscription.plan_version) if subscription else None,
        "pack_form": given.get("pack_form") or forms.PackBuyForm(),
        "invoices": invoices_for(customer=customer)[:50],
        "credit_notes": CreditNote.objects.filter(invoice__customer=customer)
        .select_related("invoice")
        .order_by("-created_at", "-pk")[:50],
    }


@require_GET
@portal_view()
def billing(request: PortalRequest) -> HttpResponse:
    return render(request, "portal/billing.html", _billing_context(request))


@require_POST
@portal_view(manage=True)
def plan_change(request: PortalRequest) -> HttpResponse:
    """A plan posted without its confirmation changes nothing: it leads to the page that
    shows the prorated charge and what changes when (``plan_views.plan_confirm``)."""
    return plan_views.plan_picked(request)


@require_POST
@portal_view(manage=True)
def pack_buy(request: PortalRequest) -> HttpResponse:
    form = forms.PackBuyForm(request.POST)
    if not form.is_valid():
        return render(request, "portal/billing.html", _billing_context(request, pack_form=form))
    purchase = purchase_create(
        customer=request.membership.customer, pack=form.cleaned_data["pack"], actor=_actor(request)
    )
    back = request.build_absolute_uri(reverse("portal:billing"))
    try:
        url = purchase_checkout_start(
            purchase=purchase, success_url=back + "?paid=1", cancel_url=back
        )
    except PaymentsNotConfigured as exc:
        messages.error(request, f"Packs cannot be bought right now: {exc}")
        return redirect("portal:billing")
    return redirect(url)


@require_http_methods(["GET", "POST"])
@portal_view()
def checkout(request: PortalRequest, pk: int) -> HttpResponse:
    """The demo's stand-in for Stripe Checkout; absent when Stripe is configured."""
    purchase = purchase_for(request, pk)
    if stripe_adapter.stripe_enabled():
        raise Http404("checkout happens on Stripe")
    if not stripe_adapter.demo_payments_enabled():
        messages.error(request, "Packs cannot be bought right now: payments are not configured.")
        return redirect("portal:billing")
    if request.method == "POST":
        if not request.membership.can_manage:
            raise PermissionDenied("your role may not buy packs")
        if purchase.status == PurchaseStatus.PENDING:
            try:
                purchase_demo_pay(purchase=purchase, actor=_actor(request))
            except InvalidRequest as exc:
                messages.error(request, str(exc))
                return redirect("portal:checkout", pk=purchase.pk)
            messages.success(request, f"Payment received: {purchase.pack.name} added.")
        return redirect("portal:dashboard")
    days = purchase.expires_after_days
    context = {
        "purchase": purchase,
        "expiry": forms.expiry_words(days),
        # Paid now, the grant starts now: the day it would lapse.
        "expires_on": timezone.now() + timedelta(days=days) if days is not None else None,
    }
    return render(request, "portal/checkout.html", context)


@require_GET
@portal_view()
def invoice_detail(request: PortalRequest, pk: int) -> HttpResponse:
    invoice = invoice_for(request, pk)
    context = {
        "invoice": invoice,
        "bill_to": request.membership.customer,
        "lines": invoice.lines.order_by("pk"),
        "credit_notes": invoice.credit_notes.order_by("pk"),
    }
    return render(request, "portal/invoice.html", context)


@require_GET
@portal_view()
def credit_note_detail(request: PortalRequest, pk: int) -> HttpResponse:
    note = credit_note_for(request, pk)
    context = {"note": note, "lines": note.lines.order_by("pk")}
    return render(request, "portal/credit_note.html", context)


# --- activity and export --------------------------------------------------------------

ACTIVITY_PAGE = 50


@require_GET
@portal_view()
def activity(request: PortalRequest) -> HttpResponse:
    return _page(request, "portal/activity.html", "entries", _activity_context(request))


def _activity_context(request: PortalRequest, **given: Any) -> dict[str, Any]:
    customer = request.membership.customer
    page = request.GET.get("page", "1")
    number = int(page) if page.isdigit() and 0 < int(page) < 10000 else 1
    kind = request.GET.get("kind", "")
    if kind not in selectors.ACTIVITY_KINDS:
        kind = ""
    items = selectors.activity_for(
        customer=customer,
        limit=ACTIVITY_PAGE + 1,
        offset=(number - 1) * ACTIVITY_PAGE,
        kind=kind or None,
    )
    zone = selectors.customer_zone(customer)
    return {
        "days": selectors.activity_by_day(items[:ACTIVITY_PAGE], zone),
        "zone": zone,
        "page": number,
        "next_page": number + 1 if len(items) > ACTIVITY_PAGE else None,
        "kind": kind,
        "kinds": [(key, label) for key, (label, _) in selectors.ACTIVITY_KINDS.items()],
        "export_form": forms.ExportForm(initial=forms.ExportForm.defaults()),
        "zone_form": forms.TimeZoneForm(initial={"timezone": customer.timezone}),
        **given,
    }


@require_POST
@portal_view(manage=True)
def activity_timezone(request: PortalRequest) -> HttpResponse:
    form = forms.TimeZoneForm(request.POST)
    if not form.is_valid():
        context = _activity_context(request, zone_form=form)
        return render(request, "portal/activity.html", context, status=400)
    customer = request.membership.customer
    customer.timezone = form.cleaned_data["timezone"]
    customer.save(update_fields=["timezone"])
    messages.success(request, f"Days and times now show in {customer.timezone}.")
    return redirect("portal:activity")


class _Echo:
    def write(self, value: str) -> str:
        return value


@require_GET
@portal_view()
def usage_export(request: PortalRequest) -> HttpResponseBase:
    form = forms.ExportForm(request.GET)
    if not form.is_valid():
        # The whole page for a plain request, the feed kept; htmx swaps only the form.
        context = _activity_context(request, export_form=form)
        return _page(request, "portal/activity.html", "export", context)
    start, end = form.cleaned_data["start"], form.cleaned_data["end"]
    rows = selectors.usage_export_rows(customer=request.membership.customer, start=start, end=end)
    writer = SafeWriter(_Echo())
    stream: Iterator[str] = (writer.writerow(row) for row in rows)
    response = StreamingHttpResponse(stream, content_type="text/csv; charset=utf-8")
    filename = f"usage-{start:%Y%m%d}-{end:%Y%m%d}.csv"
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    return response


# --- notifications ---------------------------------------------------------------------

NOTIFICATIONS_PAGE = 100


@require_GET
@portal_view()
def notifications(request: PortalRequest) -> HttpResponse:
    customer = request.membership.customer
    alerts = alert_selectors.alerts_for(customer=customer).select_related("period")
    return render(request, "portal/notifications.html", {"alerts": alerts[:NOTIFICATIONS_PAGE]})


@require_POST
@portal_view()
def notification_read(request: PortalRequest, pk: int) -> HttpResponse:
    """Reading a notification changes nothing billed, so viewers may do it too."""
    alert_services.alert_mark_read(alert=alert_for(request, pk))
    target = request.POST.get("next", "")
    if request.htmx:
        # The banner's place now shows the next unread notification, if any.
        latest = alert_selectors.alert_unread_latest(customer=request.membership.customer)
        context = {"alert": latest, "next": target}
        return render(request, "portal/_alert_banner.html", context)
    if url_has_allowed_host_and_scheme(
        target, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return redirect(target)
    return redirect("portal:notifications")


# --- team ------------------------------------------------------------------------------


def _team_context(request: PortalRequest, form: forms.InviteForm | None = None) -> dict[str, Any]:
    members = PortalMembership.objects.filter(customer_id=request.membership.customer_id)
    return {
        "members": members.select_related("user").order_by("created_at", "pk"),
        "invite_form": form or forms.InviteForm(),
        "roles": [(Role(role).label, text) for role, text in ROLE_HELP.items()],
    }


@require_GET
@portal_view()
def team(request: PortalRequest) -> HttpResponse:
    return render(request, "portal/team.html", _team_context(request))


@require_POST
@portal_view(owner=True)
def member_invite(request: PortalRequest) -> HttpResponse:
    form = forms.InviteForm(request.POST)
    if not form.is_valid():
        return _page(request, "portal/team.html", "invite", _team_context(request, form))
    services.member_invite(
        site_url=request.build_absolute_uri("/"),
        customer=request.membership.customer,
        email=form.cleaned_data["email"],
        role=form.cleaned_data["role"],
        invited_by=request.user,
    )
    messages.success(request, f"Invitation sent to {form.cleaned_data['email']}.")
    if request.htmx:
        return HttpResponseClientRedirect(reverse("portal:team"))
    return redirect("portal:team")


@require_POST
@portal_view(owner=True)
def member_resend(request: PortalRequest, pk: int) -> HttpResponse:
    member = member_for(request, pk)
    if member.pending:
        services.member_invite_resend(membership=member, site_url=request.build_absolute_uri("/"))
        messages.success(request, f"Invitation sent again to {member.user.email}.")
    else:
        messages.error(request, f"{member.user.email} has already signed in.")
    return redirect("portal:team")


@require_http_methods(["GET", "POST"])
@portal_view(owner=True)
def member_remove(request: PortalRequest, pk: int) -> HttpResponse:
    """GET asks for confirmation (what removing does); POST removes."""
    member = member_for(request, pk)
    if member.pk == request.membership.pk:
        messages.error(request, "You cannot remove yourself.")
        return redirect("portal:team")
    if request.method == "GET":
        return render(request, "portal/member_remove.html", {"member": member})
    was_pending = member.pending
    services.member_remove(membership=member)
    if was_pending:
        messages.success(request, f"The invitation to {member.user.email} is revoked.")
    else:
        messages.success(request, f"{member.user.email} removed.")
    return redirect("portal:team")
