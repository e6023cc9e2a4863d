from django.urls import path

from plans import api

urlpatterns = [
    path("customers", api.CustomerCreateApi.as_view(), name="customer-create"),
    path("customers/<str:external_id>", api.CustomerDetailApi.as_view(), name="customer-detail"),
    path(
        "customers/<str:external_id>/credit_grants",
        api.CreditGrantsApi.as_view(),
        name="customer-credit-grants",
    ),
    path("subscriptions", api.SubscriptionCreateApi.as_view(), name="subscription-create"),
    path(
        "subscriptions/<str:subscription_id>/change_plan",
        api.SubscriptionChangePlanApi.as_view(),
        name="subscription-change-plan",
    ),
    path(
        "subscriptions/<str:subscription_id>/cancel",
        api.SubscriptionCancelApi.as_view(),
        name="subscription-cancel",
    ),
    path("credit_grants/<str:grant_id>/void", api.CreditGrantVoidApi.as_view(), name="grant-void"),
    path(
        "credit_grants/<str:grant_id>/expire",
        api.CreditGrantExpireApi.as_view(),
        name="grant-expire",
    ),
]
