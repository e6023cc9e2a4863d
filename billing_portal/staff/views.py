"""Staff workflow and report views, mounted inside the admin (see admin.py get_urls).

Every workflow is form -> confirmation -> one service call, and checks the operator's
permission on the server before anything else, on GET and POST alike.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from decimal import Decimal
from typing import Any, cast

from django import forms
from django.contrib import messages
from django.contrib.admin import AdminSite
from django.db.models import Count, Max, Min
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString

from billing_portal.invoicing.credit_notes import (
    credit_note_description,
    credit_note_preview,
    refunded_pack_credits,
)
from billing_portal.invoicing.margin import margin_report
from billing_portal.invoicing.models import CreditNote, Invoice, InvoiceLine
from billing_portal.invoicing.revenue import revenue_report
from billing_portal.invoicing.selectors import invoice_line_lineage
from billing_portal.staff import descriptions, display, services
from billing_portal.staff import forms as staff_forms
from billing_portal.staff.services import Reason, StaffError, require
from ledger.errors import DomainError
from ledger.models import ZERO, CreditGrant
from ledger.reconcile import run_checks
from ledger.selectors import account_balance
from metering.models import EventRating, MeterEvent, RatingQueue, RatingStatus, RejectedEvent
from plans.apikeys import ALL_SCOPES
from plans.models import (
    ApiKey,
    Customer,
    OveragePolicy,
    Subscription,
    SubscriptionStatus,
)

Perform = Callable[[dict[str, Any]], tuple[str, str]]
Summary = Callable[[dict[str, Any]], list[tuple[str, object]]]
Warnings = Callable[[dict[str, Any]], list[str]]


def _change_url(obj: Any) -> str:
    meta = obj._meta
    return reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[obj.pk])


def _reason(data: dict[str, Any]) -> Reason:
    return Reason(
        code=data["reason"],
        memo=data.get("memo", ""),
        description=data.get("description", ""),
        token=data["request_token"],
    )


def _link(obj: Any, text: object = None) -> SafeString:
    return format_html('<a href="{}">{}</a>', _change_url(obj), obj if text is None else text)


def customer_link(customer: Customer) -> SafeString:
    """A customer as staff recognise them: the name, then the external id."""
    text = f"{customer.name} ({customer.external_id})" if customer.name else customer.external_id
    return _link(customer, text)


def _credits(value: Decimal) -> str:
    return f"{display.credits(value)} credits"


def _choice_label(form: forms.Form, name: str, code: str) -> str:
    choices: Any = getattr(form.fields[name], "choices", [])
    return str(dict(choices).get(code, display.label(code)))


def _reason_rows(form: forms.Form, customer_sees: str | None) -> list[tuple[str, object]]:
    """Reason (its label), what the customer will read, and the memo staff keep."""
    data = form.cleaned_data
    rows: list[tuple[str, object]] = []
    if data.get("reason"):
        rows.append(("Reason", _choice_label(form, "reason", data["reason"])))
    if customer_sees is not None:
        rows.append(("The customer reads", customer_sees))
    if "memo" in form.fields:
        rows.append(("Internal memo (staff only)", data.get("memo") or "none"))
    return rows


def _workflow(
    request: HttpRequest,
    site: AdminSite,
    *,
    title: str,
    form: forms.Form,
    target: Any,
    summary: Summary,
    perform: Perform,
    extra: dict[str, Any] | None = None,
    customer_sees: Callable[[dict[str, Any]], str] | None = None,
    warnings: Warnings | None = None,
) -> HttpResponse:
    """Form, then a confirmation page showing what will happen, then the action."""
    stage = "form"
    rows: list[tuple[str, object]] = []
    notes: list[str] = []
    # "edit" comes back from the confirmation page to change the form.
    if request.method == "POST" and "edit" not in request.POST and form.is_valid():
        try:
            if "confirm" in request.POST:
                message, url = perform(form.cleaned_data)
                messages.success(request, message)
                return HttpResponseRedirect(url)
            rows = summary(form.cleaned_data)
            sees = customer_sees(form.cleaned_data) if customer_sees else None
            rows += _reason_rows(form, sees)
            notes = warnings(form.cleaned_data) if warnings else []
            stage = "confirm"
        except DomainError as exc:
            form.add_error(None, exc.message)
    context = {
        **site.each_context(request),
        "title": title,
        "form": form,
        "stage": stage,
        "summary": rows,
        "warnings": notes,
        "target": target,
        "cancel_url": _change_url(target) if target is not None else reverse("admin:index"),
        **(extra or {}),
    }
    return TemplateResponse(request, "admin/staff/workflow.html", context)


def _data(request: HttpRequest) -> Any:
    return request.POST if request.method == "POST" else None


# --- grants -----------------------------------------------------------------------------


def grant_create(request: HttpRequest, site: AdminSite, customer_id: int) -> HttpResponse:
    if not request.user.has_perm("staff.grant_credits"):
        require(request.user, "grant_promotional_credits")
    customer = get_object_or_404(Customer, pk=customer_id)
    form = staff_forms.GrantForm(_data(request), default_description=descriptions.GRANT_DEFAULT)

    def summary(data: dict[str, Any]) -> list[tuple[str, object]]:
        services.check_grant_allowed(request.user, amount=data["amount"], category=data["category"])
        balance = account_balance(account=customer.account)
        return [
            ("Customer", customer_link(customer)),
            ("Credits", _credits(data["amount"])),
            ("Category", display.label(data["category"])),
            ("Priority", data["priority"]),
            ("Expires", display.when(data["expires_at"], "never")),
            ("Meters", ", ".join(data["applies_to"]) or "all"),
            ("Workspace", data["workspace"] or "pooled"),
            ("Available now", _credits(balance.available)),
            ("Available after", _credits(balance.available + data["amount"])),
        ]

    def perform(data: dict[str, Any]) -> tuple[str, str]:
        grant = services.staff_grant_create(
            operator=request.user,
            customer=customer,
            amount=data["amount"],
            category=data["category"],
            priority=data["priority"],
            expires_at=data["expires_at"],
            applies_to=data["applies_to"],
            workspace=data["workspace"],
            reason=_reason(data),
        )
        message = (
            f"Granted {display.credits(grant.amount)} {display.label(grant.category).lower()} "
            f"credits to {customer} (grant {grant.pk})."
        )
        return message, _change_url(customer)

    return _workflow(
        request,
        site,
        title=f"Grant credits to {customer}",
        form=form,
        target=customer,
        summary=summary,
        perform=perform,
        customer_sees=lambda data: descriptions.grant_description(data["description"]),
        extra={"limit_note": _limit_note(request)},
    )


def _limit_note(request: HttpRequest) -> str:
    notes = []
    if not request.user.has_perm("staff.grant_credits"):
        limit = services.support_grant_limit()
        notes.append(
            f"Your role may grant promotional credits up to {display.credits(limit)} at once."
        )
    left = services.grant_daily_allowance_left(request.user)
    if left is not None:
        notes.append(f"You may grant {services.credits_exact(left)} more credits today.")
    return " ".join(notes)


def grant_close(
    request: HttpRequest, site: AdminSite, grant_id: int, *, expire: bool
) -> HttpResponse:
    require(request.user, "void_grant")
    grant = get_object_or_404(CreditGrant, pk=grant_id)
    customer = Customer.objects.select_related("account").get(account_id=grant.account_id)
    verb, done = ("Expire", "expired") if expire else ("Void", "voided")
    describe = descriptions.expire_description if expire else descriptions.void_description
    default = describe("", "")  # the sentence without its reason
    form = staff_forms.CustomerReasonForm(
        _data(request), default_description=f"{default}: <the reason's label>"
    )

    def summary(data: dict[str, Any]) -> list[tuple[str, object]]:
        grant.refresh_from_db()
        now, after = _available_now_and_after(customer, grant)
        return [
            ("Customer", customer_link(customer)),
            ("Grant", _link(grant, _grant_words(grant))),
            ("Status", display.label(grant.status)),
            ("Granted", _credits(grant.amount)),
            ("Consumed (stays consumed)", _credits(grant.amount - grant.remaining)),
            (f"Credits that will be {done}", _credits(grant.remaining)),
            ("Customer's available balance now", _credits(now)),
            (f"Available balance after ({verb.lower()})", _credits(after)),
        ]

    def warnings(data: dict[str, Any]) -> list[str]:
        _, after = _available_now_and_after(customer, grant)
        if after > ZERO:
            return []
        return [f"{customer} ends with no credits available. {_what_happens_at_zero(customer)}"]

    def perform(data: dict[str, Any]) -> tuple[str, str]:
        closed = services.staff_grant_close(
            operator=request.user, grant=grant, reason=_reason(data), expire=expire
        )
        return f"Grant {closed.pk} of {customer} is {closed.status}.", _change_url(closed)

    return _workflow(
        request,
        site,
        title=f"{verb} grant {grant.pk} of {customer}",
        form=form,
        target=grant,
        summary=summary,
        perform=perform,
        customer_sees=lambda data: describe(data["reason"], data["description"]),
        warnings=warnings,
        extra={"credits_left": grant.remaining, "target_label": _grant_words(grant)},
    )


def _grant_words(grant: CreditGrant) -> str:
    return (
        f"Grant {grant.pk}: {display.credits(grant.amount)} "
        f"{display.label(grant.category).lower()} credits"
    )


def _available_now_and_after(customer: Customer, grant: CreditGrant) -> tuple[Decimal, Decimal]:
    """The available balance, and what it is once the grant's credits left are gone."""
    balance = account_balance(account=customer.account)
    # Only a grant usable now counts in the balance: closing an unusable one changes nothing.
    counted = any(g.pk == grant.pk for g in balance.grants)
    return balance.available, balance.available - (grant.remaining if counted else ZERO)


