from django.urls import path

from metering import api

urlpatterns = [
    path("events", api.EventsApi.as_view(), name="events"),
    path("events/cancel", api.EventCancelApi.as_view(), name="events-cancel"),
    path("customers/<str:external_id>/balance", api.BalanceApi.as_view(), name="balance"),
    path("customers/<str:external_id>/usage", api.UsageApi.as_view(), name="usage"),
    path("authorizations", api.AuthorizationsApi.as_view(), name="authorizations"),
    path(
        "authorizations/<str:authorization_id>/release",
        api.AuthorizationReleaseApi.as_view(),
        name="authorization-release",
    ),
]
