"""Every route of ``/api/v1``; names are kept stable (the tests and the schema use them)."""

from django.urls import path, re_path

from billing_portal.api import (
    authorizations,
    balance,
    credit_grants,
    credit_notes,
    customers,
    entitlements,
    event_reads,
    events,
    invoices,
    ledger_entries,
    subscriptions,
)
from billing_portal.api.errors import api_path_unknown

urlpatterns = [
    # "customer-create" and "subscription-create" also list, since v1.1: names kept.
    path("customers", customers.CustomersApi.as_view(), name="customer-create"),
    path(
        "customers/<str:external_id>",
        customers.CustomerDetailApi.as_view(),
        name="customer-detail",
    ),
    path(
        "customers/<str:external_id>/credit_grants",
        credit_grants.CreditGrantsApi.as_view(),
        name="customer-credit-grants",
    ),
    path("subscriptions", subscriptions.SubscriptionsApi.as_view(), name="subscription-create"),
    path(
        "subscriptions/<str:subscription_id>",
        subscriptions.SubscriptionDetailApi.as_view(),
        name="subscription-detail",
    ),
    path(
        "subscriptions/<str:subscription_id>/change_plan",
        subscriptions.SubscriptionChangePlanApi.as_view(),
        name="subscription-change-plan",
    ),
    path(
        "subscriptions/<str:subscription_id>/cancel",
        subscriptions.SubscriptionCancelApi.as_view(),
        name="subscription-cancel",
    ),
    path(
        "credit_grants/<str:grant_id>/void",
        credit_grants.CreditGrantVoidApi.as_view(),
        name="grant-void",
    ),
    path(
        "credit_grants/<str:grant_id>/expire",
        credit_grants.CreditGrantExpireApi.as_view(),
        name="grant-expire",
    ),
    path("events", events.EventsApi.as_view(), name="events"),
    path("events/cancel", events.EventCancelApi.as_view(), name="events-cancel"),
    path(
        "customers/<str:external_id>/events",
        event_reads.CustomerEventsApi.as_view(),
        name="customer-events",
    ),
    path(  # identifiers may hold "/": the path converter takes them whole
        "customers/<str:external_id>/events/<path:identifier>",
        event_reads.CustomerEventDetailApi.as_view(),
        name="customer-event-detail",
    ),
    path(
        "customers/<str:external_id>/ledger_entries",
        ledger_entries.CustomerLedgerEntriesApi.as_view(),
        name="customer-ledger-entries",
    ),
    path("customers/<str:external_id>/balance", balance.BalanceApi.as_view(), name="balance"),
    path("customers/<str:external_id>/usage", balance.UsageApi.as_view(), name="usage"),
    path(
        "customers/<str:external_id>/entitlements",
        entitlements.EntitlementsApi.as_view(),
        name="entitlements",
    ),
    path("authorizations", authorizations.AuthorizationsApi.as_view(), name="authorizations"),
    path(
        "authorizations/<str:authorization_id>/release",
        authorizations.AuthorizationReleaseApi.as_view(),
        name="authorization-release",
    ),
    path(
        "customers/<str:external_id>/invoices",
        invoices.CustomerInvoicesApi.as_view(),
        name="customer-invoices",
    ),
    path(
        "customers/<str:external_id>/upcoming_invoice",
        invoices.UpcomingInvoiceApi.as_view(),
        name="upcoming-invoice",
    ),
    path("invoices/<str:invoice_id>", invoices.InvoiceDetailApi.as_view(), name="invoice-detail"),
    path("credit_notes", credit_notes.CreditNotesApi.as_view(), name="credit-notes"),
    path(
        "credit_notes/<str:credit_note_id>",
        credit_notes.CreditNoteDetailApi.as_view(),
        name="credit-note-detail",
    ),
    # Last: whatever no route above matched, in the error envelope.
    re_path(r"^(?P<path>.*)$", api_path_unknown, name="unknown-path"),
]
