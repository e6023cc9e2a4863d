"""Outgoing webhooks in the staff admin: endpoints are edited here; events, deliveries and
the attempt log are read-only, and a delivery is replayed through the replay service.
"""

from __future__ import annotations

import json
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils.html import format_html
from django.utils.safestring import SafeString

from billing_portal.outbound.models import (
    DeliveryAttempt,
    EventType,
    OutboundEvent,
    WebhookDelivery,
    WebhookEndpoint,
)
from billing_portal.outbound.services import delivery_replay, endpoint_save
from billing_portal.staff.admin import ReadOnlyAdmin, ReadOnlyInline

REPLAY_PERMISSION = "outbound.replay_delivery"


def _json(value: Any) -> SafeString:
    return format_html("<pre>{}</pre>", json.dumps(value, indent=2, ensure_ascii=False))


# --- endpoints --------------------------------------------------------------------------


class WebhookEndpointForm(forms.ModelForm):
    url = forms.URLField(max_length=500, assume_scheme="https")
    event_types = forms.MultipleChoiceField(
        choices=EventType.choices,
        widget=forms.CheckboxSelectMultiple,
        required=False,
        help_text="Leave every box empty to receive all event types.",
    )

    class Meta:
        model = WebhookEndpoint
        fields = ["url", "description", "event_types", "enabled"]


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    form = WebhookEndpointForm
    list_display = ["url", "description", "subscribed", "enabled", "created_at"]
    list_filter = ["enabled"]
    search_fields = ["url", "description"]

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False  # disable an endpoint instead: its deliveries keep the log

    def save_model(
        self, request: HttpRequest, obj: WebhookEndpoint, form: Any, change: bool
    ) -> None:
        endpoint_save(endpoint=obj, actor=request.user, created=not change)

    @admin.display(description="Event types")
    def subscribed(self, obj: WebhookEndpoint) -> str:
        return ", ".join(obj.event_types) or "all"

    @admin.display(description="Signing secret")
    def signing_secret(self, obj: WebhookEndpoint) -> str:
        return obj.secret if obj.pk is not None else "generated when the endpoint is saved"

    @admin.display(description="Signing secret")
    def masked_secret(self, obj: WebhookEndpoint) -> str:
        return f"{obj.secret[:10]}…"

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        # Only those who may edit the endpoint see the secret its receiver verifies with.
        if request.user.has_perm("outbound.change_webhookendpoint"):
            return ["signing_secret", "created_at"]
        return ["masked_secret", "created_at"]


# --- events -----------------------------------------------------------------------------


class DeliveryInline(ReadOnlyInline):
    model = WebhookDelivery
    fields = ("endpoint", "status", "attempts", "last_status_code", "next_attempt_at")
    readonly_fields = fields
    show_change_link = True


@admin.register(OutboundEvent)
class OutboundEventAdmin(ReadOnlyAdmin):
    list_display = ["public_id", "type", "customer", "created_at"]
    list_filter = ["type"]
    search_fields = ["=public_id", "=customer__external_id"]
    fields = ("public_id", "type", "customer", "created_at", "payload")
    readonly_fields = fields
    inlines = [DeliveryInline]

    @admin.display(description="Data")
    def payload(self, obj: OutboundEvent) -> SafeString:
        return _json(obj.data)


# --- deliveries and their log -----------------------------------------------------------


class AttemptInline(ReadOnlyInline):
    model = DeliveryAttempt
    verbose_name_plural = "delivery log"
    fields = ("number", "requested_at", "status_code", "duration_ms", "error", "response_body")
    readonly_fields = fields


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = [
        "pk",
        "event",
        "event_type",
        "endpoint",
        "status",
        "attempts",
        "last_status_code",
        "next_attempt_at",
    ]
    list_filter = ["status", "event__type", "endpoint"]
    list_select_related = ["event", "endpoint"]
    search_fields = ["=event__public_id", "=event__customer__external_id"]
    fields = (
        "event",
        "endpoint",
        "status",
        "attempts",
        "last_status_code",
        "next_attempt_at",
        "created_at",
        "workflows",
    )
    readonly_fields = fields
    inlines = [AttemptInline]
    actions = ["replay"]

    @admin.display(description="Type")
    def event_type(self, obj: WebhookDelivery) -> str:
        return obj.event.type

    @admin.display(description="Actions")
    def workflows(self, obj: WebhookDelivery) -> SafeString:
        url = reverse("admin:outbound_webhookdelivery_replay", args=[obj.pk])
        return format_html('<a class="button" href="{}">Replay</a>', url)

    def has_replay_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm(REPLAY_PERMISSION)

    @admin.action(description="Replay selected deliveries", permissions=["replay"])
    def replay(self, request: HttpRequest, queryset: QuerySet[WebhookDelivery]) -> None:
        count = 0
        for delivery in queryset.order_by("pk"):
            delivery_replay(delivery=delivery, actor=request.user)
            count += 1
        self.message_user(request, f"{count} deliveries queued to be sent again.")

    def get_urls(self) -> list[URLPattern]:
        replay = path(
            "<int:delivery_id>/replay/",
            self.admin_site.admin_view(self.replay_view),
            name="outbound_webhookdelivery_replay",
        )
        return [replay, *super().get_urls()]

    def replay_view(self, request: HttpRequest, delivery_id: int) -> HttpResponse:
        """A confirmation page, then the replay on POST."""
        if not self.has_replay_permission(request):
            raise PermissionDenied
        delivery = get_object_or_404(
            WebhookDelivery.objects.select_related("event", "endpoint"), pk=delivery_id
        )
        change_url = reverse("admin:outbound_webhookdelivery_change", args=[delivery.pk])
        if request.method == "POST":
            delivery_replay(delivery=delivery, actor=request.user)
            messages.success(request, f"Delivery {delivery.pk} queued to be sent again.")
            return HttpResponseRedirect(change_url)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Replay {delivery.event.public_id} to {delivery.endpoint}",
            "delivery": delivery,
            "cancel_url": change_url,
        }
        return TemplateResponse(request, "admin/outbound/replay_confirm.html", context)
