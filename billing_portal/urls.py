from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from billing_portal.health import healthz
from billing_portal.stripe.webhooks import stripe_webhook

urlpatterns = [
    path("healthz", healthz, name="healthz"),
    path("admin/", admin.site.urls),
    path("webhooks/stripe", stripe_webhook, name="stripe-webhook"),
    path("portal/", include("billing_portal.portal.urls")),
    path("api/v1/", include("billing_portal.api.urls")),
    path("compat/", include("billing_portal.api.compat.urls")),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
]

# Unknown URLs answer in the API's error envelope (JSON), as API clients expect.
handler404 = "billing_portal.api.errors.api_not_found"
