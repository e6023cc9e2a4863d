"""Every route of ``/api/v1``; names are kept stable (the tests and the schema use them)."""

from django.urls import path

from billing_portal.api import (
    authorizations,
    balance,
    credit_grants,
    customers,
    events,
    invoices,
    subscriptions,
)

urlpatterns = [
    path("customers", customers.CustomerCreateApi.as_view(), name="customer-create"),
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
    path(
        "subscriptions", subscriptions.SubscriptionCreateApi.as_view(), name="subscription-create"
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
    path("customers/<str:external_id>/balance", balance.BalanceApi.as_view(), name="balance"),
    path("customers/<str:external_id>/usage", balance.UsageApi.as_view(), name="usage"),
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
    path("invoices/<str:invoice_id>", invoices.InvoiceDetailApi.as_view(), name="invoice-detail"),
]
