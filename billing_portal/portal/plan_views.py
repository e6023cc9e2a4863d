"""Changing plan and cancelling, each through a page that shows what will happen first.

The comparison offers the catalog's public plans (and the customer's own, which they keep
even when it is no longer offered); choosing one opens a confirmation with the prorated
charge and what changes today and at renewal; cancelling shows both ways (now, or at the
end of the period) with what each gives back and writes off. Every figure comes from the
services' previews (``plans.services.*_preview``), the code the change then applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from django import forms
from django.contrib import messages
from django.db.models import Q
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.formats import date_format
from django.utils.timezone import localtime
from django.views.decorators.http import require_GET, require_http_methods
from djmoney.money import Money

from billing_portal.portal.access import PortalRequest, portal_view
from billing_portal.portal.selectors import when_credits_run_out
from ledger.actors import Actor
from ledger.units import credits_exact, credits_text, to_cents
from plans import selectors as plan_selectors
from plans.models import Feature, Meter, Plan, PlanVersion, Subscription
from plans.money import as_money
from plans.services import (
    CancelPreview,
    PlanChangePreview,
    SubscriptionError,
    When,
    plan_version_current,
    subscription_cancel,
    subscription_cancel_preview,
    subscription_change_plan,
    subscription_change_plan_preview,
)

# Whole amounts without cents ("$49"); the locale still places the symbol and separators.
_WHOLE = {"format": "¤#,##0", "currency_digits": False}


def money_text(value: Money) -> str:
    """Money for people: with its currency, thousands separated, cents only when any."""
    amount = to_cents(value.amount)
    if amount == amount.to_integral_value():
        whole = Money(amount, value.currency)
        whole.format_options = _WHOLE
        return str(whole)
    return str(Money(amount, value.currency))


def day_text(moment: datetime) -> str:
    """A day as the portal's pages write it (9 Mar 2026), in the viewer's zone."""
    return date_format(localtime(moment), "j M Y")


def _actor(request: PortalRequest) -> str:
    return str(Actor.portal(request.user.get_username()))


# --- what a plan offers, worded for people -----------------------------------------------


@dataclass(frozen=True)
class FeatureText:
    code: str
    name: str
    text: str  # "Included", "Not included", "Up to 500 summaries a month"
    included: bool


@dataclass(frozen=True)
class PlanCard:
    plan: Plan
    version: PlanVersion
    price: str
    included_credits: str
    overage: str
    rollover: str
    features: list[FeatureText]
    current: bool
    scheduled: bool  # the plan the subscription changes to at renewal


def _feature_name(code: str) -> str:
    name = code.replace("_", " ").replace("-", " ")
    return name[:1].upper() + name[1:]


def _feature_text(
    feature: Feature | None, code: str, interval: str, units: dict[str, str]
) -> FeatureText:
    if feature is None or not feature.enabled:
        return FeatureText(code, _feature_name(code), "Not included", False)
    if feature.limit is None:
        return FeatureText(code, _feature_name(code), "Included", True)
    unit = units.get(feature.meter or "", "units")
    text = f"Up to {credits_exact(feature.limit)} {unit} a {interval}"
    return FeatureText(code, _feature_name(code), text, True)


def _features(versions: list[PlanVersion]) -> dict[int, list[FeatureText]]:
    """Each version's features over the codes of all of them, so plans compare row by row."""
    codes = sorted({f.code for v in versions for f in v.feature_list()})
    units = dict(Meter.objects.values_list("code", "unit"))
    return {
        v.pk: [
            _feature_text(
                next((f for f in v.feature_list() if f.code == code), None),
                code,
                v.interval,
                units,
            )
            for code in codes
        ]
        for v in versions
    }


def price_text(version: PlanVersion) -> str:
    return f"{money_text(as_money(version.base_fee))} a {version.interval}"


def _rollover(version: PlanVersion) -> str:
    if version.rollover_max_credits is None:
        return "Unused credits expire at renewal"
    return f"Up to {credits_text(version.rollover_max_credits)} unused credits carry over"