def _what_happens_at_zero(customer: Customer) -> str:
    subscription = (
        Subscription.objects.filter(customer=customer, status=SubscriptionStatus.ACTIVE)
        .select_related("plan_version")
        .first()
    )
    if subscription is None:
        return "They have no active subscription: requests that need credits are refused."
    policy = subscription.plan_version.overage_policy
    if policy == OveragePolicy.HARD_STOP:
        return "Their plan stops at zero: requests that need credits will be refused."
    if policy == OveragePolicy.SOFT_LIMIT:
        return "Their plan allows a small overage, then refuses requests."
    return "Their plan bills usage beyond their credits as overage at period end."


# --- meter events -------------------------------------------------------------------------


def _event_summary(event: MeterEvent) -> list[tuple[str, object]]:
    rating = getattr(event, "rating", None)
    charged = _credits(rating.credits) if rating is not None else "not rated yet"
    return [
        ("Event", _link(event, event.identifier)),
        ("Customer", customer_link(event.customer)),
        ("Timestamp", display.when(event.timestamp)),
        ("Value", display.credits(event.value)),
        ("Dimensions", ", ".join(f"{k}: {v}" for k, v in sorted(event.dimensions.items()))),
        ("Credits charged (given back)", charged),
    ]


def _correction_sees(data: dict[str, Any]) -> str:
    return descriptions.correction_description(data["reason"], data["description"])


