"""``/compat/<vendor>/...``: each vendor's paths under its own prefix, so an SDK's
base-URL option set to ``<our base URL>/compat/<vendor>`` reaches them."""

from django.urls import include, path

urlpatterns = [
    path("stripe/", include("billing_portal.api.compat.stripe_meter_events")),
    path("openmeter/", include("billing_portal.api.compat.openmeter")),
    path("lago/", include("billing_portal.api.compat.lago")),
]