def _cards(subscription: Subscription | None) -> list[PlanCard]:
    current = subscription.plan_version if subscription else None
    pending = subscription.pending_plan_version if subscription else None
    plans = Plan.objects.filter(Q(public=True) | Q(pk=current.plan_id if current else None))
    versions: list[PlanVersion] = []
    for plan in plans:
        # The customer's own plan is shown as they have it, even if a newer version exists.
        if current is not None and plan.pk == current.plan_id:
            versions.append(current)
        elif plan.versions.exists():
            versions.append(plan_version_current(plan))
    versions.sort(key=lambda v: (as_money(v.base_fee).amount, v.included_credits, v.plan.code))
    features = _features(versions)
    return [
        PlanCard(
            plan=v.plan,
            version=v,
            price=price_text(v),
            included_credits=credits_text(v.included_credits),
            overage=when_credits_run_out(v, None),
            rollover=_rollover(v),
            features=features[v.pk],
            current=current is not None and v.pk == current.pk,
            scheduled=pending is not None and v.plan_id == pending.plan_id,
        )
        for v in versions
    ]


def _subscription(request: PortalRequest) -> Subscription | None:
    return plan_selectors.subscription_active(customer=request.membership.customer)


def _offered_plan(request: PortalRequest, code: str, subscription: Subscription) -> Plan:
    """A plan the customer may move to: a public one, or the one they have."""
    offered = Q(public=True) | Q(pk=subscription.plan_version.plan_id)
    plan = Plan.objects.filter(offered, code=code).first()
    if plan is None:
        raise Http404("no such plan")
    return plan


# --- the comparison ----------------------------------------------------------------------