def event_cancel(request: HttpRequest, site: AdminSite, event_id: int) -> HttpResponse:
    require(request.user, "correct_usage")
    event = get_object_or_404(MeterEvent.objects.select_related("customer"), pk=event_id)
    form = staff_forms.CustomerReasonForm(
        _data(request), default_description="Usage corrected: <the reason's label>"
    )

    def perform(data: dict[str, Any]) -> tuple[str, str]:
        services.staff_event_cancel(operator=request.user, event=event, reason=_reason(data))
        return f"Event {event.identifier} canceled; its debit is reversed.", _change_url(event)

    return _workflow(
        request,
        site,
        title=f"Cancel event {event.identifier}",
        form=form,
        target=event,
        summary=lambda data: _event_summary(event),
        perform=perform,
        customer_sees=_correction_sees,
    )


def event_correct(request: HttpRequest, site: AdminSite, event_id: int) -> HttpResponse:
    require(request.user, "correct_usage")
    event = get_object_or_404(MeterEvent.objects.select_related("customer"), pk=event_id)
    initial = {
        "identifier": f"{event.identifier}-corrected"[:255],
        "value": event.value,
        "dimensions": json.dumps(event.dimensions, sort_keys=True),
    }
    form = staff_forms.CorrectEventForm(
        _data(request),
        initial=initial,
        default_description="Usage corrected: <the reason's label>",
    )

    def summary(data: dict[str, Any]) -> list[tuple[str, object]]:
        return [
            *_event_summary(event),
            ("Replacement identifier", data["identifier"]),
            ("Replacement value", display.credits(data["value"])),
            (
                "Replacement dimensions",
                ", ".join(f"{k}: {v}" for k, v in sorted(data["dimensions"].items())) or "none",
            ),
        ]

    def perform(data: dict[str, Any]) -> tuple[str, str]:
        replacement = services.staff_event_correct(
            operator=request.user,
            event=event,
            reason=_reason(data),
            identifier=data["identifier"],
            value=data["value"],
            dimensions=data["dimensions"],
        )
        return (
            f"Event {event.identifier} replaced by {replacement.identifier}.",
            _change_url(replacement),
        )

    return _workflow(
        request,
        site,
        title=f"Correct event {event.identifier}",
        form=form,
        target=event,
        summary=summary,
        perform=perform,
        customer_sees=_correction_sees,
    )


