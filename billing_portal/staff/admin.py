"""The staff admin: every billing model, read-only, with workflows for every change.

Rows are never added, edited or deleted through the generic admin forms: grants, voids,
corrections, credit notes, plan changes and keys go through the workflow pages
(views.py), which call the same services as the API and write an audit row.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from decimal import Decimal
from functools import partial
from typing import Any
from urllib.parse import urlencode

from django.apps import apps
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import models
from django.db.models import OuterRef, Q, QuerySet, Subquery, Sum, Value
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString, mark_safe

from billing_portal.invoicing.collection import UNPAID, past_due_for, subscription_status
from billing_portal.invoicing.models import (
    CreditNote,
    CreditNoteLine,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    SyncState,
)
from billing_portal.staff import descriptions, display, views
from billing_portal.staff import services as staff_services
from billing_portal.staff.models import AuditLog
from ledger.models import ZERO, CreditGrant, GrantStatus, LedgerEntry, LedgerOperation
from ledger.selectors import account_balance
from metering.models import EventCancellation, MeterEvent, RatingQueue, RejectedEvent
from metering.selectors import entitlements_for
from plans.models import (
    ApiKey,
    Customer,
    Plan,
    PlanVersion,
    Rate,
    RateCard,
    RateCardVersion,
    Subscription,
)
from plans.money import as_money
from plans.tiers import tiers_of

RECENT_EVENTS = 20

# The index lists the reports next to the models (for roles that may read them).
admin.site.index_template = "admin/staff/index.html"
admin.site.site_header = "Billing staff"
admin.site.site_title = "Billing staff"
admin.site.index_title = "Customers, credits, usage and invoices"


def _links(*links: tuple[str, str]) -> SafeString:
    return format_html_join(
        " ", '<a class="button" href="{}">{}</a>', ((url, label) for url, label in links)
    )


class ReadOnlyAdmin(admin.ModelAdmin):
    """No add, change or delete: changes go through the workflows only."""

    # Links stored from Stripe are https; also Django 6's default for a scheme-less URL.
    formfield_overrides = {models.URLField: {"assume_scheme": "https"}}

    class Media:
        css = {"all": ["staff/admin.css"]}

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def workflow_urls(
        self, routes: list[tuple[str, Callable[..., HttpResponse], str]]
    ) -> list[URLPattern]:
        meta = self.model._meta
        return [
            path(
                route,
                self.admin_site.admin_view(partial(view, site=self.admin_site)),
                name=f"{meta.app_label}_{meta.model_name}_{name}",
            )
            for route, view, name in routes
        ]


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


# --- customers and grants -----------------------------------------------------------------


def _past_due_note(customer: Customer) -> str:
    past_due = past_due_for(customer=customer)
    if past_due is None:
        return ""
    note = (
        f"; PAST DUE since {display.when(past_due.since)}: "
        f"{display.money(past_due.amount_due)} unpaid on {past_due.invoice.number}"
    )
    if past_due.access_paused_at is None:
        return f"{note}, usage allowed meanwhile (plan)"
    return f"{note}, requests refused from {display.when(past_due.access_paused_at)}"


def _changelist(model: str, **filters: object) -> str:
    query = urlencode(filters)
    return f"{reverse(f'admin:{model}_changelist')}{'?' if query else ''}{query}"


def _customer_cell(customer: Customer | None) -> SafeString | str:
    return views.customer_link(customer) if customer is not None else display.DASH


def _table(headers: list[str], rows: Any, numeric: set[int] | None = None) -> SafeString:
    """A small table inside a change page; columns in ``numeric`` are right-aligned."""
    numeric = numeric or set()
    head = format_html_join(
        "",
        '<th scope="col"{}>{}</th>',
        ((mark_safe(' class="num"') if i in numeric else "", h) for i, h in enumerate(headers)),
    )
    body = format_html_join(
        "",
        "<tr>{}</tr>",
        (
            (
                format_html_join(
                    "",
                    "<td{}>{}</td>",
                    (
                        (mark_safe(' class="num"') if i in numeric else "", cell)
                        for i, cell in enumerate(row)
                    ),
                ),
            )
            for row in rows
        ),
    )
    return format_html('<table class="staff-table"><tr>{}</tr>{}</table>', head, body)


def _usable_remaining() -> Subquery:
    now = timezone.now()
    usable = (
        CreditGrant.objects.filter(
            Q(expires_at__isnull=True) | Q(expires_at__gt=now),
            account_id=OuterRef("account_id"),
            status=GrantStatus.ACTIVE,
            effective_at__lte=now,
        )
        .order_by()
        .values("account_id")
        .annotate(total=Sum("remaining"))
        .values("total")
    )
    return Subquery(usable)


@admin.register(Customer)
class CustomerAdmin(ReadOnlyAdmin):
    list_display = ["external_id", "name", "plan", "available", "currency", "created_at"]
    search_fields = ["external_id", "name", "email"]
    readonly_fields = (
        "external_id",
        "name",
        "email",
        "currency",
        "stripe_customer_id",
        "workflows",
        "related",
        "balance",
        "subscription",
        "features",
        "grants",
        "portal_users",
        "recent_events",
    )
    fields = readonly_fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Customer]:
        latest = Subscription.objects.filter(customer=OuterRef("pk")).order_by("-created_at")
        return (
            super()
            .get_queryset(request)
            .select_related("account")
            .annotate(
                plan_code=Subquery(latest.values("plan_version__plan__code")[:1]),
                plan_name=Subquery(latest.values("plan_version__name")[:1]),
                posted=Coalesce(_usable_remaining(), Value(ZERO)),
            )
        )

    def get_urls(self) -> list[URLPattern]:
        return (
            self.workflow_urls(
                [
                    ("<int:customer_id>/grant/", views.grant_create, "grant"),
                    ("<int:customer_id>/change-plan/", views.plan_change, "change_plan"),
                ]
            )
            + super().get_urls()
        )

    @admin.display(description="Plan", ordering="plan_code")
    def plan(self, obj: Customer) -> str:
        return getattr(obj, "plan_name", None) or getattr(obj, "plan_code", None) or "none"

    @admin.display(description="Available credits")
    def available(self, obj: Customer) -> str:
        posted = getattr(obj, "posted", ZERO)
        return display.credits(posted - obj.account.held)

    @admin.display(description="Actions")
    def workflows(self, obj: Customer) -> SafeString:
        return _links(
            (reverse("admin:plans_customer_grant", args=[obj.pk]), "Grant credits"),
            (reverse("admin:plans_customer_change_plan", args=[obj.pk]), "Change plan"),
        )

    @admin.display(description="Records")
    def related(self, obj: Customer) -> SafeString:
        by_customer = {"customer__id__exact": obj.pk}
        by_account = {"account__id__exact": obj.account_id}
        links = [
            (_changelist("invoicing_invoice", **by_customer), "Invoices"),
            (
                _changelist("invoicing_creditnote", invoice__customer__id__exact=obj.pk),
                "Credit notes",
            ),
            (_changelist("plans_subscription", **by_customer), "Subscriptions"),
            (_changelist("ledger_creditgrant", **by_account), "Credit grants"),
            (_changelist("ledger_ledgerentry", **by_account), "Ledger entries"),
            (_changelist("metering_meterevent", **by_customer), "Meter events"),
            (_changelist("alerts_alert", **by_customer), "Alerts"),
            (_changelist("staff_auditlog", q=obj.external_id), "Audit log"),
        ]
        return format_html(
            '<span class="staff-records">{}</span>',
            format_html_join("", '<a href="{}">{}</a>', links),
        )

    @admin.display(description="Balance (credits)")
    def balance(self, obj: Customer) -> str:
        balance = account_balance(account=obj.account)
        return (
            f"available {display.credits(balance.available)} "
            f"(posted {display.credits(balance.posted)}, held {display.credits(balance.held)})"
        )

    @admin.display(description="Subscription")
    def subscription(self, obj: Customer) -> SafeString | str:
        sub = (
            Subscription.objects.filter(customer=obj)
            .select_related("plan_version__plan")
            .order_by("-created_at")
            .first()
        )
        if sub is None:
            return "none"
        pending = f"; then {sub.pending_plan_version}" if sub.pending_plan_version else ""
        text = (
            f"{display.label(subscription_status(sub))}, period "
            f"{sub.current_period_start:%Y-%m-%d} to {sub.current_period_end:%Y-%m-%d}"
            f"{pending}{_past_due_note(obj)}"
        )
        url = reverse("admin:plans_subscription_change", args=[sub.pk])
        plan = sub.plan_version.name or str(sub.plan_version)
        return format_html('<a href="{}">{}</a> ({}): {}', url, plan, sub.plan_version, text)

    @admin.display(description="Plan features (this period)")
    def features(self, obj: Customer) -> SafeString | str:
        rows = entitlements_for(customer=obj)
        if not rows:
            return "none (no subscription in force)"
        return _table(
            ["Feature", "Enabled", "Limit", "Used", "Remaining", "Unit"],
            (
                (
                    f.code,
                    "yes" if f.enabled else "no",
                    *(display.credits(n) for n in (f.limit, f.used, f.remaining)),
                    f.unit or display.DASH,
                )
                for f in rows
            ),
            numeric={2, 3, 4},
        )

    @admin.display(description="Credit grants")
    def grants(self, obj: Customer) -> SafeString:
        rows = CreditGrant.objects.filter(account_id=obj.account_id).order_by("-created_at")
        return _table(
            ["Grant", "Category", "Remaining", "Amount", "Status", "Expires"],
            (
                (
                    format_html(
                        '<a href="{}">{}</a>',
                        reverse("admin:ledger_creditgrant_change", args=[g.pk]),
                        f"Grant {g.pk}",
                    ),
                    display.label(g.category),
                    display.credits(g.remaining),
                    display.credits(g.amount),
                    display.label(g.status),
                    display.when(g.expires_at, "never"),
                )
                for g in rows
            ),
            numeric={2, 3},
        )

    @admin.display(description="Portal users")
    def portal_users(self, obj: Customer) -> SafeString | str:
        # By name: the portal app depends on this one, not the other way round.
        membership = apps.get_model("portal", "PortalMembership")
        members = membership.objects.filter(customer=obj).select_related("user").order_by("pk")
        if not members:
            return "none"
        return _table(
            ["User", "E-mail", "Role"],
            (
                (
                    format_html(
                        '<a href="{}">{}</a>',
                        reverse("admin:auth_user_change", args=[m.user_id]),
                        m.user.get_username(),
                    ),
                    m.user.email or display.DASH,
                    display.label(m.role),
                )
                for m in members
            ),
        )

    @admin.display(description="Recent meter events")
    def recent_events(self, obj: Customer) -> SafeString:
        events = MeterEvent.objects.filter(customer=obj).order_by("-timestamp")[:RECENT_EVENTS]
        return _table(
            ["Identifier", "Event", "Timestamp", "Value"],
            (
                (
                    format_html(
                        '<a href="{}">{}</a>',
                        reverse("admin:metering_meterevent_change", args=[e.pk]),
                        e.identifier,
                    ),
                    e.event_name,
                    display.when(e.timestamp),
                    display.credits(e.value),
                )
                for e in events
            ),
            numeric={3},
        )


class ExpiringSoonFilter(admin.SimpleListFilter):
    title = "expiring"
    parameter_name = "expiring"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("7", "within 7 days"), ("30", "within 30 days")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() not in ("7", "30"):
            return queryset
        now = timezone.now()
        return queryset.filter(
            status=GrantStatus.ACTIVE,
            expires_at__gt=now,
            expires_at__lte=now + timedelta(days=int(self.value() or 0)),
        )


class CustomerColumn:
    """A customer column for rows that name an account (grants, ledger rows)."""

    @admin.display(description="Customer", ordering="account__customer__external_id")
    def customer(self, obj: Any) -> SafeString | str:
        return _customer_cell(getattr(obj.account, "customer", None))


@admin.register(CreditGrant)
class CreditGrantAdmin(CustomerColumn, ReadOnlyAdmin):
    list_display = [
        "grant",
        "customer",
        "category_label",
        "amount_text",
        "remaining_text",
        "status_label",
        "priority",
        "expires",
        "reason_label",
    ]
    list_filter = ["category", "status", ExpiringSoonFilter]
    list_select_related = ["account__customer"]
    search_fields = ["=account__customer__external_id", "account__customer__name", "reason"]
    readonly_fields = (
        "workflows",
        "customer",
        "entries",
        "category_label",
        "amount_text",
        "remaining_text",
        "status_label",
        "priority",
        "effective",
        "expires",
        "scope",
        "cost_basis_text",
        "reason_label",
        "description",
        "memo",
        "actor",
        "source",
        "created",
        "closed",
    )
    fields = readonly_fields

    def get_urls(self) -> list[URLPattern]:
        return (
            self.workflow_urls(
                [
                    ("<int:grant_id>/void/", partial(views.grant_close, expire=False), "void"),
                    ("<int:grant_id>/expire/", partial(views.grant_close, expire=True), "expire"),
                ]
            )
            + super().get_urls()
        )

    @admin.display(description="Grant", ordering="pk")
    def grant(self, obj: CreditGrant) -> str:
        return f"Grant {obj.pk}"

    @admin.display(description="Category", ordering="category")
    def category_label(self, obj: CreditGrant) -> str:
        return display.label(obj.category)

    @admin.display(description="Amount", ordering="amount")
    def amount_text(self, obj: CreditGrant) -> str:
        return display.credits(obj.amount)

    @admin.display(description="Remaining", ordering="remaining")
    def remaining_text(self, obj: CreditGrant) -> str:
        return display.credits(obj.remaining)

    @admin.display(description="Status", ordering="status")
    def status_label(self, obj: CreditGrant) -> str:
        return display.label(obj.status)

    @admin.display(description="Effective")
    def effective(self, obj: CreditGrant) -> str:
        return display.when(obj.effective_at)

    @admin.display(description="Expires", ordering="expires_at")
    def expires(self, obj: CreditGrant) -> str:
        return display.when(obj.expires_at, "never")

    @admin.display(description="Reason", ordering="reason")
    def reason_label(self, obj: CreditGrant) -> str:
        return descriptions.reason_label(obj.reason) if obj.reason else display.DASH

    @admin.display(description="Usable for")
    def scope(self, obj: CreditGrant) -> str:
        meters = ", ".join(obj.applies_to) or "every meter"
        return f"{meters}; {f'workspace {obj.workspace}' if obj.workspace else 'pooled'}"

    @admin.display(description="Cost basis per credit")
    def cost_basis_text(self, obj: CreditGrant) -> str:
        basis = as_money(obj.cost_basis)
        return f"{_amount(basis.amount)} {basis.currency}"

    @admin.display(description="Source")
    def source(self, obj: CreditGrant) -> str:
        return " ".join(filter(None, [display.label(obj.source_type), obj.source_id])) or "—"

    @admin.display(description="Created")
    def created(self, obj: CreditGrant) -> str:
        return display.when(obj.created_at)

    @admin.display(description="Closed")
    def closed(self, obj: CreditGrant) -> str:
        return display.when(obj.closed_at, "open")

    @admin.display(description="Ledger entries")
    def entries(self, obj: CreditGrant) -> SafeString:
        count = obj.entries.count()
        url = _changelist("ledger_ledgerentry", grant__id__exact=obj.pk)
        return format_html(
            '<a href="{}">{} ledger entr{}</a>', url, count, "y" if count == 1 else "ies"
        )

    @admin.display(description="Actions")
    def workflows(self, obj: CreditGrant) -> SafeString:
        if obj.status not in (GrantStatus.ACTIVE, GrantStatus.DEPLETED):
            return format_html("{}", "closed")
        return _links(
            (reverse("admin:ledger_creditgrant_void", args=[obj.pk]), "Void"),
            (reverse("admin:ledger_creditgrant_expire", args=[obj.pk]), "Expire now"),
        )


@admin.register(LedgerEntry)
class LedgerEntryAdmin(CustomerColumn, ReadOnlyAdmin):
    list_display = [
        "pk",
        "created",
        "customer",
        "kind_label",
        "grant_link",
        "credits_text",
        "held_text",
        "cause",
    ]
    list_filter = ["kind", "cause_type"]
    list_select_related = ["account__customer"]
    search_fields = ["=cause_id", "=account__customer__external_id"]

    @admin.display(description="When", ordering="created_at")
    def created(self, obj: LedgerEntry) -> str:
        return display.when(obj.created_at)

    @admin.display(description="Kind", ordering="kind")
    def kind_label(self, obj: LedgerEntry) -> str:
        return display.label(obj.kind)

    @admin.display(description="Grant")
    def grant_link(self, obj: LedgerEntry) -> SafeString | str:
        if obj.grant_id is None:
            return display.DASH
        url = reverse("admin:ledger_creditgrant_change", args=[obj.grant_id])
        return format_html('<a href="{}">Grant {}</a>', url, obj.grant_id)

    @admin.display(description="Credits", ordering="credits")
    def credits_text(self, obj: LedgerEntry) -> str:
        return display.credits(obj.credits)

    @admin.display(description="Held")
    def held_text(self, obj: LedgerEntry) -> str:
        return display.credits(obj.held)

    @admin.display(description="Cause")
    def cause(self, obj: LedgerEntry) -> SafeString | str:
        if obj.cause_type == "event" and obj.cause_id.isdigit():
            url = reverse("admin:metering_meterevent_change", args=[obj.cause_id])
            return format_html('<a href="{}">Meter event {}</a>', url, obj.cause_id)
        return f"{display.label(obj.cause_type)} {obj.cause_id}".strip()


@admin.register(LedgerOperation)
class LedgerOperationAdmin(CustomerColumn, ReadOnlyAdmin):
    list_display = [
        "pk",
        "created",
        "customer",
        "kind_label",
        "actor",
        "reason_label",
        "description",
    ]
    list_filter = ["kind"]
    list_select_related = ["account__customer"]
    search_fields = ["actor", "reason", "=account__customer__external_id"]

    @admin.display(description="When", ordering="created_at")
    def created(self, obj: LedgerOperation) -> str:
        return display.when(obj.created_at)

    @admin.display(description="Kind", ordering="kind")
    def kind_label(self, obj: LedgerOperation) -> str:
        return display.label(obj.kind)

    @admin.display(description="Reason", ordering="reason")
    def reason_label(self, obj: LedgerOperation) -> str:
        return descriptions.reason_label(obj.reason) if obj.reason else display.DASH


# --- metering -----------------------------------------------------------------------------


class CancellationInline(ReadOnlyInline):
    model = EventCancellation
    fields = (
        "reason",
        "actor",
        "created_at",
    )
    readonly_fields = fields


class RatingResultFilter(admin.SimpleListFilter):
    """Accepted events by what rating made of them: unratable ones charge nothing."""

    title = "rating"
    parameter_name = "rating"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [
            ("rated", "rated"),
            ("unratable", "unratable"),
            ("canceled", "cancelled"),
            ("waiting", "waiting to be rated"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "waiting":
            return queryset.filter(rating__isnull=True)
        if self.value():
            return queryset.filter(rating__status=self.value())
        return queryset


@admin.register(MeterEvent)
class MeterEventAdmin(ReadOnlyAdmin):
    list_display = [
        "identifier",
        "customer_link",
        "event_name",
        "when",
        "value_text",
        "workspace",
        "rating_result",
    ]
    list_filter = [RatingResultFilter, "event_name"]
    list_select_related = ["customer", "rating"]
    search_fields = ["identifier", "customer__external_id"]
    readonly_fields = ["workflows", "rating_result"]

    @admin.display(description="Customer", ordering="customer__external_id")
    def customer_link(self, obj: MeterEvent) -> SafeString:
        return views.customer_link(obj.customer)

    @admin.display(description="Timestamp", ordering="timestamp")
    def when(self, obj: MeterEvent) -> str:
        return display.when(obj.timestamp)

    @admin.display(description="Value", ordering="value")
    def value_text(self, obj: MeterEvent) -> str:
        return display.credits(obj.value)

    @admin.display(description="Rating")
    def rating_result(self, obj: MeterEvent) -> str:
        rating = getattr(obj, "rating", None)
        if rating is None:
            return "waiting to be rated"
        if rating.error_code:
            return (
                f"{display.label(rating.status)}: {display.label(rating.error_code)} "
                f"({rating.error_message})"
            )
        return f"{display.label(rating.status)}: {display.credits(rating.credits)} credits"

    inlines = [CancellationInline]

    def get_urls(self) -> list[URLPattern]:
        return (
            self.workflow_urls(
                [
                    ("<int:event_id>/cancel/", views.event_cancel, "cancel"),
                    ("<int:event_id>/correct/", views.event_correct, "correct"),
                ]
            )
            + super().get_urls()
        )

    @admin.display(description="Actions")
    def workflows(self, obj: MeterEvent) -> SafeString:
        cancellation = EventCancellation.objects.filter(event=obj).first()
        if cancellation is not None:
            return format_html(
                "Cancelled {} ({}): nothing left to cancel or correct",
                display.when(cancellation.created_at),
                descriptions.reason_label(cancellation.reason),
            )
        return _links(
            (reverse("admin:metering_meterevent_cancel", args=[obj.pk]), "Cancel"),
            (reverse("admin:metering_meterevent_correct", args=[obj.pk]), "Correct"),
        )


class RatingStateFilter(admin.SimpleListFilter):
    title = "state"
    parameter_name = "state"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("waiting", "waiting"), ("failing", "failing, will retry"), ("parked", "parked")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        return {
            "waiting": queryset.filter(attempts=0),
            "failing": queryset.filter(attempts__gt=0, parked_at__isnull=True),
            "parked": queryset.filter(parked_at__isnull=False),
        }.get(self.value() or "", queryset)


@admin.register(RatingQueue)
class RatingQueueAdmin(ReadOnlyAdmin):
    """Accepted events not yet rated: the ones that failed carry their error."""

    list_display = [
        "event_link",
        "customer_name",
        "enqueued_at",
        "attempts",
        "next_attempt_at",
        "parked_at",
        "short_error",
    ]
    list_filter = [RatingStateFilter]
    search_fields = ["event__identifier", "event__customer__external_id"]
    list_select_related = ["event__customer"]
    actions = ["retry_rating"]

    @admin.display(description="event")
    def event_link(self, obj: RatingQueue) -> SafeString:
        url = reverse("admin:metering_meterevent_change", args=[obj.event_id])
        return format_html('<a href="{}">{}</a>', url, obj.event.identifier)

    @admin.display(description="customer")
    def customer_name(self, obj: RatingQueue) -> SafeString:
        return views.customer_link(obj.event.customer)

    @admin.display(description="last error")
    def short_error(self, obj: RatingQueue) -> str:
        return obj.last_error[:160]

    @admin.action(description="Retry rating of the selected events now")
    def retry_rating(self, request: HttpRequest, queryset: QuerySet[RatingQueue]) -> None:
        reason = staff_services.Reason("rating_retry", uuid.uuid4().hex)
        try:
            retried = staff_services.staff_rating_retry(
                operator=request.user, queued=list(queryset.select_related("event")), reason=reason
            )
        except PermissionDenied as exc:
            self.message_user(request, str(exc), level=messages.ERROR)
            return
        self.message_user(request, f"{retried} event(s) will be rated again on the next run.")


@admin.register(RejectedEvent)
class RejectedEventAdmin(ReadOnlyAdmin):
    list_display = ["received_at", "code", "customer_external_id", "identifier", "event_name"]
    list_filter = ["code"]
    search_fields = ["identifier", "customer_external_id"]


# --- invoices and credit notes ------------------------------------------------------------


class InvoiceLineInline(ReadOnlyInline):
    model = InvoiceLine
    fields = (
        "kind_label",
        "description",
        "quantity_text",
        "amount_text",
        "lineage",
    )
    readonly_fields = fields

    @admin.display(description="Kind")
    def kind_label(self, obj: InvoiceLine) -> str:
        return display.label(obj.kind)

    @admin.display(description="Quantity")
    def quantity_text(self, obj: InvoiceLine) -> str:
        return display.credits(obj.quantity)

    @admin.display(description="Amount")
    def amount_text(self, obj: InvoiceLine) -> str:
        return display.money(obj.amount)

    @admin.display(description="Lineage")
    def lineage(self, obj: InvoiceLine) -> SafeString:
        return _links((reverse("admin:invoicing_invoiceline_lineage", args=[obj.pk]), "Lineage"))


class PaymentFailedFilter(admin.SimpleListFilter):
    title = "payment"
    parameter_name = "payment"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("failed_unpaid", "failed, still unpaid"), ("failed", "failed at least once")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        if self.value() == "failed":
            return queryset.filter(payment_attempts__gt=0)
        if self.value() == "failed_unpaid":
            return queryset.filter(payment_failed_at__isnull=False, status__in=UNPAID)
        return queryset


@admin.register(Invoice)
class InvoiceAdmin(ReadOnlyAdmin):
    list_display = [
        "number",
        "customer_link",
        "kind_label",
        "status_label",
        "total_text",
        "payment",
        "sync_label",
        "issued",
    ]
    list_select_related = ["customer"]
    list_filter = ["status", PaymentFailedFilter, "kind", "sync_state"]
    search_fields = ["number", "customer__external_id", "stripe_invoice_id"]
    readonly_fields = ["workflows", "customer_link", "total_text", "payment"]
    inlines = [InvoiceLineInline]

    @admin.display(description="Customer", ordering="customer__external_id")
    def customer_link(self, obj: Invoice) -> SafeString:
        return views.customer_link(obj.customer)

    @admin.display(description="Kind", ordering="kind")
    def kind_label(self, obj: Invoice) -> str:
        return display.label(obj.kind)

    @admin.display(description="Status", ordering="status")
    def status_label(self, obj: Invoice) -> str:
        return display.label(obj.status)

    @admin.display(description="Total", ordering="total")
    def total_text(self, obj: Invoice) -> str:
        return display.money(obj.total)

    @admin.display(description="Stripe sync", ordering="sync_state")
    def sync_label(self, obj: Invoice) -> str:
        return display.label(obj.sync_state)

    @admin.display(description="Issued", ordering="issued_at")
    def issued(self, obj: Invoice) -> str:
        return display.when(obj.issued_at)

    @admin.display(description="Payment")
    def payment(self, obj: Invoice) -> str:
        """Collection as Stripe reported it: failed attempts, the last error, what next."""
        if not obj.payment_attempts:
            return "paid" if obj.status == InvoiceStatus.PAID else "no failed attempt"
        text = (
            f"{obj.payment_attempts} failed attempt{'s' if obj.payment_attempts > 1 else ''}, "
            f"first {display.when(obj.payment_failed_at)}: {obj.payment_error}"
        )
        if obj.status == InvoiceStatus.PAID:
            return f"{text}; paid {obj.paid_at:%Y-%m-%d}"
        if obj.next_payment_attempt_at:
            return f"{text}; next attempt {display.when(obj.next_payment_attempt_at)}"
        return text

    def get_urls(self) -> list[URLPattern]:
        return (
            self.workflow_urls(
                [
                    ("<int:invoice_id>/credit-note/", views.credit_note_issue, "credit_note"),
                    (
                        "<int:pk>/retry-sync/",
                        partial(views.sync_retry, model=Invoice),
                        "retry_sync",
                    ),
                ]
            )
            + super().get_urls()
        )

    @admin.display(description="Actions")
    def workflows(self, obj: Invoice) -> SafeString:
        links = [(reverse("admin:invoicing_invoice_credit_note", args=[obj.pk]), "Credit note")]
        if obj.sync_state == SyncState.FAILED:
            links.append((reverse("admin:invoicing_invoice_retry_sync", args=[obj.pk]), "Retry"))
        return _links(*links)


@admin.register(InvoiceLine)
class InvoiceLineAdmin(ReadOnlyAdmin):
    list_display = ["pk", "invoice", "kind_label", "description", "amount_text", "lineage"]
    list_filter = ["kind"]
    search_fields = ["invoice__number"]
    list_select_related = ["invoice"]

    @admin.display(description="Kind", ordering="kind")
    def kind_label(self, obj: InvoiceLine) -> str:
        return display.label(obj.kind)

    @admin.display(description="Amount", ordering="amount")
    def amount_text(self, obj: InvoiceLine) -> str:
        return display.money(obj.amount)

    @admin.display(description="Lineage")
    def lineage(self, obj: InvoiceLine) -> SafeString:
        return _links((reverse("admin:invoicing_invoiceline_lineage", args=[obj.pk]), "Lineage"))

    def get_urls(self) -> list[URLPattern]:
        return (
            self.workflow_urls([("<int:line_id>/lineage/", views.report_lineage, "lineage")])
            + super().get_urls()
        )


class CreditNoteLineInline(ReadOnlyInline):
    model = CreditNoteLine
    fields = (
        "description",
        "amount_text",
    )
    readonly_fields = fields

    @admin.display(description="Amount")
    def amount_text(self, obj: CreditNoteLine) -> str:
        return display.money(obj.amount)


@admin.register(CreditNote)
class CreditNoteAdmin(ReadOnlyAdmin):
    list_display = [
        "number",
        "invoice_link",
        "customer_link",
        "status_label",
        "reason_label",
        "method_label",
        "total_text",
        "sync_label",
    ]
    list_filter = ["status", "reason", "method", "sync_state"]
    list_select_related = ["invoice__customer"]
    search_fields = ["number", "invoice__number", "invoice__customer__external_id"]
    readonly_fields = (
        "workflows",
        "number",
        "invoice_link",
        "customer_link",
        "status_label",
        "reason_label",
        "method_label",
        "total_text",
        "description",
        "memo",
        "actor",
        "sync_label",
        "sync_error",
        "created",
    )
    fields = readonly_fields
    inlines = [CreditNoteLineInline]

    @admin.display(description="Invoice", ordering="invoice__number")
    def invoice_link(self, obj: CreditNote) -> SafeString:
        url = reverse("admin:invoicing_invoice_change", args=[obj.invoice_id])
        return format_html('<a href="{}">{}</a>', url, obj.invoice.number)

    @admin.display(description="Customer")
    def customer_link(self, obj: CreditNote) -> SafeString:
        return views.customer_link(obj.invoice.customer)

    @admin.display(description="Status", ordering="status")
    def status_label(self, obj: CreditNote) -> str:
        return display.label(obj.status)

    @admin.display(description="Reason", ordering="reason")
    def reason_label(self, obj: CreditNote) -> str:
        return display.label(obj.reason)

    @admin.display(description="Method", ordering="method")
    def method_label(self, obj: CreditNote) -> str:
        return display.label(obj.method)

    @admin.display(description="Total", ordering="total")
    def total_text(self, obj: CreditNote) -> str:
        return display.money(obj.total)

    @admin.display(description="Stripe sync", ordering="sync_state")
    def sync_label(self, obj: CreditNote) -> str:
        return display.label(obj.sync_state)

    @admin.display(description="Created")
    def created(self, obj: CreditNote) -> str:
        return display.when(obj.created_at)

    def get_urls(self) -> list[URLPattern]:
        return (
            self.workflow_urls(
                [
                    ("<int:note_id>/void/", views.credit_note_void, "void"),
                    (
                        "<int:pk>/retry-sync/",
                        partial(views.sync_retry, model=CreditNote),
                        "retry_sync",
                    ),
                ]
            )
            + super().get_urls()
        )

    @admin.display(description="Actions")
    def workflows(self, obj: CreditNote) -> SafeString:
        links = [(reverse("admin:invoicing_creditnote_void", args=[obj.pk]), "Void")]
        if obj.sync_state == SyncState.FAILED:
            url = reverse("admin:invoicing_creditnote_retry_sync", args=[obj.pk])
            links.append((url, "Retry sync"))
        return _links(*links)


# --- plans, rate cards, keys --------------------------------------------------------------


class PlanVersionInline(ReadOnlyInline):
    model = PlanVersion
    fields = (
        "version",
        "name",
        "interval",
        "base_fee",
        "included_credits",
        "rate_card",
    )
    readonly_fields = fields


@admin.register(Plan)
class PlanAdmin(ReadOnlyAdmin):
    list_display = ["code", "created_at"]
    inlines = [PlanVersionInline]

    def get_urls(self) -> list[URLPattern]:
        return (
            self.workflow_urls([("catalog/", views.catalog_edit, "catalog")]) + super().get_urls()
        )


class RateInline(ReadOnlyInline):
    model = Rate
    fields = ("meter", "match", "pricing", "provider_cost")
    readonly_fields = fields

    @admin.display(description="Price in credits")
    def pricing(self, obj: Rate) -> str:
        return rate_pricing(obj)

    @admin.display(description="Provider cost")
    def provider_cost(self, obj: Rate) -> str:
        if obj.cost is None:
            return "-"
        cost = as_money(obj.cost)
        return f"{_amount(cost.amount)} {cost.currency} per {obj.per:,}"


def rate_pricing(rate: Rate) -> str:
    """A rate's price as staff read it: flat, packages, or its tiers."""
    per = f"{rate.per:,}"
    if rate.round_up:
        return f"{_amount(rate.credits)} per started package of {per}"
    if not rate.tiers_mode:
        return f"{_amount(rate.credits)} per {per}"
    bands = []
    for tier in tiers_of(rate):
        bound = (
            f"up to {_amount(tier.up_to)}"
            if tier.up_to is not None
            else f"above {_amount(tier.start)}"
        )
        bands.append(f"{bound}: {_amount(tier.credits)}")
    return f"{rate.tiers_mode}, per {per}: " + "; ".join(bands)