class PlanPickForm(forms.Form):
    """A plan chosen by its code: one the portal offers the customer, nothing else."""

    plan = forms.ModelChoiceField(queryset=Plan.objects.none(), to_field_name="code")

    def __init__(self, *args: Any, subscription: Subscription | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        own = subscription.plan_version.plan_id if subscription else None
        field = self.fields["plan"]
        assert isinstance(field, forms.ModelChoiceField)
        field.queryset = Plan.objects.filter(Q(public=True) | Q(pk=own))


def _compare_page(
    request: PortalRequest, form: PlanPickForm | None = None, status: int = 200
) -> HttpResponse:
    subscription = _subscription(request)
    context = {
        "subscription": subscription,
        "cards": _cards(subscription),
        "pick_form": form,
    }
    return render(request, "portal/plans.html", context, status=status)


@require_GET
@portal_view()
def plans_compare(request: PortalRequest) -> HttpResponse:
    return _compare_page(request)


def plan_picked(request: PortalRequest) -> HttpResponse:
    """A plan posted without its confirmation (the billing page's old form, a script):
    nothing changes, the customer is sent to the confirmation page."""
    subscription = _subscription(request)
    form = PlanPickForm(request.POST, subscription=subscription)
    if not form.is_valid():
        return _compare_page(request, form)
    if subscription is None:
        messages.error(request, "You have no active subscription to change.")
        return redirect("portal:plans")
    return redirect(_confirm_url(form.cleaned_data["plan"].code))


# --- the confirmation of a plan change ---------------------------------------------------


def _confirm_url(code: str) -> str:
    return f"{reverse('portal:plan_confirm')}?{urlencode({'plan': code})}"


@dataclass(frozen=True)
class FeatureChange:
    name: str
    before: str
    after: str


def _feature_changes(preview: PlanChangePreview) -> list[FeatureChange]:
    old, new = preview.from_version, preview.to_version
    features = _features([old, new]) if old.pk != new.pk else {old.pk: [], new.pk: []}
    return [
        FeatureChange(b.name, b.text, a.text)
        for b, a in zip(features[old.pk], features[new.pk], strict=True)
        if b.text != a.text
    ]


def _confirm_context(subscription: Subscription, preview: PlanChangePreview) -> dict[str, Any]:
    new = preview.to_version
    proration = preview.proration
    return {
        "subscription": subscription,
        "preview": preview,
        "old_price": price_text(preview.from_version),
        "new_price": price_text(new),
        "new_credits": credits_text(new.included_credits),
        "old_credits": credits_text(preview.from_version.included_credits),
        "charge": money_text(proration) if proration is not None and proration.amount > 0 else None,
        "credit": money_text(-proration)
        if proration is not None and proration.amount < 0
        else None,
        "extra_credits": credits_text(preview.extra_included_credits)
        if preview.extra_included_credits > 0
        else None,
        "renewal": subscription.current_period_end,
        "feature_changes": _feature_changes(preview),
        "overage": when_credits_run_out(new, None),
        "rollover": _rollover(new),
        "old_rollover": _rollover(preview.from_version),
    }


def _change_message(subscription: Subscription, preview: PlanChangePreview) -> str:
    name = preview.to_version.name
    if preview.when == "period_end":
        if preview.to_version.pk == preview.from_version.pk:
            return f"You stay on {name}: the change planned for the renewal is cancelled."
        return f"Your plan changes to {name} on {day_text(subscription.current_period_end)}."
    change = subscription.changes.order_by("-pk").first()
    recorded = as_money(change.proration) if change and change.proration is not None else None
    charged = f" {money_text(recorded)} is added to this period's invoice." if recorded else ""
    return f"Your plan is now {name}.{charged}"


@require_http_methods(["GET", "POST"])
@portal_view(manage=True)
def plan_confirm(request: PortalRequest) -> HttpResponse:
    """The plan is named by ``plan`` (its catalog code), in the form or the query."""
    code = request.POST.get("plan") or request.GET.get("plan", "")
    subscription = _subscription(request)
    if subscription is None:
        messages.error(request, "You have no active subscription to change.")
        return redirect("portal:billing")
    plan = _offered_plan(request, code, subscription)
    try:
        preview = subscription_change_plan_preview(subscription=subscription, plan=plan)
    except SubscriptionError as exc:
        messages.error(request, str(exc))
        return redirect("portal:plans")
    if preview.unchanged:
        messages.info(request, f"You are already on {preview.to_version.name}.")
        return redirect("portal:plans")
    if request.method == "POST":
        # The page confirmed one version and one timing: if the catalog moved on since,
        # the customer sees the new figures before anything is charged.
        seen = (request.POST.get("version"), request.POST.get("when"))
        if seen != (str(preview.to_version.pk), preview.when):
            messages.error(request, "The plan's terms changed: check them again and confirm.")
            return redirect(_confirm_url(plan.code))
        try:
            subscription = subscription_change_plan(
                subscription=subscription, plan=plan, actor=_actor(request), when=preview.when
            )
        except SubscriptionError as exc:
            messages.error(request, str(exc))
            return redirect("portal:billing")
        messages.success(request, _change_message(subscription, preview))
        return redirect("portal:billing")
    return render(request, "portal/plan_confirm.html", _confirm_context(subscription, preview))


# --- the confirmation of a cancellation --------------------------------------------------


@dataclass(frozen=True)
class CancelChoice:
    preview: CancelPreview
    refund: str | None
    credits_written_off: str | None


def _cancel_choice(preview: CancelPreview) -> CancelChoice:
    refund = preview.refund
    return CancelChoice(
        preview,
        money_text(-refund) if refund is not None and refund.amount < 0 else None,
        credits_text(preview.credits_written_off) if preview.credits_written_off > 0 else None,
    )


@require_http_methods(["GET", "POST"])
@portal_view(manage=True)
def cancel_confirm(request: PortalRequest) -> HttpResponse:
    subscription = _subscription(request)
    if subscription is None:
        messages.error(request, "You have no active subscription to cancel.")
        return redirect("portal:billing")
    if request.method == "POST":
        chosen = request.POST.get("when")
        if chosen not in ("now", "period_end"):
            messages.error(request, "Choose when the subscription ends.")
            return redirect("portal:cancel_confirm")
        when: When = "now" if chosen == "now" else "period_end"
        subscription = subscription_cancel(
            subscription=subscription, actor=_actor(request), when=when
        )
        messages.success(request, _cancel_message(subscription, when))
        return redirect("portal:billing")
    context = {
        "subscription": subscription,
        "at_end": _cancel_choice(subscription_cancel_preview(subscription=subscription)),
        "now": _cancel_choice(subscription_cancel_preview(subscription=subscription, when="now")),
    }
    return render(request, "portal/cancel_confirm.html", context)


def _cancel_message(subscription: Subscription, when: When) -> str:
    if when == "now":
        return "Your subscription is cancelled."
    ends = day_text(subscription.current_period_end)
    return f"Your subscription ends on {ends}; nothing changes until then."