# --- invoices and credit notes ------------------------------------------------------------

METHOD_OUTCOMES = {
    "refund": "Stripe refunds {total} to the customer's payment method.",
    "customer_credit": "{total} is added to the customer's Stripe balance and reduces "
    "their next invoice.",
    "out_of_band": "Nothing is paid back through Stripe: settle {total} with the customer "
    "yourself (e.g. a bank transfer).",
}


def credit_note_issue(request: HttpRequest, site: AdminSite, invoice_id: int) -> HttpResponse:
    require(request.user, "issue_credit_note")
    invoice = get_object_or_404(Invoice.objects.select_related("customer"), pk=invoice_id)
    form = staff_forms.CreditNoteForm(_data(request), invoice=invoice)

    def money(value: Decimal) -> str:
        return display.amount(value, invoice.currency)

    def summary(data: dict[str, Any]) -> list[tuple[str, object]]:
        credits = credit_note_preview(invoice=invoice, lines=form.lines(), amount=data["amount"])
        total = sum((c.amount for c in credits), Decimal("0"))
        rows: list[tuple[str, object]] = [
            ("Customer", customer_link(invoice.customer)),
            ("Invoice", _link(invoice, invoice.number)),
            ("Invoice total", display.money(invoice.total)),
        ]
        rows += [(f"Credit on {c.line.description}", money(c.amount)) for c in credits]
        rows += [
            ("Credit note total", money(total)),
            ("Method", _choice_label(form, "method", data["method"])),
            ("Money", METHOD_OUTCOMES[data["method"]].format(total=money(total))),
            ("Credits", _credits_outcome(invoice, credits, data["method"])),
            ("Stripe", _stripe_outcome(invoice)),
            (
                "The customer",
                "sees the credit note in their portal under Billing, with the sentence below",
            ),
        ]
        return rows

    def perform(data: dict[str, Any]) -> tuple[str, str]:
        note = services.staff_credit_note_issue(
            operator=request.user,
            invoice=invoice,
            reason=_reason(data),
            method=data["method"],
            lines=form.lines(),
            amount=data["amount"],
        )
        return (
            f"Credit note {note.number} issued for {display.money(note.total)}.",
            _change_url(note),
        )

    return _workflow(
        request,
        site,
        title=f"Issue a credit note on invoice {invoice.number}",
        form=form,
        target=invoice,
        summary=summary,
        perform=perform,
        customer_sees=lambda data: data["description"].strip() or credit_note_description(invoice),
    )


def _credits_outcome(invoice: Invoice, credits: list[Any], method: str) -> str:
    lines = [c.line for c in credits]
    left = refunded_pack_credits(invoice, lines) if method == "refund" else None
    if left is None:
        return "no credit balance changes"
    return f"the pack's {_credits(left)} still unused are voided (credits already used stay used)"


def _stripe_outcome(invoice: Invoice) -> str:
    if not invoice.stripe_invoice_id:
        return "the invoice is not in Stripe: nothing is sent"
    return "a credit note is created on the Stripe invoice after this is confirmed"


def credit_note_void(request: HttpRequest, site: AdminSite, note_id: int) -> HttpResponse:
    require(request.user, "issue_credit_note")
    note = get_object_or_404(CreditNote, pk=note_id)
    form = staff_forms.ReasonForm(_data(request))

    def perform(data: dict[str, Any]) -> tuple[str, str]:
        voided = services.staff_credit_note_void(
            operator=request.user, credit_note=note, reason=_reason(data)
        )
        return f"Credit note {voided.number} voided.", _change_url(voided)

    return _workflow(
        request,
        site,
        title=f"Void credit note {note.number}",
        form=form,
        target=note,
        summary=lambda data: [
            ("Credit note", _link(note, note.number)),
            ("Invoice", _link(note.invoice, note.invoice.number)),
            ("Total", display.money(note.total)),
        ],
        perform=perform,
    )