def _amount(value: Decimal) -> str:
    return f"{value.normalize():,f}"


@admin.register(RateCardVersion)
class RateCardVersionAdmin(ReadOnlyAdmin):
    list_display = ["rate_card", "version", "effective_from"]
    inlines = [RateInline]


class RateCardVersionInline(ReadOnlyInline):
    model = RateCardVersion
    fields = (
        "version",
        "effective_from",
    )
    readonly_fields = fields
    show_change_link = True


@admin.register(RateCard)
class RateCardAdmin(ReadOnlyAdmin):
    list_display = ["code", "created_at"]
    inlines = [RateCardVersionInline]


@admin.register(Subscription)
class SubscriptionAdmin(ReadOnlyAdmin):
    list_display = ["pk", "customer_link", "plan_version", "status_label", "period_end"]
    list_filter = ["status"]
    list_select_related = ["customer", "plan_version__plan"]
    search_fields = ["customer__external_id", "customer__name"]

    @admin.display(description="Customer", ordering="customer__external_id")
    def customer_link(self, obj: Subscription) -> SafeString:
        return views.customer_link(obj.customer)

    @admin.display(description="Status", ordering="status")
    def status_label(self, obj: Subscription) -> str:
        return display.label(obj.status)

    @admin.display(description="Current period ends", ordering="current_period_end")
    def period_end(self, obj: Subscription) -> str:
        return display.when(obj.current_period_end)


