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

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from billing_portal.invoicing.collection import UNPAID, past_due_for, subscription_status
from billing_portal.invoicing.models import (
    CreditNote,
    CreditNoteLine,
    Invoice,
    InvoiceLine,
    InvoiceStatus,
    SyncState,
)
from billing_portal.staff import services as staff_services
from billing_portal.staff import views
from billing_portal.staff.models import AuditLog
from ledger.models import CreditGrant, GrantStatus, LedgerEntry, LedgerOperation
from ledger.selectors import account_balance
from ledger.units import credits_exact
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


def _links(*links: tuple[str, str]) -> SafeString:
    return format_html_join(
        " ", '<a class="button" href="{}">{}</a>', ((url, label) for url, label in links)
    )


class ReadOnlyAdmin(admin.ModelAdmin):
    """No add, change or delete: changes go through the workflows only."""

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
        f"; PAST DUE since {past_due.since:%Y-%m-%d %H:%M} UTC: {past_due.amount_due} unpaid "
        f"on {past_due.invoice.number}"
    )
    if past_due.access_paused_at is None:
        return f"{note}, usage allowed meanwhile (plan)"
    return f"{note}, requests refused from {past_due.access_paused_at:%Y-%m-%d %H:%M} UTC"


@admin.register(Customer)
class CustomerAdmin(ReadOnlyAdmin):
    list_display = ["external_id", "name", "email", "currency", "created_at"]
    search_fields = ["external_id", "name", "email"]
    readonly_fields = (
        "external_id",
        "name",
        "email",
        "currency",
        "stripe_customer_id",
        "workflows",
        "balance",
        "subscription",
        "features",
        "grants",
        "recent_events",
    )
    fields = readonly_fields

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

    @admin.display(description="Actions")
    def workflows(self, obj: Customer) -> SafeString:
        return _links(
            (reverse("admin:plans_customer_grant", args=[obj.pk]), "Grant credits"),
            (reverse("admin:plans_customer_change_plan", args=[obj.pk]), "Change plan"),
        )

    @admin.display(description="Balance (credits)")
    def balance(self, obj: Customer) -> str:
        balance = account_balance(account=obj.account)
        return f"posted {balance.posted}, held {balance.held}, available {balance.available}"

    @admin.display(description="Subscription")
    def subscription(self, obj: Customer) -> str:
        sub = Subscription.objects.filter(customer=obj).order_by("-created_at").first()
        if sub is None:
            return "none"
        pending = f"; then {sub.pending_plan_version}" if sub.pending_plan_version else ""
        return (
            f"{sub.plan_version} ({subscription_status(sub)}), period "
            f"{sub.current_period_start:%Y-%m-%d} to {sub.current_period_end:%Y-%m-%d}"
            f"{pending}{_past_due_note(obj)}"
        )

    @admin.display(description="Plan features (this period)")
    def features(self, obj: Customer) -> SafeString | str:
        rows = entitlements_for(customer=obj)
        if not rows:
            return "none (no subscription in force)"
        return format_html(
            "<table><tr><th>feature</th><th>enabled</th><th>limit</th><th>used</th>"
            "<th>remaining</th><th>unit</th></tr>{}</table>",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                (
                    (
                        f.code,
                        "yes" if f.enabled else "no",
                        *(
                            "—" if n is None else credits_exact(n)
                            for n in (f.limit, f.used, f.remaining)
                        ),
                        f.unit or "—",
                    )
                    for f in rows
                ),
            ),
        )

    @admin.display(description="Credit grants")
    def grants(self, obj: Customer) -> SafeString:
        rows = CreditGrant.objects.filter(account_id=obj.account_id).order_by("-created_at")
        return format_html(
            "<table><tr><th>grant</th><th>category</th><th>remaining / amount</th>"
            "<th>status</th><th>expires</th></tr>{}</table>",
            format_html_join(
                "",
                '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{} / {}</td><td>{}</td>'
                "<td>{}</td></tr>",
                (
                    (
                        reverse("admin:ledger_creditgrant_change", args=[g.pk]),
                        g.pk,
                        g.category,
                        g.remaining,
                        g.amount,
                        g.status,
                        g.expires_at or "never",
                    )
                    for g in rows
                ),
            ),
        )

    @admin.display(description="Recent meter events")
    def recent_events(self, obj: Customer) -> SafeString:
        events = MeterEvent.objects.filter(customer=obj).order_by("-timestamp")[:RECENT_EVENTS]
        return format_html(
            "<table><tr><th>identifier</th><th>event</th><th>timestamp</th><th>value</th></tr>"
            "{}</table>",
            format_html_join(
                "",
                '<tr><td><a href="{}">{}</a></td><td>{}</td><td>{}</td><td>{}</td></tr>',
                (
                    (
                        reverse("admin:metering_meterevent_change", args=[e.pk]),
                        e.identifier,
                        e.event_name,
                        e.timestamp,
                        e.value,
                    )
                    for e in events
                ),
            ),
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


@admin.register(CreditGrant)
class CreditGrantAdmin(ReadOnlyAdmin):
    list_display = [
        "pk",
        "account",
        "category",
        "amount",
        "remaining",
        "status",
        "priority",
        "expires_at",
        "reason",
        "actor",
    ]
    list_filter = ["category", "status", ExpiringSoonFilter]
    search_fields = ["=account__customer__external_id", "reason", "actor"]
    readonly_fields = ["workflows"]

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

    @admin.display(description="Actions")
    def workflows(self, obj: CreditGrant) -> SafeString:
        if obj.status not in (GrantStatus.ACTIVE, GrantStatus.DEPLETED):
            return format_html("{}", "closed")
        return _links(
            (reverse("admin:ledger_creditgrant_void", args=[obj.pk]), "Void"),
            (reverse("admin:ledger_creditgrant_expire", args=[obj.pk]), "Expire now"),
        )


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ["pk", "account", "kind", "grant", "credits", "held", "cause_type", "cause_id"]
    list_filter = ["kind", "cause_type"]
    search_fields = ["=cause_id", "=account__customer__external_id"]


@admin.register(LedgerOperation)
class LedgerOperationAdmin(ReadOnlyAdmin):
    list_display = ["pk", "account", "kind", "actor", "reason", "created_at"]
    list_filter = ["kind"]
    search_fields = ["actor", "reason"]


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
        "customer",
        "event_name",
        "timestamp",
        "value",
        "workspace",
        "rating_result",
    ]
    list_filter = [RatingResultFilter, "event_name"]
    list_select_related = ["customer", "rating"]
    search_fields = ["identifier", "customer__external_id"]
    readonly_fields = ["workflows", "rating_result"]

    @admin.display(description="rating")
    def rating_result(self, obj: MeterEvent) -> str:
        rating = getattr(obj, "rating", None)
        if rating is None:
            return "waiting to be rated"
        if rating.error_code:
            return f"{rating.status}: {rating.error_code} ({rating.error_message})"
        return f"{rating.status}: {rating.credits.normalize():f} credits"

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
    def customer_name(self, obj: RatingQueue) -> str:
        return obj.event.customer.external_id

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
        "kind",
        "description",
        "quantity",
        "amount",
        "lineage",
    )
    readonly_fields = fields

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
        "customer",
        "kind",
        "status",
        "total",
        "payment",
        "sync_state",
        "issued_at",
    ]
    list_filter = ["status", PaymentFailedFilter, "kind", "sync_state"]
    search_fields = ["number", "customer__external_id", "stripe_invoice_id"]
    readonly_fields = ["workflows", "payment"]
    inlines = [InvoiceLineInline]

    @admin.display(description="Payment")
    def payment(self, obj: Invoice) -> str:
        """Collection as Stripe reported it: failed attempts, the last error, what next."""
        if not obj.payment_attempts:
            return "paid" if obj.status == InvoiceStatus.PAID else "no failed attempt"
        text = (
            f"{obj.payment_attempts} failed attempt{'s' if obj.payment_attempts > 1 else ''}, "
            f"first {obj.payment_failed_at:%Y-%m-%d %H:%M} UTC: {obj.payment_error}"
        )
        if obj.status == InvoiceStatus.PAID:
            return f"{text}; paid {obj.paid_at:%Y-%m-%d}"
        if obj.next_payment_attempt_at:
            return f"{text}; next attempt {obj.next_payment_attempt_at:%Y-%m-%d %H:%M} UTC"
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
    list_display = ["pk", "invoice", "kind", "description", "amount", "lineage"]
    list_filter = ["kind"]
    search_fields = ["invoice__number"]

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
        "invoice_line",
        "description",
        "amount",
    )
    readonly_fields = fields


@admin.register(CreditNote)
class CreditNoteAdmin(ReadOnlyAdmin):
    list_display = ["number", "invoice", "status", "reason", "method", "total", "sync_state"]
    list_filter = ["status", "reason", "method", "sync_state"]
    search_fields = ["number", "invoice__number"]
    readonly_fields = ["workflows"]
    inlines = [CreditNoteLineInline]

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
    list_display = ["customer", "plan_version", "status", "current_period_end"]
    list_filter = ["status"]
    search_fields = ["customer__external_id"]


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
    list_display = ["created_at", "operator_name", "action", "reason_code", "target", "memo"]
    list_filter = ["action", "reason_code"]
    search_fields = ["operator_name", "=target_id", "memo"]
    date_hierarchy = "created_at"

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
    def target(self, obj: AuditLog) -> str:
        return f"{obj.target_type} {obj.target_id}"