def sync_retry(
    request: HttpRequest, site: AdminSite, pk: int, *, model: type[Invoice] | type[CreditNote]
) -> HttpResponse:
    require(request.user, "retry_sync")
    target = cast(Invoice | CreditNote, get_object_or_404(model, pk=pk))
    form = staff_forms.ReasonForm(_data(request))

    def perform(data: dict[str, Any]) -> tuple[str, str]:
        retried = services.staff_sync_retry(
            operator=request.user, target=target, reason=_reason(data)
        )
        return f"Stripe sync of {retried.number} queued ({retried.sync_state}).", _change_url(
            retried
        )

    return _workflow(
        request,
        site,
        title=f"Retry the Stripe sync of {target.number}",
        form=form,
        target=target,
        summary=lambda data: [
            ("Document", _link(target, target.number)),
            ("Sync state", display.label(target.sync_state)),
            ("Last error", target.sync_error or "none"),
        ],
        perform=perform,
    )


# --- subscriptions ------------------------------------------------------------------------


def plan_change(request: HttpRequest, site: AdminSite, customer_id: int) -> HttpResponse:
    require(request.user, "change_plan")
    customer = get_object_or_404(Customer, pk=customer_id)
    subscription = (
        Subscription.objects.filter(customer=customer, status=SubscriptionStatus.ACTIVE)
        .select_related("plan_version__plan")
        .first()
    )
    if subscription is None:
        messages.error(request, f"{customer} has no active subscription to change.")
        return HttpResponseRedirect(_change_url(customer))
    form = staff_forms.PlanChangeForm(_data(request))

    def perform(data: dict[str, Any]) -> tuple[str, str]:
        changed = services.staff_plan_change(
            operator=request.user,
            subscription=subscription,
            plan=data["plan"],
            when=data["when"] or None,
            reason=_reason(data),
        )
        pending = changed.pending_plan_version
        note = f", {pending} from period end" if pending else ""
        return f"{customer} is on {changed.plan_version}{note}.", _change_url(customer)

    return _workflow(
        request,
        site,
        title=f"Change the plan of {customer}",
        form=form,
        target=customer,
        summary=lambda data: [
            ("Current plan", subscription.plan_version),
            ("New plan", data["plan"]),
            ("When", data["when"] or "default: upgrades now, downgrades at period end"),
            ("Current period ends", display.when(subscription.current_period_end)),
        ],
        perform=perform,
    )


# --- API keys and the catalog ------------------------------------------------------------


def api_key_create(request: HttpRequest, site: AdminSite) -> HttpResponse:
    require(request.user, "manage_api_keys")
    form = staff_forms.ApiKeyForm(_data(request), initial={"scopes": list(ALL_SCOPES)})
    if request.method == "POST" and "confirm" in request.POST and form.is_valid():
        try:
            api_key, secret = services.staff_api_key_create(
                operator=request.user,
                name=form.cleaned_data["name"],
                scopes=form.cleaned_data["scopes"],
                reason=_reason(form.cleaned_data),
            )
        except StaffError as exc:
            form.add_error(None, exc.message)
        else:
            # Shown on this response only: the secret is not stored, only its hash.
            context = {**site.each_context(request), "title": "API key created"}
            context.update(api_key=api_key, secret=secret)
            response = TemplateResponse(request, "admin/staff/api_key_created.html", context)
            response["Cache-Control"] = "no-store"
            return response
    return _workflow(
        request,
        site,
        title="Create an API key",
        form=form,
        target=None,
        summary=lambda data: [("Name", data["name"]), ("Scopes", ", ".join(data["scopes"]))],
        perform=lambda data: ("", ""),  # never reached: the confirm POST is handled above
    )


def api_key_revoke(request: HttpRequest, site: AdminSite, key_id: int) -> HttpResponse:
    require(request.user, "manage_api_keys")
    api_key = get_object_or_404(ApiKey, pk=key_id)
    form = staff_forms.ReasonForm(_data(request))

    def perform(data: dict[str, Any]) -> tuple[str, str]:
        services.staff_api_key_revoke(operator=request.user, api_key=api_key, reason=_reason(data))
        return f"API key {api_key.prefix} revoked.", _change_url(api_key)

    return _workflow(
        request,
        site,
        title=f"Revoke API key {api_key.prefix}",
        form=form,
        target=api_key,
        summary=lambda data: [("Key", api_key.prefix), ("Name", api_key.name)],
        perform=perform,
    )