@admin.register(ApiKey)
class ApiKeyAdmin(ReadOnlyAdmin):
    list_display = ["prefix", "name", "created_at", "revoked_at", "last_used_at"]
    exclude = ["key_hash"]
    readonly_fields = ["workflows"]

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # "Add" opens the create workflow, which shows the secret once.
        return request.user.has_perm("staff.manage_api_keys")

    def get_urls(self) -> list[URLPattern]:
        routes: list[tuple[str, Callable[..., HttpResponse], str]] = [
            ("add/", views.api_key_create, "create"),
            ("<int:key_id>/revoke/", views.api_key_revoke, "revoke"),
        ]
        return self.workflow_urls(routes) + super().get_urls()

    @admin.display(description="Actions")
    def workflows(self, obj: ApiKey) -> SafeString:
        if obj.revoked_at is not None:
            return format_html("revoked {}", obj.revoked_at)
        return _links((reverse("admin:plans_apikey_revoke", args=[obj.pk]), "Revoke"))


# --- the audit log and reports -----------------------------------------------------------


@admin.register(AuditLog)
class AuditLogAdmin(ReadOnlyAdmin):
    list_display = [
        "when",
        "operator_name",
        "action_label",
        "reason_label",
        "customer",
        "target",
        "memo",
    ]
    list_filter = ["action", "reason_code"]
    search_fields = ["operator_name", "=target_id", "memo", "details__customer"]
    date_hierarchy = "created_at"

    @admin.display(description="When", ordering="created_at")
    def when(self, obj: AuditLog) -> str:
        return display.when(obj.created_at)

    @admin.display(description="Action", ordering="action")
    def action_label(self, obj: AuditLog) -> str:
        return display.label(obj.action)

    @admin.display(description="Reason", ordering="reason_code")
    def reason_label(self, obj: AuditLog) -> str:
        return descriptions.reason_label(obj.reason_code)

    @admin.display(description="Customer")
    def customer(self, obj: AuditLog) -> SafeString | str:
        found = _audit_customer(obj)
        return _customer_cell(found)

    def get_urls(self) -> list[URLPattern]:
        return (
            self.workflow_urls(
                [
                    ("reports/revenue/", views.report_revenue, "report_revenue"),
                    ("reports/margin/", views.report_margin, "report_margin"),
                    (
                        "reports/reconciliation/",
                        views.report_reconciliation,
                        "report_reconciliation",
                    ),
                    ("reports/unmatched/", views.report_unmatched, "report_unmatched"),
                ]
            )
            + super().get_urls()
        )

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        reports = [
            (reverse("admin:staff_auditlog_report_revenue"), "Revenue report"),
            (reverse("admin:staff_auditlog_report_margin"), "Margin report"),
            (reverse("admin:staff_auditlog_report_reconciliation"), "Reconciliation"),
            (reverse("admin:staff_auditlog_report_unmatched"), "Unmatched events"),
        ]
        context = {**(extra_context or {}), "reports": reports}
        return super().changelist_view(request, context)

    @admin.display(description="Target")
    def target(self, obj: AuditLog) -> SafeString | str:
        model = _audit_model(obj)
        text = (
            f"{model._meta.verbose_name.capitalize() if model else obj.target_type} {obj.target_id}"
        )
        if model is None or not obj.target_id.isdigit():
            return text
        url = reverse(
            f"admin:{model._meta.app_label}_{model._meta.model_name}_change", args=[obj.target_id]
        )
        return format_html('<a href="{}">{}</a>', url, text)


def _audit_model(row: AuditLog) -> type[Any] | None:
    try:
        return apps.get_model(row.target_type)
    except (LookupError, ValueError):
        return None


# How to reach the customer from each kind of audited target.
CUSTOMER_PATHS = {
    "plans.customer": "pk",
    "ledger.creditgrant": "account__customer__pk",
    "metering.meterevent": "customer__pk",
    "invoicing.invoice": "customer__pk",
    "invoicing.creditnote": "invoice__customer__pk",
    "plans.subscription": "customer__pk",
}


def _audit_customer(row: AuditLog) -> Customer | None:
    external_id = row.details.get("customer") if isinstance(row.details, dict) else None
    if external_id:
        return Customer.objects.filter(external_id=external_id).first()
    model, path = _audit_model(row), CUSTOMER_PATHS.get(row.target_type)
    if model is None or path is None or not row.target_id.isdigit():
        return None
    customer_pk = model.objects.filter(pk=row.target_id).values_list(path, flat=True).first()
    return Customer.objects.filter(pk=customer_pk).first() if customer_pk else None