def catalog_edit(request: HttpRequest, site: AdminSite) -> HttpResponse:
    from plans import catalog

    require(request.user, "edit_catalog")
    form = staff_forms.CatalogForm(_data(request), initial={"text": catalog.dump()})

    def summary(data: dict[str, Any]) -> list[tuple[str, object]]:
        try:
            catalog.parse(data["text"])
        except catalog.CatalogError as exc:
            raise StaffError(str(exc), "text") from exc
        return [("Catalog", "valid; versions in use will be kept and new versions created")]

    def perform(data: dict[str, Any]) -> tuple[str, str]:
        changes = services.staff_catalog_load(
            operator=request.user, text=data["text"], reason=_reason(data)
        )
        message = "; ".join(changes) or "Nothing changed."
        return message, reverse("admin:plans_plan_changelist")

    return _workflow(
        request,
        site,
        title="Edit plans and rate cards",
        form=form,
        target=None,
        summary=summary,
        perform=perform,
    )


# --- reports ------------------------------------------------------------------------------


def _report(
    request: HttpRequest, site: AdminSite, template: str, title: str, **context: Any
) -> HttpResponse:
    require(request.user, "read_reports")
    full = {**site.each_context(request), "title": title, **context}
    return TemplateResponse(request, f"admin/staff/{template}", full)


def _month_asked(request: HttpRequest) -> tuple[staff_forms.MonthForm, date]:
    """The month picker's month; this month when none (or no valid one) is given."""
    form = staff_forms.MonthForm(request.GET or None)
    month = timezone.now().date().replace(day=1)
    if form.is_valid() and form.cleaned_data["month"]:
        month = cast(date, form.cleaned_data["month"])
    # Shown again with the month in force, so the picker never renders empty.
    return staff_forms.MonthForm(initial={"month": month}), month


def report_revenue(request: HttpRequest, site: AdminSite) -> HttpResponse:
    require(request.user, "read_reports")
    form, month = _month_asked(request)
    report = revenue_report(month=month)
    return _report(request, site, "report_revenue.html", "Revenue report", form=form, report=report)


def report_margin(request: HttpRequest, site: AdminSite) -> HttpResponse:
    require(request.user, "read_reports")
    form, month = _month_asked(request)
    report = margin_report(month=month)
    return _report(request, site, "report_margin.html", "Margin report", form=form, report=report)


def report_reconciliation(request: HttpRequest, site: AdminSite) -> HttpResponse:
    require(request.user, "read_reports")
    findings = run_checks()
    failing = [f for f in findings if f.problems]
    return _report(
        request,
        site,
        "report_reconciliation.html",
        "Reconciliation",
        findings=findings,
        failing=failing,
    )


# The latest unratable events listed one by one; the table above them counts them all.
UNRATABLE_LISTED = 100


def report_unmatched(request: HttpRequest, site: AdminSite) -> HttpResponse:
    require(request.user, "read_reports")
    rows = (
        RejectedEvent.objects.values("code", "customer_external_id")
        .annotate(count=Count("pk"), last=Max("received_at"))
        .order_by("-count", "code", "customer_external_id")
    )
    unratable = (
        EventRating.objects.filter(status=RatingStatus.UNRATABLE)
        .values("error_code", "event__customer__external_id")
        .annotate(count=Count("pk"), last=Max("rated_at"))
        .order_by("-count", "error_code")
    )
    latest_unratable = (
        EventRating.objects.filter(status=RatingStatus.UNRATABLE)
        .select_related("event__customer")
        .order_by("-rated_at", "-event_id")[:UNRATABLE_LISTED]
    )
    failing = (
        RatingQueue.objects.filter(attempts__gt=0)
        .values("event__customer__external_id")
        .annotate(count=Count("pk"), parked=Count("parked_at"), oldest=Min("enqueued_at"))
        .order_by("oldest")
    )
    return _report(
        request,
        site,
        "report_unmatched.html",
        "Unmatched events",
        rows=list(rows),
        unratable=list(unratable),
        latest_unratable=list(latest_unratable),
        failing=list(failing),
    )


def report_lineage(request: HttpRequest, site: AdminSite, line_id: int) -> HttpResponse:
    require(request.user, "read_reports")
    line = get_object_or_404(InvoiceLine.objects.select_related("invoice"), pk=line_id)
    lineage = invoice_line_lineage(line=line)
    return _report(
        request, site, "report_lineage.html", f"Lineage of invoice line {line.pk}", lineage=lineage
    )
